"""Phonetic feature stream: phones on real speech, silence, row timing against the mel rows, chunked decoding."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pocketsphinx")

from avatar.audio.grid import num_rows  # noqa: E402
from avatar.audio.phonetic import PHONES, SILENCE, VISEME_NAMES, PhoneticFeatures, decode_phones  # noqa: E402

SR = 16000
SIL_VISEME = VISEME_NAMES.index("silence")


def load_16k(path) -> np.ndarray:
    import librosa
    import soundfile as sf

    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return librosa.resample(wave.mean(1), orig_sr=rate, target_sr=SR).astype(np.float32)


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    """8 s of continuous English speech (no pauses)."""
    return load_16k(shared_data / "sadtalker_hdtf_radio31_8s.wav")


def mel_rows(wave: np.ndarray) -> int:
    import librosa

    return librosa.feature.rms(y=wave, frame_length=400, hop_length=160, center=True).shape[1]


def test_phones_found_on_speech(speech):
    segments = decode_phones(speech)
    assert all(p in PHONES for p, _, _ in segments)
    assert all(a < b for _, a, b in segments) and all(s[2] <= t[1] for s, t in zip(segments, segments[1:]))
    visemes = PhoneticFeatures(classes="visemes", sigma_ms=0.0)(speech).argmax(1)
    assert len(np.unique(visemes)) >= 8
    assert np.mean(visemes != SIL_VISEME) > 0.7
    assert len({p for p, _, _ in segments if p != SILENCE}) >= 15


@pytest.mark.parametrize("kind", ["zeros", "quiet noise"])
def test_silence_is_the_silence_class(kind):
    wave = (
        np.zeros(2 * SR, np.float32)
        if kind == "zeros"
        else np.random.default_rng(0).normal(0, 3e-4, 2 * SR).astype(np.float32)
    )
    rows = PhoneticFeatures(classes="both")(wave)
    assert rows.shape == (num_rows(wave.size), len(PHONES) + len(VISEME_NAMES))
    assert np.all(rows[:, PHONES.index(SILENCE)] > 0.99)


@pytest.mark.parametrize("classes", ["phones", "visemes", "both"])
def test_rows_match_the_mel_rows(speech, classes):
    extractor = PhoneticFeatures(classes=classes, sigma_ms=20.0)
    for wave in (speech, speech[: SR + 77], speech[: 3 * SR - 1]):
        rows = extractor(wave)
        assert rows.shape == (mel_rows(wave), extractor.dim) and rows.dtype == np.float32
        blocks = np.split(rows, [len(PHONES)], axis=1) if classes == "both" else [rows]
        for block in blocks:
            np.testing.assert_allclose(block.sum(1), 1.0, atol=1e-5)


def test_phone_boundaries_land_within_one_video_frame_of_the_energy_change(speech):
    """1 s of room-level noise, 2 s of speech cut where it is loud at both ends, 1 s of noise: the decoded
    speech starts and ends within one video frame (4 rows) of the energy change."""
    import librosa

    pad = np.random.default_rng(0).normal(0, 3e-4, SR).astype(np.float32)
    wave = np.concatenate([pad, speech[int(2.5 * SR) : int(4.5 * SR)], pad])
    rms = librosa.feature.rms(y=wave, frame_length=400, hop_length=160, center=True)[0]
    loud = np.flatnonzero(rms > 0.02 * rms.max())
    speaking = np.flatnonzero(PhoneticFeatures(classes="visemes", sigma_ms=0.0)(wave).argmax(1) != SIL_VISEME)
    rows_per_video_frame = 100 / 25
    assert abs(speaking[0] - loud[0]) <= rows_per_video_frame
    assert abs(speaking[-1] - loud[-1]) <= rows_per_video_frame


def test_same_wave_same_rows(speech):
    extractor = PhoneticFeatures()
    np.testing.assert_array_equal(extractor(speech), extractor(speech))


def test_stream_within_one_window_equals_whole(speech):
    extractor = PhoneticFeatures(classes="both")
    chunks = (speech[i : i + 5919] for i in range(0, speech.size, 5919))
    np.testing.assert_array_equal(np.concatenate(list(extractor.stream(chunks))), extractor(speech))


def test_long_audio_streams_exactly_as_whole_on_the_fixed_grid(shared_data):
    """Rows of audio longer than one decoding window: any chunking of the stream gives exactly the whole
    clip's rows, and they mostly agree with a decode of the clip as ONE utterance (which normalises by the
    whole clip's cepstral mean, hence differs in some rows)."""
    wave = load_16k(shared_data / "genefacepp_macron_speech_12s.wav")
    extractor = PhoneticFeatures(classes="visemes", sigma_ms=0.0, window_s=6.0, overlap_s=2.0)
    whole = extractor(wave)
    for size in (SR, 7777, 3 * SR + 5):
        blocks = list(extractor.stream(wave[i : i + size] for i in range(0, wave.size, size)))
        assert len(blocks) >= 3
        np.testing.assert_array_equal(np.concatenate(blocks), whole)
    one_utterance = extractor.rows(wave)
    assert one_utterance.shape == whole.shape
    assert np.mean(one_utterance.argmax(1) == whole.argmax(1)) > 0.75


@pytest.mark.parametrize("seconds", [0.0, 0.01, 0.2])
def test_very_short_audio(speech, seconds):
    wave = speech[: int(seconds * SR)]
    rows = PhoneticFeatures(classes="both")(wave)
    assert rows.shape == (num_rows(wave.size), len(PHONES) + len(VISEME_NAMES))
    assert np.all(np.isfinite(rows))
    assert list(PhoneticFeatures().stream([wave]))[0].shape[0] == num_rows(wave.size)


def test_noise_only_audio_gives_valid_rows():
    wave = np.random.default_rng(1).normal(0, 0.1, 3 * SR).astype(np.float32)
    rows = PhoneticFeatures()(wave)
    assert rows.shape == (num_rows(wave.size), len(VISEME_NAMES)) and np.all(np.isfinite(rows))
