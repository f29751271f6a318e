"""The torso layer: the mean torso at the start, moved by the body codes' flow, deterministic given them."""

from __future__ import annotations

import torch

from avatar.model.torso import TorsoLayer

SIZE = 32


def _shift_lattice(pixels: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A body lattice with no mean motion and one mode: code 1 samples the image `pixels` to the right."""
    basis = torch.zeros(1, 2, 4, 4)
    basis[0, 0] = pixels * 2 / SIZE
    return torch.zeros(2, 4, 4), basis


def _pattern() -> torch.Tensor:
    """[SIZE, SIZE, 3] vertical stripes (so a sideways shift shows), the body in the bottom half."""
    stripes = (torch.arange(SIZE) // 2 % 2).float()
    return stripes[None, :, None].expand(SIZE, SIZE, 3).clone()


def _layer(body_codes: torch.Tensor | None = None, frames: torch.Tensor | None = None) -> TorsoLayer:
    layer = TorsoLayer(SIZE)
    if body_codes is not None:
        layer.set_body_motion(*_shift_lattice(2.0))
    frames = torch.rand(4, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0)) if frames is None else frames
    masks = torch.zeros(len(frames), SIZE, SIZE)
    masks[:, 20:] = 1  # the body fills the bottom of the picture
    layer.init_from_frames(frames, masks, torch.zeros(SIZE, SIZE, 3), body_codes)
    return layer


def test_starts_as_the_mean_torso():
    layer = _layer()
    rgb, alpha = layer(None)
    assert rgb.shape == (1, SIZE, SIZE, 3) and alpha.shape == (1, SIZE, SIZE, 1)
    assert alpha[0, 25:].min() > 0.95 and alpha[0, :15].max() < 0.05


def test_a_body_code_moves_the_image_by_its_flow():
    layer = _layer(torch.zeros(4, 1), _pattern()[None].expand(4, -1, -1, -1))
    still, moved = layer(torch.tensor([[0.0], [1.0]]))[0]
    # code 1: each pixel shows the image 2 px to its right (grid_sample's flow convention)
    assert torch.allclose(moved[24:, 4:26], still[24:, 6:28], atol=0.02)
    assert (moved[24:] - still[24:]).abs().max() > 0.5


def test_the_start_image_undoes_each_frames_body_motion():
    """Frames whose body moved (the pattern seen through codes -1, 0, 1) start a sharp image, not a blur."""
    pattern = _pattern()
    lattice = TorsoLayer(SIZE)
    lattice.set_body_motion(*_shift_lattice(2.0))
    codes = torch.tensor([[-1.0], [0.0], [1.0]])
    with torch.no_grad():
        lattice.rgb_logits.copy_(torch.logit(pattern.clamp(0.01, 0.99)).permute(2, 0, 1)[None])
        lattice.alpha_logits.fill_(10.0)
        frames = lattice(codes)[0]  # what a camera saw of the moving body
    layer = _layer(codes, frames)
    sharp = layer(torch.zeros(1, 1))[0][0]
    blurred = frames.mean(0)
    inner = (slice(24, 30), slice(6, 26))
    assert (sharp[inner] - pattern[inner]).abs().mean() < 0.1
    assert (blurred[inner] - pattern[inner]).abs().mean() > 0.2


def test_deterministic_given_the_body_codes():
    layer = _layer(torch.zeros(4, 1))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    codes = torch.tensor([[0.0], [0.5], [-1.0]])
    first = layer(codes)
    again = layer(codes.flip(0))  # order and batch do not matter
    assert torch.equal(first[0], again[0].flip(0)) and torch.equal(first[1], again[1].flip(0))
    assert not torch.equal(first[0][0], first[0][1])  # another code moves the body


def test_the_lattice_comes_with_the_weights():
    layer = _layer(torch.zeros(4, 1))
    fresh = TorsoLayer(SIZE)
    fresh.load_state_dict(layer.state_dict())
    codes = torch.tensor([[0.7]])
    assert fresh.body_modes == 1 and torch.equal(fresh(codes)[0], layer(codes)[0])
