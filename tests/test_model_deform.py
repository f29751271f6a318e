"""Spatial-audio attention: shapes, zero-initialised offsets, and that conditions reach the offsets."""

from __future__ import annotations

import torch

from avatar.model.deform import CONDITIONS, DeformConfig, SpatialAudioAttention, pose_features


def _net():
    torch.manual_seed(0)
    return SpatialAudioAttention(DeformConfig(token_dim=16, hidden=32), feature_dim=24, audio_dim=8, expression_dim=5)


def _conditions(b: int):
    gen = torch.Generator().manual_seed(b)
    pose = pose_features(torch.eye(3).expand(b, 3, 3), torch.randn(b, 3, generator=gen), torch.zeros(3))
    return torch.randn(b, 8, generator=gen), torch.randn(b, 5, generator=gen), torch.rand(b, 2, generator=gen), pose


def test_shapes_and_zero_initial_offsets():
    net = _net()
    tokens = net.tokens(*_conditions(3))
    assert tokens.shape == (3, len(CONDITIONS) + 1, 16)
    offsets, attn = net(torch.randn(100, 24, generator=torch.Generator().manual_seed(1)), tokens)
    assert offsets.means.shape == (3, 100, 3) and offsets.quats.shape == (3, 100, 4)
    assert offsets.log_scales.shape == (3, 100, 3) and offsets.opacity_logits.shape == (3, 100)
    assert offsets.colours.shape == (3, 100, 3)
    for t in (offsets.means, offsets.quats, offsets.log_scales, offsets.opacity_logits, offsets.colours):
        assert torch.count_nonzero(t) == 0  # training starts from the canonical head
    assert attn.shape == (3, 100, 5) and torch.allclose(attn.sum(-1), torch.ones(3, 100))


def test_offsets_learn_and_depend_on_the_audio():
    net = _net()
    features = torch.randn(50, 24, generator=torch.Generator().manual_seed(1))
    audio, expression, blink, pose = _conditions(2)
    target = torch.zeros(2, 50, 3)
    target[0] = 0.01  # frame 0 should move, frame 1 should not: only the conditions tell them apart
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        offsets, _ = net(features, net.tokens(audio, expression, blink, pose))
        loss = ((offsets.means - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    offsets, _ = net(features, net.tokens(audio, expression, blink, pose))
    assert (offsets.means[0] - 0.01).abs().mean() < 0.002 and offsets.means[1].abs().mean() < 0.002


def test_outside_training_the_per_gaussian_part_is_kept_and_training_drops_it():
    net = _net()
    torch.nn.init.normal_(net.out.weight, std=0.1)  # non-zero offsets, so a stale part would show
    features = torch.randn(40, 24, generator=torch.Generator().manual_seed(1))
    tokens = net.tokens(*_conditions(2))
    fresh = net(features, tokens)[0].means  # training mode: nothing kept
    net.eval()
    with torch.no_grad():
        first, again = net(features, tokens)[0].means, net(features, tokens)[0].means
        assert torch.allclose(first, fresh, atol=1e-6) and torch.equal(first, again)
        assert net._per_gaussian_cache is not None
        net.train()
        net.trunk[0].bias.add_(1.0)  # a training step changes the weights
        moved = net(features, tokens)[0].means
        net.eval()
        assert torch.allclose(net(features, tokens)[0].means, moved, atol=1e-6)
    assert not torch.allclose(moved, first, atol=1e-4)
