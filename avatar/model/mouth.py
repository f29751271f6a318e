"""The mouth interior (teeth, tongue, the dark of the mouth) as its own set of Gaussians.

Why separate: when the lips part, face Gaussians that learned lip colour would otherwise have to stretch
over the opening, which smears lips into teeth. The interior Gaussians sit in a thin slab behind the
lips, hidden by them when the mouth is closed. Their skinning interpolates between the upper and the lower
inner-lip landmarks by height, so when the mouth opens the slab stretches to fill exactly the opening:
its top follows the upper lip (upper teeth), its bottom the lower lip (lower teeth, tongue).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatar.model.gaussians import GaussianSet

# mediapipe FaceMesh inner-lip ring, corner to corner
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


@dataclass
class MouthConfig:
    """Size of the mouth-interior slab."""

    num_gaussians: int = 400  # Gaussians inside the mouth
    half_height_m: float = 0.006  # vertical half extent of the slab with the mouth closed
    depth_m: tuple[float, float] = (0.003, 0.02)  # the slab spans this range behind the lip line
    neighbours: int = 2  # lip landmarks per ring each interior Gaussian follows


def _ring_weights(x: np.ndarray, ring_x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-distance weights of the k ring landmarks nearest in x, for points at x [N]."""
    d = np.abs(x[:, None] - ring_x[None, :])
    idx = np.argsort(d, axis=1)[:, :k]
    inv = 1.0 / (np.take_along_axis(d, idx, 1) ** 2 + 1e-10)
    return idx, inv / inv.sum(1, keepdims=True)


def mouth_gaussians(canonical_face: np.ndarray, cfg: MouthConfig, sh_degree: int, seed: int = 0) -> GaussianSet:
    """Interior Gaussians behind the lips of the canonical face, skinned to the inner-lip landmarks."""
    rng = np.random.default_rng(seed)
    face = np.asarray(canonical_face, np.float64)
    upper, lower = np.array(UPPER_INNER_LIP), np.array(LOWER_INNER_LIP)
    ring = face[np.concatenate([upper, lower])]
    x0, x1 = face[78, 0], face[308, 0]
    centre_y, lip_z = ring[:, 1].mean(), ring[:, 2].mean()
    n = cfg.num_gaussians
    x = 0.5 * (x0 + x1) + (2 * rng.random(n) - 1) * 0.475 * abs(x1 - x0)
    y = centre_y + (2 * rng.random(n) - 1) * cfg.half_height_m
    z = lip_z + cfg.depth_m[0] + rng.random(n) * (cfg.depth_m[1] - cfg.depth_m[0])
    points = np.stack([x, y, z], 1)
    a = np.clip((y - (centre_y - cfg.half_height_m)) / (2 * cfg.half_height_m), 0, 1)[:, None]  # 0 top .. 1 bottom
    ui, uw = _ring_weights(x, face[upper, 0], cfg.neighbours)
    li, lw = _ring_weights(x, face[lower, 0], cfg.neighbours)
    index = np.concatenate([upper[ui], lower[li]], 1)
    weight = np.concatenate([(1 - a) * uw, a * lw], 1)
    colours = torch.full((n, 3), 0.15)  # the dark of the mouth; teeth are learned
    return GaussianSet(
        torch.from_numpy(points).float(),
        sh_degree,
        torch.from_numpy(index),
        torch.from_numpy(weight),
        colours=colours,
        opacity=0.9,
    )
