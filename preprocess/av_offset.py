"""The source video's audio-visual offset, found from the video itself (no downloaded weights).

Recordings from phones, webcams, Bluetooth microphones and screen recorders often have their sound 40-250 ms
off the picture; an avatar trained on such a clip learns the offset and moves its lips early or late on every
new voice. The estimate compares two speaker-independent signals: how open the phone decoder's mouth-shape
classes say the mouth is (open vowels open, bilabials and silence closed: `openness`), and the tracked
inner-lip opening, each less its 1 s moving average (a person's slow drifts of expression and of speaking
rate would otherwise spread the peak over many lags). Their correlation is scanned over +-`MAX_LAG_FRAMES`
frames; the peak, refined below a frame by a parabola through its neighbours, is the offset; how far the
peak stands above the correlations of the lags away from it (more than `PEAK_HALF_WIDTH` frames) is its
confidence.

Sign: a positive offset means the sound comes later than the lips that make it (the audio must be moved
earlier by that much to be in sync).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from avatar.audio.phonetic import VISEME_NAMES

MAX_LAG_FRAMES = 15
# How much each mouth-shape class opens the lips (the others count 0): a weighting, not a learned model
OPENNESS = {"open": 1.0, "mid": 0.7, "spread": 0.5, "bilabial": -1.0, "silence": -1.0}
PEAK_HALF_WIDTH = 4  # frames: the lips and the sound change slowly, so a true peak is a few frames wide
MIN_CONFIDENCE = 4.0  # the peak's height above the lags away from it, in their standard deviations
MIN_PEAK_CORRELATION = 0.2
TREND_S = 1.0  # the moving average taken off both signals


@dataclass
class AvOffset:
    ms: float  # positive: the sound comes later than the lips
    confidence: float  # (peak - mean) / std of the correlations of the lags away from the peak
    peak_correlation: float
    correlation_at_zero: float
    applied: bool = False

    @property
    def confident(self) -> bool:
        return self.confidence >= MIN_CONFIDENCE and self.peak_correlation >= MIN_PEAK_CORRELATION

    def to_manifest(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def openness(visemes: np.ndarray) -> np.ndarray:
    """[T, len(VISEME_NAMES)] viseme probabilities -> [T] how open they say the mouth is."""
    weights = np.array([OPENNESS.get(name, 0.0) for name in VISEME_NAMES])
    return visemes @ weights


def rows_to_frames(rows: np.ndarray, rate_hz: float, fps: float, num_frames: int) -> np.ndarray:
    """[T] rows at `rate_hz` -> [num_frames] means over each frame's span [i / fps, (i + 1) / fps)."""
    first = np.clip(np.round(np.arange(num_frames) / fps * rate_hz).astype(np.int64), 0, len(rows) - 1)
    end = np.clip(np.round(np.arange(1, num_frames + 1) / fps * rate_hz).astype(np.int64), first + 1, len(rows))
    sums = np.concatenate([[0.0], np.cumsum(rows, dtype=np.float64)])
    return (sums[end] - sums[first]) / (end - first)


def lag_correlations(lips: np.ndarray, sound: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> np.ndarray:
    """[2 * max_lag + 1] Pearson correlation of lips[i] with sound[i + lag], lag = -max_lag..max_lag."""
    out = np.zeros(2 * max_lag + 1)
    for k, lag in enumerate(range(-max_lag, max_lag + 1)):
        a, b = (lips[: len(lips) - lag], sound[lag:]) if lag >= 0 else (lips[-lag:], sound[: len(sound) + lag])
        a, b = a - a.mean(), b - b.mean()
        out[k] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return out


def estimate_offset(visemes: np.ndarray, rate_hz: float, lip_opening: np.ndarray, fps: float) -> AvOffset:
    """The offset between the sound (viseme rows [T, V] at `rate_hz`) and the lips (tracked opening [N] at
    `fps`). Needs at least a few seconds of speech; a scan without a clear peak gives a low confidence."""
    num_frames = len(lip_opening)
    max_lag = min(MAX_LAG_FRAMES, max(1, num_frames // 4))
    sound = rows_to_frames(openness(visemes), rate_hz, fps, num_frames)
    corrs = lag_correlations(_detrended(np.asarray(lip_opening, np.float64), fps), _detrended(sound, fps), max_lag)
    k = int(np.argmax(corrs))
    lag = float(k - max_lag)
    if 0 < k < len(corrs) - 1:  # the parabola through the peak and its neighbours
        left, mid, right = corrs[k - 1 : k + 2]
        curvature = left - 2 * mid + right
        if curvature < 0:
            lag += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    far = np.delete(corrs, np.arange(max(0, k - PEAK_HALF_WIDTH), min(len(corrs), k + PEAK_HALF_WIDTH + 1)))
    spread = float(np.std(far)) if len(far) > 1 else 0.0
    confidence = float((corrs[k] - far.mean()) / spread) if spread > 0 else 0.0
    return AvOffset(1000.0 * lag / fps, confidence, float(corrs[k]), float(corrs[max_lag]))


def _detrended(signal: np.ndarray, fps: float) -> np.ndarray:
    return signal - uniform_filter1d(signal, max(1, int(round(TREND_S * fps))), mode="nearest")


def shift_audio(wave: np.ndarray, offset_ms: float, sample_rate: int) -> np.ndarray:
    """`wave` moved so that it is in sync: a positive offset (late sound) drops its first `offset_ms` and
    pads the end with silence; a negative one delays it by silence at the start. The length is kept."""
    shift = int(round(offset_ms / 1000.0 * sample_rate))
    if shift == 0:
        return wave
    if shift > 0:
        return np.concatenate([wave[shift:], np.zeros(min(shift, len(wave)), wave.dtype)])
    return np.concatenate([np.zeros(min(-shift, len(wave)), wave.dtype), wave[: max(0, len(wave) + shift)]])
