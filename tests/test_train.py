"""`avatar train` end to end on a tiny real dataset: the run directory, the trained avatar renders, resume is
exact after an interrupt, and the errors a user can fix are clear."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from avatar.errors import UserError
from avatar.model.talking_head import FrameConditions, TalkingHead
from avatar.train.runner import RUN_FORMAT_VERSION, Runner, run
from tests.train_fixtures import tiny_config, tiny_dataset  # noqa: F401 - the fixture


def _conditions(head: TalkingHead, dataset, ids) -> FrameConditions:
    windows = dataset.audio_windows(context=head.audio_context)[ids]
    return FrameConditions(
        audio=torch.from_numpy(windows),
        rotation=torch.from_numpy(np.asarray(dataset.tracking("rotation"))[ids]),
        translation=torch.from_numpy(np.asarray(dataset.tracking("translation"))[ids]),
        blink=torch.zeros(len(ids), 2),
    )


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    run(tiny_config(tiny_dataset.root, out))
    return out


@pytest.mark.slow
def test_tiny_train_writes_a_complete_run(trained_run, tiny_dataset):
    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] == "done" and info["format_version"] == RUN_FORMAT_VERSION
    assert set(info["stage_seconds"]) == {"audio", "canonical", "torso", "deform"}
    assert info["metrics"]["canonical"]["prior_psnr"] > 10 and "audio_psnr" in info["metrics"]["deform"]
    assert info["metrics"]["torso"]["body_psnr"] > 10
    assert json.loads((trained_run / "config.json").read_text())["resolution"] == 32
    assert (trained_run / "head.ply").read_bytes().startswith(b"ply\n") and any((trained_run / "tb").iterdir())

    head = TalkingHead.load(trained_run)
    assert (
        head.resolution == 32
        and head.fps == tiny_dataset.fps
        and head.driving.dataset["path"] == str(tiny_dataset.root.resolve())
    )
    ids = np.arange(3)
    out = head.render(_conditions(head, tiny_dataset, ids))
    assert out["rgb"].shape == (3, 32, 32, 3) and out["alpha"].shape == (3, 32, 32, 1)
    assert 0 <= float(out["rgb"].min()) and float(out["rgb"].max()) <= 1
    assert float(out["alpha"].mean()) > 0.1  # head and torso cover part of the picture
    static = head.render(
        _conditions(head, tiny_dataset, ids), deform=False, show_torso=False, background=torch.zeros(32, 32, 3)
    )
    assert static["rgb"].shape == (3, 32, 32, 3) and float(static["alpha"].max()) > 0.5
    again = head.render(_conditions(head, tiny_dataset, ids))  # cached tri-plane features give the same frames
    assert torch.equal(again["rgb"], out["rgb"])


def _final_state(run_dir) -> dict:
    return torch.load(run_dir / "avatar.pt", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_the_deform_stage_keeps_the_torso_warp_the_torso_stage_fitted(trained_run, tiny_dataset, tmp_path):
    out = tmp_path / "no_deform"
    run(tiny_config(tiny_dataset.root, out, deform_steps=0))
    before, after = _final_state(out), _final_state(trained_run)
    warp = [k for k in after if k.startswith(("torso.linear.", "torso.nonlinear."))]
    assert len(warp) == 6 and all(torch.equal(before[k], after[k]) for k in warp)
    assert not torch.equal(before["torso.rgb_logits"], after["torso.rgb_logits"])  # its image learns on
    assert not all(torch.equal(before[k], after[k]) for k in after if k.startswith("head_deform."))


@pytest.mark.slow
def test_resume_after_interrupts_equals_an_uninterrupted_run(trained_run, tiny_dataset, tmp_path):
    out = tmp_path / "interrupted"
    cfg = tiny_config(tiny_dataset.root, out)

    def stop_at(stage: str, step: int):
        def hook(runner, name, current):
            if (name, current) == (stage, step):
                runner.request_stop()

        return hook

    with pytest.raises(KeyboardInterrupt):  # between checkpoints: the stop itself writes one
        Runner(cfg, on_step=stop_at("canonical", 2)).train()
    resumed = tiny_config(tiny_dataset.root, out, resume=True)
    with pytest.raises(KeyboardInterrupt):
        Runner(resumed, on_step=stop_at("deform", 1)).train()
    run(resumed)
    expected, got = _final_state(trained_run), _final_state(out)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(UserError, match="no such dataset"):
        Runner(tiny_config(tmp_path / "missing", tmp_path / "r"))
    old = tmp_path / "old"
    shutil.copytree(tiny_dataset.root, old, ignore=shutil.ignore_patterns("frames", "masks"))
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(UserError, match="format version 0"):
        Runner(tiny_config(old, tmp_path / "r"))
    with pytest.raises(UserError, match="training frames"):
        Runner(tiny_config(tiny_dataset.root, tmp_path / "r", min_train_frames=10_000))
    with pytest.raises(UserError, match="no checkpoint to resume"):
        Runner(tiny_config(tiny_dataset.root, tmp_path / "r", resume=True))
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / "latest.pt").write_bytes(b"")
    with pytest.raises(UserError, match="--resume"):
        Runner(tiny_config(tiny_dataset.root, tmp_path / "r"))
    with pytest.raises(UserError, match="not a readable checkpoint"):
        run(tiny_config(tiny_dataset.root, tmp_path / "r", resume=True))
    torch.save(
        {"format_version": 1, "run_info": {}, "stage": "canonical"}, tmp_path / "r" / "checkpoints" / "latest.pt"
    )
    with pytest.raises(UserError, match="format version 1"):
        run(tiny_config(tiny_dataset.root, tmp_path / "r", resume=True))
    with pytest.raises(UserError, match="training has not finished"):
        TalkingHead.load(tmp_path / "r")
    (tmp_path / "r" / "avatar.pt").write_bytes(b"not an avatar")
    with pytest.raises(UserError, match="not a readable avatar"):
        TalkingHead.load(tmp_path / "r")


def test_a_new_run_needs_an_empty_place_and_resume_keeps_the_runs_settings(tiny_dataset, tmp_path):
    from avatar.config_io import to_dict

    with pytest.raises(UserError, match="is a dataset"):
        Runner(tiny_config(tiny_dataset.root, tiny_dataset.root))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("someone's file")
    with pytest.raises(UserError, match="not empty and holds no run"):
        Runner(tiny_config(tiny_dataset.root, busy))
    run_dir = tmp_path / "started"  # what a started run holds when its settings are compared
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"checkpoint")
    (run_dir / "config.json").write_text(json.dumps(to_dict(tiny_config(tiny_dataset.root, run_dir))))
    (run_dir / "run.json").write_text('{"status": "done"}')
    before = {p.name: p.read_bytes() for p in (run_dir / "config.json", run_dir / "run.json")}
    with pytest.raises(UserError, match=r"--resolution 48 \(the run has 32\)"):
        Runner(tiny_config(tiny_dataset.root, run_dir, resume=True, resolution=48))
    assert {p.name: p.read_bytes() for p in (run_dir / "config.json", run_dir / "run.json")} == before
    Runner(tiny_config(tiny_dataset.root, run_dir, resume=True, threads=1))  # where and how fast may change
