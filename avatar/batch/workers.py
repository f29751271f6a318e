"""What runs on a batch worker (a Ray actor or task; Ray itself is not imported here): a render worker holds one
loaded avatar and renders clip after clip through `avatar render`'s own code; an avatar job preprocesses a
video and trains on it through the commands' own runners. Each job answers with an outcome dict instead of
raising, so the driver learns which step failed and why; a worker that dies answers nothing (Ray says so)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from avatar.cli import command
from avatar.device import resolve_device, set_threads
from avatar.errors import UserError
from avatar.model.talking_head import TalkingHead
from avatar.render.config import RenderConfig
from avatar.render.video import render_video


def limit_memory(memory_bytes: int | None) -> None:
    """Cap the process's data (heap and anonymous mappings): an allocation beyond it fails with MemoryError (or
    torch's "can't allocate memory"), which fails the job, instead of the machine running out."""
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, resource.getrlimit(resource.RLIMIT_DATA)[1]))


def outcome(start: float, step: str | None = None, exc: BaseException | None = None) -> dict:
    """A job's result: {"ok", "seconds"} and, when it failed, the step and a message a user can act on."""
    result = {"ok": exc is None, "seconds": time.perf_counter() - start}
    if exc is not None:
        if isinstance(exc, UserError):
            message = str(exc)
        elif isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
            message = f"ran out of the worker's memory (raise --memory-mb): {type(exc).__name__}: {exc}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        result.update(failed=step, message=message)
    return result


class RenderWorker:
    """One avatar, loaded on the worker's first clip and kept for the next ones."""

    def __init__(self, run: Path, device: str, threads: int, memory_bytes: int | None = None):
        limit_memory(memory_bytes)
        set_threads(threads)
        self.run, self.device = Path(run), device
        self.head: TalkingHead | None = None

    def render(self, cfg: RenderConfig) -> dict:
        start = time.perf_counter()
        step = "load the avatar"
        try:
            if self.head is None:
                self.head = TalkingHead.load(self.run, device=resolve_device(self.device))
            step = "render"
            render_video(cfg, self.head)
        except Exception as exc:
            return outcome(start, step, exc)
        return outcome(start)


def make_avatar(preprocess_cfg, train_cfg, memory_bytes: int | None = None) -> dict:
    """Preprocess, then train (each resumes what an earlier try of the job left)."""
    limit_memory(memory_bytes)
    start = time.perf_counter()
    for step, cfg in (("preprocess", preprocess_cfg), ("train", train_cfg)):
        try:
            command(step)[1](cfg)
        except Exception as exc:
            return outcome(start, step, exc)
    return outcome(start)
