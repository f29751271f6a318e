"""`avatar train` end to end on a tiny real dataset: the run directory, the trained avatar renders, resume is
exact after an interrupt, and the errors a user can fix are clear."""

from __future__ import annotations

import dataclasses
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
    return FrameConditions.from_arrays(
        "cpu",
        dataset.audio_windows(context=head.audio_context)[ids],
        dataset.tracking("rotation")[ids],
        dataset.tracking("translation")[ids],
        np.zeros((len(ids), 2)),
        dataset.body_motion().codes[ids],
    )


def _config(dataset, out, **overrides):
    """The tiny run with two audio-encoder members, so the audio stage has a member to resume from."""
    audio = dataclasses.replace(tiny_config(dataset, out).audio, members=2)
    return tiny_config(dataset, out, audio=audio, **overrides)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    """An uninterrupted run, and the model as each stage left it (the runner's checkpoints between stages)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    runner = Runner(_config(tiny_dataset.root, out))
    save, after = runner._save, {}

    def keep(stage, model, progress):
        if model is not None and not progress:  # the checkpoint between stages: `stage` runs next
            after[stage] = _state(model)
        save(stage, model, progress)

    runner._save = keep
    runner.train()
    return out, after


def test_tiny_train_writes_a_complete_run(trained_run, tiny_dataset):
    trained_run, _ = trained_run
    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] == "done" and info["format_version"] == RUN_FORMAT_VERSION
    assert set(info["stage_seconds"]) == {"audio", "canonical", "torso", "deform"}
    assert info["metrics"]["canonical"]["prior_psnr"] > 10 and "audio_psnr" in info["metrics"]["deform"]
    assert info["metrics"]["torso"]["body_psnr"] > 10
    assert len(info["metrics"]["audio"]["best_steps"]) == 2
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


def test_the_deform_stage_keeps_the_torso_warp_the_torso_stage_fitted(trained_run, tiny_dataset):
    """The torso is warped by the dataset's tracked body motion (its flow lattice, buffers of the torso layer):
    the torso stage fits only the torso's image in that warp, and the deform stage refines the image (and the
    head's deformation) but keeps the warp and the frozen audio encoder as they were."""
    run_dir, after = trained_run
    canonical, torso, final = after["torso"], after["deform"], _final_state(run_dir)
    motion = tiny_dataset.body_motion()
    assert motion.basis.shape[0] > 0  # the body has tracked modes to warp with
    assert np.array_equal(torso["torso.body_mean"].numpy(), motion.mean)
    assert np.array_equal(torso["torso.body_basis"].numpy(), motion.basis)
    image = {"torso.rgb_logits", "torso.alpha_logits"}
    kept = [k for k in final if k.startswith(("torso.", "audio_encoder.")) and k not in image]
    assert {"torso.body_mean", "torso.body_basis"} <= set(kept)
    changed = [k for k in kept if not torch.equal(torso[k], final[k])]
    assert not changed, changed
    for k in image:  # the torso stage fitted the torso's image, and the deform stage refines it
        assert not torch.equal(canonical[k], torso[k]) and not torch.equal(torso[k], final[k]), k
    assert all(torch.equal(canonical[k], torso[k]) for k in canonical if not k.startswith("torso."))
    assert not all(torch.equal(torso[k], final[k]) for k in final if k.startswith("head_deform."))


def test_resume_after_interrupts_in_every_stage_equals_an_uninterrupted_run(trained_run, tiny_dataset, tmp_path):
    """Stopped (as by Ctrl-C) in each stage between two of its checkpoints and resumed each time, the run
    ends with exactly the weights of the uninterrupted one: the audio stage after its first encoder member,
    the image stages at a step between checkpoints (every 3 steps)."""
    out = tmp_path / "interrupted"

    def stop_at(stage: str, step: int):
        def hook(runner, name, current):
            if (name, current) == (stage, step):
                runner.request_stop()

        return hook

    first = Runner(_config(tiny_dataset.root, out))
    save = first._save

    def stop_after_one_member(stage, model, progress):
        save(stage, model, progress)
        if stage == "audio" and len(progress.get("members", ())) == 1:
            first.request_stop()  # the second member's first step stops the stage

    first._save = stop_after_one_member
    with pytest.raises(KeyboardInterrupt):
        first.train()
    saved = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert saved["stage"] == "audio" and len(saved["progress"]["members"]) == 1
    resumed = _config(tiny_dataset.root, out, resume=True)
    for stage, step in (("canonical", 2), ("torso", 1), ("deform", 2)):
        with pytest.raises(KeyboardInterrupt):  # between checkpoints: the stop itself writes one
            Runner(resumed, on_step=stop_at(stage, step)).train()
        saved = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
        assert (saved["stage"], saved["progress"]["step"]) == (stage, step)
    run(resumed)
    expected, got = _final_state(trained_run[0]), _final_state(out)
    assert expected.keys() == got.keys()
    different = [key for key in expected if not torch.equal(expected[key], got[key])]
    assert not different, different


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
