"""The torso layer: identity at the start, deterministic given the pose, and moved by the pose only."""

from __future__ import annotations

import math

import torch

from avatar.model.torso import TorsoConfig, TorsoLayer


def _rot_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _layer() -> TorsoLayer:
    K = torch.tensor([[64.0, 0, 16], [0, 64, 16], [0, 0, 1]])
    layer = TorsoLayer(TorsoConfig(), 32, torch.eye(3), torch.tensor([0.0, 0.0, 1.0]), K)
    frames = torch.rand(4, 32, 32, 3)
    masks = torch.zeros(4, 32, 32)
    masks[:, 20:] = 1  # the body fills the bottom of the picture
    layer.init_from_frames(frames, masks, torch.zeros(32, 32, 3))
    return layer


def test_starts_as_the_mean_torso_at_the_reference_pose():
    layer = _layer()
    rgb, alpha = layer(torch.eye(3)[None], torch.tensor([[0.0, 0.0, 1.0]]))
    assert rgb.shape == (1, 32, 32, 3) and alpha.shape == (1, 32, 32, 1)
    assert alpha[0, 25:].min() > 0.95 and alpha[0, :15].max() < 0.05


def test_deterministic_given_the_pose():
    layer = _layer()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    rotation = torch.stack([_rot_z(d) for d in (0, 3, -2)])
    translation = torch.tensor([[0.0, 0, 1], [0.01, 0, 1], [0, 0.02, 1.05]])
    first = layer(rotation, translation)
    again = layer(rotation.flip(0), translation.flip(0))  # order and batch do not matter
    assert torch.equal(first[0], again[0].flip(0)) and torch.equal(first[1], again[1].flip(0))
    moved = layer(rotation[1:2], translation[1:2])[0]
    assert not torch.equal(moved, layer(rotation[:1], translation[:1])[0])  # a different pose moves the torso
