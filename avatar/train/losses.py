"""Image losses, and the tensorboard picture of a training step."""

from __future__ import annotations

import torch
from torch import Tensor

from avatar.metrics.image import ssim


def channels_first(images: Tensor) -> Tensor:
    """[B, H, W, 3] (the model's layout) -> [B, 3, H, W] (the metrics' layout)."""
    return images.permute(0, 3, 1, 2)


def dssim(pred: Tensor, target: Tensor) -> Tensor:
    """1 - SSIM of [B, H, W, 3] images, averaged: the structural loss term, the same SSIM `avatar eval` reports."""
    return 1 - ssim(channels_first(pred), channels_first(target)).mean()


def weighted_l1(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean |pred - target| with a per-pixel weight [B, H, W, 1] (normalised by the weight's mean)."""
    return ((pred - target).abs() * weight).mean() / weight.mean().clamp_min(1e-8)


def image_grid(pred: Tensor, target: Tensor) -> Tensor:
    """[H, W, 3] images -> [3, H, 3W] prediction | ground truth | error (x4) for tensorboard."""
    error = ((pred - target).abs() * 4).clamp(0, 1)
    return torch.cat([pred.clamp(0, 1), target, error], 1).permute(2, 0, 1)
