"""The source video's A/V offset: a shared clip with its sound moved by a known number of frames is found
within one frame of that shift (on top of the clip's own offset), from the lips and the decoded phones."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.audio.io import SAMPLE_RATE, load_audio
from avatar.audio.phonetic import VISEME_NAMES, PhoneticFeatures
from avatar.contracts.face_mesh import mouth_opening
from avatar.preprocess.av_offset import estimate_offset, lag_correlations, rows_to_frames, shift_audio
from tests.conftest import SHARED_DATA
from tests.track_fixtures import real_detections

FPS = 25.0  # the German anchor clip
SECONDS = 16.0


@pytest.fixture(scope="module")
def anchor():
    """(16 kHz sound, tracked lip opening per frame) of 16 s of the shared German anchor clip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test material not found at {SHARED_DATA}")
    frames = int(SECONDS * FPS)
    detections = real_detections("mimictalk_german_anchor_20s.mp4", 2.0, frames, 256)
    wave = load_audio(SHARED_DATA / "mimictalk_german_anchor_20s.mp4")[int(2.0 * SAMPLE_RATE) :]
    return wave[: int(SECONDS * SAMPLE_RATE)], mouth_opening(detections.landmarks_mp3d)


def _estimate(wave, opening):
    return estimate_offset(PhoneticFeatures(classes="visemes")(wave), 100.0, opening, FPS)


def test_a_known_shift_of_the_sound_is_found_within_a_frame(anchor):
    wave, opening = anchor
    own = _estimate(wave, opening)
    assert own.confident, own
    for frames in (-6, -4, -2, 2, 4, 6):
        late = shift_audio(wave, -1000.0 * frames / FPS, SAMPLE_RATE)  # the sound `frames` later than the lips
        found = _estimate(late, opening)
        assert found.confident, (frames, found)
        assert abs((found.ms - own.ms) * FPS / 1000.0 - frames) <= 1.0, (frames, found, own)


def test_another_speakers_sound_gives_no_confident_offset(anchor):
    """The lips of one person against the speech of another: no peak to speak of, so nothing is applied."""
    _, opening = anchor
    other = load_audio(SHARED_DATA / "musetalk_eng_speech_60s.wav")[5 * SAMPLE_RATE : int((5 + SECONDS) * SAMPLE_RATE)]
    assert not _estimate(other, opening).confident


def test_the_pieces_on_made_up_signals():
    # frame means of rows: 100 Hz rows at 25 fps, four rows a frame
    np.testing.assert_allclose(rows_to_frames(np.repeat(np.arange(5.0), 4), 100.0, 25.0, 5), np.arange(5.0))
    # the correlation peaks where the sound, made 3 frames later than the lips, lines up with them
    lips = np.random.default_rng(0).normal(size=300)
    assert int(np.argmax(lag_correlations(lips, np.roll(lips, 3)))) - 15 == 3
    # sub-frame refinement: a peak between two lags lands between them
    smooth = np.convolve(np.random.default_rng(1).normal(size=400), np.ones(5) / 5, "same")
    visemes = np.zeros((1600, len(VISEME_NAMES)))
    visemes[:, VISEME_NAMES.index("open")] = np.interp(np.arange(1600) / 100.0 - 0.06, np.arange(400) / 25.0, smooth)
    found = estimate_offset(visemes, 100.0, np.interp(np.arange(400) / 25.0, np.arange(400) / 25.0, smooth), 25.0)
    assert found.confident and 40.0 <= found.ms <= 80.0  # 60 ms = 1.5 frames
    # moving the sound keeps its length; a positive offset (late sound) drops its start
    wave = np.arange(10, dtype=np.float32)
    assert shift_audio(wave, 2 / 16000 * 1000, 16000).tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 0]
    assert shift_audio(wave, -2 / 16000 * 1000, 16000).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shift_audio(wave, -1.0, 16000).tolist() == [0] * 10  # 16 samples: more than the wave holds


def test_a_peak_at_the_last_lag_of_a_short_clip():
    """A 2 s clip scans +-12 frames; a sound 12 frames late puts the peak on the scan's last lag (the lags
    left out around the peak then run past the scan's end)."""
    lips = np.random.default_rng(2).normal(size=50)
    visemes = np.zeros((50, len(VISEME_NAMES)))
    visemes[:, VISEME_NAMES.index("open")] = np.concatenate([np.zeros(12), lips[:-12]])  # 12 frames late
    found = estimate_offset(visemes, 25.0, lips, 25.0)
    assert found.ms == pytest.approx(1000.0 * 12 / 25.0, abs=40.0)  # as far as the scan goes, within a frame


def test_preprocess_removes_a_late_sound_and_keeps_it_when_told(shared_data, clip_dir, tmp_path):
    """A clip whose sound was made 6 frames late: the dataset's audio.wav is the source's sound moved 240 ms
    earlier (the lips' own offset aside), the manifest says so; `--av-offset 0` keeps the sound as it was."""
    from avatar.contracts.dataset import Dataset
    from avatar.preprocess.build import run
    from avatar.preprocess.config import PreprocessConfig
    from tests.conftest import cut_clip

    late_ms = 6 / FPS * 1000
    clip = cut_clip(shared_data / "mimictalk_german_anchor_20s.mp4", clip_dir / "late_sound.mp4", 2.0, 14.0,
                    ["-af", f"adelay={late_ms:.0f}:all=1"])  # fmt: skip
    small = dict(resolution=96, crop_samples=8, preview_seconds=1.0, contact_sheet_frames=4)
    out = tmp_path / "late"
    run(PreprocessConfig(video=clip, out=out, **small))
    offset = Dataset(out).manifest.av_offset
    assert offset["applied"] and abs(offset["ms"] - late_ms - 44) <= 1000 / FPS, offset  # the clip's own: +44 ms
    source = load_audio(out / ".steps" / "source_audio.wav")
    moved = int(round(offset["ms"] / 1000 * SAMPLE_RATE))
    np.testing.assert_allclose(load_audio(out / "audio.wav")[: len(source) - moved], source[moved:], atol=1e-4)
    run(PreprocessConfig(video=clip, out=out, av_offset=0.0, **small))  # redoes the sync step and those after it
    kept = Dataset(out).manifest.av_offset
    assert not kept["applied"] and kept["ms"] == 0.0
    np.testing.assert_allclose(load_audio(out / "audio.wav"), source, atol=1e-4)
