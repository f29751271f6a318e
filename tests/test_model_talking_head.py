"""TalkingHead assembly: save/load round trip, static vs deformed rendering, the torso switch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avatar.contracts.camera import Intrinsics
from avatar.contracts.dataset import Crop, FeatureInfo
from avatar.errors import UserError
from avatar.model.audio_encoder import AudioEncoderConfig
from avatar.model.driving import DrivingData, SourceVideo
from avatar.model.gaussians import HeadConfig, head_gaussians
from avatar.model.hash_triplane import HashTriplaneConfig
from avatar.model.mouth import MouthConfig, mouth_gaussians
from avatar.model.talking_head import FrameConditions, HeadSpec, TalkingHead
from tests.test_model_gaussians import synthetic_face

SIZE = 32
BODY_MODES = 3


def small_head(tmp_path) -> TalkingHead:
    torch.manual_seed(0)
    face = synthetic_face()
    spec = HeadSpec(
        fps=25.0,
        resolution=SIZE,
        intrinsics=dataclasses.asdict(Intrinsics.from_fov(20, SIZE, SIZE)),
        feature_dim=10,
        feature_window=4,
        expression_dim=3,
        code_dim=5,
        bbox_min=[-0.15, -0.2, -0.15],
        bbox_max=[0.15, 0.2, 0.15],
        head=HeadConfig(num_face=150, num_shell=60),
        mouth=MouthConfig(num_gaussians=20),
        triplane=HashTriplaneConfig(num_levels=2, log2_hashmap_size=10, max_resolution=32, implementation="torch"),
        audio=AudioEncoderConfig(context=1, channels=4, embed_dim=4, heads=1, members=1),
        backend="torch",
    )
    head = TalkingHead(spec, synthetic_driving(tmp_path))
    head.head = head_gaussians(face, spec.head)
    head.mouth = mouth_gaussians(face, spec.mouth, 0)
    head.canonical_face.copy_(torch.from_numpy(face).float())
    head.expression_basis.normal_(0, 0.01)
    head.to_code.normal_()
    head.plate.fill_(0.3)
    head.reference_translation.copy_(torch.tensor([0.0, 0.0, 1.0]))
    g = torch.Generator().manual_seed(1)  # a body lattice of 3 modes on 8 x 8 cells, moving a few pixels
    head.torso.set_body_motion(
        0.02 * torch.randn(2, 8, 8, generator=g), 0.05 * torch.randn(BODY_MODES, 2, 8, 8, generator=g)
    )
    with torch.no_grad():
        head.head_deform.out.weight.normal_(0, 0.1)  # a trained-looking network, so deformation shows
    return head.eval()


def synthetic_driving(tmp_path, frames: int = 10) -> DrivingData:
    """A still head, open eyes, 10-dimensional features in windows of 4 rows."""
    return DrivingData(
        fps=25.0,
        rotations=np.tile(np.eye(3, dtype=np.float32), (frames, 1, 1)),
        translations=np.tile(np.array([0.0, 0.0, 1.0], np.float32), (frames, 1)),
        body=np.zeros((frames, BODY_MODES), np.float32),
        blinks=np.zeros((frames, 2), np.float32),
        features=FeatureInfo("audio_features.npy", "test", 100.0, 10, 4, [0.0] * 10, [1.0] * 10),
        source=SourceVideo(str(tmp_path / "source.mp4"), "", 64, 64, 0.0, Crop(0, 0, 64, 64, 64, SIZE), 0),
        dataset={"path": str(tmp_path / "dataset"), "manifest_sha256": ""},
    )


def conditions(b: int, seed: int = 0) -> FrameConditions:
    g = torch.Generator().manual_seed(seed)
    return FrameConditions(
        audio=torch.randn(b, 3, 4, 10, generator=g),
        rotation=torch.eye(3).expand(b, 3, 3),
        translation=torch.tensor([[0.0, 0.0, 1.0]]).expand(b, 3),
        blink=torch.zeros(b, 2),
        body=torch.linspace(-1, 1, b * BODY_MODES).reshape(b, BODY_MODES),
    )


def test_save_load_round_trip_renders_the_same(tmp_path):
    head = small_head(tmp_path)
    before = head.render(conditions(2))
    assert before["rgb"].shape == (2, SIZE, SIZE, 3) and before["alpha"].shape == (2, SIZE, SIZE, 1)
    (tmp_path / "run").mkdir()
    head.save(tmp_path / "run" / "avatar.pt")
    loaded = TalkingHead.load(tmp_path / "run")
    assert len(loaded.head) == len(head.head) and loaded.intrinsics == head.intrinsics
    for key, value in head.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert torch.equal(loaded.render(conditions(2))["rgb"], before["rgb"])


def test_static_render_ignores_audio_and_deformed_render_follows_it(tmp_path):
    head = small_head(tmp_path)
    static = [head.render(conditions(1, seed), deform=False)["rgb"] for seed in (0, 1)]
    moving = [head.render(conditions(1, seed))["rgb"] for seed in (0, 1)]
    assert torch.equal(static[0], static[1])
    assert not torch.equal(moving[0], moving[1])
    assert float(head.render(conditions(1))["alpha"].max()) > 0.5  # the head covers the centre


def test_background_and_torso_switch(tmp_path):
    head = small_head(tmp_path)
    with torch.no_grad():
        head.torso.alpha_logits.fill_(10.0)  # an opaque torso layer everywhere
        head.torso.rgb_logits.fill_(-10.0)  # ... that is black
    black = torch.zeros(SIZE, SIZE, 3)
    white = torch.ones(SIZE, SIZE, 3)
    with_torso = head.render(conditions(1), background=white)
    without = head.render(conditions(1), background=white, show_torso=False)
    assert float(with_torso["rgb"][0, 0, 0].max()) < 0.01 and float(without["rgb"][0, 0, 0].min()) > 0.99
    assert float(with_torso["alpha"].min()) > 0.99
    assert torch.allclose(head.render(conditions(1), background=black, show_torso=False)["alpha"], without["alpha"])


def test_load_refuses_other_versions(tmp_path):
    head = small_head(tmp_path)
    (tmp_path / "run").mkdir()
    head.save(tmp_path / "run" / "avatar.pt")
    data = torch.load(tmp_path / "run" / "avatar.pt", weights_only=False)
    torch.save({**data, "format_version": 99}, tmp_path / "run" / "avatar.pt")
    with pytest.raises(UserError, match="format version 99"):
        TalkingHead.load(tmp_path / "run")
    with pytest.raises(UserError, match="no such run"):
        TalkingHead.load(tmp_path / "nothing")


def test_load_refuses_a_damaged_file(tmp_path):
    head = small_head(tmp_path)
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "avatar.pt"
    head.save(path)
    data = torch.load(path, weights_only=False)
    damaged = {**data, "state_dict": dict(data["state_dict"])}
    damaged["state_dict"]["plate"] = torch.full_like(data["state_dict"]["plate"], float("nan"))
    torch.save(damaged, path)
    with pytest.raises(UserError, match="damaged"):
        TalkingHead.load(tmp_path / "run")
    head.save(path)  # bytes in the middle overwritten, the zip container left intact
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="damaged|not a readable avatar"):
        TalkingHead.load(tmp_path / "run")


def test_new_audio_never_moves_the_torso(tmp_path):
    """The same pose (head pose and body codes) with two different audio clips: every pixel the head does not
    cover is identical (the torso layer and the plate know nothing of audio), while the deformed head itself
    changes."""
    head = small_head(tmp_path)
    with torch.no_grad():
        head.torso.alpha_logits.normal_(0, 2.0)  # a torso with structure, visible through the head's surroundings
        head.torso.rgb_logits.normal_(0, 2.0)
    frames = []
    for seed in (0, 1):
        cond = conditions(1, seed)
        embedding, expression = head.audio_encoder(cond.audio)
        frames.append(head(embedding, expression, cond.blink, cond.rotation, cond.translation, cond.body, head.plate))
    uncovered = (frames[0]["head_alpha"] == 0) & (frames[1]["head_alpha"] == 0)
    assert uncovered.float().mean() > 0.3 and (frames[0]["alpha"] - frames[0]["head_alpha"]).abs().max() > 0.1
    assert torch.equal(frames[0]["rgb"] * uncovered, frames[1]["rgb"] * uncovered)
    assert not torch.equal(frames[0]["rgb"], frames[1]["rgb"])


def test_rendering_computes_the_triplane_features_once_and_training_again(tmp_path, monkeypatch):
    """The canonical Gaussians' tri-plane features do not depend on the frame: rendered frames reuse them (render
    calls eval() every time, which must not drop them), and training mode recomputes them every step."""
    head = small_head(tmp_path)
    calls = []
    forward = head.triplane.forward
    monkeypatch.setattr(head.triplane, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    first = head.render(conditions(1))["rgb"]
    assert torch.equal(head.render(conditions(1))["rgb"], first)
    assert len(calls) == 1
    head.train()
    head.gaussian_features()
    head.gaussian_features()
    assert len(calls) == 3
    head.render(conditions(1))
    head.render(conditions(1))
    assert len(calls) == 4
