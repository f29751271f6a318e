"""Other voices saying the training clip's words: feature rows of randomly re-voiced copies of its audio.

The audio encoder learns from one person's voice; rendered with another voice (a TTS voice, another
speaker, a dub) it must not depend on that voice. Each copy changes what a voice changes and keeps what
is said and when:
- size (`pitch_semitones`): the wave resampled by a factor r, which scales pitch and formants together
  (a smaller or larger speaker); its feature rows are read back at the original times, so the rows stay
  aligned with the video frames;
- vocal-tract length (`vtlp`): the mel filterbank warped by a factor near 1, which moves the formants alone;
- loudness (`loudness_db`): a slow random gain envelope (a global gain is removed by clip normalisation,
  a changing one is not);
- room and microphone (`reverb_s`, `noise_snr_db`): a short synthetic reverberation tail and white noise.
Each copy is normalised by its own statistics, as new audio is at render time. The phonetic columns are
decoded from the re-voiced audio, so they carry the decoder's mistakes on unfamiliar voices too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal

from avatar.audio.features import SpeechFeatures, feature_stats, normalize_features
from avatar.audio.io import SAMPLE_RATE


@dataclass
class VoiceAugmentConfig:
    """How many re-voiced copies of the training audio the audio encoder also learns from, and how far
    each ingredient may go (0 turns an ingredient off; copies 0 turns augmentation off)."""

    copies: int = 6  # re-voiced copies, each with its own random voice
    clean_share: float | None = None  # share of samples from the original audio; None: it is one voice among the copies
    pitch_semitones: float = 2.0  # size: pitch and formants scaled by up to this many semitones either way
    vtlp: float = 0.1  # vocal-tract length: formants alone moved by a factor within 1 +- this
    loudness_db: float = 6.0  # slow gain envelope within +- this many dB
    reverb_s: float = 0.3  # reverberation time (RT60) up to this many seconds
    noise_snr_db: float = 25.0  # white noise at a signal-to-noise ratio of at least this (0: none)


@dataclass
class Voice:
    """One drawn voice."""

    resample: float  # r: frequencies times r
    warp: float  # mel filterbank warp
    gain_db: np.ndarray  # [K] gain envelope control points, one per second
    rt60_s: float
    snr_db: float  # inf: no noise


def draw_voice(cfg: VoiceAugmentConfig, rng: np.random.Generator, seconds: float) -> Voice:
    semitones = rng.uniform(-cfg.pitch_semitones, cfg.pitch_semitones)
    return Voice(
        resample=float(2.0 ** (semitones / 12.0)),
        warp=float(rng.uniform(1 - cfg.vtlp, 1 + cfg.vtlp)),
        gain_db=rng.uniform(-cfg.loudness_db, cfg.loudness_db, int(np.ceil(seconds)) + 2),
        rt60_s=float(rng.uniform(0.0, cfg.reverb_s)),
        snr_db=float(rng.uniform(cfg.noise_snr_db, cfg.noise_snr_db + 20.0)) if cfg.noise_snr_db > 0 else np.inf,
    )


def revoice(wave: np.ndarray, voice: Voice, rng: np.random.Generator) -> np.ndarray:
    """The wave as said by `voice`: resampled (length / r), with gain, reverberation and noise."""

    wave = np.asarray(wave, np.float64)
    if voice.resample != 1.0:
        wave = scipy.signal.resample_poly(wave, 1000, int(round(1000 * voice.resample)))
    t = np.arange(wave.size) / SAMPLE_RATE
    gain = np.interp(t, np.arange(len(voice.gain_db)), voice.gain_db)
    wave = wave * 10.0 ** (gain / 20.0)
    if voice.rt60_s > 0.01:
        length = int(voice.rt60_s * SAMPLE_RATE)
        decay = np.exp(-6.9 * np.arange(length) / length)  # -60 dB at the end
        tail = rng.standard_normal(length) * decay * 0.1
        tail[0] = 1.0
        wave = scipy.signal.fftconvolve(wave, tail)[: wave.size]
    if np.isfinite(voice.snr_db):
        power = float(np.mean(wave**2)) + 1e-12
        wave = wave + rng.standard_normal(wave.size) * np.sqrt(power / 10.0 ** (voice.snr_db / 10.0))
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return (wave / peak * 0.9 if peak > 1.0 else wave).astype(np.float32)


def revoiced_rows(wave: np.ndarray, voice: Voice, extractor: SpeechFeatures, rng: np.random.Generator) -> np.ndarray:
    """[1 + S // hop, F] raw feature rows of the re-voiced wave, at the ORIGINAL wave's row times."""
    rows_out = 1 + np.asarray(wave).size // extractor.hop
    revoiced = revoice(wave, voice, rng)
    feats = extractor(revoiced, warp=voice.warp)
    # original row t (time t / rate) is at time t / r in the resampled wave, i.e. its row t / r
    factor = np.asarray(wave).size / max(revoiced.size, 1)  # r as resampled (rounded to 1/1000)
    source = np.clip(np.arange(rows_out) / factor, 0, len(feats) - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, len(feats) - 1)
    frac = (source - low)[:, None].astype(np.float32)
    return ((1 - frac) * feats[low] + frac * feats[high]).astype(np.float32)


def revoiced_copies(
    wave: np.ndarray, extractor: SpeechFeatures, cfg: VoiceAugmentConfig, seed: int
) -> list[np.ndarray]:
    """`cfg.copies` normalised [T, F] feature arrays of re-voiced copies of `wave`, each with its own
    clip statistics; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    seconds = np.asarray(wave).size / SAMPLE_RATE
    copies = []
    for _ in range(cfg.copies):
        voice = draw_voice(cfg, rng, seconds)
        rows = revoiced_rows(wave, voice, extractor, rng)
        copies.append(normalize_features(rows, feature_stats(rows, extractor.normalized)))
    return copies
