"""The source video's A/V offset: a shared clip with its sound moved by a known number of frames is found
within one frame of that shift (on top of the clip's own offset), from the lips and the decoded phones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avatar.audio.io import SAMPLE_RATE, load_audio
from avatar.audio.phonetic import VISEME_NAMES, PhoneticFeatures
from avatar.contracts.dataset import Split, heard_frames
from avatar.contracts.face_mesh import mouth_opening
from avatar.preprocess.av_offset import (
    AvOffset,
    estimate_offset,
    remaining_offset_ms,
    rows_to_frames,
    shift_audio,
)
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
    # the scan peaks where the sound, made 3 frames later than the lips, lines up with them
    lips = np.convolve(np.random.default_rng(0).normal(size=300), np.ones(3) / 3, "same")
    visemes = np.zeros((1200, len(VISEME_NAMES)))
    visemes[:, VISEME_NAMES.index("open")] = np.repeat(np.roll(lips, 3), 4)
    found = estimate_offset(visemes, 100.0, lips, 25.0)
    assert found.confident and abs(found.ms - 120.0) < 20.0, found
    assert not estimate_offset(visemes[:200], 100.0, lips[:50], 25.0).confident  # 2 s: too short to tell
    # sub-frame refinement: a peak between two lags lands between them
    smooth = np.convolve(np.random.default_rng(1).normal(size=400), np.ones(5) / 5, "same")
    visemes = np.zeros((1600, len(VISEME_NAMES)))
    visemes[:, VISEME_NAMES.index("open")] = np.interp(np.arange(1600) / 100.0 - 0.06, np.arange(400) / 25.0, smooth)
    found = estimate_offset(visemes, 100.0, np.interp(np.arange(400) / 25.0, np.arange(400) / 25.0, smooth), 25.0)
    assert found.confident and 40.0 <= found.ms <= 80.0  # 60 ms = 1.5 frames
    # what the dataset keeps: a confident estimate is removed, a doubtful one kept; --av-offset overrides
    doubtful = AvOffset(80.0, 2.0, 0.3, 0.1)
    assert found.decided(None).applied and not doubtful.decided(None).applied
    assert not found.decided(0).applied and found.decided(0).ms == found.ms
    assert doubtful.decided(-120).to_manifest() | {"confidence": 0} == {
        "ms": -120.0, "confidence": 0, "peak_correlation": 0.3, "correlation_at_zero": 0.1,
        "applied": True, "given": True, "confident": False,
    }  # fmt: skip
    assert remaining_offset_ms(found.decided(None).to_manifest()) == 0.0
    assert remaining_offset_ms(found.decided(0).to_manifest()) == pytest.approx(found.ms, abs=1e-3)
    assert remaining_offset_ms(doubtful.decided(0).to_manifest()) == 0.0 and remaining_offset_ms(None) is None
    # moving the sound keeps its length; a positive offset (late sound) drops its start
    wave = np.arange(10, dtype=np.float32)
    assert shift_audio(wave, 2 / 16000 * 1000, 16000).tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 0]
    assert shift_audio(wave, -2 / 16000 * 1000, 16000).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shift_audio(wave, -1.0, 16000).tolist() == [0] * 10  # 16 samples: more than the wave holds


def test_frames_left_silent_by_the_shift_are_neither_trained_nor_validated():
    """Removing a 236 ms offset (the Obama clip's) leaves the last 5.9 frames of 500 in silence: 6 frames whose
    centre is there are out of the split, which takes its validation tenth from the 494 heard; a negative
    offset leaves the first frames out; a kept or missing offset, none."""

    def record(ms, applied=True):
        return {"ms": ms, "applied": applied}

    assert heard_frames(record(235.6), 500, 25.0) == (0, 494)
    assert heard_frames(record(-235.6), 500, 25.0) == (6, 500)
    assert heard_frames(record(19.0), 500, 25.0) == (0, 500)  # 0.48 frame: the last frame's centre is heard
    assert heard_frames(record(21.0), 500, 25.0) == (0, 499)
    assert heard_frames(record(235.6, applied=False), 500, 25.0) == (0, 500) == heard_frames(None, 500, 25.0)
    assert heard_frames(record(1e6), 500, 25.0) == (0, 0)
    assert Split.of(500, 0.1, (0, 494)) == Split(train=(0, 445), val=(445, 494))
    assert Split.of(500, 0.1, (6, 500)) == Split(train=(6, 451), val=(451, 500))
    assert Split.of(500, 0.1) == Split(train=(0, 450), val=(450, 500))


@pytest.mark.parametrize("late_frames", [-14, 14, 15])
def test_a_peak_at_the_edge_of_the_scan_is_measured(late_frames):
    """The far lags, against which the peak's height is measured, are those inside the scan (a peak near its
    end left an index past it)."""
    smooth = np.convolve(np.random.default_rng(2).normal(size=400), np.ones(5) / 5, "same")
    visemes = np.zeros((1600, len(VISEME_NAMES)))
    late_s = late_frames / 25.0
    visemes[:, VISEME_NAMES.index("open")] = np.interp(np.arange(1600) / 100.0 - late_s, np.arange(400) / 25.0, smooth)
    found = estimate_offset(visemes, 100.0, smooth, 25.0)
    assert found.confident and abs(found.ms - 1000 * late_s) <= 20.0


def test_preprocess_removes_a_late_sound_and_keeps_it_when_told(shared_data, clip_dir, tmp_path):
    """A clip whose sound was made 6 frames late (given as `--audio`): the dataset's audio.wav is that sound
    moved 240 ms earlier (the clip's own offset aside), the manifest says so; `--av-offset 0` keeps the sound
    as it was."""
    from avatar.audio.io import save_wav
    from avatar.contracts.dataset import Dataset
    from avatar.preprocess.build import run
    from avatar.preprocess.config import PreprocessConfig
    from tests.conftest import cut_clip

    late_ms = 6 / FPS * 1000
    clip = cut_clip(shared_data / "mimictalk_german_anchor_20s.mp4", clip_dir / "anchor_2_14.mp4", 2.0, 12.0)
    late = tmp_path / "late.wav"
    save_wav(late, shift_audio(load_audio(clip), -late_ms, SAMPLE_RATE))
    small = dict(resolution=96, crop_samples=8, preview_seconds=1.0, contact_sheet_frames=4)
    out = tmp_path / "late"
    run(PreprocessConfig(video=clip, out=out, audio=late, **small))
    offset = Dataset(out).manifest.av_offset
    assert offset["applied"] and abs(offset["ms"] - late_ms - 44) <= 1000 / FPS, offset  # the clip's own: +44 ms
    split, n = Dataset(out).manifest.split, Dataset(out).num_frames
    assert split.train[0] == 0 and abs(n - split.val[1] - offset["ms"] / 1000 * FPS) <= 0.5  # the silent end left out
    assert Dataset(out).indices("val")[-1] == split.val[1] - 1 and Dataset(out).heard() == (0, split.val[1])
    # a dataset built before (its ranges cover every frame): its silent frames are still left out
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["split"] = {"train": [0, n - 8], "val": [n - 8, n]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert Dataset(out).indices("val").tolist() == list(range(n - 8, split.val[1]))
    source = load_audio(out / ".steps" / "source_audio.wav")
    moved = int(round(offset["ms"] / 1000 * SAMPLE_RATE))
    synced = load_audio(out / "audio.wav")  # as long as the source (the shift pads), cut to the frames' span
    assert len(synced) == min(len(source), round(Dataset(out).num_frames / FPS * SAMPLE_RATE))
    common = min(len(synced), len(source) - moved)
    np.testing.assert_allclose(synced[:common], source[moved : moved + common], atol=1e-4)
    run(PreprocessConfig(video=clip, out=out, audio=late, av_offset=0.0, **small))  # redoes the sync step on
    kept = Dataset(out).manifest.av_offset
    assert kept == {**offset, "applied": False}  # the estimate is still recorded
    assert Dataset(out).manifest.split.val[1] == n  # the sound as it was covers every frame
    np.testing.assert_allclose(load_audio(out / "audio.wav"), source[: len(synced)], atol=1e-4)
