"""Our landmark face model: the person's own canonical 3D face, a rigid pose per frame, an expression code.

No FLAME/BFM model can be downloaded, so the model is learnt from the clip itself:
1. Lift: mediapipe gives x, y in pixels and a relative z in the same pixel scale. With the known
   intrinsics and a typical outer-eye-corner distance (`EYE_CORNER_DISTANCE_M`) each frame becomes a
   metric point cloud in camera space.
2. Canonical face: robust (Cauchy-weighted) similarity alignment of all frames onto a template,
   iterated, on landmarks that expressions barely move (first a hand-picked set, then the measured
   least-moving third of the mesh). The median aligned shape, in the canonical head frame of
   avatar.contracts.camera, is the person's neutral face.
3. Pose: per frame, Gauss-Newton on the 2D reprojection of the stable landmarks (robust weights),
   then zero-phase smoothing (preprocess.smoothing).
4. Expression: a PCA basis of the non-rigid 3D motion, and per frame a code fitted to the 2D landmarks
   under the SMOOTHED pose, so the code also absorbs what smoothing removed and reprojection stays low.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation
from threadpoolctl import threadpool_limits

from avatar.contracts.camera import Intrinsics, project
from avatar.contracts.face_mesh import CHIN, FOREHEAD, NUM_MESH_POINTS, RIGID_ANCHORS
from avatar.contracts.face_mesh import MIRROR_PAIRS as FACE_MESH_MIRROR_PAIRS
from avatar.errors import UserError
from avatar.preprocess.blendshapes import BLENDSHAPE_NAMES, blendshape_coefficients
from avatar.preprocess.landmarks import LandmarkDetections
from avatar.preprocess.smoothing import (
    jitter_ratios,
    lag_frames,
    rotation_signal,
    second_difference_energy,
    smooth_pose_adaptive,
)
from avatar.preprocess.tracker_interface import TrackResult

EYE_CORNER_DISTANCE_M = 0.09  # typical adult outer canthal width (landmarks 33 and 263): sets the metric scale
HEAD_CENTRE_BEHIND_EYES_M = 0.075  # the head centre (origin) lies this far behind the eye corners' midpoint

ANCHORS = np.array(RIGID_ANCHORS)
MIRROR_PAIRS = np.array(FACE_MESH_MIRROR_PAIRS)


# ----------------------------------------------------------------------------- geometry helpers
def lift_to_camera(mp3d: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """[N, 478, 3] mediapipe pixels -> [N, 478, 3] metric camera-space points (see module docstring)."""
    u, v, z = mp3d[..., 0], mp3d[..., 1], mp3d[..., 2]
    eye_px = np.linalg.norm(mp3d[:, 33] - mp3d[:, 263], axis=-1)  # [N] 3D, so turning the head does not shrink it
    metres_per_px = EYE_CORNER_DISTANCE_M / eye_px  # [N] at the face's depth
    depth_eyes = intrinsics.fx * metres_per_px  # [N] depth of the eye corners
    depth = depth_eyes[:, None] + (z - 0.5 * (z[:, 33] + z[:, 263])[:, None]) * metres_per_px[:, None]
    x = (u - intrinsics.cx) / intrinsics.fx * depth
    y = (v - intrinsics.cy) / intrinsics.fy * depth
    return np.stack([x, y, depth], -1)


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray, with_scale: bool = True):
    """Weighted least-squares similarity per frame: dst ≈ s R src + t.
    src, dst [N, P, 3], weights [N, P] -> s [N], R [N, 3, 3], t [N, 3]."""
    w = weights / weights.sum(1, keepdims=True)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    a, b = src - mu_s[:, None], dst - mu_d[:, None]
    cov = np.matmul((w[..., None] * b).transpose(0, 2, 1), a)  # [N, 3, 3]
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones((len(src), 3))
    D[:, 2] = d
    R = U @ (D[:, :, None] * Vt)
    var_s = (w[..., None] * a**2).sum((1, 2))
    s = (S * D).sum(1) / var_s if with_scale else np.ones(len(src))
    t = mu_d - s[:, None] * np.matmul(R, mu_s[..., None])[..., 0]
    return s, R, t


def cauchy_weights(residual: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + (residual / scale) ** 2)


def align_to_template(points: np.ndarray, template: np.ndarray, idx: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Similarity-align every frame [N, 478, 3] onto `template` using landmarks `idx`, with Cauchy weights
    that shrink the influence of the landmarks a frame moved most. Returns the aligned frames."""
    weights = np.ones((len(points), len(idx)))
    for _ in range(iterations):
        s, R, t = umeyama(points[:, idx], np.broadcast_to(template[idx], points[:, idx].shape), weights)
        aligned = s[:, None, None] * np.matmul(points, R.transpose(0, 2, 1)) + t[:, None]
        residual = np.linalg.norm(aligned[:, idx] - template[idx], axis=-1)  # [N, len(idx)]
        weights = cauchy_weights(residual, 2.0 * np.median(residual) + 1e-9)
    return aligned


def head_frame(template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axes [3, 3] (rows: x right, y down, z into the head) and origin [3] of the head frame, from the face's
    own symmetry, expressed in the template's coordinates."""
    x = (template[MIRROR_PAIRS[:, 1]] - template[MIRROR_PAIRS[:, 0]]).sum(0)
    x /= np.linalg.norm(x)
    y = template[CHIN] - template[FOREHEAD]
    y -= x * (x @ y)
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    eyes = template[[33, 133, 263, 362]].mean(0)
    return np.stack([x, y, z]), eyes + HEAD_CENTRE_BEHIND_EYES_M * z


def build_canonical_face(points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Metric camera-space frames [N, 478, 3] -> (canonical face [478, 3] in the head frame, metres;
    the frames aligned into the head frame [N, 478, 3]; indices of the stable landmarks)."""
    template = points_cam[len(points_cam) // 2]
    idx = ANCHORS
    for round_ in range(2):
        for _ in range(3):
            aligned = align_to_template(points_cam, template, idx)
            template = np.median(aligned, axis=0)
        if round_ == 0:  # replace the hand-picked anchors by the measured least-moving third of the mesh
            spread = np.median(np.linalg.norm(aligned - template, axis=-1), axis=0)[:NUM_MESH_POINTS]
            idx = np.union1d(np.argsort(spread)[: NUM_MESH_POINTS // 3], ANCHORS)
    scale = EYE_CORNER_DISTANCE_M / np.linalg.norm(template[33] - template[263])
    axes, origin = head_frame(template * scale)
    to_head = lambda p: (p * scale - origin) @ axes.T  # noqa: E731 - one-line change of frame
    return to_head(template), to_head(aligned), idx


# ----------------------------------------------------------------------------- pose
def _skew(v: np.ndarray) -> np.ndarray:
    """[..., 3] -> [..., 3, 3] cross-product matrices."""
    o = np.zeros(v.shape[:-1])
    return np.stack(
        [
            np.stack([o, -v[..., 2], v[..., 1]], -1),
            np.stack([v[..., 2], o, -v[..., 0]], -1),
            np.stack([-v[..., 1], v[..., 0], o], -1),
        ],
        -2,
    )


def _exp_so3(w: np.ndarray) -> np.ndarray:

    return Rotation.from_rotvec(w).as_matrix()


def _projection_jacobian(cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """d(u, v)/d(camera point): [..., P, 3] -> [..., P, 2, 3]."""
    x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
    o = np.zeros_like(z)
    return np.stack(
        [np.stack([K[0, 0] / z, o, -K[0, 0] * x / z**2], -1), np.stack([o, K[1, 1] / z, -K[1, 1] * y / z**2], -1)], -2
    )


def fit_rigid_pose(
    model: np.ndarray, uv: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, iterations: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame Gauss-Newton PnP with Cauchy weights: model [P, 3] head-frame points, uv [N, P, 2]
    pixels, initial R [N, 3, 3], t [N, 3] -> refined R, t."""
    weights = np.ones(uv.shape[:2])
    for _ in range(iterations):
        rotated = np.matmul(model, R.transpose(0, 2, 1))  # [N, P, 3]
        cam = rotated + t[:, None]
        res = project(model, R, t, K) - uv  # [N, P, 2]
        dist = np.linalg.norm(res, axis=-1)
        weights = cauchy_weights(dist, 2.0 * np.median(dist, axis=1, keepdims=True) + 1e-6)
        Jp = _projection_jacobian(cam, K)  # [N, P, 2, 3]
        J = np.concatenate([Jp @ -_skew(rotated), Jp], -1)  # [N, P, 2, 6]: left rotation increment, translation
        Jw = (J * weights[..., None, None]).reshape(len(J), -1, 6)
        H = np.matmul(Jw.transpose(0, 2, 1), J.reshape(len(J), -1, 6)) + 1e-9 * np.eye(6)
        g = np.matmul(Jw.transpose(0, 2, 1), res.reshape(len(J), -1, 1))[..., 0]
        step = -np.linalg.solve(H, g[..., None])[..., 0]
        R = _exp_so3(step[:, :3]) @ R
        t = t + step[:, 3:]
    return R, t


# ----------------------------------------------------------------------------- expression
def expression_basis(aligned: np.ndarray, canonical: np.ndarray, num_components: int) -> np.ndarray:
    """PCA of the non-rigid motion (aligned frames minus the canonical face), uncentred so the codes
    also carry the offset of the average expression from the neutral one. Scaled so codes have unit
    RMS over the clip. [N, 478, 3] -> [P, 478, 3]."""
    motion = (aligned - canonical).reshape(len(aligned), -1)  # [N, 478 * 3]
    P = min(num_components, len(aligned))
    if len(motion) < motion.shape[1]:  # eigen-decompose the smaller Gram matrix: same components
        eigval, eigvec = np.linalg.eigh(motion @ motion.T)  # left singular vectors [N, N]
        order = np.argsort(eigval)[::-1][:P]
        sigma = np.sqrt(np.maximum(eigval[order], 1e-30))
        components = (motion.T @ eigvec[:, order] / sigma).T  # [P, D] unit rows
    else:
        eigval, eigvec = np.linalg.eigh(motion.T @ motion)  # right singular vectors [D, D]
        order = np.argsort(eigval)[::-1][:P]
        sigma = np.sqrt(np.maximum(eigval[order], 0.0))
        components = eigvec[:, order].T
    scale = sigma / np.sqrt(len(aligned))  # RMS over the clip of each component's code
    return (components * scale[:, None]).reshape(P, *canonical.shape)


def fit_expression(
    canonical: np.ndarray,
    basis: np.ndarray,
    uv: np.ndarray,
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    ridge: float = 1e-3,
    iterations: int = 3,
    chunk: int = 128,
) -> np.ndarray:
    """Per-frame code [N, P] minimising the 2D reprojection error of canonical + code @ basis under the
    given (smoothed) pose, by Gauss-Newton with a small ridge toward 0."""
    N, P = len(uv), len(basis)
    codes = np.zeros((N, P))
    flat_basis = basis.reshape(1, -1, 3)  # [1, P * 478, 3]
    for s in range(0, N, chunk):
        sl = slice(s, s + chunk)
        Rc, tc, c = R[sl], t[sl], codes[sl]
        n = len(c)
        basis_cam = np.matmul(flat_basis, Rc.transpose(0, 2, 1)).reshape(n, P, -1, 3)  # [n, P, 478, 3]
        for _ in range(iterations):
            shape = canonical + np.matmul(c, basis.reshape(P, -1)).reshape(n, -1, 3)
            cam = np.matmul(shape, Rc.transpose(0, 2, 1)) + tc[:, None]
            res = (project(shape, Rc, tc, K) - uv[sl]).reshape(n, -1)  # [n, 2 * 478]
            inv_z = 1.0 / cam[None, ..., 2]  # [1, n, 478]: the projection's Jacobian, written out
            du = (
                K[0, 0]
                * inv_z
                * (
                    basis_cam[..., 0].transpose(1, 0, 2)
                    - cam[None, ..., 0] * inv_z * basis_cam[..., 2].transpose(1, 0, 2)
                )
            )
            dv = (
                K[1, 1]
                * inv_z
                * (
                    basis_cam[..., 1].transpose(1, 0, 2)
                    - cam[None, ..., 1] * inv_z * basis_cam[..., 2].transpose(1, 0, 2)
                )
            )
            J = np.stack([du, dv], -1).transpose(1, 0, 2, 3).reshape(n, P, -1)  # [n, P, 2 * 478]
            H = np.matmul(J, J.transpose(0, 2, 1)) + ridge * np.eye(P)
            g = np.matmul(J, res[..., None])[..., 0] + ridge * c
            c = c - np.linalg.solve(H, g[..., None])[..., 0]
        codes[sl] = c
    return codes


def reprojection_error(shapes: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """[N] mean pixel distance between projected shapes [N or 1, 478, 3] and landmarks uv [N, 478, 2]."""
    return np.linalg.norm(project(shapes, R, t, K) - uv, axis=-1).mean(1)


# ----------------------------------------------------------------------------- the tracker
class LandmarkFaceModel:
    """Implements preprocess.tracker_interface.FaceTracker with the person's own landmark face model."""

    def __init__(
        self,
        num_expression_components: int = 64,
        jitter_reduction: float = 3.5,
        min_smoothing_window_s: float = 0.2,
        max_smoothing_window_s: float = 0.6,
    ):
        self.num_expression_components = num_expression_components  # PCA code size P
        self.jitter_reduction = jitter_reduction  # pose smoothing target: raw / smoothed second-difference jitter
        self.min_smoothing_window_s = min_smoothing_window_s  # Savitzky-Golay windows tried, shortest first
        self.max_smoothing_window_s = max_smoothing_window_s

    def fit(self, det: LandmarkDetections, intrinsics: Intrinsics, fps: float) -> TrackResult:
        # Many small matrix products: BLAS threads only contend with each other (and with the other
        # preprocessing work) here, and were measured 10-50x slower than one thread on a loaded 2-core machine.

        with threadpool_limits(limits=1):
            return self._fit(det, intrinsics, fps)

    def _fit(self, det: LandmarkDetections, intrinsics: Intrinsics, fps: float) -> TrackResult:
        mp3d = det.landmarks_mp3d.astype(np.float64)
        if len(mp3d) < 2:
            raise UserError("the clip: too few frames to build a face model (need at least 2). Use a longer video.")
        K = intrinsics.K
        uv = mp3d[..., :2]
        points_cam = lift_to_camera(mp3d, intrinsics)
        canonical, aligned, stable = build_canonical_face(points_cam)

        # initial pose: rigid alignment of the canonical face onto the lifted frame, then 2D refinement
        weights = np.ones((len(mp3d), len(stable)))
        _, R0, t0 = umeyama(
            np.broadcast_to(canonical[stable], points_cam[:, stable].shape),
            points_cam[:, stable],
            weights,
            with_scale=False,
        )
        R_raw, t_raw = fit_rigid_pose(canonical[stable], uv[:, stable], K, R0, t0)
        R, t, window = smooth_pose_adaptive(
            R_raw, t_raw, fps, self.jitter_reduction, self.min_smoothing_window_s, self.max_smoothing_window_s
        )

        basis = expression_basis(aligned, canonical, self.num_expression_components)
        codes = fit_expression(canonical, basis, uv, K, R, t)
        shapes = canonical + np.einsum("nk,kpi->npi", codes, basis)
        blendshapes = blendshape_coefficients(aligned)

        scale_512 = 512.0 / intrinsics.height
        err_model = reprojection_error(shapes, R, t, K, uv)
        err_rigid_raw = reprojection_error(canonical[None], R_raw, t_raw, K, uv)
        rot_raw, rot_smooth = rotation_signal(R_raw), rotation_signal(R)
        jitter_rot, jitter_trans = jitter_ratios(R_raw, t_raw, R, t)
        stats = {
            "reprojection_error_px": float(err_model.mean()),
            "reprojection_error_px_at_512": float(err_model.mean() * scale_512),
            "reprojection_error_p95_px_at_512": float(np.percentile(err_model, 95) * scale_512),
            "rigid_only_reprojection_error_px_at_512": float(err_rigid_raw.mean() * scale_512),
            # the same with the smoothed pose: how much real motion the smoothing took out, for the code to absorb
            "rigid_smoothed_reprojection_error_px_at_512": float(
                reprojection_error(canonical[None], R, t, K, uv).mean() * scale_512
            ),
            "jitter_ratio_rotation": jitter_rot,
            "jitter_ratio_translation": jitter_trans,
            "jitter_ratio_landmarks": _projected_jitter(canonical[stable], R_raw, t_raw, K)
            / max(_projected_jitter(canonical[stable], R, t, K), 1e-12),
            "smoothing_lag_frames": lag_frames(np.c_[rot_raw, t_raw], np.c_[rot_smooth, t]),
            "smoothing_window_frames": window,
            "expression_components": len(basis),
            "stable_landmarks": len(stable),
            **det.gap_stats(),
        }
        arrays = {
            "landmarks": uv.astype(np.float32),
            "landmarks_mp3d": det.landmarks_mp3d.astype(np.float32),
            "valid": det.valid.astype(bool),
            "rotation": R.astype(np.float32),
            "translation": t.astype(np.float32),
            "rotation_raw": R_raw.astype(np.float32),
            "translation_raw": t_raw.astype(np.float32),
            "canonical_face": canonical.astype(np.float32),
            "expression_pca": codes.astype(np.float32),
            "expression_basis": basis.astype(np.float32),
            "blendshapes": blendshapes.astype(np.float32),
        }
        return TrackResult(arrays=arrays, blendshape_names=list(BLENDSHAPE_NAMES), stats=stats)


def _projected_jitter(model: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> float:
    """Second-difference jitter (px) of the rigidly posed model's projection: rotation and translation in one unit."""
    return second_difference_energy(project(model, R, t, K))
