"""The source video's audio-visual offset, found from the video itself (no downloaded weights).

Recordings from phones, webcams, Bluetooth microphones and screen recorders often have their sound 40-250 ms
off the picture; an avatar trained on such a clip learns the offset and moves its lips early or late on every
new voice. The estimate compares two speaker-independent signals: how open the phone decoder's mouth-shape
classes say the mouth is (open vowels open, bilabials and silence closed: `openness`), and the tracked
inner-lip opening, each less its 1 s moving average (a person's slow drifts of expression and of speaking
rate would otherwise spread the peak over many lags). Their correlation is scanned over +-`MAX_LAG_S`; the
peak, refined below a frame by a parabola through its neighbours, is the offset; how far the peak stands above
the correlations of the lags away from it (more than `PEAK_HALF_WIDTH_S`) is its confidence.

Sign: a positive offset means the sound comes later than the lips that make it (the audio must be moved
earlier by that much to be in sync).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.ndimage import uniform_filter1d

from avatar.audio.phonetic import VISEME_NAMES
from avatar.metrics.lip_sync import lagged_pearson

MAX_LAG_S = 0.6  # the offsets searched: +-15 frames at 25 fps
# How much each mouth-shape class opens the lips (the others count 0): a weighting, not a learned model
OPENNESS = {"open": 1.0, "mid": 0.7, "spread": 0.5, "bilabial": -1.0, "silence": -1.0}
PEAK_HALF_WIDTH_S = 0.16  # the lips and the sound change slowly, so a true peak is a few frames wide
MIN_CONFIDENCE = 4.0  # the peak's height above the lags away from it, in their standard deviations
MIN_PEAK_CORRELATION = 0.2
TREND_S = 1.0  # the moving average taken off both signals
MIN_SECONDS = 4.0  # shorter clips hold too few syllables for a peak to mean anything


@dataclass
class AvOffset:
    ms: float  # positive: the sound comes later than the lips
    confidence: float  # (peak - mean) / std of the correlations of the lags away from the peak
    peak_correlation: float
    correlation_at_zero: float
    applied: bool = False  # removed from the dataset's sound
    given: bool = False  # `ms` was given (--av-offset), not estimated

    @property
    def confident(self) -> bool:
        return self.confidence >= MIN_CONFIDENCE and self.peak_correlation >= MIN_PEAK_CORRELATION

    def decided(self, given_ms: float | None) -> AvOffset:
        """This estimate as the dataset keeps it: removed when confident; with `given_ms` (--av-offset) that
        offset is removed instead, and 0 keeps the sound as it is (the estimate is still recorded)."""
        if given_ms is None:
            return replace(self, applied=self.confident)
        if given_ms == 0:
            return replace(self, applied=False)
        return replace(self, ms=float(given_ms), applied=True, given=True)

    def to_manifest(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()} | {
            "confident": self.confident
        }


def remaining_offset_ms(record: dict | None) -> float | None:
    """How far a dataset's sound is still off its lips, from its manifest's `av_offset` record (None: a
    dataset made before the estimate, so unknown): 0 when an offset was removed or none was found."""
    if record is None:
        return None
    return 0.0 if record["applied"] or not record.get("confident", False) else float(record["ms"])


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


def estimate_offset(visemes: np.ndarray, rate_hz: float, lip_opening: np.ndarray, fps: float) -> AvOffset:
    """The offset between the sound (viseme rows [T, V] at `rate_hz`) and the lips (tracked opening [N] at
    `fps`). Needs at least `MIN_SECONDS` of speech (a shorter clip gives 0 ms at confidence 0); a scan without
    a clear peak gives a low confidence."""
    num_frames = len(lip_opening)
    if num_frames < MIN_SECONDS * fps:
        return AvOffset(0.0, 0.0, 0.0, 0.0)
    max_lag, half_width = int(round(MAX_LAG_S * fps)), max(1, int(round(PEAK_HALF_WIDTH_S * fps)))
    sound = rows_to_frames(openness(visemes), rate_hz, fps, num_frames)
    lips, sound = _detrended(np.asarray(lip_opening, np.float64), fps), _detrended(sound, fps)
    corrs = np.nan_to_num([lagged_pearson(lips, sound, lag) for lag in range(-max_lag, max_lag + 1)])
    k = int(np.argmax(corrs))
    lag = float(k - max_lag)
    if 0 < k < len(corrs) - 1:  # the parabola through the peak and its neighbours
        left, mid, right = corrs[k - 1 : k + 2]
        curvature = left - 2 * mid + right
        if curvature < 0:
            lag += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    far = np.delete(corrs, np.arange(max(0, k - half_width), min(len(corrs), k + half_width + 1)))
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
