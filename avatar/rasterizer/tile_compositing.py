"""Front-to-back alpha compositing of depth-sorted per-tile Gaussian lists, with a hand-written backward.

Why not plain autograd: it would keep every [tiles, pixels, Gaussians] intermediate of every step alive until
the backward pass. Here the forward keeps only the final images and the list of steps; the backward replays the
steps and computes gradients analytically (as gsplat's CUDA backward does), so memory stays at one step's
worth. Per step, the Gaussian exponent over a tile is one matrix product: with pixel offsets (u, v) from the
tile centre and the Gaussian's centre (x, y) relative to it, power = q . [1, u, v, u^2, uv, v^2].

Without gradients (rendering a trained avatar) `composite` runs the same maths one pixel at a time in a
compiled loop (numba) instead: each pixel stops at its own saturation, where the vectorised steps evaluate
whole blocks of Gaussians for every pixel of a tile, and nothing [tiles, pixels, Gaussians]-sized is made.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from avatar.device import compositing_threads

ALPHA_MAX = 0.999  # gsplat clamps every Gaussian's alpha so a pixel is never fully opaque after one
TRANSMITTANCE_MIN = 1e-4  # a pixel stops before the Gaussian that would take it this low
# numba's OpenMP layer keeps its threads spinning between calls, where they compete with torch's own pool for
# the same cores; its work queue does not, but takes one caller at a time: the lock.
numba.config.THREADING_LAYER = "workqueue"
_COMPILED = threading.Lock()


@dataclass
class TileLists:
    """Non-empty tiles, heaviest first, each with its Gaussians sorted front to back."""

    gaussian_ids: Tensor  # [M] all lists concatenated
    offsets: Tensor  # [T] where each tile's list starts
    counts: Tensor  # [T] list lengths, descending
    centres: Tensor  # [T, 2] tile centres in pixels
    inside: Tensor  # [T, P] bool: the pixel lies in the image
    tile_size: int


@dataclass
class Step:
    """One chunk of tiles advanced by `width` Gaussians from list position `start`."""

    tiles: Tensor  # [t] indices into TileLists
    start: int
    width: int


def pixel_basis(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[P, 6]: 1, u, v, u^2, uv, v^2 for pixel centres (u, v) relative to the tile centre, row-major."""
    local = torch.arange(tile_size * tile_size, device=device)
    u = (local % tile_size).to(dtype) + 0.5 - tile_size / 2
    v = (local // tile_size).to(dtype) + 0.5 - tile_size / 2
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], dim=-1)


def _gather(lists: TileLists, step: Step, means2d, conics, opacities, features):
    slot = torch.arange(step.start, step.start + step.width, device=means2d.device)
    in_list = slot[None, :] < lists.counts[step.tiles, None]  # [t, K]
    index = (lists.offsets[step.tiles, None] + slot[None, :]).clamp(max=len(lists.gaussian_ids) - 1)
    gid = lists.gaussian_ids[index]  # [t, K]; padding slots repeat a real id with opacity 0
    rel = means2d[gid] - lists.centres[step.tiles, None, :]  # [t, K, 2]
    opac = torch.where(in_list, opacities[gid], torch.zeros((), dtype=opacities.dtype, device=opacities.device))
    return gid, rel, conics[gid], opac, features[gid]


def _quadratic(rel: Tensor, conics: Tensor) -> Tensor:
    """[t, 6, K] coefficients q with power(u, v) = 0.5 a dx^2 + b dx dy + 0.5 c dy^2, dx = x - u, dy = y - v."""
    x, y = rel[..., 0], rel[..., 1]
    a, b, c = conics[..., 0], conics[..., 1], conics[..., 2]
    q = [0.5 * a * x * x + b * x * y + 0.5 * c * y * y, -(a * x + b * y), -(b * x + c * y), 0.5 * a, b, 0.5 * c]
    return torch.stack(q, dim=1)


@dataclass
class _Evaluated:
    falloff: Tensor  # [t, P, K] exp(-power)
    raw: Tensor  # opacity * falloff
    alpha: Tensor  # clamped, 0 where below the threshold
    survive: Tensor  # 1 - alpha
    t_after: Tensor  # transmittance after each Gaussian (0 for pixels that had stopped)
    t_before: Tensor  # ... and in front of it
    weights: Tensor  # alpha * t_before where composited (before the pixel's stop), else 0


def _evaluate(basis, neg_q, opac, t_start, alpha_threshold) -> _Evaluated:
    """`t_start` [t, P] is the transmittance in front of this step, 0 for pixels that have stopped.

    gsplat also skips negative exponents; the conics are positive definite (det > 0 is checked), so those
    arise only from rounding, and the expanded quadratic form rounds differently: not testing is closer."""
    falloff = torch.exp(torch.matmul(basis, neg_q))  # [t, P, K]
    raw = opac[:, None, :] * falloff
    alpha = raw.clamp(max=ALPHA_MAX) * (raw >= alpha_threshold)  # (multiplying by masks is faster than where)
    survive = 1.0 - alpha
    t_after = t_start[..., None] * torch.cumprod(survive, dim=-1)
    t_before = t_after / survive
    # The composited set is a prefix: the pixel stops at the first Gaussian that would reach the minimum.
    weights = alpha * t_before * (t_after > TRANSMITTANCE_MIN)
    return _Evaluated(falloff, raw, alpha, survive, t_after, t_before, weights)


def _advance(ev: _Evaluated, t: Tensor, alive: Tensor) -> tuple[Tensor, Tensor]:
    """[t, P] transmittance and alive flags after the step (weights telescope: sum = T before - T after)."""
    return t - ev.weights.sum(dim=-1), alive & (ev.t_after[..., -1] > TRANSMITTANCE_MIN)


class CompositeTiles(torch.autograd.Function):
    """(means2d [N, 2], conics [N, 3], opacities [N], features [N, C]) -> per tile pixel: feature sums
    [T, P, C] (weights times features) and final transmittance [T, P]."""

    @staticmethod
    def forward(
        ctx,
        means2d,
        conics,
        opacities,
        features,
        lists: TileLists,
        depth_block: int,
        chunk_elements: int,
        alpha_threshold: float,
    ):
        dtype, device = means2d.dtype, means2d.device
        basis = pixel_basis(lists.tile_size, dtype, device)
        pixels = basis.shape[0]
        acc = torch.zeros(len(lists.counts), pixels, features.shape[1], dtype=dtype, device=device)
        t = torch.ones(len(lists.counts), pixels, dtype=dtype, device=device)
        alive = lists.inside.clone()
        steps = []
        active, start = torch.arange(len(lists.counts), device=device), 0
        while len(active):  # heaviest tiles first, so lists run out from the back of `active`
            width = min(depth_block, int(lists.counts[active[0]]) - start)
            for tiles in torch.split(active, max(1, chunk_elements // (pixels * width))):
                step = Step(tiles, start, width)
                _, rel, cn, opac, feat = _gather(lists, step, means2d, conics, opacities, features)
                ev = _evaluate(basis, -_quadratic(rel, cn), opac, t[tiles] * alive[tiles], alpha_threshold)
                acc[tiles] += torch.bmm(ev.weights, feat)
                t[tiles], alive[tiles] = _advance(ev, t[tiles], alive[tiles])
                steps.append(step)
            start += width
            active = active[(lists.counts[active] > start) & alive[active].any(dim=1)]
        ctx.save_for_backward(means2d, conics, opacities, features, acc, t)
        ctx.lists, ctx.steps, ctx.alpha_threshold = lists, steps, alpha_threshold
        return acc, t

    @staticmethod
    def backward(ctx, grad_acc, grad_t_final):
        means2d, conics, opacities, features, acc, t_final = ctx.saved_tensors
        lists = ctx.lists
        basis = pixel_basis(lists.tile_size, means2d.dtype, means2d.device)
        grads = [torch.zeros_like(x) for x in (means2d, conics, opacities, features)]
        # Replay the forward steps in order, carrying what each step needs from the ones in front of it.
        alive = lists.inside.clone()
        t = torch.ones_like(t_final)
        grad_dot_total = (acc * grad_acc).sum(dim=-1)  # [T, P] gradient . feature sum
        grad_dot_front = torch.zeros_like(grad_dot_total)  # the part of it from Gaussians already replayed
        grad_through_t = grad_t_final * t_final  # [T, P]
        for step in ctx.steps:
            tiles = step.tiles
            gid, rel, cn, opac, feat = _gather(lists, step, means2d, conics, opacities, features)
            ev = _evaluate(basis, -_quadratic(rel, cn), opac, t[tiles] * alive[tiles], ctx.alpha_threshold)
            g_acc = grad_acc[tiles]  # [t, P, C]
            feat_dot = torch.bmm(g_acc, feat.transpose(1, 2))  # [t, P, K] gradient . each Gaussian's feature
            weighted = ev.weights * feat_dot
            behind = (grad_dot_total[tiles] - grad_dot_front[tiles])[..., None] - torch.cumsum(weighted, dim=-1)
            # d/d alpha_i: its own colour, minus what it hides behind it, minus its share of the final transmittance
            g_alpha = ev.t_before * feat_dot - (behind + grad_through_t[tiles, :, None]) / ev.survive
            g_alpha = g_alpha * ((ev.weights > 0) & (ev.raw <= ALPHA_MAX))
            g_feat = torch.bmm(ev.weights.transpose(1, 2), g_acc)  # [t, K, C]
            g_opac = (g_alpha * ev.falloff).sum(dim=1)  # [t, K]
            g_q = torch.matmul((-g_alpha * ev.raw).transpose(1, 2), basis)  # [t, K, 6] d/d power, projected
            g_rel, g_cn = _quadratic_vjp(rel, cn, g_q)
            flat = gid.reshape(-1)
            grads[0].index_add_(0, flat, g_rel.reshape(-1, 2))
            grads[1].index_add_(0, flat, g_cn.reshape(-1, 3))
            grads[2].index_add_(0, flat, g_opac.reshape(-1))
            grads[3].index_add_(0, flat, g_feat.reshape(-1, g_feat.shape[-1]))
            grad_dot_front[tiles] += weighted.sum(dim=-1)
            t[tiles], alive[tiles] = _advance(ev, t[tiles], alive[tiles])
        return (*grads, None, None, None, None)


def _quadratic_vjp(rel: Tensor, conics: Tensor, g_q: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `_quadratic` for its [t, K, 6] output gradient: [t, K, 2] centre, [t, K, 3] conic."""
    x, y = rel[..., 0], rel[..., 1]
    a, b, c = conics[..., 0], conics[..., 1], conics[..., 2]
    g0, g1, g2, g3, g4, g5 = g_q.unbind(dim=-1)
    g_x = g0 * (a * x + b * y) - g1 * a - g2 * b
    g_y = g0 * (b * x + c * y) - g1 * b - g2 * c
    g_a = g0 * 0.5 * x * x - g1 * x + 0.5 * g3
    g_b = g0 * x * y - g1 * y - g2 * x + g4
    g_c = g0 * 0.5 * y * y - g2 * y + 0.5 * g5
    return torch.stack([g_x, g_y], dim=-1), torch.stack([g_a, g_b, g_c], dim=-1)


def composite(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    lists: TileLists,
    depth_block: int,
    chunk_elements: int,
    alpha_threshold: float,
) -> tuple[Tensor, Tensor]:
    """`CompositeTiles`: feature sums [T, P, C] and final transmittance [T, P]; the compiled per-pixel loop
    when no gradient is wanted from CPU tensors of colour and depth (C = 4), else the differentiable steps."""
    inputs = (means2d, conics, opacities, features)
    wants_grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    if wants_grad or means2d.device.type != "cpu" or features.shape[1] != COMPILED_CHANNELS:
        return CompositeTiles.apply(*inputs, lists, depth_block, chunk_elements, alpha_threshold)
    dtype = means2d.dtype
    arrays = [x.detach().contiguous().numpy() for x in inputs]
    np_dtype = arrays[0].dtype
    acc = np.empty((len(lists.counts), lists.tile_size**2, features.shape[1]), np_dtype)
    t = np.ones((len(lists.counts), lists.tile_size**2), np_dtype)
    pixel_uv = pixel_basis(lists.tile_size, dtype, means2d.device)[:, 1:3].numpy()
    # (the kernel computes in the inputs' precision: its constants come in an array of that type)
    constants = np.array([ALPHA_MAX, TRANSMITTANCE_MIN, alpha_threshold, 1.0], np_dtype)
    threads = max(1, min(compositing_threads(), numba.config.NUMBA_NUM_THREADS))
    # numba hands each thread one contiguous block of the loop, and the tiles come heaviest first: dealt out
    # in turn instead, every thread gets its share of the heavy ones
    order = np.concatenate([np.arange(k, len(lists.counts), threads) for k in range(threads)])
    with _COMPILED:
        numba.set_num_threads(threads)
        _composite_pixels(
            order, lists.gaussian_ids.numpy(), lists.offsets.numpy(), lists.counts.numpy(),
            lists.centres.detach().numpy().astype(np_dtype), lists.inside.numpy(), pixel_uv, constants,
            *arrays, acc, t,
        )  # fmt: skip
    return torch.from_numpy(acc).to(dtype), torch.from_numpy(t).to(dtype)


COMPILED_CHANNELS = 4  # the compiled loop keeps a pixel's sums in registers: colour and depth


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _composite_pixels(order, ids, offsets, counts, centres, inside, pixel_uv, constants, means2d, conics, opacities,
                      features, acc, t):  # fmt: skip
    """`composite` without gradients, into acc [T, P, 4] and t [T, P] (ones), the tiles in `order`: per pixel,
    the tile's Gaussians front to back until the next one would take its transmittance to TRANSMITTANCE_MIN.
    A Gaussian is skipped before its exponential where its power exceeds log(opacity / alpha_threshold).
    pixel_uv [P, 2]: pixel centres relative to the tile centre; constants: ALPHA_MAX, TRANSMITTANCE_MIN,
    alpha_threshold and 1, in the inputs' precision."""
    alpha_max, t_min, threshold, one = constants[0], constants[1], constants[2], constants[3]
    for i in numba.prange(len(order)):
        tile = order[i]
        first, count = offsets[tile], counts[tile]
        # the tile's list in order: x, y, a / 2, b, c / 2, opacity, power limit | the four features
        local = np.empty((count, 7), means2d.dtype)
        feature = np.empty((count, 4), means2d.dtype)
        for j in range(count):
            g = ids[first + j]
            local[j, 0], local[j, 1] = means2d[g, 0], means2d[g, 1]
            local[j, 2], local[j, 3], local[j, 4] = 0.5 * conics[g, 0], conics[g, 1], 0.5 * conics[g, 2]
            local[j, 5] = opacities[g]
            local[j, 6] = math.log(opacities[g] / threshold) if opacities[g] > 0 else -1.0
            feature[j] = features[g]
        for pixel in range(len(pixel_uv)):
            u, v = pixel_uv[pixel, 0] + centres[tile, 0], pixel_uv[pixel, 1] + centres[tile, 1]
            transmittance = one
            s0 = s1 = s2 = s3 = one - one
            for j in range(count if inside[tile, pixel] else 0):
                dx, dy = local[j, 0] - u, local[j, 1] - v
                power = local[j, 2] * dx * dx + local[j, 3] * dx * dy + local[j, 4] * dy * dy
                if power > local[j, 6]:
                    continue
                alpha = local[j, 5] * math.exp(-power)
                if alpha < threshold:
                    continue
                alpha = min(alpha, alpha_max)
                after = transmittance * (one - alpha)
                if after <= t_min:
                    break
                weight = alpha * transmittance
                s0 += weight * feature[j, 0]
                s1 += weight * feature[j, 1]
                s2 += weight * feature[j, 2]
                s3 += weight * feature[j, 3]
                transmittance = after
            acc[tile, pixel, 0], acc[tile, pixel, 1], acc[tile, pixel, 2], acc[tile, pixel, 3] = s0, s1, s2, s3
            t[tile, pixel] = transmittance
