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

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from avatar.audio.io import SAMPLE_RATE
from avatar.audio.phonetic import PhoneticFeatures
from avatar.audio.speech_model import SPEECH_MODEL_PREFIX, SpeechModelFeatures
from avatar.errors import UserError

if TYPE_CHECKING:
    from avatar.audio.phonetic import PhoneticFeatures


class FeatureExtractor(Protocol):
    """Turns 16 kHz mono audio into a feature sequence: `MelFeatures`, `PhoneticFeatures`, and
    `SpeechModelFeatures` (a local pretrained speech encoder, optional), combined by `SpeechFeatures`."""

    name: str
    rate_hz: float  # feature rows per second
    dim: int  # features per row

    def __call__(self, wave: np.ndarray) -> np.ndarray:  # [S] float32 -> [T, dim] float32
        ...


@functools.lru_cache(maxsize=8)
def _mel_basis(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_mels, 257] librosa's mel filters for a 512-point FFT at 16 kHz, made once (`avatar live` computes
    features 25 times a second)."""
    import librosa  # noqa: PLC0415 - see MelFeatures.frame_rms

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=512, n_mels=n_mels, fmin=fmin, fmax=fmax)


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
        import librosa  # noqa: PLC0415 - librosa starts numba (a second): loaded when features are computed

        return librosa.feature.rms(y=wave, frame_length=400, hop_length=self.hop, center=True)[0]

    @staticmethod
    def voicing_threshold(rms: np.ndarray) -> float:
        """Frames louder than this share of the clip's median RMS have a pitch."""
        return max(1e-4, 0.05 * np.median(rms[rms > 0]) if np.any(rms > 0) else 1e-4)

    def __call__(self, wave: np.ndarray, voicing_rms: float | None = None, warp: float = 1.0) -> np.ndarray:
        """`voicing_rms` defaults to `voicing_threshold` of this clip; give the whole clip's value when a
        long clip is processed in chunks (rows then depend only on samples within 512 of their centre).
        `warp` != 1 moves the mel bands' frequencies by that factor (vocal-tract-length perturbation, for
        training augmentation only)."""
        rows, rms = self.rows_and_rms(wave, warp)
        return self.voiced(rows, rms, self.voicing_threshold(rms) if voicing_rms is None else voicing_rms)

    def rows_and_rms(self, wave: np.ndarray, warp: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """[T, dim] rows whose pitch column holds every frame's pitch, voiced or not, and [T] the frames' RMS:
        what a chunked reader keeps until the whole clip's voicing threshold is known (`voiced`)."""
        import librosa  # noqa: PLC0415 - librosa starts numba (a second): loaded when features are computed

        hop = self.hop
        power = np.abs(librosa.stft(wave, n_fft=512, hop_length=hop, win_length=400, center=True)) ** 2
        mel = _mel_basis(self.n_mels, 40 * warp, min(7600 * warp, SAMPLE_RATE / 2)) @ power
        log_mel = np.log(mel + 1e-6)  # [n_mels, T]
        rms = self.frame_rms(wave)
        log_energy = np.log(rms + 1e-5)
        f0 = librosa.yin(wave, fmin=60, fmax=400, sr=SAMPLE_RATE, frame_length=1024, hop_length=hop, center=True)
        T = min(log_mel.shape[1], log_energy.shape[0], f0.shape[0])
        rows = np.concatenate([log_mel[:, :T].T, log_energy[:T, None], np.log(f0)[:T, None]], axis=1)
        return rows.astype(np.float32), rms[:T]

    @staticmethod
    def voiced(rows: np.ndarray, rms: np.ndarray, voicing_rms: float) -> np.ndarray:
        """`rows` with the pitch of the frames no louder than `voicing_rms` set to log(60 Hz), the unvoiced value."""
        rows = rows.copy()
        rows[rms <= voicing_rms, -1] = np.log(60.0)
        return rows


@dataclass
class SpeechFeatures:
    """The avatar's audio rows: log-mel/energy/pitch (`MelFeatures`, the voice's sound) beside soft
    phonetic classes (`avatar.audio.phonetic.PhoneticFeatures`, what is said, decoded by a speaker-
    independent acoustic model) and, when the user has one, a pretrained speech encoder's hidden layer
    (`avatar.audio.speech_model.SpeechModelFeatures`), row-aligned at 100 Hz, in that column order. Any part
    may be left out. Only the mel columns (the first `normalized`) are normalised per clip: class
    probabilities already mean the same for every voice, and a clip's share of pauses must not shift them;
    the speech encoder's rows are standardised on their own."""

    mel: MelFeatures | None
    phonetic: PhoneticFeatures | None
    learned: SpeechModelFeatures | None = None
    rate_hz: float = 100.0

    @property
    def parts(self) -> list:
        return [part for part in (self.mel, self.phonetic, self.learned) if part is not None]

    @property
    def windowed_parts(self) -> list:
        """The parts made on the fixed window grid of avatar.audio.grid (each has `stream`)."""
        return [part for part in (self.phonetic, self.learned) if part is not None]

    @property
    def name(self) -> str:
        return "+".join(part.name for part in self.parts)

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    @property
    def hop(self) -> int:
        return int(round(SAMPLE_RATE / self.rate_hz))

    @property
    def normalized(self) -> int:
        return self.mel.dim if self.mel is not None else 0

    @property
    def silence_column(self) -> int | None:
        """Column of the phonetic silence class (pauses), or None without a phonetic part."""
        if self.phonetic is None:
            return None
        return self.normalized + self.phonetic.silence_index

    @property
    def energy_column(self) -> int | None:
        """Column of the (clip-normalised) log energy, or None without a mel part."""
        return self.mel.n_mels if self.mel is not None else None

    @property
    def loudness(self) -> MelFeatures:
        """The analysis that measures frame loudness and the voicing threshold (the mel part's settings)."""
        return self.mel or MelFeatures()

    def __call__(self, wave: np.ndarray, voicing_rms: float | None = None, warp: float = 1.0) -> np.ndarray:
        parts = []
        if self.mel is not None:
            parts.append(self.mel(wave, voicing_rms, warp))
        parts += [part(wave) for part in self.windowed_parts]
        rows = min(len(p) for p in parts)
        return np.concatenate([p[:rows] for p in parts], axis=1).astype(np.float32)


# The feature sets a dataset can be built with (`avatar preprocess --features`).
FEATURE_SETS = ("mel+phones+visemes", "mel+visemes", "mel", "visemes", "mel+phones")


def speech_features(kind: str, speech_model: str | Path | None = None, layer: int = -1) -> SpeechFeatures:
    """The extractor of one of FEATURE_SETS, with the hidden layer `layer` of the speech encoder saved in the
    folder `speech_model` when one is given (UserError when it is not a usable model folder)."""

    parts = kind.split("+")
    classes = {("visemes",): "visemes", ("phones",): "phones", ("phones", "visemes"): "both"}.get(
        tuple(p for p in parts if p != "mel")
    )
    if kind not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {kind!r}; known: {', '.join(FEATURE_SETS)}")
    return SpeechFeatures(
        MelFeatures() if "mel" in parts else None,
        PhoneticFeatures(classes=classes) if classes else None,
        SpeechModelFeatures(str(speech_model), layer) if speech_model else None,
    )


def extractor_named(name: str, speech_model: str = "") -> SpeechFeatures | None:
    """The extractor whose `name` is `name` (as recorded in a dataset or an avatar), or None. A name with a
    speech-encoder part needs the model's folder (`speech_model`, as recorded beside the name), holding the
    same files as when the name was recorded."""
    base, learned, _ = name.partition("+" + SPEECH_MODEL_PREFIX)
    kind = next((k for k in FEATURE_SETS if speech_features(k).name == base), None)
    if kind is None or not learned:
        return speech_features(kind) if kind is not None else None
    layer = re.search(r"-l(-?\d+)-", name[len(base) :])
    if not speech_model or layer is None:
        return None
    try:
        extractor = speech_features(kind, speech_model, int(layer.group(1)))
    except UserError:  # the folder is gone or no longer a model
        return None
    return extractor if extractor.name == name else None


def frame_log_energy(wave: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """[num_frames] float64 log RMS of the 25 ms around each video frame's centre (the mel part's log-energy
    column, read at the frames): the loudness envelope the lip-sync measures compare the mouth with."""
    loudness = MelFeatures()
    rms = loudness.frame_rms(wave)
    rows = np.clip(np.round((np.arange(num_frames) + 0.5) / fps * loudness.rate_hz).astype(int), 0, len(rms) - 1)
    return np.log(rms[rows].astype(np.float64) + 1e-5)


def feature_stats(features: np.ndarray, normalized: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std [F] of a clip's features (for clip-level normalisation); columns from
    `normalized` on (the phonetic classes of `SpeechFeatures`) keep mean 0 and std 1."""
    # float64 sums: a float32 mean of a constant column misses it by rounding, which the tiny std then magnifies
    mean, std = features.mean(0, dtype=np.float64), features.std(0, dtype=np.float64) + 1e-4
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return unnormalized_after(mean, std, normalized)


def unnormalized_after(mean: np.ndarray, std: np.ndarray, normalized: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Stats that leave the columns from `normalized` on as they are."""
    if normalized is not None:
        mean, std = mean.copy(), std.copy()
        mean[normalized:], std[normalized:] = 0.0, 1.0
    return mean, std


def normalize_features(features: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Clip-level mean/variance normalisation, which removes loudness and channel differences between
    the training clip and new audio. `stats` defaults to the clip's own."""
    mean, std = stats if stats is not None else feature_stats(features)
    return ((features - mean) / std).astype(np.float32)


def frame_window_rows(
    rate_hz: float, fps: float, num_frames: int, window: int = 16, first_frame: int = 0, total_rows: int | None = None
) -> np.ndarray:
    """[num_frames, window] feature-row indices of the windows of frames first_frame.. (see the module
    docstring), clamped to [0, total_rows) when total_rows is given."""
    centres = (np.arange(first_frame, first_frame + num_frames) + 0.5) / fps
    start = np.round(centres * rate_hz).astype(np.int64) - window // 2
    rows = start[:, None] + np.arange(window)[None, :]
    return rows if total_rows is None else np.clip(rows, 0, total_rows - 1)


def frame_windows(
    features: np.ndarray, rate_hz: float, fps: float, num_frames: int, window: int = 16, first_frame: int = 0
) -> np.ndarray:
    """[T, F] features -> [num_frames, window, F], the window of each frame (see the module docstring).

    `first_frame` lets long audio be windowed chunk by chunk with the same result as all at once."""
    return features[frame_window_rows(rate_hz, fps, num_frames, window, first_frame, features.shape[0])]


def context_windows(windows: np.ndarray, context: int) -> np.ndarray:
    """[N, W, F] per-frame windows -> [N, 2 * context + 1, W, F]: each frame with its `context` neighbours
    on each side (edge frames repeated), for temporal attention over neighbouring frames."""
    n = windows.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None, :], 0, n - 1)
    return windows[idx]
