"""Audio features and their alignment to video frames.

Preprocessing (training features) and rendering (new audio) both call this module, so features at
render time come from exactly the code that made the training features.

Alignment contract:
- Audio is mono float32 at `SAMPLE_RATE` (16 kHz). Sample s is at time s / 16000.
- Feature row t (at `rate_hz`, 100 Hz for the built-in extractor) is centred at time t / rate_hz.
- Video frame i covers [i / fps, (i + 1) / fps); its centre is (i + 0.5) / fps.
- The window of frame i is `window` feature rows starting at round(centre * rate_hz) - window // 2
  (clamped at the edges by repeating the first/last row): for window 16 at 100 Hz, -80 ms .. +70 ms.
- Temporal context: frame i sees the windows of frames i-K..i+K (`context_windows`, edges repeated).
- A clip of n samples drives `num_frames_for(n, sr, fps)` = floor(n * fps / sr + 0.5) frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from avatar.audio.io import SAMPLE_RATE


class FeatureExtractor(Protocol):
    """Turns 16 kHz mono audio into a feature sequence. Implementations: `MelFeatures` (built in);
    a pretrained speech encoder (HuBERT, wav2vec2, Whisper) can implement it when its weights are local."""

    name: str
    rate_hz: float  # feature rows per second
    dim: int  # features per row

    def __call__(self, wave: np.ndarray) -> np.ndarray:  # [S] float32 -> [T, dim] float32
        ...


@dataclass
class MelFeatures:
    """80 log-mel bands + log energy + log pitch at 100 Hz (25 ms windows, 10 ms hop), from librosa."""

    n_mels: int = 80
    name: str = "mel80-energy-pitch"
    rate_hz: float = 100.0

    @property
    def dim(self) -> int:
        return self.n_mels + 2

    @property
    def hop(self) -> int:
        return int(round(SAMPLE_RATE / self.rate_hz))

    def frame_rms(self, wave: np.ndarray) -> np.ndarray:
        """[S] -> [T] RMS of the 25 ms frame around each feature row."""
        import librosa

        return librosa.feature.rms(y=wave, frame_length=400, hop_length=self.hop, center=True)[0]

    @staticmethod
    def voicing_threshold(rms: np.ndarray) -> float:
        """Frames louder than this share of the clip's median RMS have a pitch."""
        return max(1e-4, 0.05 * np.median(rms[rms > 0]) if np.any(rms > 0) else 1e-4)

    def __call__(self, wave: np.ndarray, voicing_rms: float | None = None) -> np.ndarray:
        """`voicing_rms` defaults to `voicing_threshold` of this clip; give the whole clip's value when a
        long clip is processed in chunks (rows then depend only on samples within 512 of their centre)."""
        import librosa

        hop = self.hop
        mel = librosa.feature.melspectrogram(
            y=wave, sr=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=hop, n_mels=self.n_mels,
            fmin=40, fmax=7600, center=True,
        )
        log_mel = np.log(mel + 1e-6)  # [n_mels, T]
        rms = self.frame_rms(wave)
        log_energy = np.log(rms + 1e-5)
        f0 = librosa.yin(wave, fmin=60, fmax=400, sr=SAMPLE_RATE, frame_length=1024, hop_length=hop, center=True)
        voiced = rms > (self.voicing_threshold(rms) if voicing_rms is None else voicing_rms)
        log_f0 = np.where(voiced, np.log(f0), np.log(60.0))
        T = min(log_mel.shape[1], log_energy.shape[0], log_f0.shape[0])
        return np.concatenate(
            [log_mel[:, :T].T, log_energy[:T, None], log_f0[:T, None]], axis=1
        ).astype(np.float32)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std [F] of a clip's features (for clip-level normalisation)."""
    return features.mean(0).astype(np.float32), (features.std(0) + 1e-4).astype(np.float32)


def normalize_features(features: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Clip-level mean/variance normalisation, which removes loudness and channel differences between
    the training clip and new audio. `stats` defaults to the clip's own."""
    mean, std = stats if stats is not None else feature_stats(features)
    return ((features - mean) / std).astype(np.float32)


def frame_window_rows(rate_hz: float, fps: float, num_frames: int, window: int = 16, first_frame: int = 0,
                      total_rows: int | None = None) -> np.ndarray:
    """[num_frames, window] feature-row indices of the windows of frames first_frame.. (see the module
    docstring), clamped to [0, total_rows) when total_rows is given."""
    centres = (np.arange(first_frame, first_frame + num_frames) + 0.5) / fps
    start = np.round(centres * rate_hz).astype(np.int64) - window // 2
    rows = start[:, None] + np.arange(window)[None, :]
    return rows if total_rows is None else np.clip(rows, 0, total_rows - 1)


def frame_windows(features: np.ndarray, rate_hz: float, fps: float, num_frames: int, window: int = 16,
                  first_frame: int = 0) -> np.ndarray:
    """[T, F] features -> [num_frames, window, F], the window of each frame (see the module docstring).

    `first_frame` lets long audio be windowed chunk by chunk with the same result as all at once."""
    return features[frame_window_rows(rate_hz, fps, num_frames, window, first_frame, features.shape[0])]


def context_windows(windows: np.ndarray, context: int) -> np.ndarray:
    """[N, W, F] per-frame windows -> [N, 2 * context + 1, W, F]: each frame with its `context` neighbours
    on each side (edge frames repeated), for temporal attention over neighbouring frames."""
    n = windows.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None, :], 0, n - 1)
    return windows[idx]
