"""The mel part of the audio features (`MelFeatures`) on signals whose answer is known: pure tones land in the
mel band that holds them, the energy column is the log RMS, the pitch column reads log f0 of harmonic tones
(and follows a glide at the rows' times), silent and quiet frames read the unvoiced value."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.audio.features import MelFeatures
from avatar.audio.io import SAMPLE_RATE

MEL = MelFeatures()
PITCH, ENERGY = MEL.dim - 1, MEL.n_mels  # the last two columns
FMIN, FMAX = 40.0, 7600.0  # the band edges MelFeatures asks librosa for


def slaney_mel(hz):
    """Slaney's mel scale (librosa's default): linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    return np.where(hz < 1000, hz * 3 / 200, 15 + 27 * np.log(np.maximum(hz, 1e-9) / 1000) / np.log(6.4))


def slaney_hz(mel):
    mel = np.asarray(mel, np.float64)
    return np.where(mel < 15, mel * 200 / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))


# band i is a triangle over [centre i-1, centre i+1] peaking at centre i; n_mels + 2 points evenly spaced in mel
CENTRES = slaney_hz(np.linspace(slaney_mel(FMIN), slaney_mel(FMAX), MEL.n_mels + 2))[1:-1]


def tone(hz: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def harmonic(f0: np.ndarray | float, seconds: float = 1.0) -> np.ndarray:
    """A voiced buzz: harmonics 1..8 of f0 (a number, or one per sample) with 1/k amplitudes."""
    n = int(seconds * SAMPLE_RATE)
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(np.asarray(f0, np.float64), (n,))) / SAMPLE_RATE
    return (0.2 * sum(np.sin(k * phase + k) / k for k in range(1, 9))).astype(np.float32)


@pytest.mark.parametrize("band", [2, 10, 25, 40, 55, 70, 79])
def test_a_tone_at_a_band_centre_is_loudest_in_that_band(band):
    mel = MEL(tone(CENTRES[band]))[10:-10, : MEL.n_mels].mean(0)  # away from the padded ends
    louder = np.sort(mel)[::-1]
    assert mel.argmax() == band
    assert louder[0] - louder[1] > 0.5  # e^0.5: clearly the loudest, not a tie with a neighbour


@pytest.mark.parametrize("hz", [123.0, 777.0, 2500.0, 5555.0])
def test_a_tone_between_centres_is_loudest_in_one_of_the_two_bands_around_it(hz):
    mel = MEL(tone(hz))[10:-10, : MEL.n_mels].mean(0)
    below = int(np.searchsorted(CENTRES, hz)) - 1
    assert mel.argmax() in (below, below + 1)


@pytest.mark.parametrize("amplitude", [0.01, 0.3])
def test_energy_column_is_the_log_rms(amplitude):
    rows = MEL(tone(440.0, amplitude=amplitude))[5:-5]
    np.testing.assert_allclose(rows[:, ENERGY], np.log(amplitude / np.sqrt(2)), atol=0.02)


@pytest.mark.parametrize("f0", [75.0, 110.0, 200.0, 380.0])
def test_pitch_column_reads_log_f0(f0):
    pitch = np.exp(MEL(harmonic(f0))[5:-5, PITCH])
    np.testing.assert_allclose(pitch, f0, rtol=0.02)


def test_pitch_column_follows_a_glide_at_the_rows_times():
    """f0 rising from 100 to 300 Hz over 2 s: row t (centred at t / 100 s) reads the f0 of that moment."""
    seconds = 2.0
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rows = MEL(harmonic(100.0 * 3 ** (t / seconds), seconds))
    at_rows = 100.0 * 3 ** (np.arange(len(rows)) / MEL.rate_hz / seconds)
    np.testing.assert_allclose(np.exp(rows[5:-5, PITCH]), at_rows[5:-5], rtol=0.02)


def test_silent_and_quiet_frames_read_the_unvoiced_pitch():
    """0.5 s of silence, 0.5 s of a 150 Hz buzz, 0.5 s of silence, 0.5 s of faint noise (-80 dB)."""
    half = SAMPLE_RATE // 2
    faint = 1e-4 * np.random.default_rng(0).standard_normal(half)
    wave = np.concatenate([np.zeros(half), harmonic(150.0, 0.5), np.zeros(half), faint]).astype(np.float32)
    pitch = MEL(wave)[:, PITCH]
    buzz = slice(55, 95)  # rows 0.55 .. 0.95 s
    np.testing.assert_allclose(np.exp(pitch[buzz]), 150.0, rtol=0.02)
    unvoiced = np.r_[0:45, 105 : len(pitch)]
    assert np.all(pitch[unvoiced] == np.float32(np.log(60.0)))
