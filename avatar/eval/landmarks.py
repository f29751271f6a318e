"""Face landmarks for the lip-sync metrics: the same detector at the same scale on every image.

Renders and ground truth go through one static-mode FaceMesh at one scale (`LANDMARK_SCALE` pixels
square), so the landmark distances of all methods are in the same units and suffer the same detector
noise. Static mode detects each image on its own: tracking mode would smooth one frame with the previous ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.contracts.face_mesh import FaceMesh

LANDMARK_SCALE = 512  # images are resized to this square size before detection; distances are in its pixels


class FaceLandmarker(FaceMesh):
    """[H, W, 3] uint8 RGB of any size -> [478, 3] landmarks at LANDMARK_SCALE (x, y in pixels, z depth in the
    same scale), or None when no face is found. Distances in the image (LMD) take x and y; the mouth opening
    takes all three, so the head's pose does not change it (see Dataset.mouth_openings)."""

    def __init__(self, min_detection_confidence: float = 0.5):
        super().__init__(static=True, max_faces=1, min_detection_confidence=min_detection_confidence)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:

        h, w = image.shape[:2]
        if (h, w) != (LANDMARK_SCALE, LANDMARK_SCALE):
            interp = cv2.INTER_CUBIC if max(h, w) < LANDMARK_SCALE else cv2.INTER_AREA
            image = cv2.resize(image, (LANDMARK_SCALE, LANDMARK_SCALE), interpolation=interp)
        faces = self.faces(image)
        return faces[0] if faces else None
