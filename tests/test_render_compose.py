"""Layered compositing: stacking separately rendered layers equals rendering them together."""

from __future__ import annotations

import pytest
import torch
from test_render import make_camera, random_gaussians

from avatar.rasterizer.compose import Layer, composite
from avatar.rasterizer.rasterize import rasterize
from avatar.rasterizer.types import Gaussians

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def concat(a: Gaussians, b: Gaussians) -> Gaussians:
    return Gaussians(
        *(torch.cat([getattr(a, k), getattr(b, k)]) for k in ("means", "quats", "scales", "opacities", "colors"))
    )


def test_head_over_torso_equals_one_joint_render_when_the_head_is_in_front():
    camera = make_camera(width=40, height=32)
    head = random_gaussians(60, seed=0, depth=1.5, spread=0.3, opacity=(0.1, 0.6))
    torso = random_gaussians(60, seed=1, depth=2.5, spread=0.6, opacity=(0.1, 0.6))
    plate = torch.rand(32, 40, 3, generator=torch.Generator().manual_seed(2))
    layered = composite(
        [
            Layer.from_render(rasterize(head, camera, backend="torch")),
            Layer.from_render(rasterize(torso, camera, backend="torch")),
        ],
        plate,
    )
    joint = rasterize(concat(head, torso), camera, plate, backend="torch").rgb
    # Equal but for the joint render's stop at transmittance 1e-4, which layers apply separately.
    torch.testing.assert_close(layered, joint, atol=2e-4, rtol=0)


def test_image_layer_with_a_matte():
    gen = torch.Generator().manual_seed(1)
    frame = torch.rand(2, 8, 8, 3, generator=gen)  # a batch of two frames
    matte = (torch.rand(2, 8, 8, generator=gen) > 0.5).float()
    background = torch.tensor([0.0, 1.0, 0.0])
    out = composite([Layer.from_image(frame, matte)], background)
    expected = torch.where(matte[..., None] > 0, frame, background.expand_as(frame))
    torch.testing.assert_close(out, expected)
    assert torch.equal(Layer.from_image(frame, matte[..., None]).alpha, matte[..., None])


def test_over_is_associative_and_transparent_layers_change_nothing():
    gen = torch.Generator().manual_seed(3)
    layers = []
    for _ in range(3):
        alpha = torch.rand(4, 5, 1, generator=gen)
        layers.append(Layer(torch.rand(4, 5, 3, generator=gen) * alpha, alpha))
    a, b, c = layers
    left, right = a.over(b).over(c), a.over(b.over(c))
    torch.testing.assert_close(left.colour, right.colour)
    torch.testing.assert_close(left.alpha, right.alpha)
    clear = Layer(torch.zeros(4, 5, 3), torch.zeros(4, 5, 1))
    torch.testing.assert_close(clear.over(a).colour, a.colour)
    with pytest.raises(ValueError):
        composite([], torch.zeros(3))
