"""Per-frame semantic masks from the person segmentation and the face landmarks.

- person: mediapipe selfie segmentation (the only learnt part).
- face: inside the face-oval landmarks (forehead to chin).
- head: face + hair + ears: person pixels above the neck line through the jaw angles, within a band
  around the face's vertical axis (so shoulders and arms beside the head stay torso), plus the face.
- mouth: inside the inner lip contour (teeth, tongue, the dark of the mouth).
- torso: person minus head (neck, shoulders, clothes).
Every mask is cut to the person mask, so face ⊂ head ⊂ person, mouth ⊂ face and torso ∩ head = ∅.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.contracts.dataset import MASK_BITS
from avatar.contracts.face_mesh import CHIN, FACE_OVAL, FACE_SIDES, FOREHEAD, INNER_LIP_LOOP, JAW_ANGLES, Solution

FACE_OVAL_IDS, INNER_LIP_IDS = list(FACE_OVAL), list(INNER_LIP_LOOP)  # as index lists for numpy
HEAD_HALF_WIDTH = 0.85  # head band half-width in face widths (hair and ears stick out past the face oval)
PERSON_THRESHOLD = 0.5  # on the segmentation's probability


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """[P, 2] polygon in pixel-centre coordinates -> [H, W] bool, sub-pixel accurate vertices."""
    mask = np.zeros((height, width), np.uint8)
    shift = 4
    pts = np.round((points - 0.5) * (1 << shift)).astype(np.int32)  # OpenCV puts pixel centres at integers
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def head_region(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] bool: above the neck line and within the head band, in the face's own (rolled) frame:
    a rectangle that starts at the neck line and reaches past the top of the image."""
    up = landmarks[FOREHEAD] - landmarks[CHIN]
    up /= np.linalg.norm(up) + 1e-9
    side = np.array([-up[1], up[0]])
    face_width = np.linalg.norm(landmarks[FACE_SIDES[1]] - landmarks[FACE_SIDES[0]])
    centre = landmarks[FACE_OVAL_IDS].mean(0)
    jaw = landmarks[list(JAW_ANGLES)].mean(0)
    base = centre + up * ((jaw - centre) @ up)  # on the face's axis, at the neck line
    half = side * HEAD_HALF_WIDTH * face_width
    far = up * 2.0 * (height + width)
    return polygon_mask(np.stack([base - half, base + half, base + half + far, base - half + far]), height, width)


def combine_masks(person: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """person [H, W] bool, landmarks [478, 2] pixels -> [H, W] uint8 with the MASK_BITS set."""
    height, width = person.shape
    face = polygon_mask(landmarks[FACE_OVAL_IDS], height, width) & person
    head = (head_region(landmarks, height, width) | face) & person
    mouth = polygon_mask(landmarks[INNER_LIP_IDS], height, width) & face
    torso = person & ~head
    bits = np.zeros((height, width), np.uint8)
    for name, mask in (("person", person), ("head", head), ("face", face), ("mouth", mouth), ("torso", torso)):
        bits |= mask.astype(np.uint8) << MASK_BITS[name]
    return bits


class MaskMaker:
    """Holds the segmentation model across frames (creating it costs far more than running it)."""

    def __init__(self):
        # model 0: the general 256x256 model, suited to square head-and-shoulders frames
        self._segmenter = Solution(lambda mp: mp.selfie_segmentation.SelfieSegmentation(model_selection=0))

    def person(self, frame_rgb: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 RGB -> [H, W] bool person mask."""
        probability = self._segmenter.process(frame_rgb).segmentation_mask
        return probability > PERSON_THRESHOLD

    def __call__(self, frame_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """RGB frame [H, W, 3] uint8 and its landmarks [478, 2] (or [478, 3]) in pixels -> [H, W] uint8 bits."""
        return combine_masks(self.person(frame_rgb), np.asarray(landmarks, np.float64)[:, :2])

    def close(self) -> None:
        self._segmenter.close()
