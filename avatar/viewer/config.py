"""Settings of `avatar view RUN`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro


@dataclass
class ViewerConfig:
    """Play a trained avatar live in the browser, driven by audio, from any viewpoint."""

    LIMITS: ClassVar[dict] = {
        "port": (0, 65535),
        "resolution": (16, 4096),
        "threads": (1, None),
    }  # checked by config_io.check_values

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = tyro.MISSING  # type: ignore[assignment]
    """the run directory written by `avatar train`"""
    audio: Path | None = None
    """speech to play (any audio or video file); default: the training video's own audio"""
    host: str = "127.0.0.1"
    """interface to listen on: 127.0.0.1 or ::1 this machine only; 0.0.0.0 or :: every interface (with a warning)"""
    port: int = 0
    """port; 0 picks a free one"""
    resolution: int | None = None
    """rendered image height in pixels; default: the run's training resolution"""
    threads: int | None = None
    """CPU threads torch and the renderer may use; default half the cores for torch (its all-core default crawls on
    a busy machine), every core for the compositing (its threads sleep between frames)"""
    device: str = "auto"
    """torch device: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"""
    backend: Literal["auto", "cuda", "torch"] = "auto"
    """rasterizer: gsplat CUDA kernels, the pure-torch reference, or the best available"""
    autoplay: bool = False
    """start playing as soon as the viewer is up"""
