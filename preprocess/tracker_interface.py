"""What any face tracker hands to the dataset builder, so a FLAME fitter can replace ours later."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from avatar.contracts.camera import Intrinsics
from avatar.preprocess.landmarks import LandmarkDetections


@dataclass
class TrackResult:
    arrays: dict[str, np.ndarray]  # exactly the keys of avatar.contracts.dataset.TRACKING_ARRAYS
    blendshape_names: list[str]  # column names of arrays["blendshapes"] (ARKit naming)
    stats: dict = field(default_factory=dict)  # quality figures for the manifest (errors in px, jitter ratios, ...)


class FaceTracker(Protocol):
    """Turns landmark detections into pose + expression for a camera with known intrinsics."""

    def fit(self, det: LandmarkDetections, intrinsics: Intrinsics, fps: float) -> TrackResult: ...
