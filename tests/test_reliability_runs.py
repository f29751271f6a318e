"""Reliability with a real trained run: a damaged avatar is refused, a run and a dataset given for each other
get the command that takes them, a run in training is said to be one, Ctrl-C stops training soon and leaves a
checkpoint, render never replaces an input, the viewer opens any run, 5.1 sound comes out stereo."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch

from avatar.cli import main
from avatar.errors import UserError
from avatar.train.checkpoint import Checkpoint
from avatar.train.context import StopRequested
from avatar.train.runner import Runner, run
from tests.export_fixtures import probe, speech_like, write_wav
from tests.train_fixtures import tiny_config, tiny_dataset  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A run of two steps per stage (what it renders does not matter here)."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    run(
        tiny_config(
            tiny_dataset.root, out, audio_steps=2, canonical_steps=2, torso_steps=2, deform_steps=2, val_frames=1
        )
    )
    return out


@pytest.fixture
def speech(tmp_path):
    return write_wav(tmp_path / "speech.wav", speech_like(0.6, 16000), 16000)


def _render(run_dir, audio, out, *extra) -> int:
    return main(
        ["render", str(run_dir), "--audio", str(audio), "--out", str(out), "--fps", "10", "--threads", "1", *extra]
    )


def _tensor_bytes(path) -> int:
    """Offset of the middle of the largest tensor stored in a torch zip file."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda e: e.file_size)
    with open(path, "rb") as f:
        f.seek(entry.header_offset)
        header = f.read(30)
    start = entry.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    return start + entry.file_size // 2 // 4 * 4


def test_a_damaged_avatar_is_refused_not_rendered(trained, speech, tmp_path, capsys):
    from avatar.model.talking_head import payload_checksum

    flipped = tmp_path / "flipped"  # bytes overwritten inside a tensor: the zip still opens, the values are finite
    shutil.copytree(trained, flipped)
    with open(flipped / "avatar.pt", "r+b") as f:
        f.seek(_tensor_bytes(flipped / "avatar.pt"))
        f.write(np.ones(64, np.float32).tobytes())
    nan = tmp_path / "nan"  # a NaN weight under a checksum that matches it (a diverged training)
    shutil.copytree(trained, nan)
    data = torch.load(nan / "avatar.pt", weights_only=False)
    weight = next(v for v in data["state_dict"].values() if v.is_floating_point() and v.numel() > 1)
    weight.view(-1)[0] = float("nan")
    data["checksum"] = payload_checksum(data["state_dict"], data["driving"])
    torch.save(data, nan / "avatar.pt")
    for damaged, said in (
        (flipped, "the avatar file is damaged"),
        (nan, "the avatar holds weights that are not numbers"),
    ):
        out = tmp_path / "out" / f"{damaged.name}.mp4"
        assert _render(damaged, speech, out) == 2
        err = capsys.readouterr().err
        assert f"{damaged / 'avatar.pt'}: {said}" in err and "Traceback" not in err
        assert not out.exists() and not list(out.parent.glob(".*"))


def test_render_never_replaces_the_training_video_paste_back_reads(trained, speech, capsys):
    from avatar.model.talking_head import TalkingHead

    source = TalkingHead.load(trained).driving.source.path
    before = open(source, "rb").read()
    assert _render(trained, speech, source, "--paste-back") == 2
    assert "is the training video that --paste-back reads" in capsys.readouterr().err
    assert open(source, "rb").read() == before


def test_five_one_sound_comes_out_stereo(trained, tmp_path):
    wave = speech_like(0.6, 48000)
    surround = write_wav(tmp_path / "surround.wav", np.stack([wave] * 6, 1), 48000)
    assert _render(trained, surround, tmp_path / "out.mp4") == 0
    assert probe(tmp_path / "out.mp4")["audio_channels"] == 2


def test_a_dataset_and_a_run_given_for_each_other_get_the_right_command(
    trained, tiny_dataset, speech, tmp_path, capsys
):
    dataset = tiny_dataset.root
    for argv in (
        ["render", str(dataset), "--audio", str(speech), "--out", str(tmp_path / "o.mp4")],
        ["view", str(dataset)],
        ["eval", str(dataset)],
        ["bench", str(dataset)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{dataset}: is a dataset" in err and f"`avatar train {dataset} --out RUN`" in err, argv
    assert main(["train", str(trained), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert f"{trained}: is a run" in err and f"`avatar train {dataset.resolve()} --out {trained} --resume`" in err
    assert main(["eval", str(trained), "--drive", str(trained)]) == 2
    assert f"{trained}: is a run" in capsys.readouterr().err
    for place, hint in (
        (trained, f"`avatar render {trained} --audio"),
        (dataset, f"`avatar train {dataset} --out"),
        (tmp_path, "is a directory. Give the path of a video file"),
    ):
        assert main(["preprocess", str(place), "--out", str(tmp_path / "ds")]) == 2
        assert hint in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not (tmp_path / "ds").exists()


def test_a_run_in_training_is_said_to_be_one(tiny_dataset, speech, tmp_path, capsys):
    from avatar.contracts.atomic import exclusive

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "run.json").write_text(json.dumps({"status": "training"}))
    with exclusive(busy, "held by this test"):  # as `avatar train` holds it
        assert main(["render", str(busy), "--audio", str(speech), "--out", str(tmp_path / "o.mp4")]) == 2
        assert f"{busy}: is still being trained" in capsys.readouterr().err
        with pytest.raises(UserError, match="another `avatar train` is training this run"):
            Runner(tiny_config(tiny_dataset.root, busy, resume=True))
    assert [p.name for p in busy.iterdir()] == ["run.json"]


def test_ctrl_c_while_the_audio_stage_re_voices_stops_at_once_with_a_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    import avatar.train.audio_fit

    went_on = []

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, in the middle of the re-voicing
        went_on.append(True)
        return []

    monkeypatch.setattr(avatar.train.audio_fit, "revoiced_copies", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_dataset.root, out))
    assert went_on == []
    assert Checkpoint.load(out / "checkpoints" / "latest.pt").stage == "audio"
    Runner(tiny_config(tiny_dataset.root, out, resume=True))  # --resume takes it


def test_ctrl_c_in_an_image_stage_checkpoints_that_step_and_twice_stops_at_once(tiny_dataset, tmp_path):
    def ctrl_c_at(stage: str, step: int, times: int):
        def hook(runner, name, current):
            if (name, current) == (stage, step):
                for _ in range(times):
                    signal.raise_signal(signal.SIGINT)

        return hook

    out = tmp_path / "run"
    with pytest.raises(StopRequested):
        Runner(tiny_config(tiny_dataset.root, out), on_step=ctrl_c_at("canonical", 2, 1)).train()
    saved = Checkpoint.load(out / "checkpoints" / "latest.pt")
    assert (saved.stage, saved.progress["step"]) == ("canonical", 2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        Runner(tiny_config(tiny_dataset.root, out, resume=True), on_step=ctrl_c_at("canonical", 3, 2)).train()
    assert not isinstance(stopped.value, StopRequested)  # the second Ctrl-C did not wait for a checkpoint
    assert Checkpoint.load(out / "checkpoints" / "latest.pt").progress["step"] == 2


def test_the_viewer_opens_a_run_at_its_own_small_resolution(trained):
    from avatar.model.talking_head import TalkingHead
    from avatar.viewer.app import ViewerApp
    from avatar.viewer.config import ViewerConfig

    head = TalkingHead.load(trained)
    assert head.resolution == 32
    app = ViewerApp(ViewerConfig(run=trained), head, trained / "audio.wav")
    try:
        assert app.resolution_slider.value == 32
    finally:
        app.server.stop()


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    """A copy of the tiny dataset (with its build's step records) to edit or damage."""
    copy = tmp_path / "ds"
    shutil.copytree(tiny_dataset.root, copy)
    return copy


@pytest.mark.parametrize(
    "edit, said",
    [
        ({"fps": 0}, "fps 0: must be a number above 0"),
        ({"fps": "abc"}, 'fps "abc": must be a number above 0'),
        ({"resolution": -1}, "resolution -1: must be a whole number of at least 1"),
        ({"num_frames": 2.5}, "num_frames 2.5: must be a whole number of at least 1"),
        ({"split": {"train": [0, 80], "val": [80, 9999]}}, "split.val [80, 9999]: ends after the last of the"),
        ({"features": {"rate_hz": None}}, "features.rate_hz null: must be a number above 0"),
        ({"features": {"std": [1.0]}}, "features.std: 1 values for features.dim"),
        ({"crop": {"size": None, "x1": 3}}, "crop.x1: not a field this avatar version knows"),
        ({"blendshape_names": None}, "blendshape_names null: must be a list of names"),
        ({"split": 5}, "split 5: must be an object {...}"),
    ],
)
def test_an_edited_manifest_is_refused_before_training_starts(dataset_copy, tmp_path, edit, said, capsys):
    path = dataset_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in edit.items():
        manifest[key] = {**manifest[key], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(manifest))
    out = tmp_path / "run"
    assert main(["train", str(dataset_copy), "--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and said in err and "Traceback" not in err
    assert not out.exists()  # no stage started, no run.json says "training"


def test_frames_counted_against_the_manifest(dataset_copy, tmp_path, capsys):
    """An edited frame count disagrees with the files; the message names them and the rebuild."""
    from avatar.contracts.dataset import Dataset

    path = dataset_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "num_frames": manifest["num_frames"] + 10}))
    with pytest.raises(UserError) as refused:
        Dataset(dataset_copy)
    said = str(refused.value)
    n = manifest["num_frames"]
    assert f"frames/ lacks 10 of the {n + 10} frames ({n:06d}.jpg," in said
    assert f"tracking/rotation.npy holds {n} frames, not {n + 10} (num_frames)" in said
    assert f"`avatar preprocess {manifest['source']['path']} --out {dataset_copy}` again" in said


def test_a_failing_stage_leaves_the_run_marked_failed(tiny_dataset, tmp_path, monkeypatch):
    from avatar.train.stages import AudioStage

    def broken(self, ctx, model, progress):
        raise RuntimeError("out of disk")

    monkeypatch.setattr(AudioStage, "run", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        run(tiny_config(tiny_dataset.root, out))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "RuntimeError: out of disk"
    assert Checkpoint.load(out / "checkpoints" / "latest.pt").run_info["status"] == "training"  # --resume goes on


def test_missing_frames_are_found_before_the_first_stage_and_a_rerun_mends_them(dataset_copy, tmp_path, capsys):
    from avatar.contracts.dataset import Dataset
    from avatar.preprocess.build import run as preprocess
    from tests.train_fixtures import tiny_preprocess_config

    frames = sorted((dataset_copy / "frames").iterdir())
    for frame in frames[len(frames) // 2 :]:
        frame.unlink()
    (dataset_copy / "body_motion.npz").unlink()
    out = tmp_path / "run"
    assert main(["train", str(dataset_copy), "--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    n, half = len(frames), len(frames) // 2
    assert f"the dataset is damaged: frames/ lacks {n - half} of the {n} frames ({half:06d}.jpg" in err
    assert "body_motion.npz is missing" in err and f"Delete {dataset_copy / 'frames'}, then run" in err
    assert not out.exists()
    shutil.rmtree(dataset_copy / "frames")  # as the message says
    assert main(["train", str(dataset_copy), "--out", str(out), "--threads", "1"]) == 2
    assert "the dataset is incomplete: frames/ is missing; body_motion.npz is missing. Run" in capsys.readouterr().err
    source = Dataset(dataset_copy).manifest.source["path"]
    preprocess(tiny_preprocess_config(source, dataset_copy))
    err = capsys.readouterr().err
    assert "[frames] done" in err and "[body] done" in err and "[track] up to date" in err
    Dataset(dataset_copy, complete=True)


@pytest.mark.parametrize("host, beyond", [("::1", False), ("0.0.0.0", True)])
def test_the_viewer_serves_at_the_url_it_prints_and_says_when_others_can_reach_it(
    trained, host, beyond, monkeypatch, capsys
):
    import re
    import time
    import urllib.request
    from types import SimpleNamespace

    import avatar.viewer.app

    pages = []

    def open_the_page_then_stop(seconds):
        said = capsys.readouterr()
        url = re.search(r"open (\S+) in a browser", said.out).group(1)
        with urllib.request.urlopen(url, timeout=10) as page:
            pages.append((url, page.status, said.err))
        raise KeyboardInterrupt  # the user's Ctrl-C

    monkeypatch.setattr(
        avatar.viewer.app, "time", SimpleNamespace(perf_counter=time.perf_counter, sleep=open_the_page_then_stop)
    )
    assert main(["view", str(trained), "--host", host, "--threads", "1"]) == 0
    ((url, status, said),) = pages
    assert status == 200 and url.startswith("http://[::1]:" if host == "::1" else "http://127.0.0.1:")
    assert ("warning: the viewer listens on every network interface (--host 0.0.0.0)" in said) == beyond
