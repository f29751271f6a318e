"""Face landmarks for the lip-sync metrics: mediapipe FaceMesh run the same way on every image.

Renders and ground truth go through this one detector at one scale (`LANDMARK_SCALE` pixels square), so the
landmark distances of all methods are in the same units and suffer the same detector noise. Each image is
detected independently (static mode): tracking mode would smooth one frame with the previous ones.
"""

from __future__ import annotations

import numpy as np

LANDMARK_SCALE = 512  # images are resized to this square size before detection; distances are in its pixels
INNER_LIP = (13, 14)  # upper and lower inner-lip midpoints
EYE_OUTER_CORNERS = (33, 263)  # right and left outer eye corners: a face-size unit that speech does not move


def mouth_indices() -> np.ndarray:
    """[40] indices of mediapipe's lip contour landmarks (outer and inner lips)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS

    return np.array(sorted({i for edge in FACEMESH_LIPS for i in edge}))


class FaceLandmarker:
    """mediapipe FaceMesh (478 landmarks with refined lips and irises) on [H, W, 3] uint8 RGB images."""

    def __init__(self, min_detection_confidence: float = 0.5):
        from mediapipe.python.solutions.face_mesh import FaceMesh

        self._mesh = FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                              min_detection_confidence=min_detection_confidence)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """[H, W, 3] uint8 RGB of any size -> [478, 2] pixels at LANDMARK_SCALE, or None when no face is found."""
        import cv2

        h, w = image.shape[:2]
        if (h, w) != (LANDMARK_SCALE, LANDMARK_SCALE):
            interp = cv2.INTER_CUBIC if max(h, w) < LANDMARK_SCALE else cv2.INTER_AREA
            image = cv2.resize(image, (LANDMARK_SCALE, LANDMARK_SCALE), interpolation=interp)
        result = self._mesh.process(np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        # mediapipe gives x, y in 0..1 of the image; pixel-centre convention: u = x * width
        return np.array([[p.x, p.y] for p in points], np.float32) * LANDMARK_SCALE

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
