"""The one place a `--device` option becomes a torch device."""

from __future__ import annotations

import os

import torch

from avatar.errors import UserError

_compositing_threads: int | None = None  # set by set_threads
# Frames an interactive renderer (`avatar live`, `avatar view`) renders at once: while one frame's networks run
# (one core, mostly), the other's pixels are composited (every core), so a 2-core CPU is kept busy.
FRAMES_IN_FLIGHT = 2


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads: `threads`, or by default half the cores (at least 1). Torch's own default
    takes every core, and on a machine that is busy with anything else its threads spin against each other
    (a render on a loaded 2-core machine ran 28x slower than with one thread). The compiled compositing
    (`compositing_threads`) gets `threads` too, or by default every core: its threads sleep between calls
    instead of spinning. Returns torch's count."""
    global _compositing_threads
    count = threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(count)
    _compositing_threads = threads or os.cpu_count() or 1
    return count


def compositing_threads() -> int:
    """Threads for the rasterizer's compiled compositing: as `set_threads` chose, else torch's count."""
    return _compositing_threads or torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when a GPU is visible, else cpu; 'cpu', 'cuda' or 'cuda:N' as given, once checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: not a device name. Use auto, cpu, cuda or cuda:N.") from exc
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is visible here. Use --device auto or cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    return device
