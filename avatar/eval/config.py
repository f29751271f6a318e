"""Settings of `avatar eval RUN`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro


@dataclass
class EvalConfig:
    """Score a trained avatar on its dataset's validation frames, driven by their own audio (PSNR, SSIM, LPIPS,
    mouth-landmark distance, mouth-opening correlation), next to two baselines, and write a side-by-side video."""

    LIMITS: ClassVar[dict] = {
        "resolution": (16, 4096),
        "max_frames": (3, None),
        "batch_size": (1, None),
        "video_size": (16, 4096),
        "threads": (1, None),
    }  # checked by config_io.check_values

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = tyro.MISSING  # type: ignore[assignment]
    """the run directory written by `avatar train`"""
    dataset: Path | None = None
    """the dataset to score on; default the one the avatar was trained on (recorded in it, and checked to be
    unchanged)"""
    drive: Path | None = None
    """score the avatar driven by ANOTHER dataset's audio instead (its person's tracked mouth is the reference:
    correlation, best lag, motion, closed mouth in silence); see avatar.eval.cross_drive"""
    drive_audio: Path | None = None
    """score the avatar driven by an audio file without video (a TTS voice): motion, closed mouth in pauses,
    open on vowels, correlation with loudness"""
    pose: Literal["track", "still", "smooth"] = "track"
    """head motion of the --drive / --drive-audio renders, as `avatar render --pose` (default its default): `still`
    scores the mouth without the landmark detector's noise that head motion adds to the detected opening"""
    split: Literal["val", "train"] = "val"
    """frames to score: `val` (the last 10 % of the clip, never trained on: the published protocol) or `train`"""
    out: Path | None = None
    """where metrics.json and side_by_side.mp4 go; default RUN/eval"""
    resolution: int | None = None
    """square size at which images are compared; default the avatar's render resolution. Landmarks are always
    detected at 512 x 512 (images are resized to it), so LMD is in pixels at 512 scale whatever this is"""
    max_frames: int | None = None
    """score only the first N frames of the split (for quick checks)"""
    batch_size: int = 8
    """frames rendered at once"""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """LPIPS backbone"""
    baselines: bool = True
    """also score the static head and the nearest-audio training frame with the same code"""
    video: bool = True
    """write the side-by-side video (ground truth | avatar) with the clip's audio"""
    video_size: int = 512
    """height and width of each panel of the video"""
    device: str = "auto"
    """torch device: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"""
    threads: int = 2
    """CPU threads torch may use (on a busy machine 1 can be faster)"""
