"""mediapipe FaceMesh: its landmark ids, the one mouth-opening measure, its mesh topology and the detector.

The dataset's landmarks are mediapipe's 478 (468 mesh points + 10 iris points), so every module that
names a landmark (tracking, masks, blendshapes, the mouth interior, the audio encoder's targets, the
lip-sync metrics) takes the ids from here. "Right"/"left" are the person's own, as in ARKit.
mediapipe is imported in one place, `solutions()`, and only when a detector is made; every detector is a
`Solution`, which keeps mediapipe's native start-up noise out of the output.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

NUM_LANDMARKS = 478
NUM_MESH_POINTS = 468  # the last 10 are the irises (they move with gaze)

INNER_LIP_UPPER, INNER_LIP_LOWER = 13, 14  # inner-lip midpoints: the mouth opening
OUTER_LIP_UPPER, OUTER_LIP_LOWER = 0, 17  # top of the upper lip, bottom of the lower lip (it rides on the jaw)
MOUTH_CORNERS = (61, 291)  # right, left
EYE_OUTER_CORNERS = (33, 263)  # right, left: a face-size unit that speech does not move
FACE_SIDES = (234, 454)  # widest points of the face
JAW_ANGLES = (58, 288)  # right, left
NOSE_TIP, NOSE_BASE = 1, 2
FOREHEAD, CHIN = 10, 152
EYE_RIGHT = {"outer": 33, "inner": 133, "up": 159, "down": 145}
EYE_LEFT = {"outer": 263, "inner": 362, "up": 386, "down": 374}
BROW_RIGHT = {"inner": 107, "outer": 70}
BROW_LEFT = {"inner": 336, "outer": 300}

# Contours, in order around each loop / from corner to corner.
FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
INNER_LIP_LOOP = UPPER_INNER_LIP + LOWER_INNER_LIP[-2:0:-1]

# Landmarks that expressions barely move: forehead, nose bridge, eye corners, temples.
RIGID_ANCHORS = (
    10,
    151,
    9,
    8,
    108,
    337,
    109,
    338,
    67,
    297,
    69,
    299,
    104,
    333,
    168,
    6,
    197,
    195,
    33,
    133,
    263,
    362,
    130,
    359,
    243,
    463,
    54,
    284,
    21,
    251,
    103,
    332,
    162,
    389,
    127,
    356,
)
# Mirror pairs (right, left) that define the head frame's x axis.
MIRROR_PAIRS = ((33, 263), (133, 362), (130, 359), (127, 356), (234, 454), (162, 389), (54, 284))


# The landmarks `mouth_opening` reads, in this order: inner lips (upper, lower), outer eye corners.
MOUTH_OPENING_IDS = (INNER_LIP_UPPER, INNER_LIP_LOWER, *EYE_OUTER_CORNERS)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """[..., 478, D] landmarks (2D pixels or 3D points) -> [...] inner-lip gap over the outer eye-corner
    distance. One measure for the audio encoder's targets, the tracking statistics and the lip-sync metrics."""
    return opening_of_mouth_points(np.asarray(points)[..., list(MOUTH_OPENING_IDS), :])


def opening_of_mouth_points(points: np.ndarray) -> np.ndarray:
    """`mouth_opening` of [..., 4, D] points already taken at MOUTH_OPENING_IDS (long sequences of
    reconstructed faces need only those four)."""
    points = np.asarray(points, np.float64)
    gap = np.linalg.norm(points[..., 0, :] - points[..., 1, :], axis=-1)
    eyes = np.linalg.norm(points[..., 2, :] - points[..., 3, :], axis=-1)
    return gap / np.maximum(eyes, 1e-9)


@cache
def _connections(name: str) -> frozenset:
    """An edge set of mediapipe's face_mesh_connections, read from its plain-Python module file without
    importing mediapipe (which costs seconds of start-up)."""
    package = Path(importlib.util.find_spec("mediapipe").origin).parent
    spec = importlib.util.spec_from_file_location(
        "face_mesh_connections", package / "python/solutions/face_mesh_connections.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(getattr(module, name))


def lip_contour_ids() -> np.ndarray:
    """[40] ids of the outer and inner lip contours (the mouth landmarks of LMD)."""
    return np.array(sorted({i for edge in _connections("FACEMESH_LIPS") for i in edge}))


def face_triangles() -> np.ndarray:
    """[T, 3] vertex triangles of the face mesh, recovered as the 3-cliques of its tessellation edges."""
    neighbours: dict[int, set[int]] = {}
    for a, b in _connections("FACEMESH_TESSELATION"):
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    tris = {tuple(sorted((a, b, c))) for a, nb in neighbours.items() for b in nb for c in nb & neighbours[b]}
    return np.array(sorted(tris), np.int64)


def solutions():
    """`mediapipe.solutions`, with protobuf's known-harmless deprecation warning about mediapipe's own code off."""
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated")
    import mediapipe as mp  # noqa: PLC0415 - seconds of start-up: only when a detector is made

    return mp.solutions


# What mediapipe's native code prints, harmlessly, when a graph starts (TFLite delegate, absl start-up,
# the feedback-tensor notice): dropped, so progress lines and real warnings stay readable.
NATIVE_NOISE = (
    "Created TensorFlow Lite XNNPACK delegate",
    "All log messages before absl::InitializeLog",
    "inference_feedback_manager",
    "gl_context",
    "GL version",
)


@contextlib.contextmanager
def quiet_native_stderr():
    """Route the process's stderr (file descriptor 2, where native libraries write) to a temporary file for
    the block, then pass on every line that is not known noise."""

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip() and not any(noise in line for noise in NATIVE_NOISE):
                    print(line, file=sys.stderr)


class Solution:
    """A mediapipe solution (`make(mediapipe.solutions)`: face mesh, face detection, selfie segmentation) that
    keeps its native start-up notices out of stderr. A graph prints them from its own threads while it starts,
    which goes on after the constructor returns, until its first image is through: so the solution is made and
    given a blank image (which leaves no state: later results are bit-identical) under `quiet_native_stderr`."""

    def __init__(self, make: Callable[[Any], Any]):
        with quiet_native_stderr():
            self._solution = make(solutions())
            self._solution.process(np.zeros((64, 64, 3), np.uint8))

    def process(self, image: np.ndarray):
        """mediapipe's result for one [H, W, 3] uint8 RGB image."""
        return self._solution.process(np.ascontiguousarray(image))

    def close(self) -> None:
        self._solution.close()

    def __enter__(self) -> Solution:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FaceMesh(Solution):
    """mediapipe FaceMesh with refined landmarks (478, irises included) on [H, W, 3] uint8 RGB images.

    `static` detects every image on its own (no smoothing across frames: metrics, crop scans); otherwise
    it tracks through a clip and runs its face detector only when the track is lost."""

    def __init__(self, static: bool, max_faces: int = 1, min_detection_confidence: float = 0.5):
        super().__init__(
            lambda mp: mp.face_mesh.FaceMesh(
                static_image_mode=static,
                max_num_faces=max_faces,
                refine_landmarks=True,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=0.5,
            )
        )

    def faces(self, image: np.ndarray) -> list[np.ndarray]:
        """Every face found: [478, 3] float32 each, x and y in pixels of `image`, z in the same pixel scale."""
        height, width = image.shape[:2]
        result = self.process(image)
        scale = np.array([width, height, width], np.float32)
        return [
            np.array([(p.x, p.y, p.z) for p in face.landmark], np.float32) * scale
            for face in (result.multi_face_landmarks or [])
        ]
