"""What drives a trained avatar on new audio, saved inside it: the person's pose track (head pose and the
body's motion codes), their blinks,
the audio-feature settings and where the training video is; and the schedules made from them.

`avatar render`, the live viewer and `avatar bench` drive the avatar from this alone (the dataset it was
trained on may be gone), so a video and the viewer move the head and blink the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from avatar.audio.clip import AudioClip
from avatar.audio.features import SpeechFeatures, extractor_named
from avatar.contracts.dataset import Crop, Dataset, FeatureInfo
from avatar.errors import UserError

PoseMode = Literal["track", "still", "smooth"]
SMOOTH_SIGMA_S = 1.0  # "smooth" pose: Gaussian over the training track, in seconds


@dataclass
class SourceVideo:
    """The training video and the dataset crop, for --paste-back into the original frames."""

    path: str
    sha256: str
    width: int
    height: int
    time_origin_s: float
    crop: Crop
    first_frame: int  # dataset frame of the pose track's first row


@dataclass
class DrivingData:
    """The training split's tracked signals and settings that rendering needs (a few hundred KB)."""

    fps: float
    rotations: np.ndarray  # [n, 3, 3] float32 smoothed head-to-camera rotations of the training frames
    translations: np.ndarray  # [n, 3] float32
    body: np.ndarray  # [n, K] float32 the body's tracked motion codes (avatar.contracts.dataset.BodyMotion)
    blinks: np.ndarray  # [n, 2] float32 tracked eyeBlinkLeft / eyeBlinkRight
    features: FeatureInfo  # the extractor, its rate, window and the training clip's statistics
    source: SourceVideo
    dataset: dict  # {"path", "manifest_sha256"}: the dataset it was trained on (for `avatar eval`)
    # [n] float32 tracked mouth opening (Dataset.mouth_openings, 3D), for eval. Avatars before the 3D measure
    # stored the 2D one under another key: not read, so eval takes it from their dataset instead.
    openings: np.ndarray | None = None

    @staticmethod
    def from_dataset(dataset: Dataset) -> DrivingData:
        train = dataset.indices("train")
        m = dataset.manifest
        source = SourceVideo(
            path=str(m.source["path"]),
            sha256=str(m.source.get("sha256", "")),
            width=int(m.source["width"]),
            height=int(m.source["height"]),
            time_origin_s=float(m.source.get("time_origin_s", 0.0)),
            crop=m.crop,
            first_frame=int(train[0]),
        )
        return DrivingData(
            fps=float(dataset.fps),
            rotations=np.array(dataset.tracking("rotation")[train], np.float32),
            translations=np.array(dataset.tracking("translation")[train], np.float32),
            body=np.array(dataset.body_motion().codes[train], np.float32),
            blinks=dataset.blinks()[train],
            features=m.features,
            source=source,
            dataset={"path": str(dataset.root.resolve()), "manifest_sha256": dataset.manifest_sha256()},
            openings=dataset.mouth_openings(train).astype(np.float32),
        )

    def to_dict(self) -> dict:

        return {
            "fps": self.fps,
            "rotations": self.rotations,
            "translations": self.translations,
            "body": self.body,
            "blinks": self.blinks,
            "features": dataclasses.asdict(self.features),
            "source": {**dataclasses.asdict(self.source), "crop": dataclasses.asdict(self.source.crop)},
            "dataset": dict(self.dataset),
            "mouth_openings": self.openings,
        }

    @staticmethod
    def from_dict(data: dict) -> DrivingData:
        source = dict(data["source"])
        source["crop"] = Crop(**source["crop"])
        return DrivingData(
            fps=float(data["fps"]),
            rotations=np.asarray(data["rotations"], np.float32),
            translations=np.asarray(data["translations"], np.float32),
            body=np.asarray(data["body"], np.float32),
            blinks=np.asarray(data["blinks"], np.float32),
            features=FeatureInfo(**data["features"]),
            source=SourceVideo(**source),
            dataset=dict(data["dataset"]),
            openings=None if data.get("mouth_openings") is None else np.asarray(data["mouth_openings"], np.float32),
        )

    def __len__(self) -> int:
        return len(self.rotations)


# ----- head pose


def track_positions(
    driving: DrivingData, num_frames: int, mode: PoseMode, fps: float | None = None, first_frame: int = 0
) -> np.ndarray:
    """[num_frames] rows of the pose track that output frames first_frame.. show. "track"/"smooth" run
    through the training frames forward, then backward, and so on (no jump at the turn); output time maps to
    training time when `fps` differs from the training video's."""
    if mode == "still":
        return np.full(num_frames, typical_pose_index(driving), np.int64)
    frames = np.arange(first_frame, first_frame + num_frames)
    if fps is not None and fps != driving.fps:
        frames = np.floor((frames + 0.5) * driving.fps / fps).astype(np.int64)
    n = len(driving)
    if n == 1:
        return np.zeros(num_frames, np.int64)
    phase = frames % (2 * (n - 1))
    return np.where(phase < n, phase, 2 * (n - 1) - phase)


def typical_pose_index(driving: DrivingData) -> int:
    """Row of the pose track nearest the median pose (each of the 6 pose parameters measured in its own
    standard deviations): a natural, frontal-ish still pose."""

    params = np.concatenate(
        [
            Rotation.from_matrix(driving.rotations.astype(np.float64)).as_rotvec(),
            driving.translations.astype(np.float64),
        ],
        axis=1,
    )  # [n, 6]
    z = (params - np.median(params, 0)) / (params.std(0) + 1e-9)
    return int(np.argmin((z**2).sum(1)))


def _smoothed_track(driving: DrivingData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotations [n, 3, 3], translations [n, 3] and body codes [n, K] Gaussian-smoothed over time. The ends are
    mirrored, which is exactly how the back-and-forth loop continues them, so the loop stays smooth."""

    sigma = SMOOTH_SIGMA_S * driving.fps
    quats = Rotation.from_matrix(driving.rotations.astype(np.float64)).as_quat()
    quats *= np.sign(quats @ quats[0])[:, None]  # one hemisphere, so averaging neighbours is meaningful
    quats = gaussian_filter1d(quats, sigma, axis=0, mode="mirror")
    rotation = Rotation.from_quat(quats / np.linalg.norm(quats, axis=1, keepdims=True)).as_matrix()
    translation = gaussian_filter1d(driving.translations.astype(np.float64), sigma, axis=0, mode="mirror")
    body = gaussian_filter1d(driving.body.astype(np.float64), sigma, axis=0, mode="mirror")
    return rotation, translation, body


def pose_schedule(
    driving: DrivingData, num_frames: int, mode: PoseMode, fps: float | None = None, first_frame: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head-to-camera rotations [num_frames, 3, 3], translations [num_frames, 3] and body codes [num_frames, K]
    (float32) of output frames first_frame.. : the training poses looped back and forth ("track"), one
    typical pose ("still"), or the loop of a smoothed track ("smooth")."""
    if mode not in ("track", "still", "smooth"):
        raise UserError(f"--pose {mode!r}: choose track, still or smooth.")
    rows = track_positions(driving, num_frames, mode, fps, first_frame)
    track = _smoothed_track(driving) if mode == "smooth" else (driving.rotations, driving.translations, driving.body)
    return tuple(part[rows].astype(np.float32) for part in track)


# ----- eye blinks


def detect_blinks(track: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """From a tracked [N, 2] eye-closure curve: the open-eye level [2], each blink's shape above it
    ([L, 2] each) and the frames where blinks start. A blink is where both eyes together close more than
    half-way from the open level to the clip's near-maximum closure."""
    both = track.mean(1)
    open_level = np.median(track, 0)
    base, top = float(np.median(both)), float(np.percentile(both, 99.5))
    if top - base < 0.15:  # no clear blink in the clip
        return open_level, [], np.zeros(0, np.int64)
    closed = both > base + 0.5 * (top - base)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], closed.astype(np.int8), [0]])))
    shapes, starts = [], []
    settled = base + 0.1 * (top - base)
    for start, end in zip(edges[::2], edges[1::2]):
        while start > 0 and both[start - 1] > settled and both[start - 1] < both[start]:
            start -= 1
        while end < len(both) and both[end] > settled and both[end] < both[end - 1]:
            end += 1
        shapes.append(np.maximum(track[start:end] - open_level, 0.0))
        starts.append(start)
    return open_level, shapes, np.asarray(starts, np.int64)


def blink_schedule(driving: DrivingData, num_frames: int, fps: float, value: float | None, seed: int = 0) -> np.ndarray:
    """[num_frames, 2] eyeBlinkLeft/Right in 0..1. `value`: held constant. None: the person's own blinks
    (their shapes, as tracked) placed at intervals drawn from the person's own blink intervals (or, with
    fewer than three blinks, from a Poisson process at their rate)."""
    if value is not None:
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--blink {value}: give an eye closure between 0 (open) and 1 (closed).")
        return np.full((num_frames, 2), value, np.float32)
    track = driving.blinks
    open_level, shapes, starts = detect_blinks(track)
    out = np.tile(open_level.astype(np.float32), (num_frames, 1))
    if not shapes:
        return out
    rng = np.random.default_rng(seed)
    intervals_s = np.diff(starts) / driving.fps
    mean_interval_s = len(track) / driving.fps / len(shapes)

    def next_interval() -> float:
        if len(intervals_s) >= 2:
            return float(rng.choice(intervals_s) * rng.uniform(0.8, 1.2))
        return float(max(1.0, rng.exponential(mean_interval_s)))

    t = rng.uniform(0.3, 1.0) * mean_interval_s
    while (start := int(round(t * fps))) < num_frames:
        shape = shapes[rng.integers(len(shapes))]  # [L, 2] at the training video's fps
        length = max(1, int(round(len(shape) * fps / driving.fps)))
        src = np.linspace(0, len(shape) - 1, length)
        resampled = np.stack([np.interp(src, np.arange(len(shape)), shape[:, c]) for c in range(2)], 1)
        end = min(num_frames, start + length)
        out[start:end] += resampled[: end - start]
        t += max(next_interval(), length / fps)
    return np.clip(out, 0.0, 1.0)


# ----- audio


def feature_extractor(info: FeatureInfo) -> SpeechFeatures:
    """The extractor that made the training features, so new audio is featurised by the same code."""
    extractor = extractor_named(info.extractor, info.speech_model)
    if extractor is None and info.speech_model:
        raise UserError(
            f"the avatar hears audio through the speech model saved in {info.speech_model} ({info.extractor!r}); "
            "that folder is missing or holds other files now. Put the same model back there."
        )
    if extractor is None or info.rate_hz != extractor.rate_hz or info.dim != extractor.dim:
        raise UserError(
            f"the avatar was trained on {info.extractor!r} audio features ({info.dim} at {info.rate_hz} Hz), which "
            "this version does not compute. Render with the avatar version that trained it, or retrain it."
        )
    return extractor


def read_clip(path: Path | str, driving: DrivingData) -> AudioClip:
    """`path` read once and featurised by the extractor that made the avatar's training features."""
    return AudioClip.read(path, feature_extractor(driving.features))


def audio_windows(
    path: Path | str, driving: DrivingData, context: int, fps: float | None = None, chunk_frames: int = 200
) -> Iterator[np.ndarray]:
    """Chunks of [b, 2 * context + 1, W, F] normalised feature windows of the frames that `path` drives at
    `fps` (default the training video's), with the clip's own normalisation statistics (`AudioClip.windows`).
    UserError for missing, undecodable, or empty audio."""
    return read_clip(path, driving).windows(fps or driving.fps, driving.features.window, context, chunk_frames)
