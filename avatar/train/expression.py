"""The audio encoder's targets: the audio-predictable part of the tracked expression, fitted once per run.

The lower face (landmarks below the nose) is what speech moves; its displacement under the tracked
expression PCA code is compressed by PCA (fitted on the training frames) to a few components, scaled by
one common factor so that the loss stays proportional to landmark motion in metres. A least-squares map
takes a prediction back to the dataset's full expression code, which the avatar stores (`to_code`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar.contracts.dataset import Dataset
from avatar.contracts.face_mesh import (
    INNER_LIP_LOWER,
    INNER_LIP_UPPER,
    MOUTH_OPENING_IDS,
    NOSE_TIP,
    opening_of_mouth_points,
)

# At most MAX_COMPONENTS lower-face PCA components, fewer when they explain EXPLAINED_VARIANCE of its motion.
MAX_COMPONENTS = 12
EXPLAINED_VARIANCE = 0.98


def lower_face_ids(canonical_face: np.ndarray) -> np.ndarray:
    """Landmarks below the nose tip in the canonical face (y points down): lips, jaw, chin, lower cheeks."""
    return np.flatnonzero(canonical_face[:, 1] > canonical_face[NOSE_TIP, 1])


@dataclass
class ExpressionSpace:
    """Targets [N, E] of every frame and what it takes to undo them (numpy, float32 unless noted)."""

    targets: np.ndarray  # [N, E] normalised targets of every dataset frame
    mean: np.ndarray  # [D] mean lower-face displacement (D = 3 * lower-face landmarks)
    components: np.ndarray  # [E, D] its PCA components
    scale: float  # std of the first component on the training frames
    to_code: np.ndarray  # [E, P] least-squares map back to the expression code ...
    code_mean: np.ndarray  # [P] ... around this mean code
    rest: np.ndarray  # [E] the closed-mouth target (the answer to silence)
    opening: np.ndarray  # [E] the inner-lip gap linearised at the mean shape: gap ~ targets @ opening + c (unit std)
    canonical_face: np.ndarray  # [478, 3] float64
    basis: np.ndarray  # [P, 478, 3] float64 expression basis

    @property
    def dim(self) -> int:
        return self.targets.shape[1]

    @staticmethod
    def fit(dataset: Dataset) -> ExpressionSpace:
        code = np.asarray(dataset.tracking("expression_pca"), np.float64)  # [N, P]
        basis = np.array(dataset.tracking("expression_basis"), np.float64)  # [P, 478, 3]
        canonical = np.array(dataset.tracking("canonical_face"), np.float64)
        train = dataset.indices("train")
        ids = lower_face_ids(canonical)
        motion = code @ basis[:, ids].reshape(basis.shape[0], -1)  # [N, D] lower-face displacement
        mean = motion[train].mean(0)
        _, sing, vt = np.linalg.svd(motion[train] - mean, full_matrices=False)
        share = np.cumsum(sing**2) / max(np.sum(sing**2), 1e-20)
        num = int(min(np.searchsorted(share, EXPLAINED_VARIANCE) + 1, MAX_COMPONENTS))
        components = vt[:num]  # [E, D]
        scale = float(sing[0] / np.sqrt(len(train))) or 1.0
        targets = (motion - mean) @ components.T / scale  # [N, E]

        code_mean = code[train].mean(0)
        to_code, *_ = np.linalg.lstsq(targets[train], code[train] - code_mean, rcond=None)  # [E, P]
        upper, lower = (int(np.flatnonzero(ids == i)[0]) for i in (INNER_LIP_UPPER, INNER_LIP_LOWER))
        mean_shape = canonical[ids] + mean.reshape(-1, 3)
        axis = mean_shape[lower] - mean_shape[upper]
        axis /= max(np.linalg.norm(axis), 1e-9)
        comp = components.reshape(num, -1, 3)
        direction = (comp[:, lower] - comp[:, upper]) @ axis  # [E]
        direction /= max(float(np.std(targets[train] @ direction)), 1e-12)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        opening = codes_opening(canonical, basis, code)
        closed = train[opening[train] <= np.quantile(opening[train], 0.1)]
        return ExpressionSpace(
            f32(targets),
            f32(mean),
            f32(components),
            scale,
            f32(to_code),
            f32(code_mean),
            f32(targets[closed].mean(0)),
            f32(direction),
            canonical,
            basis,
        )

    def to_codes(self, expression: np.ndarray) -> np.ndarray:
        """[..., E] targets -> [..., P] expression codes (the landmarks follow as canonical + code @ basis)."""
        return self.code_mean + np.asarray(expression, np.float32) @ self.to_code

    def opening_of_codes(self, code: np.ndarray) -> np.ndarray:
        """[N, P] expression codes -> [N] mouth opening of the reconstructed canonical-frame landmarks."""
        return codes_opening(self.canonical_face, self.basis, code)


def codes_opening(canonical: np.ndarray, basis: np.ndarray, code: np.ndarray) -> np.ndarray:
    """[N, P] expression codes -> [N] mouth opening, reconstructing only the landmarks the measure reads."""
    ids = list(MOUTH_OPENING_IDS)
    points = canonical[ids] + np.einsum("np,pkc->nkc", np.asarray(code, np.float64), basis[:, ids])
    return opening_of_mouth_points(points)
