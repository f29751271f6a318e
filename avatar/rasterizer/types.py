"""What the rasterizer takes and gives: Gaussians, a camera, the shared settings and the render output.

Both backends and every caller import these from here; `rasterize.py` picks a backend and blends the background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

Backend = Literal["auto", "cuda", "torch"]


@dataclass
class Gaussians:
    """Torch tensors on one device."""

    means: Tensor  # [N, 3] in the camera's world frame (the canonical head frame for the head)
    quats: Tensor  # [N, 4] wxyz, need not be normalised
    scales: Tensor  # [N, 3] linear (not log)
    opacities: Tensor  # [N] in 0..1
    colors: Tensor  # [N, 3] RGB 0..1, or [N, K, 3] SH coefficients with K = (sh_degree + 1) ** 2
    sh_degree: int | None = None  # None: colors are RGB

    def __len__(self) -> int:
        return self.means.shape[0]


@dataclass
class Camera:
    """A pinhole camera in the project's OpenCV convention (avatar/contracts/camera.py)."""

    world_to_cam: Tensor  # [4, 4]
    K: Tensor  # [3, 3] pixels
    width: int
    height: int


@dataclass(frozen=True)
class RasterSettings:
    """Conventions shared by both backends (gsplat 1.5.3's defaults)."""

    near: float = 0.01  # Gaussians whose centre has camera z below this are dropped
    far: float = 1e10  # ... and above this
    eps2d: float = 0.3  # added to the projected 2D covariance's diagonal: no Gaussian is thinner than ~a pixel
    antialiased: bool = False  # scale opacity by sqrt(det(cov2d) / det(cov2d + eps2d I)) (gsplat "antialiased")
    alpha_threshold: float = 1.0 / 255.0  # a Gaussian contributes to a pixel only with alpha >= this (fixed in CUDA)
    tile_size: int = 16  # gsplat's screen tiles (CUDA backend)
    # torch backend tuning; results do not depend on these (beyond a Gaussian's box its alpha is below threshold)
    torch_tile_size: int = 8  # smaller tiles waste less work on Gaussians that miss most of a tile
    torch_depth_block: int = 32  # Gaussians per tile composited per step; saturated tiles stop early
    chunk_elements: int = 1 << 22  # tile pixels x Gaussians evaluated at once (bounds the step's memory)


@dataclass
class RenderOutput:
    rgb: Tensor  # [H, W, 3] composited over the background
    alpha: Tensor  # [H, W, 1]
    depth: Tensor  # [H, W, 1] expected depth (alpha-weighted, z in camera), 0 where empty
    # gsplat-compatible extras for densification (gsplat.strategy.DefaultStrategy reads them):
    # "means2d" [1, N, 2] (its .grad is the screen-space gradient), "radii" [1, N, 2] int, "width", "height",
    # "n_cameras", "gaussian_ids" (None: not packed).
    info: dict = field(default_factory=dict)
