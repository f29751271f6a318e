"""Image and lip-sync metrics, and a per-method accumulator that applies all of them the same way.

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

from avatar.eval.landmarks import EYE_OUTER_CORNERS, INNER_LIP, FaceLandmarker, mouth_indices

# ----------------------------------------------------------------------------- image metrics


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


# ----------------------------------------------------------------------------- lip-sync metrics


def landmark_distance(pred: np.ndarray, gt: np.ndarray, centred: bool = False) -> np.ndarray:
    """[..., P, 2] two landmark sets -> [...] mean Euclidean distance per frame (LMD when P = the mouth).
    `centred` removes each set's mean first: the mouth's shape, not where the head is."""
    if centred:
        pred = pred - pred.mean(-2, keepdims=True)
        gt = gt - gt.mean(-2, keepdims=True)
    return np.linalg.norm(pred - gt, axis=-1).mean(-1)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """[..., 478, 2] -> [...] inner-lip gap divided by the outer eye-corner distance (a face-size unit)."""
    gap = np.linalg.norm(landmarks[..., INNER_LIP[0], :] - landmarks[..., INNER_LIP[1], :], axis=-1)
    eyes = np.linalg.norm(landmarks[..., EYE_OUTER_CORNERS[0], :] - landmarks[..., EYE_OUTER_CORNERS[1], :], axis=-1)
    return gap / np.maximum(eyes, 1e-6)


def motion_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """Spread of the predicted series over that of the true one: 1 moves as much as the person, below 1 the
    mouth is lazy (correlation cannot see that: it ignores scale); nan when the truth is constant."""
    truth = np.asarray(truth, np.float64)
    spread = float(np.std(truth))
    constant = spread <= 1e-9 * float(np.abs(truth).max(initial=0.0))  # rounding noise of equal values
    return float(np.std(pred)) / spread if truth.size >= 3 and spread > 0 and not constant else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series; nan when either is constant or shorter than 3."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


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
            mouth = mouth_indices()
            out["lmd"] = float(landmark_distance(pred_lm[:, mouth], gt_lm[:, mouth]).mean())
            out["lmd_centred"] = float(landmark_distance(pred_lm[:, mouth], gt_lm[:, mouth], centred=True).mean())
            out["mouth_corr"] = pearson(mouth_opening(pred_lm), mouth_opening(gt_lm))
            out["mouth_motion"] = motion_ratio(mouth_opening(pred_lm), mouth_opening(gt_lm))
        else:
            out["lmd"] = out["lmd_centred"] = out["mouth_corr"] = out["mouth_motion"] = None
        return out
