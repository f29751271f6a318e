"""ARKit-named expression coefficients 0..1 for one person, from landmark geometry in the head frame.

The mediapipe blendshape model is not available offline, so each coefficient is a landmark measure
(a distance or a height in the canonical head frame, so head rotation does not leak in) normalised
by this person's own range over the clip: robust percentiles map "at rest" to 0 and "fully on" to 1.
Landmark indices are mediapipe FaceMesh's; "Left" is the person's left, as in ARKit.
"""

from __future__ import annotations

import numpy as np

from avatar.contracts.face_mesh import (
    BROW_LEFT,
    BROW_RIGHT,
    EYE_LEFT,
    EYE_RIGHT,
    INNER_LIP_LOWER,
    INNER_LIP_UPPER,
    MOUTH_CORNERS,
    NOSE_BASE,
    OUTER_LIP_LOWER,
    OUTER_LIP_UPPER,
)

BLENDSHAPE_NAMES = (
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "browDownLeft",
    "browDownRight",
)

MOUTH_RIGHT, MOUTH_LEFT = MOUTH_CORNERS


def _normalise(measure: np.ndarray, rest_pct: float, full_pct: float = 99.0) -> np.ndarray:
    """Map the measure's `rest_pct` percentile to 0 and its `full_pct` percentile to 1, clipped."""
    rest, full = np.percentile(measure, [rest_pct, full_pct])
    return np.clip((measure - rest) / max(full - rest, 1e-9), 0.0, 1.0)


def _dist(shapes: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(shapes[:, a] - shapes[:, b], axis=-1)


def _blink(shapes: np.ndarray, eye: dict) -> np.ndarray:
    """Lid closure: the eye's aperture over its width, 0 at the usual open state, 1 when closed.
    A clip with few blinks still gets a sane scale: "closed" is at most 35 % of the open aperture."""
    aperture = _dist(shapes, eye["up"], eye["down"]) / _dist(shapes, eye["outer"], eye["inner"])
    open_ = np.median(aperture)
    closed = min(np.percentile(aperture, 0.5), 0.35 * open_)
    return np.clip((open_ - aperture) / max(open_ - closed, 1e-9), 0.0, 1.0)


def blendshape_coefficients(shapes: np.ndarray) -> np.ndarray:
    """[N, 478, 3] faces in the head frame (metres; x toward the person's left, y down) -> [N, B]
    coefficients in the order of BLENDSHAPE_NAMES."""
    x, y = shapes[..., 0], shapes[..., 1]
    # The jaw drop, seen through the lower lip: mediapipe's chin points follow the jaw poorly (they slide along
    # the face outline), while the outer lip distance tracks the opening the audio cares about.
    jaw = _normalise(_dist(shapes, OUTER_LIP_UPPER, OUTER_LIP_LOWER), rest_pct=5)
    lips_open = _normalise(_dist(shapes, INNER_LIP_UPPER, INNER_LIP_LOWER), rest_pct=5)
    narrow = _normalise(-_dist(shapes, MOUTH_RIGHT, MOUTH_LEFT), rest_pct=50)
    # mouth corners relative to the nose base: outward (away from the midline) and upward
    out_left, out_right = x[:, MOUTH_LEFT] - x[:, NOSE_BASE], x[:, NOSE_BASE] - x[:, MOUTH_RIGHT]
    up_left, up_right = y[:, NOSE_BASE] - y[:, MOUTH_LEFT], y[:, NOSE_BASE] - y[:, MOUTH_RIGHT]
    brow_inner = 0.5 * (
        (y[:, EYE_RIGHT["inner"]] - y[:, BROW_RIGHT["inner"]]) + (y[:, EYE_LEFT["inner"]] - y[:, BROW_LEFT["inner"]])
    )
    brow_outer_left = y[:, EYE_LEFT["outer"]] - y[:, BROW_LEFT["outer"]]
    brow_outer_right = y[:, EYE_RIGHT["outer"]] - y[:, BROW_RIGHT["outer"]]
    brow_left = brow_outer_left + y[:, EYE_LEFT["inner"]] - y[:, BROW_LEFT["inner"]]
    brow_right = brow_outer_right + y[:, EYE_RIGHT["inner"]] - y[:, BROW_RIGHT["inner"]]
    coefficients = {
        "jawOpen": jaw,
        "mouthClose": np.clip(jaw - lips_open, 0.0, 1.0),  # lips held together while the jaw opens
        "mouthFunnel": narrow * lips_open,  # narrow and open: an "o"
        "mouthPucker": narrow * (1.0 - lips_open),  # narrow and closed: a kiss
        "mouthSmileLeft": _normalise(up_left + 0.5 * out_left, rest_pct=50),
        "mouthSmileRight": _normalise(up_right + 0.5 * out_right, rest_pct=50),
        "mouthStretchLeft": _normalise(out_left - 0.5 * up_left, rest_pct=50),
        "mouthStretchRight": _normalise(out_right - 0.5 * up_right, rest_pct=50),
        "eyeBlinkLeft": _blink(shapes, EYE_LEFT),
        "eyeBlinkRight": _blink(shapes, EYE_RIGHT),
        "browInnerUp": _normalise(brow_inner, rest_pct=50),
        "browOuterUpLeft": _normalise(brow_outer_left, rest_pct=50),
        "browOuterUpRight": _normalise(brow_outer_right, rest_pct=50),
        "browDownLeft": _normalise(-brow_left, rest_pct=50),
        "browDownRight": _normalise(-brow_right, rest_pct=50),
    }
    return np.stack([coefficients[name] for name in BLENDSHAPE_NAMES], axis=1)
