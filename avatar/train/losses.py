"""Image losses and the quality measure shown while training."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, size, size]


def ssim_map(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity of [B, H, W, 3] images in 0..1 -> [B, H, W, 3] (11x11 Gaussian window, the
    usual constants); differentiable."""
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    w = _gaussian_window().to(a).expand(3, 1, -1, -1)
    pad = w.shape[-1] // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, [pad] * 4, mode="reflect"), w, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.permute(0, 2, 3, 1)


def weighted_l1(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean |pred - target| with a per-pixel weight [B, H, W, 1] (normalised by the weight's mean)."""
    return ((pred - target).abs() * weight).mean() / weight.mean().clamp_min(1e-8)


def psnr(pred: Tensor, target: Tensor) -> float:
    mse = float(((pred.detach() - target) ** 2).mean())
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def image_grid(pred: Tensor, target: Tensor) -> Tensor:
    """[H, W, 3] images -> [3, H, 3W] prediction | ground truth | error (x4) for tensorboard."""
    error = ((pred - target).abs() * 4).clamp(0, 1)
    return torch.cat([pred.clamp(0, 1), target, error], 1).permute(2, 0, 1)
