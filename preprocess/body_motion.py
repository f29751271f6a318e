"""The body's own motion: a few numbers per frame that say how neck, shoulders and clothes moved.

The head pose does not predict the body: the collar, the tie and the shoulders' outline move with breathing
and posture. So the body is tracked like the head: the dense optical flow from a sharp template of the body
to each frame, over the cells the torso covers, compressed by PCA (fitted on the training frames) into
`modes` coefficients per frame and smoothed in time with no lag. The torso layer
(avatar.model.torso) warps its learned image by the flow these coefficients rebuild, so a rendered frame
shows the body as it was at that row of the pose track, and never follows the audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from avatar.contracts.dataset import BodyMotion, bit_mask
from avatar.preprocess.smoothing import smooth_series

ANALYSIS_SIZE = 256  # frames are resized to this square for the flow (cost, and the detail the flow needs)


@dataclass
class BodyMotionConfig:
    """How the body's motion is tracked."""

    modes: int = 8  # PCA coefficients per frame
    grid: int = 32  # the flow is kept on a grid x grid lattice of cells
    template_frames: int = 120  # evenly spread training frames the template is the median of
    template_rounds: int = 2  # align the template frames to the template, take their median again
    smoothing_s: float = 0.2  # Savitzky-Golay window of the coefficients, seconds (zero lag)
    min_torso_coverage: float = 0.02  # a cell belongs to the body where the torso covers it this often
    max_head_coverage: float = 0.5  # ... and the head covers it less often than this


def _small(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, (ANALYSIS_SIZE, ANALYSIS_SIZE), interpolation=cv2.INTER_AREA)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class _Flow:
    """Dense flow f from a template to frames: frame(x) ~ template(x + f(x)), pixels at ANALYSIS_SIZE."""

    def __init__(self):
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        yy, xx = np.mgrid[:ANALYSIS_SIZE, :ANALYSIS_SIZE].astype(np.float32)
        self.xx, self.yy = xx, yy

    def __call__(self, frame: np.ndarray, template: np.ndarray) -> np.ndarray:
        return self.dis.calc(_gray(frame), _gray(template), None)

    def to_template(self, frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """The frame moved into the template's place (the inverse warp, to first order)."""
        return cv2.remap(
            frame, self.xx - flow[..., 0], self.yy - flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )


def body_template(frames: list[np.ndarray], rounds: int) -> np.ndarray:
    """[S, S, 3] uint8 sharp body template: the median of the frames, then of the frames aligned to it."""
    flow = _Flow()
    template = np.median(np.stack(frames), 0).astype(np.uint8)
    for _ in range(rounds):
        aligned = [flow.to_template(f, flow(f, template)) for f in frames]
        template = np.median(np.stack(aligned), 0).astype(np.uint8)
    return template


def body_cells(torso_coverage: np.ndarray, head_coverage: np.ndarray, cfg: BodyMotionConfig) -> np.ndarray:
    """[G, G] bool: the cells whose flow is the body's (torso often there, head mostly not)."""
    g = (cfg.grid, cfg.grid)
    torso = cv2.resize(torso_coverage.astype(np.float32), g, interpolation=cv2.INTER_AREA)
    head = cv2.resize(head_coverage.astype(np.float32), g, interpolation=cv2.INTER_AREA)
    return (torso > cfg.min_torso_coverage) & (head < cfg.max_head_coverage)


def track_body(
    read_frame: Callable[[int], np.ndarray],
    read_mask: Callable[[int], np.ndarray],
    frames: Iterable[np.ndarray],
    num_frames: int,
    fit_frames: int,
    fps: float,
    cfg: BodyMotionConfig,
) -> tuple[BodyMotion, dict]:
    """Track the body over the `num_frames` frames streamed by `frames` ([H, W, 3] uint8 RGB); the first
    `fit_frames` are the training frames the template (`read_frame(i)`, its mask bits `read_mask(i)`) and
    the PCA come from. Returns the BodyMotion and its measurements. Memory: the template frames and one
    [G, G, 2] flow per frame, whatever the clip's length."""
    if fit_frames < 2:
        raise ValueError("the body's motion needs at least two training frames")
    picks = np.linspace(0, fit_frames - 1, min(cfg.template_frames, fit_frames)).round().astype(int)
    template = body_template([_small(read_frame(int(i))) for i in picks], cfg.template_rounds)
    bits = [read_mask(int(i)) for i in picks]
    coverage = {
        name: np.mean([_small(bit_mask(b, name).astype(np.float32)) for b in bits], 0) for name in ("torso", "head")
    }
    cells = body_cells(coverage["torso"], coverage["head"], cfg)
    flow = _Flow()
    g = (cfg.grid, cfg.grid)
    fields = np.stack([cv2.resize(flow(_small(f), template), g, interpolation=cv2.INTER_AREA) for f in frames])
    if len(fields) != num_frames:
        raise ValueError(f"expected {num_frames} frames, got {len(fields)}")
    fields = fields * (2.0 / ANALYSIS_SIZE) * cells[None, ..., None]  # [N, G, G, 2], normalised units, body only
    flat = fields.reshape(num_frames, -1).astype(np.float64)
    mean = flat[:fit_frames].mean(0)
    _, singular, vt = np.linalg.svd(flat[:fit_frames] - mean, full_matrices=False)
    modes = min(cfg.modes, len(singular))
    codes = (flat - mean) @ vt[:modes].T  # [N, K]
    window = int(round(cfg.smoothing_s * fps)) | 1
    if window >= 5:
        codes = smooth_series(codes, window)
    energy = singular**2
    explained = float(energy[:modes].sum() / max(energy.sum(), 1e-12))
    to_field = lambda v: v.reshape(cfg.grid, cfg.grid, 2).transpose(2, 0, 1)  # noqa: E731 -> [2, G, G]
    motion = BodyMotion(
        codes=codes.astype(np.float32),
        mean=to_field(mean).astype(np.float32),
        basis=np.stack([to_field(v) for v in vt[:modes]]).astype(np.float32),
    )
    spread_px = float(np.abs(flat[:fit_frames] - mean).max() * ANALYSIS_SIZE / 2)
    return motion, {
        "modes": modes,
        "explained_variance": round(explained, 4),
        "body_cells": int(cells.sum()),
        "largest_motion_px_at_256": round(spread_px, 2),
    }
