"""Driving signals: chunked audio features equal the all-at-once ones; pose loops without jumps; blinks
follow the person's own statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from export_fixtures import FPS, make_dataset, speech_like, write_wav

from avatar.audio import streaming
from avatar.audio.clip import AudioClip
from avatar.audio.features import (
    SpeechFeatures,
    context_windows,
    feature_stats,
    frame_windows,
    normalize_features,
    speech_features,
)
from avatar.audio.io import iter_audio, load_audio
from avatar.audio.phonetic import PhoneticFeatures
from avatar.contracts.dataset import Dataset
from avatar.model.driving import (
    DrivingData,
    blink_schedule,
    detect_blinks,
    pose_schedule,
    track_positions,
    typical_pose_index,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    return Dataset(make_dataset(tmp_path_factory.mktemp("drive") / "dataset", num_frames=150))


@pytest.fixture(scope="module")
def driving(dataset) -> DrivingData:
    return DrivingData.from_dataset(dataset)


@pytest.mark.parametrize("phonetic", [False, True])
def test_chunked_features_equal_all_at_once(tmp_path, monkeypatch, phonetic):
    """Render-time features of a file, read once and analysed in chunks, equal the dataset's features of the
    same audio, statistics and windows included; the phonetic part is decoded on its fixed window grid (short
    windows here, so there are several), fed from the same single decoding as the mel part."""
    monkeypatch.setattr(streaming, "ROWS_PER_CHUNK", 97)  # many chunks, not aligned to anything
    path = write_wav(tmp_path / "a.wav", speech_like(4.03, 44100, channels=2), 44100)
    mel = speech_features("mel").mel
    extractor = SpeechFeatures(mel, PhoneticFeatures(window_s=1.5, overlap_s=0.5) if phonetic else None)
    whole = extractor(load_audio(path))
    clip = AudioClip.read(path, extractor)
    assert clip.num_samples == len(load_audio(path)) and not clip.silent and clip.channels == 2
    assert clip.rows.shape == whole.shape
    np.testing.assert_allclose(clip.rows, whole, atol=1e-4)
    for mine, reference in zip(clip.stats, feature_stats(whole, extractor.normalized)):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)
    fps, context = 30.0, 3
    normalized = normalize_features(whole, feature_stats(whole, extractor.normalized))
    reference = context_windows(frame_windows(normalized, 100.0, fps, clip.num_frames(fps), 16), context)
    chunks = list(clip.windows(fps, 16, context, chunk_frames=7))
    assert [len(c) for c in chunks[:-1]] == [7] * (len(chunks) - 1)
    np.testing.assert_allclose(np.concatenate(chunks), reference, atol=1e-3)
    np.testing.assert_array_equal(np.concatenate(list(clip.windows(fps, 16, context, chunk_frames=50))),
                                  np.concatenate(chunks))  # fmt: skip


def test_a_clip_is_decoded_once(tmp_path, monkeypatch):
    """One decoding feeds every analysis (mel and phones); a second pass over the windows decodes nothing."""
    import avatar.audio.clip as clip_module

    path = write_wav(tmp_path / "a.wav", speech_like(2.0, 16000), 16000)
    decodings = []
    monkeypatch.setattr(clip_module, "iter_audio", lambda *a: decodings.append(a) or iter_audio(*a))
    clip = AudioClip.read(path, speech_features("mel+phones+visemes"))
    first, second = (np.concatenate(list(clip.windows(25.0, 16, 2))) for _ in range(2))
    assert len(decodings) == 1 and np.array_equal(first, second) and len(first) == 50


def test_sample_reader_reads_exact_lengths_and_pads_the_end():
    chunks = iter([np.arange(5, dtype=np.float32), np.arange(5, 8, dtype=np.float32)])
    reader = streaming.SampleReader(chunks)
    assert reader.read(3).tolist() == [0, 1, 2]
    assert reader.read(4).tolist() == [3, 4, 5, 6]
    assert reader.read(3).tolist() == [7, 0, 0] and reader.exhausted
    stereo = streaming.SampleReader(iter([np.ones((4, 2), np.float32)]), channels=2)
    assert stereo.read(6).shape == (6, 2) and stereo.read(0).shape == (0, 2)


def test_iter_audio_streams_the_samples_load_audio_returns(tmp_path):
    path = write_wav(tmp_path / "a.wav", speech_like(2.5, 48000, channels=2), 48000)
    np.testing.assert_array_equal(np.concatenate(list(iter_audio(path))), load_audio(path))
    stereo = np.concatenate(list(iter_audio(path, 48000, "stereo")))
    assert stereo.shape == (120000, 2)


def test_track_pose_loops_back_and_forth_without_a_jump(dataset, driving):
    train = dataset.indices("train")
    frames = track_positions(driving, 3 * len(train), "track")
    assert frames[0] == 0 and frames[len(train) - 1] == len(train) - 1 and frames[len(train)] == len(train) - 2
    assert np.abs(np.diff(frames)).max() == 1
    rotation, translation, body = pose_schedule(driving, 3 * len(train), "track")
    step = np.abs(np.diff(np.asarray(dataset.tracking("translation"))[train], axis=0)).max()
    assert np.abs(np.diff(translation, axis=0)).max() <= step + 1e-7
    np.testing.assert_array_equal(body, dataset.body_motion().codes[train][frames])  # the body of the same rows
    assert rotation.shape == (3 * len(train), 3, 3) and translation.dtype == np.float32
    # chunks of the schedule equal the whole schedule
    part = pose_schedule(driving, 40, "track", first_frame=200)[1]
    np.testing.assert_array_equal(part, translation[200:240])


def test_still_and_smooth_poses(dataset, driving):
    rotation, translation, body = pose_schedule(driving, 30, "still")
    assert np.all(translation == translation[0]) and np.all(rotation == rotation[0]) and np.all(body == body[0])
    assert track_positions(driving, 1, "still")[0] == typical_pose_index(driving)
    n = 400
    track = pose_schedule(driving, n, "track")[1]
    smooth = pose_schedule(driving, n, "smooth")[1]
    jerk = lambda x: np.abs(np.diff(x, 2, axis=0)).mean()  # noqa: E731
    assert jerk(smooth) < 0.5 * jerk(track)
    assert np.abs(np.diff(smooth, axis=0)).max() < np.abs(np.diff(track, axis=0)).max()
    body_track, body_smooth = pose_schedule(driving, n, "track")[2], pose_schedule(driving, n, "smooth")[2]
    assert np.abs(np.diff(body_smooth, axis=0)).max() < np.abs(np.diff(body_track, axis=0)).max()
    rot = pose_schedule(driving, n, "smooth")[0]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)


def test_pose_follows_time_when_the_output_fps_differs(dataset, driving):
    frames = track_positions(driving, 50, "track", fps=2 * FPS)
    assert frames[:6].tolist() == [0, 0, 1, 1, 2, 2]


def test_blinks_from_the_persons_statistics(dataset, driving):
    track = np.stack([np.asarray(dataset.tracking("blendshapes"))[:, k] for k in (0, 1)], 1)
    open_level, shapes, starts = detect_blinks(track)
    assert len(shapes) == 3 and starts.tolist() == [20, 55, 80]
    fps, seconds = 30.0, 60.0
    blinks = blink_schedule(driving, int(seconds * fps), fps, None, seed=1)
    assert blinks.shape == (int(seconds * fps), 2) and blinks.min() >= 0 and blinks.max() <= 1
    closed = blinks.mean(1) > 0.5
    count = int(np.sum(np.diff(closed.astype(int)) == 1))
    rate = 3 / (len(driving) / driving.fps)  # blinks per second in the training frames
    assert 0.5 * rate * seconds <= count <= 2 * rate * seconds
    assert np.median(blinks[:, 0]) == pytest.approx(open_level[0], abs=1e-6)
    np.testing.assert_array_equal(blinks, blink_schedule(driving, int(seconds * fps), fps, None, seed=1))
    assert np.all(blink_schedule(driving, 10, fps, 0.25) == 0.25)


def test_scan_detects_silence(tmp_path):
    path: Path = write_wav(tmp_path / "s.wav", speech_like(1.5, 16000, silent=True), 16000)
    clip = AudioClip.read(path, speech_features("mel"))
    assert clip.silent and not np.concatenate(list(clip.windows(FPS, 16, 2))).any()


def _encode(path: Path, wave: np.ndarray, rate: int, codec: str) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("suffix", ["flac", "ogg", "mp3", "m4a"])
def test_common_audio_formats_are_read(tmp_path, suffix):
    import soundfile as sf

    wave, rate = speech_like(2.0, 44100), 44100
    path = tmp_path / f"speech.{suffix}"
    if suffix in ("flac", "ogg"):
        sf.write(str(path), wave, rate)
    else:
        _encode(path, wave, rate, {"mp3": "libmp3lame", "m4a": "aac"}[suffix])
    clip = AudioClip.read(path, speech_features("mel"))
    assert abs(clip.duration_s - 2.0) < 0.06  # codec priming and padding are at most a frame or two
    assert abs(clip.num_frames(FPS) - 50) <= 1
