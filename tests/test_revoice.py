"""Re-voiced copies of the training audio: another voice, the same words at the same times."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.audio.features import speech_features
from avatar.audio.io import SAMPLE_RATE, load_audio
from avatar.audio.revoice import Voice, VoiceAugmentConfig, draw_voice, revoice, revoiced_copies, revoiced_rows


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    return load_audio(shared_data / "sadtalker_hdtf_radio31_8s.wav")[: 4 * SAMPLE_RATE]


def median_f0(wave: np.ndarray) -> float:
    import librosa

    f0, voiced, _ = librosa.pyin(wave, fmin=60, fmax=400, sr=SAMPLE_RATE, frame_length=1024)
    return float(np.nanmedian(f0[voiced]))


def plain_voice(**changes) -> Voice:
    base = dict(resample=1.0, warp=1.0, gain_db=np.zeros(8), rt60_s=0.0, snr_db=np.inf)
    return Voice(**{**base, **changes})


def test_resampling_moves_the_pitch_and_the_rows_keep_their_times(speech):
    rng = np.random.default_rng(0)
    higher = revoice(speech, plain_voice(resample=2 ** (3 / 12)), rng)
    assert higher.size == pytest.approx(speech.size / 2 ** (3 / 12), rel=1e-3)
    assert median_f0(higher) / median_f0(speech) == pytest.approx(2 ** (3 / 12), rel=0.06)
    extractor = speech_features("mel")
    rows = revoiced_rows(speech, plain_voice(resample=2 ** (3 / 12)), extractor, rng)
    clean = extractor(speech)
    assert rows.shape == clean.shape  # one row per original row: still aligned with the video frames
    energy = extractor.mel.n_mels  # loudness column: where the words are did not move
    assert np.corrcoef(rows[:, energy], clean[:, energy])[0, 1] > 0.9
    assert np.abs(rows[:, :energy] - clean[:, :energy]).mean() > 0.3  # but the spectrum did change


def test_each_ingredient_changes_the_sound_and_nothing_else_changes_the_length(speech):
    rng = np.random.default_rng(1)
    for voice in (
        plain_voice(warp=1.1),
        plain_voice(gain_db=np.linspace(-6, 6, 8)),
        plain_voice(rt60_s=0.3),
        plain_voice(snr_db=20.0),
    ):
        out = revoice(speech, voice, rng)
        assert out.size == speech.size and out.dtype == np.float32 and np.abs(out).max() <= 1.0
        if voice.warp == 1.0:
            assert not np.allclose(out, speech, atol=1e-3)
    extractor = speech_features("mel")
    warped = extractor(speech, warp=1.1)
    assert warped.shape == extractor(speech).shape and not np.allclose(warped, extractor(speech))


def test_copies_are_deterministic_normalised_and_voices_vary(speech):
    cfg = VoiceAugmentConfig(copies=2)
    extractor = speech_features("mel+visemes")
    a = revoiced_copies(speech, extractor, cfg, seed=3)
    b = revoiced_copies(speech, extractor, cfg, seed=3)
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b))
    rows = 1 + speech.size // extractor.hop
    for copy in a:
        assert copy.shape == (rows, extractor.dim)
        mel = copy[:, : extractor.normalized]
        np.testing.assert_allclose(mel.mean(0), 0, atol=1e-3)  # each copy normalised by its own statistics
        phonetic = copy[:, extractor.normalized :]
        np.testing.assert_allclose(phonetic.sum(1), 1, atol=1e-3)  # class probabilities, left as they are
    voices = [draw_voice(VoiceAugmentConfig(), np.random.default_rng(s), 4.0) for s in range(20)]
    assert len({round(v.resample, 3) for v in voices}) == 20
    assert all(2 ** (-2 / 12) <= v.resample <= 2 ** (2 / 12) and 0.9 <= v.warp <= 1.1 for v in voices)
