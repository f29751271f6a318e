"""The clip's soundtrack as 16 kHz mono, starting at the dataset's time zero (frame 0 starts there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar.audio.io import SAMPLE_RATE, is_silent, load_audio
from avatar.contracts.video import VideoInfo
from avatar.errors import UserError


def time_origin(info: VideoInfo, audio_override: Path | None) -> float:
    """Source time of the dataset's time zero: where both the picture and the sound have started."""
    if audio_override is not None or not info.has_audio:
        return info.start_s
    return max(info.start_s, info.audio_start_s)


def require_audio(info: VideoInfo, audio_override: Path | None) -> None:
    """A dataset needs speech: the video's own track or an --audio file."""
    if audio_override is None and not info.has_audio:
        raise UserError(
            f"{info.path}: has no audio track. Give the speech separately with --audio FILE "
            "(wav, mp3, m4a, ... recorded with this video)."
        )


def clip_audio(info: VideoInfo, audio_override: Path | None, origin_s: float) -> tuple[np.ndarray, list[str]]:
    """[S] float32 mono audio from `origin_s` on, and warnings. An override file starts at the video's start."""
    require_audio(info, audio_override)
    source = audio_override if audio_override is not None else info.path
    wave = load_audio(source)
    audio_start = info.start_s if audio_override is not None else info.audio_start_s
    skip = int(round((origin_s - audio_start) * SAMPLE_RATE))
    wave = wave[max(0, skip) :]
    warnings = []
    if is_silent(wave):
        warnings.append(
            f"{source}: the audio is silent (below -50 dBFS throughout). The avatar cannot learn lip sync "
            "from it: give the real speech with --audio FILE."
        )
    return wave, warnings
