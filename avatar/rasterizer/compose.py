"""Layered alpha compositing: head over torso over background.

Layers hold premultiplied colour (what `rasterize` returns with no background), so "over" is one
multiply-add and layers made by different means (Gaussian renders, matted video frames) stack the same way.
Shapes broadcast: [..., H, W, 3] colour with [..., H, W, 1] alpha, for one frame or a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from avatar.rasterizer.types import RenderOutput


@dataclass
class Layer:
    colour: Tensor  # [..., H, W, 3] premultiplied by alpha
    alpha: Tensor  # [..., H, W, 1] in 0..1

    @staticmethod
    def from_render(render: RenderOutput) -> Layer:
        """A render made without a background is already premultiplied."""
        return Layer(render.rgb, render.alpha)

    @staticmethod
    def from_image(rgb: Tensor, mask: Tensor) -> Layer:
        """A straight (unpremultiplied) image [..., H, W, 3] cut out by a matte [..., H, W] or [..., H, W, 1]."""
        alpha = mask if mask.dim() == rgb.dim() else mask[..., None]
        return Layer(rgb * alpha, alpha)

    def over(self, below: Layer) -> Layer:
        """This layer in front of `below` (Porter-Duff over)."""
        return Layer(self.colour + (1.0 - self.alpha) * below.colour, self.alpha + (1.0 - self.alpha) * below.alpha)

    def onto(self, background: Tensor) -> Tensor:
        """The final image [..., H, W, 3] over an opaque background ([..., H, W, 3] or [3])."""
        return self.colour + (1.0 - self.alpha) * background


def composite(layers_front_to_back: list[Layer], background: Tensor) -> Tensor:
    """Stack layers (first in front) over an opaque background: [..., H, W, 3]."""
    if not layers_front_to_back:
        raise ValueError("composite needs at least one layer")
    stacked = layers_front_to_back[0]
    for layer in layers_front_to_back[1:]:
        stacked = stacked.over(layer)
    return stacked.onto(background)
