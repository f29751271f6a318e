"""Settings of `avatar render RUN --audio FILE --out OUT.mp4` (presets: configs/render/*.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro


@dataclass
class RenderConfig:
    """Make a trained avatar say new audio: a lip-synced mp4 (H.264 + AAC) of any length."""

    LIMITS: ClassVar[dict] = {
        "fps": (1, 240),
        "resolution": (16, 8192),
        "crf": (0, 51),
        "audio_kbps": (16, 512),
        "batch_frames": (1, None),
        "chunk_frames": (1, None),
        "blink": (0, 1),
        "seed": (0, None),
        "threads": (1, None),
    }  # checked by config_io.check_values

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = tyro.MISSING  # type: ignore[assignment]
    """the run directory written by `avatar train`"""
    audio: Path = tyro.MISSING  # type: ignore[assignment]
    """the speech to say: wav, mp3, flac, m4a/aac, ogg, or a video file whose sound is taken; any rate, mono or
    stereo"""
    out: Path = Path("out/talking.mp4")
    """the video to write (.mp4, .mov or .mkv); it appears only once complete"""
    pose: Literal["track", "still", "smooth"] = "track"
    """head motion: the training video's poses looped back and forth, one typical pose, or a calmer smoothed track"""
    blink: float | None = None
    """eye closure 0..1 held constant; default: blinks sampled from the person's own blinking in the training video"""
    background: str = "plate"
    """'plate' (the training video's clean background), a colour ('white', '#20a040', '32,160,64'), or an image file"""
    paste_back: bool = False
    """put the rendered crop back into the original, uncropped training video frames"""
    fps: float | None = None
    """output frame rate; default: the training video's"""
    resolution: int | None = None
    """side of the output square in pixels; default: the run's training resolution (the avatar renders at that
    resolution, since its torso layer and plate are images of that size, and frames are resized)"""
    crf: int = 18
    """H.264 quality: 0 lossless .. 51 worst; 18 looks transparent, 23 is x264's default"""
    encoder_speed: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "veryfast"
    """x264 preset: slower presets make smaller files at the same quality"""
    audio_kbps: int = 160
    """AAC bit rate of the muxed sound"""
    batch_frames: int = 8
    """frames rendered together (larger: faster on a GPU, more memory)"""
    chunk_frames: int = 200
    """frames whose audio features are held in memory at once; memory does not grow with the audio's length"""
    seed: int = 0
    """seed of the sampled blinks"""
    threads: int | None = None
    """CPU threads torch and the renderer may use; default half the cores for torch (its all-core default crawls on
    a busy machine), every core for the compositing (its threads sleep between frames)"""
    device: str = "auto"
    """torch device: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"""
    backend: Literal["auto", "cuda", "torch"] = "auto"
    """rasterizer: gsplat CUDA kernels, the pure-torch reference, or the best available"""
