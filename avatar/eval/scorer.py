"""A per-method accumulator that applies every metric (avatar.metrics) the same way over a sequence.

Images are [B, 3, H, W] float in 0..1; masks [B, 1, H, W] bool; landmarks [478, 2] pixels at
avatar.eval.landmarks.LANDMARK_SCALE. Every method (the avatar and the baselines) is scored by one
`SequenceScorer` each, so the numbers differ only by what the methods rendered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avatar.contracts.face_mesh import lip_contour_ids, mouth_opening
from avatar.eval.landmarks import FaceLandmarker
from avatar.metrics.image import psnr, ssim
from avatar.metrics.lip_sync import landmark_distance, motion_ratio, pearson

REGIONS = ("head", "torso", "background", "mouth")  # every image metric is also reported per region
MOUTH_BOX_MARGIN = 1.5  # the mouth box's side over the lips' largest extent in the sequence
MIN_MOUTH_BOX = 16  # pixels: SSIM's 11-pixel window needs some room


@dataclass
class FrameRegions:
    """Where the regions of a batch of frames are: `masks` "head" (face and hair), "torso" (neck, shoulders,
    clothes) and "background" (no person), each [B, 1, H, W] bool, from the dataset's masks; `mouth_boxes`
    [B, 4] (y0, y1, x0, x1), one square of the same size per frame around the real lips."""

    masks: dict[str, Tensor]
    mouth_boxes: np.ndarray


def mouth_boxes(lips: np.ndarray, size: int) -> np.ndarray:
    """[N, K, 2] lip landmarks (pixels of a size x size image) -> [N, 4] int boxes (y0, y1, x0, x1): squares
    centred on each frame's lips, all with the side of the sequence's widest mouth times MOUTH_BOX_MARGIN,
    inside the image. One side for the sequence, so the mouth crops of all frames and methods stack."""
    extent = (lips.max(1) - lips.min(1)).max()
    side = int(min(size, max(MIN_MOUTH_BOX, math.ceil(extent * MOUTH_BOX_MARGIN))))
    centre = (lips.max(1) + lips.min(1)) / 2  # [N, 2] x, y
    x0 = np.clip(np.round(centre[:, 0] - side / 2), 0, size - side).astype(int)
    y0 = np.clip(np.round(centre[:, 1] - side / 2), 0, size - side).astype(int)
    return np.stack([y0, y0 + side, x0, x0 + side], 1)


# ----------------------------------------------------------------------------- one method over a sequence

LPIPS_MIN_SIZE = 64  # AlexNet's pooling needs about this many pixels; smaller images are enlarged first


def _lpips_size(*images: Tensor) -> list[Tensor]:
    """Enlarge (bilinear; masks: nearest) images whose shorter side is below LPIPS_MIN_SIZE; others pass."""
    h, w = images[0].shape[-2:]
    if min(h, w) >= LPIPS_MIN_SIZE:
        return list(images)
    scale = LPIPS_MIN_SIZE / min(h, w)
    size = (math.ceil(h * scale), math.ceil(w * scale))
    return [
        F.interpolate(x.float(), size=size, mode="nearest")
        if x.dtype == torch.bool
        else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for x in images
    ]


def _crops(images: Tensor, boxes: np.ndarray) -> Tensor:
    """[B, C, H, W], [B, 4] equal-sized boxes -> [B, C, h, w]."""
    return torch.stack([img[:, y0:y1, x0:x1] for img, (y0, y1, x0, x1) in zip(images, boxes.tolist())])


class SequenceScorer:
    """Collects per-frame metrics of one method over a sequence of frames, then summarises them.

    PSNR, SSIM and LPIPS on the full frame and per region (REGIONS): over the pixels of the head, torso and
    background masks (SSIM: windows centred inside; LPIPS: each layer's distance map averaged over the
    region), and on the crop of the mouth box. Lip-sync metrics compare the prediction's mediapipe landmarks
    with those of the ground truth (frames where either has no detected face are left out and counted in
    `face_detected`)."""

    def __init__(self, lpips: torch.nn.Module | None, landmarker: FaceLandmarker):
        self.lpips, self.landmarker = lpips, landmarker
        keys = [
            f"{metric}{suffix}" for suffix in ("", *(f"_{r}" for r in REGIONS)) for metric in ("psnr", "ssim", "lpips")
        ]
        self.frames: dict[str, list[float]] = {k: [] for k in keys}
        self.pred_landmarks: list[np.ndarray | None] = []
        self.gt_landmarks: list[np.ndarray | None] = []

    def _image_metrics(self, pred: Tensor, gt: Tensor, mask: Tensor | None, suffix: str) -> dict[str, Tensor]:
        values = {f"psnr{suffix}": psnr(pred, gt, mask), f"ssim{suffix}": ssim(pred, gt, mask)}
        if self.lpips is not None:
            values[f"lpips{suffix}"] = self.lpips(*_lpips_size(pred, gt, *([] if mask is None else [mask])))
        if mask is not None:  # an empty region (no torso in view) has no score in that frame
            empty = ~mask.flatten(1).any(1)
            values = {k: v.masked_fill(empty, float("nan")) for k, v in values.items()}
        return values

    @torch.no_grad()
    def add(self, pred: Tensor, gt: Tensor, regions: FrameRegions, gt_landmarks: list[np.ndarray | None]) -> None:
        """pred, gt: [B, 3, H, W] 0..1; regions of the B frames; gt_landmarks: B arrays [478, 3] or None."""
        values = self._image_metrics(pred, gt, None, "")
        for name, mask in regions.masks.items():
            values.update(self._image_metrics(pred, gt, mask, f"_{name}"))
        values.update(
            self._image_metrics(_crops(pred, regions.mouth_boxes), _crops(gt, regions.mouth_boxes), None, "_mouth")
        )
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
            scored = [v for v in vals if not math.isnan(v)]  # NaN: the region was empty in that frame
            finite = [v for v in scored if math.isfinite(v)]
            out[key] = float(np.mean(finite)) if finite else (float("inf") if scored else None)
        both = [(p, g) for p, g in zip(self.pred_landmarks, self.gt_landmarks) if p is not None and g is not None]
        out["face_detected"] = sum(p is not None for p in self.pred_landmarks) / max(len(self.pred_landmarks), 1)
        out["lip_frames"] = len(both)
        if both:
            pred_lm, gt_lm = (np.stack(x) for x in zip(*both))
            mouth = lip_contour_ids()
            pred_xy, gt_xy = pred_lm[:, mouth, :2], gt_lm[:, mouth, :2]  # LMD: distances in the image
            out["lmd"] = float(landmark_distance(pred_xy, gt_xy).mean())
            out["lmd_centred"] = float(landmark_distance(pred_xy, gt_xy, centred=True).mean())
            out["mouth_corr"] = pearson(mouth_opening(pred_lm), mouth_opening(gt_lm))
            out["mouth_motion"] = motion_ratio(mouth_opening(pred_lm), mouth_opening(gt_lm))
        else:
            out["lmd"] = out["lmd_centred"] = out["mouth_corr"] = out["mouth_motion"] = None
        return out
