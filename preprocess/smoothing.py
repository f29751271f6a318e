"""Zero-phase smoothing of the head pose, and the measures that show it removed jitter without lag.

A causal filter (One-Euro, exponential) always trails the motion; the whole clip is known here, so a
symmetric Savitzky-Golay filter (a local quadratic fit) removes jitter with exactly zero lag and keeps
the peaks of real head motion better than a moving average. Rotations are filtered as rotation vectors
relative to the clip's mean rotation, where they are small and nearly linear.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter
from scipy.spatial.transform import Rotation


def _window(fps: float, seconds: float) -> int:
    """An odd window of about `seconds`, at least 5 frames (the quadratic fit needs room)."""
    n = max(5, int(round(seconds * fps)))
    return n if n % 2 else n + 1


def mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """[N, 3, 3] -> [3, 3] the chordal L2 mean rotation."""
    return Rotation.from_matrix(rotations).mean().as_matrix()


def smooth_pose(rotations: np.ndarray, translations: np.ndarray, fps: float,
                window_s: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3, 3], [N, 3] -> the same, smoothed in time with no lag (see module docstring)."""
    n = len(rotations)
    window = _window(fps, window_s)
    if n < window:
        return rotations.copy(), translations.copy()
    mean = mean_rotation(rotations)
    rel = Rotation.from_matrix(np.einsum("ij,njk->nik", mean.T, rotations)).as_rotvec()  # [N, 3]
    rel = savgol_filter(rel, window, polyorder=2, axis=0, mode="interp")
    smoothed_rot = np.einsum("ij,njk->nik", mean, Rotation.from_rotvec(rel).as_matrix())
    smoothed_t = savgol_filter(translations, window, polyorder=2, axis=0, mode="interp")
    return smoothed_rot.astype(rotations.dtype), smoothed_t.astype(translations.dtype)


def second_difference_energy(signal: np.ndarray) -> float:
    """Mean norm of the frame-to-frame second difference of [N, ...]: the jitter measure."""
    if len(signal) < 3:
        return 0.0
    d2 = signal[2:] - 2 * signal[1:-1] + signal[:-2]
    return float(np.linalg.norm(d2.reshape(len(d2), -1), axis=1).mean())


def rotation_signal(rotations: np.ndarray) -> np.ndarray:
    """[N, 3, 3] -> [N, 3] rotation vectors relative to the mean (radians), to measure rotations with."""
    mean = mean_rotation(rotations)
    return Rotation.from_matrix(np.einsum("ij,njk->nik", mean.T, rotations)).as_rotvec()


def lag_frames(raw: np.ndarray, smoothed: np.ndarray, max_lag: int = 5) -> int:
    """The shift (frames) that best aligns `smoothed` [N, D] with `raw` (cross-correlation of the signals,
    each column standardised so units do not matter); positive = smoothed trails."""
    scale = raw.std(0) + 1e-12
    raw = (raw - raw.mean(0)) / scale
    smoothed = (smoothed - smoothed.mean(0)) / scale
    n = len(raw)

    def score(k: int) -> float:
        a, b = (raw[: n - k], smoothed[k:]) if k >= 0 else (raw[-k:], smoothed[: n + k])
        return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    return max(range(-max_lag, max_lag + 1), key=score)
