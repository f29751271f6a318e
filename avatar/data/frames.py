"""Frames and masks at the training resolution, read on demand through an LRU cache bounded in megabytes.

A few minutes of 512 px video are gigabytes once decoded; training touches each frame many times, so the
resized frames are cached, but only up to `cache_mb`: the whole video is never held in memory.
"""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

from avatar.contracts.dataset import MASK_BITS, Dataset

MASK_NAMES = tuple(MASK_BITS)  # channel order of the soft masks


class FrameStore:
    """frame i -> (rgb [H, W, 3] uint8, masks [H, W, len(MASK_NAMES)] uint8 0..255 soft coverage)."""

    def __init__(self, dataset: Dataset, resolution: int, cache_mb: float = 512):
        self.dataset = dataset
        self.resolution = resolution
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0

    def _resize(self, image: np.ndarray) -> np.ndarray:

        if image.shape[0] == self.resolution and image.shape[1] == self.resolution:
            return image
        size = (self.resolution, self.resolution)
        if image.ndim == 2 or image.shape[2] <= 4:
            return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # area filtering at a non-integer scale takes at most 4 channels at a time
        return np.dstack(
            [
                cv2.resize(image[:, :, c : c + 4], size, interpolation=cv2.INTER_AREA)
                for c in range(0, image.shape[2], 4)
            ]
        )

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        bits = self.dataset.mask_bits(i)
        planes = np.stack([(bits >> MASK_BITS[name] & 1) * 255 for name in MASK_NAMES], -1).astype(np.uint8)
        masks = self._resize(planes)  # area filtering turns bit masks into soft coverage at low resolution
        return self._resize(self.dataset.frame(i)), masks.reshape(self.resolution, self.resolution, len(MASK_NAMES))

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        i = int(i)
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        item = self._read(i)
        size = item[0].nbytes + item[1].nbytes
        while self._cache and self._bytes + size > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old[0].nbytes + old[1].nbytes
        if size <= self.cache_bytes:
            self._cache[i] = item
            self._bytes += size
        return item

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def plate(self) -> np.ndarray:
        """[H, W, 3] uint8 background plate at the training resolution."""
        return self._resize(self.dataset.background)
