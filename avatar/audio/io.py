"""Audio in and out: any file FFmpeg reads -> mono (or stereo) float32 at a chosen rate, streamed; 16 kHz WAV out.

Preprocessing (training audio) and rendering (new audio) both read sound through here, so a clip gives the
same samples whichever command reads it. Sample s of a 16 kHz clip is at time s / 16000.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avatar.contracts.atomic import atomic_path
from avatar.errors import UserError

SAMPLE_RATE = 16000


def _open_audio(path: Path):
    """The container and its first audio stream, or a UserError naming what is wrong with the file."""
    import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

    if path.is_dir():
        raise UserError(f"{path}: is a directory. Give the path of an audio or video file in it.")
    if not path.is_file():
        raise UserError(f"{path}: no such file. Give the path of an audio or video file.")
    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises many types for unreadable input
        raise UserError(f"{path}: cannot be decoded as audio or video ({exc}). Is the file corrupt?") from exc
    streams = [s for s in container.streams if s.type == "audio"]
    if not streams:
        container.close()
        raise UserError(f"{path}: has no audio track. Give a file with sound.")
    return container, streams[0]


def audio_channels(path: Path | str) -> int:
    """Channels of the first audio stream of `path` (UserError when there is none)."""
    container, stream = _open_audio(Path(path))
    with container:
        return stream.codec_context.channels


def iter_audio(path: Path | str, sample_rate: int = SAMPLE_RATE, layout: str = "mono") -> Iterator[np.ndarray]:
    """Stream the first audio stream of any file FFmpeg reads (wav, mp3, flac, m4a, ogg, mp4, ...) as float32
    chunks at `sample_rate`: [n] for layout "mono", [n, C] otherwise. Memory stays bounded for any length;
    the samples are exactly those `load_audio` returns."""
    import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

    path = Path(path)
    container, stream = _open_audio(path)
    channels = av.AudioLayout(layout).nb_channels

    def samples(frame) -> np.ndarray:  # packed float32 [1, n * C] -> [n] or [n, C]
        data = frame.to_ndarray().reshape(-1, channels)
        return data[:, 0] if channels == 1 else data

    with container:
        resampler = av.AudioResampler(format="flt", layout=layout, rate=sample_rate)
        decoded_any = False
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    decoded_any = True
                    yield samples(out)
        except av.error.FFmpegError as exc:
            if not decoded_any:
                raise UserError(f"{path}: the audio stream is corrupt ({exc}).") from exc
        for out in resampler.resample(None):
            yield samples(out)


def load_audio(path: Path | str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file FFmpeg reads (wav, mp3, flac, m4a, ogg, mp4, ...)
    to mono float32 [S] at `sample_rate`, whatever its own rate and channel layout."""
    chunks = list(iter_audio(path, sample_rate))
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if wave.size < sample_rate // 10:
        raise UserError(f"{path}: the audio track is empty or shorter than 0.1 s. Give a file with speech in it.")
    return wave


def save_wav(path: Path | str, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM WAV, atomically."""
    import soundfile as sf  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wave, -1, 1), sample_rate, subtype="PCM_16", format="WAV")


def num_frames_for(num_samples: int, sample_rate: int, fps: float) -> int:
    """Frames that `num_samples` of audio drive at `fps` (nearest integer, halves round up)."""
    return int(np.floor(num_samples * fps / sample_rate + 0.5))


def is_silent(wave: np.ndarray, threshold_db: float = -50.0) -> bool:
    """True when the loudest 100 ms of `wave` stays below `threshold_db` dBFS RMS."""
    hop = SAMPLE_RATE // 10
    n = max(1, wave.size // hop)
    rms = np.sqrt(np.mean(wave[: n * hop].reshape(n, -1) ** 2, axis=1) + 1e-12)
    return bool(20 * np.log10(rms.max() + 1e-12) < threshold_db)
