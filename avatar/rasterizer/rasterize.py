"""One rasterizer interface over two backends with the same maths: gsplat's CUDA kernels and a pure-torch
reference that runs anywhere (the CPU machines train and test with it).

Both backends return premultiplied colour (Gaussians over black), accumulated alpha and alpha-weighted depth;
this module blends the background and normalises depth once, so the two cannot drift apart there.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from avatar.errors import UserError
from avatar.rasterizer import gsplat_backend, torch_backend
from avatar.rasterizer.types import Backend, Camera, Gaussians, RasterSettings, RenderOutput


def resolve_backend(backend: Backend, device: torch.device) -> Literal["cuda", "torch"]:
    """ "auto" picks gsplat's CUDA kernels for CUDA tensors, else the torch reference."""
    if backend == "torch":
        return "torch"
    cuda_ready = torch.cuda.is_available() and device.type == "cuda"
    if backend == "cuda":
        if not cuda_ready:
            raise UserError(
                f"renderer: backend 'cuda' needs a CUDA GPU and CUDA tensors (CUDA available: "
                f"{torch.cuda.is_available()}, tensors on {device}). Use backend 'auto' or 'torch' on this machine."
            )
        return "cuda"
    if backend == "auto":
        return "cuda" if cuda_ready else "torch"
    raise ValueError(f"unknown renderer backend {backend!r}; choose auto, cuda or torch")


def rasterize(
    gaussians: Gaussians,
    camera: Camera,
    background: Tensor | None = None,  # [H, W, 3] or [3]; None = black
    backend: Backend = "auto",
    settings: RasterSettings | None = None,
) -> RenderOutput:
    """Render Gaussians front to back into RGB, alpha and expected depth; differentiable in every parameter."""
    settings = settings or RasterSettings()
    _check_inputs(gaussians, camera)
    chosen = gsplat_backend if resolve_backend(backend, gaussians.means.device) == "cuda" else torch_backend
    # colour_sum [H, W, 3], alpha [H, W, 1], depth_sum [H, W, 1]
    colour_sum, alpha, depth_sum, info = chosen.render_premultiplied(gaussians, camera, settings)
    rgb = colour_sum if background is None else colour_sum + (1.0 - alpha) * _background(background, camera)
    depth = depth_sum / alpha.clamp(min=1e-10)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, info=info)


def _background(background: Tensor, camera: Camera) -> Tensor:
    if background.shape == (3,):
        return background.view(1, 1, 3)
    if background.shape == (camera.height, camera.width, 3):
        return background
    raise ValueError(f"background must be [3] or [{camera.height}, {camera.width}, 3], got {list(background.shape)}")


def _check_inputs(g: Gaussians, camera: Camera) -> None:
    n = g.means.shape[0]
    expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
    for name, shape in expected.items():
        if tuple(getattr(g, name).shape) != shape:
            raise ValueError(f"Gaussians.{name} must be {list(shape)}, got {list(getattr(g, name).shape)}")
    if g.sh_degree is None:
        if tuple(g.colors.shape) != (n, 3):
            raise ValueError(f"RGB Gaussians.colors must be [{n}, 3], got {list(g.colors.shape)}")
    elif tuple(g.colors.shape) != (n, (g.sh_degree + 1) ** 2, 3) or not 0 <= g.sh_degree <= 3:
        raise ValueError(
            f"SH Gaussians.colors must be [{n}, (sh_degree + 1) ** 2, 3] with sh_degree in 0..3, "
            f"got {list(g.colors.shape)} with sh_degree={g.sh_degree}"
        )
    if tuple(camera.world_to_cam.shape) != (4, 4) or tuple(camera.K.shape) != (3, 3):
        raise ValueError("Camera.world_to_cam must be [4, 4] and Camera.K [3, 3]")
