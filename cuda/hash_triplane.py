"""Builds our hash tri-plane CUDA kernel (hash_triplane.cu beside this file) on first use and wraps it for autograd.

torch.utils.cpp_extension.load compiles it with the machine's nvcc for the present GPU's architecture only
(one arch compiles in well under a minute) into ~/.cache/avatar/torch_extensions/, keyed by the torch, CUDA
and arch versions, so later runs load the cached library at once. A failed build is reported once, with the
compiler's last lines; `auto` mode then falls back to the torch backend.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from avatar.cuda.build import build_for_present_gpu, present_arch
from avatar.errors import UserError

CUDA_SOURCE_DIR = Path(str(resources.files("avatar.cuda")))  # a real folder: the compiler reads the files
SOURCES = ("hash_triplane.cpp", "hash_triplane.cu")
EXTENSION_NAME = "avatar_hash_triplane"


def _build_directory(arch: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tag = f"torch{torch.__version__.split('+')[0]}-cu{torch.version.cuda}-sm{arch.replace('.', '')}"
    path = cache / "avatar" / "torch_extensions" / f"{EXTENSION_NAME}-{tag}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=1)
def _load():
    """The compiled module, or the exception that prevented it (cached either way: build once per process)."""
    if not torch.cuda.is_available():
        return RuntimeError("no CUDA device")
    missing = [name for name in SOURCES if not (CUDA_SOURCE_DIR / name).is_file()]
    if missing:
        return FileNotFoundError(
            f"{CUDA_SOURCE_DIR}: missing {', '.join(missing)} (reinstall the package: "
            "its CUDA sources are package data of avatar.cuda)"
        )

    arch = present_arch()
    try:
        with build_for_present_gpu():
            from torch.utils import cpp_extension  # noqa: PLC0415 - the CUDA kernel's builder (imports setuptools)

            return cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(CUDA_SOURCE_DIR / name) for name in SOURCES],
                extra_include_paths=[str(CUDA_SOURCE_DIR)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                build_directory=str(_build_directory(arch)),
                verbose=False,
            )
    except Exception as exc:  # compiler missing or failing: report, never crash at import
        return exc


def cuda_extension_error() -> str | None:
    """None when the kernel is built and loaded; otherwise a one-paragraph reason (last lines of the error)."""
    loaded = _load()
    if not isinstance(loaded, Exception):
        return None
    text = f"{type(loaded).__name__}: {loaded}".strip().splitlines()
    return " | ".join(text[-8:])


def _extension():
    loaded = _load()
    if isinstance(loaded, Exception):
        raise UserError(
            f"{CUDA_SOURCE_DIR / 'hash_triplane.cu'}: the hash tri-plane CUDA kernel could not be built "
            f"({cuda_extension_error()}). Check that nvcc and ninja are on the PATH and match torch's CUDA "
            "version, or use implementation='torch' (or 'auto', which falls back to it)."
        )
    return loaded


class _HashTriplaneEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coords: Tensor, tables: Tensor, layout) -> Tensor:
        levels = (list(layout.scales), list(layout.resolutions), list(layout.table_sizes), list(layout.offsets))
        ctx.levels = levels
        ctx.save_for_backward(coords, tables)
        return _extension().forward(coords, tables, *levels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        coords, tables = ctx.saved_tensors
        grad_tables, grad_coords = _extension().backward(
            grad_out.contiguous(), coords, tables, *ctx.levels, ctx.needs_input_grad[0]
        )
        return (
            grad_coords if ctx.needs_input_grad[0] else None,
            grad_tables if ctx.needs_input_grad[1] else None,
            None,
        )


def hash_triplane_encode(coords: Tensor, tables: Tensor, layout) -> Tensor:
    """coords: [N, 3] in 0..1 (CUDA); tables: [3, E, F] -> [N, 3 * L * F], same maths as `encode_planes_torch`."""
    if coords.dtype != tables.dtype:
        coords = coords.to(tables.dtype)
    return _HashTriplaneEncode.apply(coords.contiguous(), tables.contiguous(), layout)
