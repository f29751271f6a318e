"""Zero-phase smoothing of the head pose, and the measures that show it removed jitter without lag.

A causal filter (One-Euro, exponential) always trails the motion; the whole clip is known here, so a
symmetric Savitzky-Golay filter (a local quadratic fit) removes jitter with exactly zero lag and keeps
the peaks of real head motion better than a moving average. Its window is the shortest that reaches a
target jitter reduction (`smooth_pose_adaptive`). Rotations are filtered as rotation vectors
relative to the clip's mean rotation, where they are small and nearly linear.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter
from scipy.spatial.transform import Rotation


def mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """[N, 3, 3] -> [3, 3] the chordal L2 mean rotation."""
    return Rotation.from_matrix(rotations).mean().as_matrix()


def smooth_series(values: np.ndarray, window: int) -> np.ndarray:
    """[N, ...] values smoothed over time with no lag (a local quadratic over an odd `window` of frames);
    a copy, unsmoothed, when the clip is shorter than the window."""
    if len(values) < window:
        return values.copy()
    return savgol_filter(values, window, polyorder=2, axis=0, mode="interp")


def smooth_pose(rotations: np.ndarray, translations: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3, 3], [N, 3] -> the same, smoothed in time with no lag over an odd `window` of frames."""
    if len(rotations) < window:
        return rotations.copy(), translations.copy()
    mean = mean_rotation(rotations)
    rel = Rotation.from_matrix(np.einsum("ij,njk->nik", mean.T, rotations)).as_rotvec()  # [N, 3]
    rel = smooth_series(rel, window)
    smoothed_rot = np.einsum("ij,njk->nik", mean, Rotation.from_rotvec(rel).as_matrix())
    smoothed_t = smooth_series(translations, window)
    return smoothed_rot.astype(rotations.dtype), smoothed_t.astype(translations.dtype)


def jitter_ratios(
    rotations: np.ndarray, translations: np.ndarray, smoothed_rotations: np.ndarray, smoothed_translations: np.ndarray
) -> tuple[float, float]:
    """(rotation, translation) second-difference jitter of the raw pose over that of the smoothed pose."""
    rot = second_difference_energy(rotation_signal(rotations)) / max(
        second_difference_energy(rotation_signal(smoothed_rotations)), 1e-12
    )
    trans = second_difference_energy(translations) / max(second_difference_energy(smoothed_translations), 1e-12)
    return rot, trans


def smooth_pose_adaptive(
    rotations: np.ndarray,
    translations: np.ndarray,
    fps: float,
    jitter_reduction: float,
    min_window_s: float,
    max_window_s: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The least smoothing that divides the pose jitter by `jitter_reduction`: how much of the raw pose's
    frame-to-frame change is noise differs between videos (face size, detector noise, how much the head
    moves, fps), so a fixed window over- or under-smooths some of them. Real head motion has second
    differences too, so a clip with much fast motion needs a longer window to reach the target; the cap
    `max_window_s` bounds how much real motion may go (what goes, the expression code fitted after
    smoothing takes up). Windows are tried shortest first. Returns the smoothed rotations, translations
    and the window (frames)."""
    first = max(5, int(round(min_window_s * fps)) | 1)
    last = max(first, int(round(max_window_s * fps)) | 1)
    for window in range(first, last + 1, 2):
        smoothed = smooth_pose(rotations, translations, window)
        if min(jitter_ratios(rotations, translations, *smoothed)) >= jitter_reduction:
            break
    return *smoothed, window


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
