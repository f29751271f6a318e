"""Frames shared by the evaluation's scorers: the tracked conditions of dataset frames, and the image
conversions every method's frames pass through (the same resizing and 8-bit quantisation, what a video of
them would show) before they are scored."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from avatar.contracts.dataset import Dataset
from avatar.model.audio_encoder import NO_LEVELS, ClipLevels
from avatar.model.talking_head import FrameConditions


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, size, 3] uint8 (area averaging when shrinking, bicubic when enlarging)."""

    if image.shape[:2] == (size, size):
        return image
    interp = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """[H, W] bool -> [size, size] bool: a pixel is inside when at least half of it was."""

    if mask.shape == (size, size):
        return mask
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5


def quantize(rgb: Tensor) -> np.ndarray:
    """[B, H, W, 3] float 0..1 -> [B, H, W, 3] uint8 (rounded, clipped)."""
    return (rgb.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def to_chw(images: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float 0..1 on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255


def render_frames(head, cond, size: int, deform: bool = True, expression: Tensor | None = None) -> np.ndarray:
    """TalkingHead.render of a batch of conditions -> [B, size, size, 3] uint8 (its own background plate)."""
    images = quantize(head.render(cond, deform=deform, expression=expression)["rgb"])
    return np.stack([resize_rgb(img, size) for img in images])


def frame_conditions(
    dataset: Dataset, indices: np.ndarray, audio: np.ndarray, device: torch.device, levels: ClipLevels = NO_LEVELS
):
    """The tracked conditions of dataset frames `indices` [B]: their audio windows `audio` [B, C, W, F],
    head pose, body codes and eye blinks, and the levels of the clip they belong to."""

    return FrameConditions.from_arrays(
        device,
        audio,
        dataset.tracking("rotation")[indices],
        dataset.tracking("translation")[indices],
        dataset.blinks()[indices],
        dataset.body_motion().codes[indices],
        levels,
    )
