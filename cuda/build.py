"""Just-in-time CUDA builds (gsplat's kernels, our hash tri-plane kernel) for the present GPU only.

torch's extension builder compiles for every architecture in TORCH_CUDA_ARCH_LIST, or for a long default
list when it is unset; one architecture builds in a fraction of the time. A list the user set is kept.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def present_arch() -> str:
    """Compute capability of the current CUDA device, e.g. "9.0"."""
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


@contextlib.contextmanager
def build_for_present_gpu() -> Iterator[None]:
    """Within the block, TORCH_CUDA_ARCH_LIST names the present GPU only (unless the user set it)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or not torch.cuda.is_available():
        yield
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = present_arch()
    try:
        yield
    finally:
        os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
