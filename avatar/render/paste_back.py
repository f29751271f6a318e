"""--paste-back: the rendered square goes back into the original, uncropped training video.

Output frame i shows the source frame of the training frame whose pose it uses (`driving.track_positions`),
so the body outside the crop moves with the head. The crop is the exact inverse of the dataset's
`Crop` (integer-aligned, as preprocessing applies it), with a soft edge so no seam shows. The video is found
through the path and checksum the avatar recorded (`driving.SourceVideo`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from avatar.contracts.atomic import sha256_of
from avatar.contracts.dataset import Crop
from avatar.contracts.video import resampled_frames
from avatar.errors import UserError
from avatar.model.driving import SourceVideo

FEATHER = 0.04  # width of the blended border, as a share of the crop side


class SourceFrames:
    """Frames of the original video at the dataset's frame numbers. The video is decoded once, forward, as
    far as needed; frames already passed are kept as JPEG files in a temporary directory, so the
    back-and-forth pose loop costs no seeking and no memory."""

    def __init__(self, source: SourceVideo, fps: float):

        path = Path(source.path)
        if not path.is_file():
            raise UserError(
                f"{path}: the training video is gone, and --paste-back needs its original frames. "
                "Put it back at that path or render without --paste-back."
            )
        if source.sha256 and sha256_of(path) != source.sha256:
            raise UserError(
                f"{path}: not the video this avatar was trained on (its content changed since), so "
                "--paste-back would put the face into other frames. Put the original back or render "
                "without --paste-back."
            )
        self._frames = resampled_frames(path, fps, source.time_origin_s)
        self._cache = tempfile.TemporaryDirectory(prefix="avatar-paste-back-")
        self._decoded = 0
        self.width, self.height = source.width, source.height

    def _file(self, i: int) -> Path:
        return Path(self._cache.name) / f"{i:06d}.jpg"

    def __getitem__(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB source frame of dataset frame i."""

        while self._decoded <= i:
            rgb = next(self._frames, None)
            if rgb is None:
                raise UserError(f"the training video ends before frame {i}; re-run `avatar preprocess`.")
            cv2.imwrite(str(self._file(self._decoded)), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            self._decoded += 1
        return cv2.imread(str(self._file(i)), cv2.IMREAD_COLOR)[:, :, ::-1]

    def close(self) -> None:
        self._cache.cleanup()


def output_size(width: int, height: int) -> tuple[int, int]:
    """The source size rounded down to even sides (H.264 4:2:0 needs them)."""
    return width - width % 2, height - height % 2


def feather_weights(size: int) -> np.ndarray:
    """[size, size, 1] blend weight of the rendered square: 1 inside, ramping to 0 at its edges."""
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / max(1.0, FEATHER * size)
    ramp = np.clip(ramp, 0.0, 1.0)
    return np.minimum(ramp[:, None], ramp[None, :])[:, :, None].astype(np.float32)


def paste(rendered: np.ndarray, source: np.ndarray, crop: Crop, weights: np.ndarray) -> np.ndarray:
    """[res, res, 3] uint8 rendered crop + [H, W, 3] source frame -> [H', W', 3] uint8 (even sides)."""

    x0, y0, size = int(round(crop.x0)), int(round(crop.y0)), int(round(crop.size))
    if rendered.shape[0] != size:
        interp = cv2.INTER_AREA if rendered.shape[0] > size else cv2.INTER_CUBIC
        rendered = cv2.resize(rendered, (size, size), interpolation=interp)
    height, width = source.shape[:2]
    # the part of the square inside the source image (the crop may reach past its edges)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x0 + size), min(height, y0 + size)
    out = source.copy()
    if sx1 > sx0 and sy1 > sy0:
        inner = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
        w = weights[inner]
        region = out[sy0:sy1, sx0:sx1].astype(np.float32)
        out[sy0:sy1, sx0:sx1] = np.round(w * rendered[inner] + (1 - w) * region).astype(np.uint8)
    even_w, even_h = output_size(width, height)
    return out[:even_h, :even_w]
