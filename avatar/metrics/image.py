"""Image quality: PSNR and SSIM, used by training's validation, its loss and `avatar eval` alike.

Images are [B, 3, H, W] float in 0..1; masks [B, 1, H, W] bool. Everything here is differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """[B] peak signal-to-noise ratio in dB (peak 1), over the pixels in `mask` when given; inf when equal."""
    sq = (pred - gt).pow(2)  # [B, 3, H, W]
    if mask is None:
        mse = sq.flatten(1).mean(1)
    else:
        weight = mask.to(sq.dtype).expand_as(sq)
        mse = (sq * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)
    return -10.0 * torch.log10(mse)  # log10(0) = -inf gives +inf for identical images


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: Tensor, gt: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """[B, 3, H - window + 1, W - window + 1] structural similarity (Wang et al. 2004, gaussian window,
    K1 = 0.01, K2 = 0.03, peak 1); only windows that lie fully inside the image ('valid')."""
    g = _gaussian_window(window, sigma, pred.device, pred.dtype)
    channels = pred.shape[1]
    kx = g.view(1, 1, 1, window).repeat(channels, 1, 1, 1)
    ky = g.view(1, 1, window, 1).repeat(channels, 1, 1, 1)

    def blur(x: Tensor) -> Tensor:  # separable gaussian, per channel
        return F.conv2d(F.conv2d(x, kx, groups=channels), ky, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_p, mu_g = blur(pred), blur(gt)
    var_p = blur(pred * pred) - mu_p**2
    var_g = blur(gt * gt) - mu_g**2
    cov = blur(pred * gt) - mu_p * mu_g
    return ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2))


def ssim(pred: Tensor, gt: Tensor, mask: Tensor | None = None, window: int = 11, sigma: float = 1.5) -> Tensor:
    """[B] mean SSIM, over the windows centred inside `mask` when given."""
    smap = ssim_map(pred, gt, window, sigma)
    if mask is None:
        return smap.flatten(1).mean(1)
    m = window // 2
    inside = mask[:, :, m : m + smap.shape[2], m : m + smap.shape[3]].to(smap.dtype).expand_as(smap)
    return (smap * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1)
