"""Pure-torch Gaussian rasterizer: the CPU reference, with gsplat 1.5.3's maths.

Projection uses gsplat's own torch specification (`gsplat.cuda._torch_impl`, private, hence the exact pin)
plus what its CUDA kernel adds on top (opacity-aware bounding boxes, culling of faint Gaussians). Compositing is
ours (tile_compositing.py): Gaussians are binned into screen tiles through their bounding boxes, and each tile
evaluates only its own Gaussians, in depth order, for all its pixels at once. Outside a Gaussian's box its alpha
is below the threshold anyway, so the tiling changes no pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _spherical_harmonics, _world_to_cam
from torch import Tensor

from avatar.rasterizer.tile_compositing import TileLists, composite
from avatar.rasterizer.types import Camera, Gaussians, RasterSettings

EXTENT_SIGMAS = 3.33  # bounding-box half size in standard deviations (opacity may shrink it)


@dataclass
class Projected:
    """Gaussians in screen space; only `visible` ones are rendered."""

    means2d: Tensor  # [N, 2] pixels
    conics: Tensor  # [N, 3] inverse 2D covariance (a, b, c): power = a dx^2 / 2 + b dx dy + c dy^2 / 2
    depths: Tensor  # [N] camera z
    opacities: Tensor  # [N] times the antialiasing compensation when enabled
    radii: Tensor  # [N, 2] int, half sizes of the bounding boxes in pixels; 0 where not visible
    visible: Tensor  # [N] bool


def project(g: Gaussians, camera: Camera, s: RasterSettings) -> Projected:
    """EWA-project 3D Gaussians to pixels (pinhole), add the 2D low-pass eps2d and bound each one's footprint."""
    viewmat, K = camera.world_to_cam.to(g.means)[None], camera.K.to(g.means)[None]  # [1, 4, 4], [1, 3, 3]
    covars, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)  # [N, 3, 3]
    means_cam, covars_cam = _world_to_cam(g.means, covars, viewmat)  # [1, N, 3], [1, N, 3, 3]
    means2d, cov2d = _persp_proj(means_cam, covars_cam, K, camera.width, camera.height)
    means2d, cov2d, depths = means2d[0], cov2d[0], means_cam[0, :, 2]  # [N, 2], [N, 2, 2], [N]

    det_orig = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    cov2d = cov2d + s.eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    visible = (det > 0) & (depths >= s.near) & (depths <= s.far)
    safe_det = torch.where(visible, det, torch.ones_like(det))
    conics = torch.stack(
        [cov2d[:, 1, 1] / safe_det, -0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]) / safe_det, cov2d[:, 0, 0] / safe_det],
        dim=-1,
    )
    opacities = g.opacities
    if s.antialiased:
        opacities = opacities * torch.sqrt(torch.clamp(det_orig / safe_det, min=0.0))

    with torch.no_grad():
        # The opacity-aware box of gsplat's CUDA projection: beyond it alpha < alpha_threshold.
        visible = visible & (opacities >= s.alpha_threshold)
        ratio = (opacities / s.alpha_threshold).clamp(min=1.0)
        extent = torch.sqrt(2.0 * torch.log(ratio)).clamp(max=EXTENT_SIGMAS)  # [N]
        diag = torch.stack([cov2d[:, 0, 0], cov2d[:, 1, 1]], dim=-1).clamp(min=0.0)
        radii = torch.ceil(extent[:, None] * torch.sqrt(diag))  # [N, 2]
        size = torch.tensor([camera.width, camera.height], dtype=radii.dtype, device=radii.device)
        on_screen = ((means2d + radii > 0) & (means2d - radii < size)).all(dim=-1)
        visible = visible & on_screen & (radii > 0).all(dim=-1)
        radii = torch.where(visible[:, None], radii, torch.zeros_like(radii)).int()
    return Projected(means2d, conics, depths, opacities, radii, visible)


def gaussian_colors(g: Gaussians, camera: Camera, visible: Tensor) -> Tensor:
    """[N, 3] colours; SH is evaluated for the view direction from the camera centre (as gsplat does)."""
    if g.sh_degree is None:
        return g.colors
    cam_centre = torch.linalg.inv(camera.world_to_cam.to(g.means))[:3, 3]
    colors = torch.zeros(g.colors.shape[0], 3, dtype=g.colors.dtype, device=g.colors.device)
    ids = visible.nonzero()[:, 0]
    sh = _spherical_harmonics(g.sh_degree, g.means[ids] - cam_centre, g.colors[ids])  # [V, 3]
    return colors.index_put((ids,), torch.clamp_min(sh + 0.5, 0.0))


@dataclass
class TileBins:
    """Gaussian ids per tile, each tile's list sorted front to back, all lists concatenated."""

    gaussian_ids: Tensor  # [M] int64
    offsets: Tensor  # [T] start of each tile's list
    counts: Tensor  # [T]


@torch.no_grad()
def bin_into_tiles(p: Projected, tile_size: int, tiles_x: int, tiles_y: int) -> TileBins:
    """Every (tile, Gaussian) pair whose tile meets the Gaussian's box, sorted by tile then depth."""
    ids = p.visible.nonzero()[:, 0]  # [V]
    centre = p.means2d[ids].detach() / tile_size
    half = p.radii[ids].to(centre.dtype) / tile_size
    limit = torch.tensor([tiles_x, tiles_y], device=ids.device)
    lo = torch.minimum(torch.floor(centre - half).long().clamp(min=0), limit)  # [V, 2] inclusive
    hi = torch.minimum(torch.ceil(centre + half).long().clamp(min=0), limit)  # [V, 2] exclusive
    span = hi - lo
    per_gaussian = span[:, 0] * span[:, 1]  # [V]

    owner = torch.repeat_interleave(torch.arange(len(ids), device=ids.device), per_gaussian)  # [M]
    first = torch.cumsum(per_gaussian, 0) - per_gaussian
    local = torch.arange(len(owner), device=ids.device) - first[owner]
    tile_x = lo[owner, 0] + local % span[owner, 0]
    tile_y = lo[owner, 1] + local // span[owner, 0]
    tile = tile_y * tiles_x + tile_x  # [M]

    depth_rank = torch.empty_like(ids)
    depth_rank[torch.sort(p.depths[ids].detach(), stable=True).indices] = torch.arange(len(ids), device=ids.device)
    order = torch.sort(tile * max(len(ids), 1) + depth_rank[owner]).indices
    counts = torch.bincount(tile, minlength=tiles_x * tiles_y)
    return TileBins(ids[owner[order]], torch.cumsum(counts, 0) - counts, counts)


def render_premultiplied(g: Gaussians, camera: Camera, s: RasterSettings) -> tuple[Tensor, Tensor, Tensor, dict]:
    """[H, W, 3] colour over black, [H, W, 1] alpha, [H, W, 1] alpha-weighted depth, densification info.

    Tiles advance through their depth-sorted lists in blocks of `torch_depth_block` Gaussians, and a tile
    leaves once all its pixels are saturated: behind an opaque surface is where most of the work would go."""
    W, H, ts = camera.width, camera.height, s.torch_tile_size
    tiles_x, tiles_y = math.ceil(W / ts), math.ceil(H / ts)
    p = project(g, camera, s)
    features = torch.cat([gaussian_colors(g, camera, p.visible), p.depths[:, None]], dim=-1)  # [N, 4]
    bins = bin_into_tiles(p, ts, tiles_x, tiles_y)
    means2d_batched = p.means2d[None]  # [1, N, 2]: what densification reads .grad from, so render through it
    means2d = means2d_batched[0]

    dtype, device = p.means2d.dtype, p.means2d.device
    order = torch.sort(bins.counts, descending=True, stable=True).indices
    tiles = order[: int((bins.counts > 0).sum())]  # [T] non-empty tiles, heaviest first
    tile_xy = torch.stack([tiles % tiles_x, tiles // tiles_x], dim=-1)  # [T, 2]
    local = torch.arange(ts * ts, device=device)
    inside = ((tile_xy[:, :1] * ts + local % ts) < W) & ((tile_xy[:, 1:] * ts + local // ts) < H)  # [T, P]
    lists = TileLists(
        bins.gaussian_ids, bins.offsets[tiles], bins.counts[tiles], (tile_xy * ts).to(dtype) + ts / 2, inside, ts
    )
    colour_depth, t_final = composite(
        means2d, p.conics, p.opacities, features, lists, s.torch_depth_block, s.chunk_elements, s.alpha_threshold
    )
    # Zero times the inputs keeps an empty frame in the autograd graph, as gsplat's outputs always are.
    canvas = torch.zeros(tiles_x * tiles_y, ts * ts, colour_depth.shape[-1] + 1, dtype=dtype, device=device)
    if not len(tiles):
        canvas = canvas + 0.0 * (features.sum() + means2d.sum() + p.conics.sum() + p.opacities.sum())
    canvas[tiles, :, :-1] = colour_depth  # (written in place: no concatenated copy of every tile)
    canvas[tiles, :, -1] = 1.0 - t_final
    image = canvas.view(tiles_y, tiles_x, ts, ts, -1).permute(0, 2, 1, 3, 4).reshape(tiles_y * ts, tiles_x * ts, -1)
    image = image[:H, :W]
    info = {
        "means2d": means2d_batched,
        "radii": p.radii[None],
        "width": W,
        "height": H,
        "n_cameras": 1,
        "gaussian_ids": None,
    }
    return image[..., :3], image[..., 4:5], image[..., 3:4], info
