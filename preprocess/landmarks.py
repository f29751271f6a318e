"""Face landmarks from mediapipe FaceMesh (478 points with irises), per frame of a clip.

mediapipe returns x, y normalised by the image size and z in the same scale as x. We convert to
dataset pixels once, here, so the rest of the tracker works in one unit: x, y in pixels (OpenCV
pixel-centre convention, see avatar.contracts.camera), z in the same pixel scale, larger = farther.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from tqdm import tqdm

from avatar.contracts.face_mesh import NUM_LANDMARKS, FaceMesh, Solution
from avatar.errors import UserError


@dataclass
class LandmarkDetections:
    landmarks_mp3d: np.ndarray  # [N, 478, 3] float32 pixels; frames without a face are interpolated
    valid: np.ndarray  # [N] bool, False where no face was found (the landmarks there are interpolated)
    num_faces: np.ndarray  # [N] int, faces seen in the frame (> 1: someone else is in the picture)

    @property
    def num_frames(self) -> int:
        return len(self.valid)

    def gap_stats(self) -> dict:
        """Counts of frames without a face and of the runs they form, for reports and warnings."""
        missing = ~self.valid
        starts = np.flatnonzero(missing & ~np.r_[False, missing[:-1]])
        ends = np.flatnonzero(missing & ~np.r_[missing[1:], False])
        return {
            "missing_frames": int(missing.sum()),
            "gaps": int(len(starts)),
            "longest_gap": int((ends - starts + 1).max()) if len(starts) else 0,
            "frames_with_several_faces": int((self.num_faces > 1).sum()),
        }


def _face_size(points: np.ndarray) -> float:
    return float(np.prod(points[:, :2].max(0) - points[:, :2].min(0)))


def _pick_main_face(faces: list[np.ndarray], previous: np.ndarray | None) -> np.ndarray:
    """The speaker: the face nearest the previous frame's (so two similar faces never swap), else the biggest."""
    if previous is not None:
        centre = previous[:, :2].mean(0)
        return min(faces, key=lambda f: float(np.linalg.norm(f[:, :2].mean(0) - centre)))
    return max(faces, key=_face_size)


def interpolate_gaps(landmarks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill frames without a face by linear interpolation in time (edges hold the nearest detection)."""
    if valid.all():
        return landmarks
    frames = np.arange(len(valid))
    flat = landmarks.reshape(len(valid), -1)
    filled = np.empty_like(flat)
    for c in range(flat.shape[1]):
        filled[:, c] = np.interp(frames, frames[valid], flat[valid, c])
    return filled.reshape(landmarks.shape)


def detect_landmarks(
    frames: Iterable[np.ndarray],
    *,
    max_missing_fraction: float = 0.1,
    source: str = "video",
    show_progress: bool = True,
    total: int | None = None,
    count_faces_every: int = 12,
) -> LandmarkDetections:
    """Track 478 landmarks through RGB uint8 [H, W, 3] frames (streamed, any count).

    FaceMesh runs in tracking mode: its face detector only runs when the track is lost. Asking it for
    two faces would run that detector on every frame (measured 35 % more time), so a face detector counts
    the faces every `count_faces_every` frames instead, and only while it sees a second person does a
    two-face FaceMesh take over (the main speaker is kept). Short gaps are interpolated; more than
    `max_missing_fraction` of frames without a face is a UserError naming `source`.
    """

    points: list[np.ndarray | None] = []
    num_faces: list[int] = []
    previous = None
    meshes = {1: FaceMesh(static=False, max_faces=1)}  # faces asked for -> FaceMesh; the two-face one when needed
    counted = 1
    detector = Solution(lambda mp: mp.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5))
    with detector:
        for i, frame in enumerate(tqdm(frames, desc="landmarks", unit="frame", total=total, disable=not show_progress)):
            frame = np.ascontiguousarray(frame)
            if i % count_faces_every == 0:
                counted = len(detector.process(frame).detections or [])
            wanted = 2 if counted > 1 else 1
            if wanted not in meshes:
                meshes[wanted] = FaceMesh(static=False, max_faces=wanted)
            faces = meshes[wanted].faces(frame)
            num_faces.append(max(len(faces), counted))
            if faces:
                previous = _pick_main_face(faces, previous)
                points.append(previous)
            else:
                points.append(None)
    for mesh in meshes.values():
        mesh.close()
    valid = np.array([p is not None for p in points], bool)
    if len(valid) == 0:
        raise UserError(f"{source}: has no frames to track.")
    missing = 1 - valid.mean()
    if not valid.any() or missing > max_missing_fraction:
        raise UserError(
            f"{source}: no face found in {missing:.0%} of the frames (at most {max_missing_fraction:.0%} allowed). "
            "Use a video where one person's face is visible throughout, or cut the clip to those parts."
        )
    landmarks = np.zeros((len(valid), NUM_LANDMARKS, 3), np.float32)
    landmarks[valid] = np.stack([p for p in points if p is not None])
    return LandmarkDetections(interpolate_gaps(landmarks, valid), valid, np.array(num_faces, np.int32))


@lru_cache(maxsize=1)
def _static_mesh() -> FaceMesh:
    return FaceMesh(static=True, max_faces=4)


def find_faces_for_crop(frame_rgb: np.ndarray) -> list[np.ndarray]:
    """All faces in one RGB frame of any resolution: [478, 2] landmark sets in that frame's pixels,
    biggest first. Static-image mode, for choosing the crop before tracking starts."""
    faces = [f[:, :2] for f in _static_mesh().faces(frame_rgb)]
    return sorted(faces, key=_face_size, reverse=True)
