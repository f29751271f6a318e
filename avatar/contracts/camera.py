"""The one camera convention of the project (OpenCV).

- Camera space: x right, y down, z forward (away from the camera). Pixels: (u, v) = (column, row),
  the centre of pixel (i, j) is at (i + 0.5, j + 0.5).
- `K` is 3x3 in pixels for the dataset image (after crop and resize).
- Head pose: a point X_head [3] of the canonical head frame maps to X_cam = R @ X_head + t.
  `world_to_cam` is the 4x4 [[R, t], [0, 1]] (the canonical head frame plays the role of the world).
- Canonical head frame: metres, axes aligned with the camera's when the person looks straight into it
  (x toward image right, y down, z away from the camera), origin at the head centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of a `width` x `height` image."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], np.float64)

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera for an image resized to width x height (pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    @staticmethod
    def from_fov(fov_y_deg: float, width: int, height: int) -> Intrinsics:
        f = 0.5 * height / np.tan(np.deg2rad(fov_y_deg) / 2)
        return Intrinsics(f, f, width / 2, height / 2, width, height)


def world_to_cam(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotations and [..., 3] translations -> [..., 4, 4] head-to-camera matrices."""
    R, t = np.asarray(R), np.asarray(t)
    out = np.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype)
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1
    return out


def project(points_head: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Project [..., P, 3] head-frame points with pose (R [..., 3, 3], t [..., 3]) to [..., P, 2] pixels."""
    cam = np.einsum("...ij,...pj->...pi", R, points_head) + t[..., None, :]
    uvw = np.einsum("ij,...pj->...pi", K, cam)
    return uvw[..., :2] / uvw[..., 2:3]
