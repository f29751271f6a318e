"""A per-method accumulator that applies every metric (avatar.metrics) the same way over a sequence.

Images are [B, 3, H, W] float in 0..1; masks [B, 1, H, W] bool; landmarks [478, 2] pixels at
avatar.eval.landmarks.LANDMARK_SCALE. Every method (the avatar and the baselines) is scored by one
`SequenceScorer` each, so the numbers differ only by what the methods rendered.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avatar.contracts.face_mesh import lip_contour_ids, mouth_opening
from avatar.eval.landmarks import FaceLandmarker
from avatar.metrics.image import psnr, ssim
from avatar.metrics.lip_sync import landmark_distance, motion_ratio, pearson


def square_box(masks: Tensor, margin: float = 0.1) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a square around the union of `masks` [N, H, W] (plus `margin` of its size), inside
    the image. One box for a whole sequence, so a region metric sees the same crop in every frame."""
    h, w = masks.shape[-2:]
    union = masks.reshape(-1, h, w).any(0)
    if not union.any():
        return 0, h, 0, w
    ys, xs = torch.nonzero(union, as_tuple=True)
    cy, cx = (ys.min() + ys.max() + 1).item() / 2, (xs.min() + xs.max() + 1).item() / 2
    side = min(h, w, math.ceil(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1).item() * (1 + 2 * margin)))
    y0 = int(min(max(round(cy - side / 2), 0), h - side))
    x0 = int(min(max(round(cx - side / 2), 0), w - side))
    return y0, y0 + side, x0, x0 + side


# ----------------------------------------------------------------------------- one method over a sequence

LPIPS_MIN_SIZE = 64  # AlexNet's pooling needs about this many pixels; smaller images are enlarged first


def _lpips_size(images: Tensor) -> Tensor:
    """Enlarge (bilinear) images whose shorter side is below LPIPS_MIN_SIZE; others pass unchanged."""
    h, w = images.shape[-2:]
    if min(h, w) >= LPIPS_MIN_SIZE:
        return images
    scale = LPIPS_MIN_SIZE / min(h, w)
    return F.interpolate(images, size=(math.ceil(h * scale), math.ceil(w * scale)), mode="bilinear",
                         align_corners=False)



class SequenceScorer:
    """Collects per-frame metrics of one method over a sequence of frames, then summarises them.

    Image metrics are on the full frame and on the head region (pixels of the head mask for PSNR and SSIM;
    the sequence's square head box for LPIPS, which needs a rectangular image). Lip-sync metrics compare
    the prediction's mediapipe landmarks with those of the ground truth (frames where either has no
    detected face are left out and counted in `face_detected`)."""

    def __init__(self, lpips: torch.nn.Module | None, landmarker: FaceLandmarker,
                 head_box: tuple[int, int, int, int] | None = None):
        self.lpips, self.landmarker, self.head_box = lpips, landmarker, head_box
        self.frames: dict[str, list[float]] = {k: [] for k in
                                               ("psnr", "ssim", "lpips", "psnr_head", "ssim_head", "lpips_head")}
        self.pred_landmarks: list[np.ndarray | None] = []
        self.gt_landmarks: list[np.ndarray | None] = []

    @torch.no_grad()
    def add(self, pred: Tensor, gt: Tensor, head_mask: Tensor, gt_landmarks: list[np.ndarray | None]) -> None:
        """pred, gt: [B, 3, H, W] 0..1; head_mask: [B, 1, H, W] bool; gt_landmarks: B arrays [478, 2] or None."""
        values = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt),
                  "psnr_head": psnr(pred, gt, head_mask), "ssim_head": ssim(pred, gt, head_mask)}
        if self.lpips is not None:
            values["lpips"] = self.lpips(_lpips_size(pred), _lpips_size(gt))
            y0, y1, x0, x1 = self.head_box or (0, pred.shape[2], 0, pred.shape[3])
            crop = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
            values["lpips_head"] = self.lpips(_lpips_size(pred[crop]), _lpips_size(gt[crop]))
        for key, v in values.items():
            self.frames[key] += v.float().cpu().tolist()
        images = (pred.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        self.pred_landmarks += [self.landmarker(img) for img in images]
        self.gt_landmarks += list(gt_landmarks)

    def summary(self) -> dict:
        """Means over frames (PSNR over frames with a finite value), LMD in pixels at 512 scale, the
        Pearson correlation of the mouth-opening series and the ratio of their spreads."""
        out: dict = {"frames": len(self.pred_landmarks)}
        for key, vals in self.frames.items():
            finite = [v for v in vals if math.isfinite(v)]
            out[key] = float(np.mean(finite)) if finite else (float("inf") if vals else None)
        both = [(p, g) for p, g in zip(self.pred_landmarks, self.gt_landmarks) if p is not None and g is not None]
        out["face_detected"] = sum(p is not None for p in self.pred_landmarks) / max(len(self.pred_landmarks), 1)
        out["lip_frames"] = len(both)
        if both:
            pred_lm, gt_lm = (np.stack(x) for x in zip(*both))
            mouth = lip_contour_ids()
            out["lmd"] = float(landmark_distance(pred_lm[:, mouth], gt_lm[:, mouth]).mean())
            out["lmd_centred"] = float(landmark_distance(pred_lm[:, mouth], gt_lm[:, mouth], centred=True).mean())
            out["mouth_corr"] = pearson(mouth_opening(pred_lm), mouth_opening(gt_lm))
            out["mouth_motion"] = motion_ratio(mouth_opening(pred_lm), mouth_opening(gt_lm))
        else:
            out["lmd"] = out["lmd_centred"] = out["mouth_corr"] = out["mouth_motion"] = None
        return out
