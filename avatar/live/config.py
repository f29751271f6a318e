"""Settings of `avatar live RUN`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro


@dataclass
class LiveConfig:
    """The avatar speaks as you speak: a local web page (the URL is printed) sends your microphone to the avatar
    over WebRTC and shows it saying it, in sync; or `--audio-in` feeds it from another program or a file."""

    LIMITS: ClassVar[dict] = {
        "port": (0, 65535),
        "resolution": (16, 4096),
        "min_resolution": (16, 4096),
        "lookahead_ms": (0, 2000),
        "history_s": (1, 3600),
        "threads": (1, None),
        "seed": (0, None),
    }  # checked by config_io.check_values

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = tyro.MISSING  # type: ignore[assignment]
    """the run directory written by `avatar train`"""
    audio_in: str | None = None
    """speech from elsewhere instead of a browser's microphone: `-` reads raw 16 kHz mono s16le PCM from stdin as
    it arrives (a streaming TTS, another process); a file (any audio or video) is streamed in real time. The
    session ends, and the command exits, when the input ends. The page then only watches."""
    record: Path | None = None
    """write each session's frames and the sound that drove them to this mp4 when it ends (later sessions of the
    same server: NAME-2.mp4, NAME-3.mp4, ...)"""
    latency_log: Path | None = None
    """write one JSON line per frame ({"frame", "audio_s", "wall_s", ...}) and a summary line per session here"""
    host: str = "127.0.0.1"
    """interface to listen on (127.0.0.1: this machine only); any other needs --tls-cert and --tls-key"""
    port: int = 0
    """port; 0 picks a free one"""
    tls_cert: Path | None = None
    """PEM certificate for https (browsers give a page the microphone only over https or on localhost)"""
    tls_key: Path | None = None
    """PEM private key of --tls-cert"""
    resolution: int | None = None
    """side of the square video in pixels; default: the run's training resolution"""
    min_resolution: int = 64
    """when the machine cannot keep up, the avatar is rendered at lower sizes down to this one (and upscaled)"""
    lookahead_ms: int = 80
    """audio after a frame's end that is heard before the frame is made: less is answered sooner, and the rows not
    yet heard repeat the newest (the encoder's default context reads up to 162 ms at 25 fps; on the shared voices
    80 ms follows the mouth as well as 160, docs/live.md)"""
    history_s: float = 20.0
    """seconds of recent audio that the feature normalisation and voicing threshold follow"""
    pose: Literal["track", "still", "smooth"] = "track"
    """head motion: the training video's poses looped back and forth, one typical pose, or a calmer smoothed track"""
    seed: int = 0
    """seed of the sampled blinks"""
    threads: int | None = None
    """CPU threads torch and the renderer may use; default half the cores for torch, every core for the compositing"""
    device: str = "auto"
    """torch device: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"""
    backend: Literal["auto", "cuda", "torch"] = "auto"
    """rasterizer: gsplat CUDA kernels, the pure-torch reference, or the best available"""
