"""Face tracking for the dataset builder: the public names, gathered from the modules that implement them.

- preprocess.landmarks: mediapipe FaceMesh landmarks per frame (`detect_landmarks`, `find_faces_for_crop`)
- preprocess.face_model: our tracker `LandmarkFaceModel` (canonical face, pose, expression code)
- preprocess.smoothing: zero-lag pose smoothing; preprocess.blendshapes: ARKit-named coefficients
- preprocess.tracker_interface: `FaceTracker`, the interface a FLAME fitter could implement later
"""

from avatar.preprocess.blendshapes import BLENDSHAPE_NAMES
from avatar.preprocess.face_model import LandmarkFaceModel
from avatar.preprocess.landmarks import LandmarkDetections, detect_landmarks, find_faces_for_crop
from avatar.preprocess.tracker_interface import FaceTracker, TrackResult

__all__ = [
    "BLENDSHAPE_NAMES",
    "FaceTracker",
    "LandmarkDetections",
    "LandmarkFaceModel",
    "TrackResult",
    "detect_landmarks",
    "find_faces_for_crop",
]
