"""`avatar render` end to end with a test double of the avatar: frame count, durations, the audio stream,
sync at every common sample rate, a video as the audio source, and every bad input."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from export_fixtures import (
    BURSTS_S,
    FPS,
    SOURCE_H,
    SOURCE_W,
    EnergyMouthHead,
    expected_frames,
    make_dataset,
    mouth_opening,
    probe,
    speech_like,
    write_source_video,
    write_wav,
)

from avatar.errors import UserError
from avatar.render.config import RenderConfig
from avatar.render.video import background_image, render_video, run


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("export") / "dataset")


@pytest.fixture
def head(dataset_dir) -> EnergyMouthHead:
    return EnergyMouthHead(dataset_dir)


def config(audio: Path, out: Path, **overrides) -> RenderConfig:
    return dataclasses.replace(RenderConfig(run=Path("unused"), audio=audio, out=out), **overrides)


def leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".mp4", ".mov", ".mkv") or p.name.startswith("."))


@pytest.mark.parametrize("sample_rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_sync_at_every_sample_rate(tmp_path, head, sample_rate, channels):
    audio = write_wav(tmp_path / "speech.wav", speech_like(3.37, sample_rate, channels), sample_rate)
    out = render_video(config(audio, tmp_path / "out.mp4", blink=0.0), head)
    info = probe(out)
    assert info["num_frames"] == expected_frames(audio) == int(np.floor(3.37 * FPS + 0.5))
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert info["audio_channels"] == channels and info["audio_rate"] == 48000
    frame = 1 / FPS
    assert abs(info["video_s"] - info["num_frames"] / FPS) < 1e-3
    assert abs(info["audio_s"] - info["video_s"]) < frame
    assert abs(info["video_s"] - 3.37) <= frame / 2 + 1e-3
    # the mouth opens exactly during the loud stretches: sync read off the decoded picture
    opening = mouth_opening(info["frames"])
    centres = (np.arange(info["num_frames"]) + 0.5) / FPS
    loud = np.zeros(len(centres), bool)
    for a, b in BURSTS_S:
        loud |= (centres > a + 0.1) & (centres < b - 0.1)
    quiet = np.ones(len(centres), bool)
    for a, b in BURSTS_S:
        quiet &= (centres < a - 0.15) | (centres > b + 0.15)
    assert opening[loud].min() > opening[quiet].max()


def test_output_fps_and_resolution_options(tmp_path, head):
    audio = write_wav(tmp_path / "speech.wav", speech_like(2.0, 16000), 16000)
    out = render_video(config(audio, tmp_path / "out.mp4", fps=30.0, resolution=96, background="white"), head)
    info = probe(out)
    assert info["num_frames"] == 60 and (info["width"], info["height"]) == (96, 96)
    assert abs(info["audio_s"] - 2.0) < 1 / 30
    assert info["frames"][0, 2, 2].min() > 240  # the white background


def test_video_file_as_audio_source(tmp_path, head):
    source = write_source_video(tmp_path / "speaker.mp4", 80, with_audio=True)
    out = render_video(config(source, tmp_path / "out.mp4"), head)
    info = probe(out)
    assert info["num_frames"] == expected_frames(source)
    assert abs(info["num_frames"] - 80) <= 1
    assert abs(info["audio_s"] - info["video_s"]) < 1 / FPS


def test_batches_rendered_at_once_are_written_in_order(tmp_path, head, monkeypatch):
    """Two batches render at once; every other one is slow, so later ones finish first: the video is still the
    one a render of one batch at a time makes, frame for frame (lossless H.264)."""
    import avatar.render.video as video

    audio = write_wav(tmp_path / "speech.wav", speech_like(3.0, 16000), 16000)
    one_at_a_time = tmp_path / "one.mp4"
    monkeypatch.setattr(video, "FRAMES_IN_FLIGHT", 1)
    render_video(config(audio, one_at_a_time, batch_frames=4, crf=0), head)
    monkeypatch.setattr(video, "FRAMES_IN_FLIGHT", 2)
    render, calls = head.render, []

    def uneven(cond, **kwargs):
        calls.append(len(calls))
        time.sleep(0.05 if len(calls) % 2 else 0.0)
        return render(cond, **kwargs)

    monkeypatch.setattr(head, "render", uneven)
    at_once = render_video(config(audio, tmp_path / "two.mp4", batch_frames=4, crf=0), head)
    assert len(calls) > 4
    assert np.array_equal(probe(at_once)["frames"], probe(one_at_a_time)["frames"])


def test_silence_gives_a_still_closed_mouth(tmp_path, head):
    audio = write_wav(tmp_path / "silence.wav", speech_like(2.0, 16000, silent=True), 16000)
    out = render_video(config(audio, tmp_path / "out.mp4", pose="still", blink=0.0, crf=0), head)
    frames = probe(out)["frames"].astype(np.int16)
    assert np.abs(frames - frames[:1]).max() <= 1  # nothing moves (lossless H.264)
    speech = write_wav(tmp_path / "speech.wav", speech_like(3.37, 16000), 16000)
    spoken = mouth_opening(probe(render_video(config(speech, tmp_path / "speech.mp4"), head))["frames"])
    assert mouth_opening(frames.astype(np.uint8)).max() <= np.percentile(spoken, 10)


def test_paste_back_into_the_source_frames(tmp_path, head, dataset_dir):
    audio = write_wav(tmp_path / "speech.wav", speech_like(1.2, 16000), 16000)
    out = render_video(config(audio, tmp_path / "out.mp4", paste_back=True, pose="still", blink=0.0), head)
    info = probe(out)
    assert (info["width"], info["height"]) == (SOURCE_W, SOURCE_H)
    frame = info["frames"][5].astype(np.int16)
    # outside the crop: the source frame of the still pose's training frame (red encodes its number)
    from avatar.model.driving import track_positions

    j = head.driving.source.first_frame + track_positions(head.driving, 1, "still")[0]
    assert abs(frame[40, 5, 0] - 2 * j) <= 6 and abs(frame[40, 5, 2] - 90) <= 6
    # inside the crop (x 20..84, y 4..68): the rendered background plate (green)
    assert frame[10, 30, 1] > 180 and frame[10, 30, 0] < 40


def test_failure_midway_leaves_no_file(tmp_path, dataset_dir):
    audio = write_wav(tmp_path / "speech.wav", speech_like(3.0, 16000), 16000)
    with pytest.raises(RuntimeError):
        render_video(config(audio, tmp_path / "out.mp4"), EnergyMouthHead(dataset_dir, fail_at_call=3))
    assert leftovers(tmp_path) == []


def _bad_audio(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "missing":
        return path
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00garbage" + bytes(range(256)) * 4)
    elif kind == "empty":
        write_wav(path, np.zeros(0, np.float32), 16000)
    elif kind == "no_sound":
        path = write_source_video(tmp_path / "mute.mp4", 30)
    elif kind == "tiny":
        write_wav(path, np.zeros(400, np.float32), 16000)
    return path


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty", "no_sound", "tiny"])
def test_bad_audio_is_a_clear_error_and_writes_nothing(tmp_path, head, kind):
    audio = _bad_audio(tmp_path, kind)
    out_dir = tmp_path / "out"
    with pytest.raises(UserError, match=str(audio.name)):
        render_video(config(audio, out_dir / "out.mp4"), head)
    assert not out_dir.exists() or leftovers(out_dir) == []


@pytest.mark.parametrize("out", ["blocked/out.mp4", "out.avi", "folder"])
def test_unwritable_output_is_refused_before_any_work(tmp_path, head, out):
    (tmp_path / "blocked").write_text("a file where a directory should be")
    (tmp_path / "folder").mkdir()
    audio = write_wav(tmp_path / "speech.wav", speech_like(1.0, 16000), 16000)
    with pytest.raises(UserError, match="out|folder|blocked"):
        render_video(config(audio, tmp_path / out), head)
    assert head.calls == 0
    assert not (tmp_path / "out.avi").exists()


def test_missing_and_incompatible_runs(tmp_path):
    audio = write_wav(tmp_path / "speech.wav", speech_like(1.0, 16000), 16000)
    with pytest.raises(UserError, match="no such run"):
        run(config(audio, tmp_path / "out.mp4", run=tmp_path / "nowhere", device="cpu"))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(UserError, match="avatar.pt"):
        run(config(audio, tmp_path / "out.mp4", run=unfinished, device="cpu"))
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"format_version": 999, "spec": {}, "state_dict": {}}, old / "avatar.pt")
    with pytest.raises(UserError, match="version"):
        run(config(audio, tmp_path / "out.mp4", run=old, device="cpu"))
    assert not (tmp_path / "out.mp4").exists()


def test_background_choices():
    assert background_image("plate", 8) is None
    assert np.allclose(background_image("#ff0000", 8)[3, 3], [1, 0, 0])
    assert np.allclose(background_image("0,255,0", 8)[0, 0], [0, 1, 0])
    assert background_image("white", 8).shape == (8, 8, 3)
    for bad in ("#zzzzzz", "300,0,0", "no-such-image.png"):
        with pytest.raises(UserError, match="--background"):
            background_image(bad, 8)
