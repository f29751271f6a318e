"""CUDA backend: gsplat 1.5.3's fused kernels (compiled on first use on a GPU machine).

gsplat is imported here only, when this backend is picked, so CPU machines never touch its CUDA loader.
gsplat compiles its kernels on the first call (cached in ~/.cache/torch_extensions afterwards): the calls run
inside `build_for_present_gpu`, so that build is for the present GPU's architecture only.
"""

from __future__ import annotations

from torch import Tensor

from avatar.cuda.build import build_for_present_gpu
from avatar.errors import UserError
from avatar.rasterizer.types import Camera, Gaussians, RasterSettings

# gsplat's CUDA kernels fix these; the torch backend follows them, so settings may not move them here.
GSPLAT_ALPHA_THRESHOLD = 1.0 / 255.0


def render_premultiplied(g: Gaussians, camera: Camera, s: RasterSettings) -> tuple[Tensor, Tensor, Tensor, dict]:
    """[H, W, 3] colour over black, [H, W, 1] alpha, [H, W, 1] alpha-weighted depth, densification info."""
    if abs(s.alpha_threshold - GSPLAT_ALPHA_THRESHOLD) > 1e-12:
        raise ValueError(f"the CUDA backend's alpha threshold is fixed at 1/255, got {s.alpha_threshold}")
    try:
        from gsplat import rasterization  # noqa: PLC0415 - optional CUDA backend
    except ImportError as exc:  # pragma: no cover - gsplat is a pinned requirement
        raise UserError(f"renderer: gsplat could not be imported ({exc}). Run `make setup`.") from exc

    with build_for_present_gpu():  # the first call compiles gsplat's kernels
        render, alpha, meta = rasterization(
            g.means,
            g.quats,
            g.scales,
            g.opacities,
            g.colors,
            viewmats=camera.world_to_cam.to(g.means)[None],
            Ks=camera.K.to(g.means)[None],
            width=camera.width,
            height=camera.height,
            near_plane=s.near,
            far_plane=s.far,
            eps2d=s.eps2d,
            sh_degree=g.sh_degree,
            packed=False,
            tile_size=s.tile_size,
            render_mode="RGB+D",
            rasterize_mode="antialiased" if s.antialiased else "classic",
        )  # [1, H, W, 4] colour and depth sums, [1, H, W, 1]
    info = {key: meta[key] for key in ("means2d", "radii", "width", "height", "n_cameras", "gaussian_ids")}
    return render[0, ..., :3], alpha[0], render[0, ..., 3:4], info
