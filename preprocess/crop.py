"""One fixed square head-and-shoulders crop for the whole clip, chosen from a sparse face scan.

A fixed crop keeps the camera still: the avatar learns the head's motion from the tracked pose, not
from a crop that follows the face. Its size covers the face's whole range of motion over the clip.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.contracts.dataset import Crop
from avatar.errors import UserError

FOREHEAD, CHIN = 10, 152  # FaceMesh landmarks at the top of the forehead and the bottom of the chin


def _face_height(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[FOREHEAD] - lm[CHIN]))


def _face_centre(lm: np.ndarray) -> np.ndarray:
    return 0.5 * (lm.min(0) + lm.max(0))


def main_faces(scan: list[list[np.ndarray]], path: str) -> tuple[list[np.ndarray], int]:
    """From the faces of a few scanned frames ([478, 2] source-pixel landmark sets, biggest first), the main
    speaker's landmarks in each frame that has a face, and how many frames show a second face at least half
    as big. The main speaker is the biggest face on average; in each
    frame the face nearest to their typical position is theirs."""
    with_faces = [f for f in scan if f]
    if not with_faces:
        raise UserError(
            f"{path}: no face found in any of the {len(scan)} frames scanned. "
            "Give a video where one person faces the camera."
        )
    reference = np.median([_face_centre(f[0]) for f in with_faces], axis=0)
    chosen, crowded = [], 0
    for faces in with_faces:
        main = min(faces, key=lambda lm: np.linalg.norm(_face_centre(lm) - reference))
        chosen.append(main)
        others = [lm for lm in faces if lm is not main]
        if any(_face_height(lm) >= 0.5 * _face_height(main) for lm in others):
            crowded += 1
    return chosen, crowded


def choose_crop(faces: list[np.ndarray], width: int, height: int, resolution: int, scale: float, face_y: float) -> Crop:
    """A square of side `scale` x the typical face height (grown to hold every scanned face position), with
    the face centre at height `face_y` of the crop, kept inside the image where the image is big enough."""
    heights = np.array([_face_height(lm) for lm in faces])
    centres = np.array([_face_centre(lm) for lm in faces])  # [S, 2]
    lo = np.min([lm.min(0) for lm in faces], axis=0)
    hi = np.max([lm.max(0) for lm in faces], axis=0)
    size = max(scale * float(np.median(heights)), 1.15 * float(np.max(hi - lo)))
    size = float(round(min(size, width, height)))
    cx, cy = np.median(centres, axis=0)
    x0 = float(np.clip(round(cx - size / 2), 0, width - size))
    y0 = float(np.clip(round(cy - face_y * size), 0, height - size))
    return Crop(x0=x0, y0=y0, size=size, source_width=width, source_height=height, resolution=resolution)


def apply_crop(frame_rgb: np.ndarray, crop: Crop) -> np.ndarray:
    """[H, W, 3] source frame -> [resolution, resolution, 3] dataset image (edges replicated outside)."""
    x0, y0, size = int(round(crop.x0)), int(round(crop.y0)), int(round(crop.size))
    h, w = frame_rgb.shape[:2]
    pad = (max(0, -y0), max(0, y0 + size - h), max(0, -x0), max(0, x0 + size - w))
    if any(pad):
        frame_rgb = cv2.copyMakeBorder(frame_rgb, *pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad[2], y0 + pad[0]
    patch = frame_rgb[y0 : y0 + size, x0 : x0 + size]
    if size == crop.resolution:
        return np.ascontiguousarray(patch)
    interp = cv2.INTER_AREA if size > crop.resolution else cv2.INTER_CUBIC
    return cv2.resize(patch, (crop.resolution, crop.resolution), interpolation=interp)
