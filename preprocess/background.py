"""A clean background plate from a talking-head clip, in bounded memory.

Where the person never stands, every frame shows the background: a per-pixel median over a small,
evenly spread reservoir of frames removes noise, compression artefacts and anything passing by.
Pixels uncovered only in frames that did not make it into the reservoir fall back to a running mean
over all frames. Pixels the person covers in every frame are filled smoothly from their surroundings (`fill_holes`).
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.contracts.dataset import MASK_BITS

PERSON_MARGIN = 0.02  # the person mask is grown by this share of the image size (segmentation edges bleed)


class BackgroundAccumulator:
    """add() every frame with its mask bits, then result(). Memory: `capacity` frames plus two running sums."""

    def __init__(self, height: int, width: int, capacity: int = 32):
        self.height, self.width, self.capacity = height, width, capacity
        self._frames = np.zeros((capacity, height, width, 3), np.uint8)  # reservoir, every `_stride`-th frame
        self._visible = np.zeros((capacity, height, width), bool)  # background visible in that frame
        self._kept = 0
        self._stride = 1
        self._seen = 0
        self._sum = np.zeros((height, width, 3), np.float64)  # running sum of visible background colour
        self._count = np.zeros((height, width), np.int64)
        radius = max(1, int(round(PERSON_MARGIN * max(height, width))))
        self._grow = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))  # separable: fast

    def add(self, frame_rgb: np.ndarray, mask_bits: np.ndarray) -> None:
        person = (mask_bits >> MASK_BITS["person"]) & 1
        visible = cv2.dilate(person.astype(np.uint8), self._grow) == 0
        cv2.accumulate(np.ascontiguousarray(frame_rgb), self._sum, mask=visible.view(np.uint8))  # 4x numpy's speed
        self._count += visible
        if self._seen % self._stride == 0:
            if self._kept == self.capacity:  # full: keep every other frame, and sample half as often from now on
                self._frames[: self.capacity // 2] = self._frames[::2][: self.capacity // 2]
                self._visible[: self.capacity // 2] = self._visible[::2][: self.capacity // 2]
                self._kept = self.capacity // 2
                self._stride *= 2
            if self._seen % self._stride == 0:
                self._frames[self._kept] = frame_rgb
                self._visible[self._kept] = visible
                self._kept += 1
        self._seen += 1

    def result(self) -> np.ndarray:
        """[H, W, 3] uint8 RGB plate."""
        kept = self._kept
        # per-pixel median over the reservoir frames where the background is visible: sort with the hidden
        # samples pushed to the end, then pick the middle of the visible ones
        samples = np.where(self._visible[:kept, ..., None], self._frames[:kept].astype(np.float32), np.inf)
        samples.sort(axis=0)
        visible_count = self._visible[:kept].sum(0)  # [H, W]
        middle = np.maximum(visible_count - 1, 0) // 2
        median = np.take_along_axis(samples, middle[None, ..., None].repeat(3, -1), axis=0)[0]
        upper = np.take_along_axis(
            samples, ((visible_count - 1) - middle)[None, ..., None].repeat(3, -1).clip(0), axis=0
        )[0]
        median = 0.5 * (median + upper)  # even counts: the mean of the two middle samples
        mean = self._sum / np.maximum(self._count, 1)[..., None]
        plate = np.where((visible_count > 0)[..., None], median, mean)
        plate = np.clip(np.round(plate), 0, 255).astype(np.uint8)
        hole = self._count == 0
        return fill_holes(plate, hole) if hole.any() else plate


def fill_holes(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill `hole` [H, W] bool of `image` [H, W, 3] uint8 smoothly from its surroundings (push-pull):
    average the known pixels down an image pyramid until every coarse pixel has some, then fill each
    level's holes from the level below. No streaks (unlike Telea/Navier-Stokes inpainting on large
    holes) and linear cost; what hides behind the person was never seen, so smooth is the honest guess."""
    weight = (~hole).astype(np.float32)
    colour = image.astype(np.float32) * weight[..., None]
    levels = [(colour, weight)]
    while min(weight.shape) > 1 and (weight <= 0).any():  # push: premultiplied colour and weight
        colour, weight = cv2.pyrDown(colour), cv2.pyrDown(weight)
        levels.append((colour, weight))
    filled = levels[-1][0] / np.maximum(levels[-1][1], 1e-6)[..., None]
    for colour, weight in reversed(levels[:-1]):  # pull: fill each finer level's gaps from the coarser one
        coarse = cv2.resize(filled, (weight.shape[1], weight.shape[0]), interpolation=cv2.INTER_LINEAR)
        known = np.clip(weight, 0.0, 1.0)[..., None]
        filled = known * colour / np.maximum(weight, 1e-6)[..., None] + (1 - known) * coarse
    return np.where(hole[..., None], np.clip(np.round(filled), 0, 255).astype(np.uint8), image)
