"""Tracking: landmarks on real clips, and the face model on synthetic faces with known pose and expression."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avatar.contracts.camera import Intrinsics, project
from avatar.contracts.dataset import TRACKING_ARRAYS
from avatar.errors import UserError
from avatar.preprocess.face_model import EYE_CORNER_DISTANCE_M, MIRROR_PAIRS, umeyama
from avatar.preprocess.track import (
    BLENDSHAPE_NAMES,
    LandmarkDetections,
    LandmarkFaceModel,
    detect_landmarks,
    find_faces_for_crop,
)
from tests.track_fixtures import real_detections, real_frames

INTRINSICS = Intrinsics.from_fov(20.0, 512, 512)
LIPS_LOWER = [
    14,
    87,
    178,
    88,
    95,
    317,
    402,
    318,
    324,
    17,
    84,
    181,
    91,
    146,
    314,
    405,
    321,
    375,
    152,
    148,
    176,
    377,
    400,
]


def synthetic_face(seed: int = 0) -> np.ndarray:
    """[478, 3] a face-sized, left-right symmetric point cloud in metres (head frame: x right, y down, z in)
    with the landmarks the tracker relies on (eye corners, forehead, chin, mouth) where a face has them."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-1.2, 1.2, 478)
    phi = rng.uniform(-1.3, 1.3, 478)
    face = np.stack([0.075 * np.sin(theta) * np.cos(phi), 0.1 * np.sin(phi), -0.06 * np.cos(theta) * np.cos(phi)], -1)
    named = {
        33: (-0.045, -0.02, -0.04),
        133: (-0.015, -0.02, -0.045),
        263: (0.045, -0.02, -0.04),
        362: (0.015, -0.02, -0.045),
        10: (0, -0.09, -0.04),
        152: (0, 0.1, -0.045),
        168: (0, -0.025, -0.06),
        2: (0, 0.025, -0.07),
        13: (0, 0.045, -0.06),
        14: (0, 0.05, -0.06),
        61: (-0.025, 0.05, -0.05),
        291: (0.025, 0.05, -0.05),
        159: (-0.03, -0.027, -0.045),
        145: (-0.03, -0.013, -0.045),
        386: (0.03, -0.027, -0.045),
        374: (0.03, -0.013, -0.045),
    }
    for i, p in named.items():
        face[i] = p
    for right, left in MIRROR_PAIRS:
        face[right] = face[left] * [-1, 1, 1]
    return face


def synthetic_detections(
    face: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, noise_px: float = 0.0, seed: int = 1
) -> LandmarkDetections:
    """What mediapipe would report for faces [N, 478, 3] (or [478, 3]) seen with pose R, t."""
    cam = np.einsum("nij,npj->npi", R, np.broadcast_to(face, (len(R), *face.shape[-2:]))) + t[:, None]
    uv = project(np.broadcast_to(face, cam.shape), R, t, K)
    uv = uv + np.random.default_rng(seed).normal(0, noise_px, uv.shape)
    depth_ref = cam[:, [33, 263], 2].mean(1, keepdims=True)
    z_px = (cam[..., 2] - depth_ref) * K[0, 0] / depth_ref  # relative depth in the pixel scale of x
    mp3d = np.concatenate([uv, z_px[..., None]], -1).astype(np.float32)
    return LandmarkDetections(mp3d, np.ones(len(R), bool), np.ones(len(R), np.int32))


def head_motion(n: int, fps: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, plausible head motion: slow nods and turns of a few degrees, swaying translation."""
    s = np.arange(n) / fps
    rotvec = np.stack([0.08 * np.sin(1.3 * s), 0.12 * np.sin(0.7 * s + 1), 0.04 * np.sin(0.9 * s + 2)], -1)
    t = np.stack([0.01 * np.sin(0.5 * s), 0.005 * np.sin(0.8 * s), 0.9 + 0.02 * np.sin(0.3 * s)], -1)
    return Rotation.from_rotvec(rotvec).as_matrix(), t


def relative_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    return np.rad2deg(Rotation.from_matrix(np.einsum("nji,njk->nik", Ra, Rb)).magnitude())


def test_rigid_synthetic_face_recovers_pose_and_shape():
    face = synthetic_face()
    R_true, t_true = head_motion(100)
    result = LandmarkFaceModel().fit(synthetic_detections(face, R_true, t_true, INTRINSICS.K), INTRINSICS, 25.0)
    a = result.arrays
    assert set(a) == set(TRACKING_ARRAYS)
    # the canonical face is the true face up to a rigid change of frame (same metric scale: eye corners at 9 cm)
    s, R_frame, t_frame = umeyama(a["canonical_face"][None].astype(np.float64), face[None], np.ones((1, 478)))
    assert abs(s[0] - 1) < 0.01
    assert np.linalg.norm(s[0] * a["canonical_face"] @ R_frame[0].T + t_frame[0] - face, axis=1).max() < 1e-3
    # so the tracked pose is the true pose composed with that constant change of frame
    R_expected = np.einsum("nij,jk->nik", R_true, R_frame[0])
    assert relative_angle_deg(a["rotation_raw"], R_expected).max() < 0.05
    assert np.abs(a["translation_raw"] - (t_true + R_true @ t_frame[0])).max() < 1e-3
    assert result.stats["reprojection_error_px"] < 0.02
    assert np.linalg.norm(a["canonical_face"][33] - a["canonical_face"][263]) == pytest.approx(
        EYE_CORNER_DISTANCE_M, rel=1e-3
    )


def test_smoothing_removes_jitter_without_lag():
    face = synthetic_face()
    R_true, t_true = head_motion(150)
    det = synthetic_detections(face, R_true, t_true, INTRINSICS.K, noise_px=0.4)
    result = LandmarkFaceModel().fit(det, INTRINSICS, 25.0)
    a, stats = result.arrays, result.stats
    assert stats["jitter_ratio_rotation"] >= 3 and stats["jitter_ratio_translation"] >= 3
    assert stats["smoothing_lag_frames"] == 0
    # smoothing brings the pose closer to the truth (the constant change of frame cancels in relative rotations)
    rel_true = relative_angle_deg(R_true[:-5], R_true[5:])
    err_raw = np.abs(relative_angle_deg(a["rotation_raw"][:-5], a["rotation_raw"][5:]) - rel_true).mean()
    err_smooth = np.abs(relative_angle_deg(a["rotation"][:-5], a["rotation"][5:]) - rel_true).mean()
    assert err_smooth < 0.7 * err_raw


def test_expression_code_and_jaw_open_follow_a_known_mouth_motion():
    face = synthetic_face()
    n = 120
    R_true, t_true = head_motion(n)
    opening = 0.5 * (1 - np.cos(np.arange(n) / 25.0 * 2 * np.pi * 1.5))  # 0..1, 1.5 Hz, like syllables
    faces = np.repeat(face[None], n, 0)
    faces[:, LIPS_LOWER, 1] += 0.015 * opening[:, None]  # the jaw drops up to 15 mm
    result = LandmarkFaceModel().fit(synthetic_detections(faces, R_true, t_true, INTRINSICS.K), INTRINSICS, 25.0)
    jaw = result.arrays["blendshapes"][:, BLENDSHAPE_NAMES.index("jawOpen")]
    assert np.corrcoef(jaw, opening)[0, 1] > 0.95
    assert result.stats["reprojection_error_px_at_512"] < 0.1
    assert result.arrays["blendshapes"].min() >= 0 and result.arrays["blendshapes"].max() <= 1


def test_real_clip_landmarks_pose_and_reprojection(shared_data):
    det = real_detections()
    assert det.landmarks_mp3d.shape == (75, 478, 3)
    assert det.valid.all() and (det.num_faces == 1).all()
    # 16 components for 75 frames, so a low error is the model's merit, not one component per frame
    result = LandmarkFaceModel(num_expression_components=16).fit(det, INTRINSICS, 25.0)
    stats = result.stats
    assert stats["reprojection_error_px_at_512"] <= 0.6
    assert stats["rigid_only_reprojection_error_px_at_512"] > stats["reprojection_error_px_at_512"]
    assert stats["jitter_ratio_rotation"] >= 3 and stats["jitter_ratio_translation"] >= 3
    assert stats["smoothing_lag_frames"] == 0
    # the head sits in front of the camera, at a plausible distance for a 20-degree field of view
    assert 0.5 < np.median(result.arrays["translation"][:, 2]) < 3.0
    assert result.arrays["expression_pca"].shape == (75, 16) and result.arrays["expression_basis"].shape == (16, 478, 3)


def test_gaps_are_interpolated_and_too_many_missing_faces_refused(shared_data):
    frames = real_frames()[:12].copy()
    frames[5] = 0  # one frame without a face
    det = detect_landmarks(iter(frames), show_progress=False)
    assert det.valid.sum() == 11 and not det.valid[5]
    assert np.allclose(det.landmarks_mp3d[5], 0.5 * (det.landmarks_mp3d[4] + det.landmarks_mp3d[6]), atol=1e-3)
    assert det.gap_stats()["missing_frames"] == 1
    frames[2:9] = 0
    with pytest.raises(UserError, match="no face found"):
        detect_landmarks(iter(frames), source="clip.mp4", show_progress=False)


def test_find_faces_for_crop_any_resolution_and_two_faces(shared_data):
    frame = real_frames()[0]
    faces = find_faces_for_crop(frame)
    assert len(faces) == 1 and faces[0].shape == (478, 2)
    import cv2

    big = cv2.resize(frame, (900, 900))
    faces_big = find_faces_for_crop(big)
    assert np.abs(faces_big[0] * (512 / 900) - faces[0]).mean() < 3.0
    # two people side by side: the bigger face comes first, and tracking notices the second person
    pair = np.concatenate([frame, np.pad(cv2.resize(frame, (256, 256)), ((128, 128), (0, 0), (0, 0)))], axis=1)
    faces_pair = find_faces_for_crop(pair)
    assert len(faces_pair) == 2 and faces_pair[0][:, 0].mean() < 512
    det = detect_landmarks(iter([pair] * 3), show_progress=False)
    assert (det.num_faces == 2).all() and det.landmarks_mp3d[:, :, 0].mean() < 512


def test_blinks_are_named_by_the_persons_own_side():
    """The person's left eye (mediapipe 386/374, image right in a frontal view) closing gives eyeBlinkLeft."""
    face = synthetic_face()
    n = 100
    R_true, t_true = head_motion(n)
    faces = np.repeat(face[None], n, 0)
    blink = np.zeros(n)
    blink[[20, 21, 22, 60, 61, 62]] = 1.0
    faces[:, 386, 1] += 0.006 * blink  # upper lid down
    faces[:, 374, 1] -= 0.006 * blink  # lower lid up: the aperture shrinks from 14 to 2 mm
    result = LandmarkFaceModel().fit(synthetic_detections(faces, R_true, t_true, INTRINSICS.K), INTRINSICS, 25.0)
    b = result.arrays["blendshapes"]
    left, right = b[:, BLENDSHAPE_NAMES.index("eyeBlinkLeft")], b[:, BLENDSHAPE_NAMES.index("eyeBlinkRight")]
    assert left[blink > 0].min() > 0.9 and left[blink == 0].max() < 0.1
    assert right.max() < 0.1


def test_lag_measure_sees_a_delay_and_the_adaptive_window_is_the_shortest_that_reaches_the_target():
    from avatar.preprocess.smoothing import jitter_ratios, lag_frames, smooth_pose, smooth_pose_adaptive

    s = np.arange(300) / 25.0
    motion = np.stack([np.sin(1.1 * s), np.sin(0.6 * s + 1), np.sin(1.7 * s + 2)], -1)  # [N, 3]
    assert lag_frames(motion, motion) == 0
    delayed = np.r_[motion[:2], motion[:-2]]  # a causal filter's output trails its input
    assert lag_frames(motion, delayed) == 2
    rng = np.random.default_rng(0)
    R = Rotation.from_rotvec(0.1 * motion + rng.normal(0, 0.002, motion.shape)).as_matrix()
    t = np.c_[0.01 * motion[:, :2], 1 + 0.01 * motion[:, 2]] + rng.normal(0, 0.0002, motion.shape)
    R_s, t_s, window = smooth_pose_adaptive(R, t, 25.0, 3.5, 0.2, 0.6)
    assert 5 <= window <= 15 and window % 2 == 1
    assert min(jitter_ratios(R, t, R_s, t_s)) >= 3.5
    if window > 5:
        assert min(jitter_ratios(R, t, *smooth_pose(R, t, window - 2))) < 3.5
