"""Lip-sync measures over a sequence of frames: landmark distance, correlation and motion of the opening.

The mouth opening itself is `avatar.contracts.face_mesh.mouth_opening`.
"""

from __future__ import annotations

import math

import numpy as np


def landmark_distance(pred: np.ndarray, gt: np.ndarray, centred: bool = False) -> np.ndarray:
    """[..., P, 2] two landmark sets -> [...] mean Euclidean distance per frame (LMD when P = the mouth).
    `centred` removes each set's mean first: the mouth's shape, not where the head is."""
    if centred:
        pred = pred - pred.mean(-2, keepdims=True)
        gt = gt - gt.mean(-2, keepdims=True)
    return np.linalg.norm(pred - gt, axis=-1).mean(-1)


def _constant(series: np.ndarray) -> bool:
    """No spread beyond the rounding noise of equal values (the mean of equal floats need not equal them)."""
    return float(np.std(series)) <= 1e-9 * float(np.abs(series).max(initial=0.0))


def motion_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """Spread of the predicted series over that of the true one: 1 moves as much as the person, below 1 the
    mouth is lazy (correlation cannot see that: it ignores scale); nan when the truth is constant."""
    truth = np.asarray(truth, np.float64)
    if truth.size < 3 or _constant(truth):
        return float("nan")
    return float(np.std(pred)) / float(np.std(truth))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series; nan when either is constant or shorter than 3."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or _constant(a) or _constant(b):
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def lagged_pearson(a: np.ndarray, b: np.ndarray, lag: int) -> float:
    """`pearson` of a[i] with b[i + lag] over the overlap."""
    a, b = np.asarray(a), np.asarray(b)
    a, b = (a[: len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: len(b) + lag])
    return pearson(a, b)
