"""The one place a `--device` option becomes a torch device."""

from __future__ import annotations

import os

import torch

from avatar.errors import UserError


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads: `threads`, or by default half the cores (at least 1). Torch's own default
    takes every core, and on a machine that is busy with anything else its threads spin against each other
    (a render on a loaded 2-core machine ran 28x slower than with one thread). Returns the count set."""

    count = threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(count)
    return count


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
