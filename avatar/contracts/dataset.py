"""The dataset format: what `avatar preprocess` writes and everything else reads.

Layout of a dataset directory (format version `FORMAT_VERSION`):

    manifest.json            Manifest below; written last, so a dataset without it is incomplete
    frames/000000.jpg ...    RGB frames, `resolution` square, JPEG quality 95, one per video frame
    masks/000000.png ...     uint8 bit masks, bit `MASK_BITS[name]` set where the pixel belongs to `name`
    background.png           clean background plate (RGB, `resolution` square)
    audio.wav                16 kHz mono PCM16, the clip's audio from time 0 (frame 0 starts at 0) to the end
                             of the last frame (num_frames / fps s): the part the sound and the picture both cover
    audio_features.npy       [T, F] float32 raw features (see avatar.audio.features), `features.rate_hz` rows/s
    tracking/*.npy           per-frame arrays, `TRACKING_ARRAYS` below (N = num_frames)
    body_motion.npz          the body's tracked motion, `BodyMotion` below (preprocess.body_motion)
    preview.mp4, contact_sheet.png   for people to look at

Camera and pose conventions: avatar.contracts.camera.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from avatar.audio.features import frame_window_rows, normalize_features
from avatar.contracts.atomic import sha256_of
from avatar.contracts.camera import Intrinsics
from avatar.contracts.face_mesh import mouth_opening
from avatar.errors import UserError

FORMAT_VERSION = 1
MASK_BITS = {"person": 0, "head": 1, "face": 2, "mouth": 3, "torso": 4}
BLINK_NAMES = ("eyeBlinkLeft", "eyeBlinkRight")  # the blendshapes that drive the eyelids

# name -> (shape with N for frames, meaning). All float32 unless noted.
TRACKING_ARRAYS = {
    "landmarks": ("[N, 478, 2]", "mediapipe FaceMesh landmarks in dataset-image pixels (pixel-centre convention)"),
    "landmarks_mp3d": ("[N, 478, 3]", "raw mediapipe 3D landmarks (x, y in pixels, z in the same pixel scale)"),
    "valid": ("[N] bool", "a face was detected in this frame (False: interpolated from neighbours)"),
    "rotation": ("[N, 3, 3]", "smoothed head-to-camera rotation"),
    "translation": ("[N, 3]", "smoothed head-to-camera translation, metres"),
    "rotation_raw": ("[N, 3, 3]", "per-frame rotation before smoothing"),
    "translation_raw": ("[N, 3]", "per-frame translation before smoothing"),
    "canonical_face": ("[478, 3]", "the person's neutral 3D face in the canonical head frame, metres"),
    "expression_pca": ("[N, P]", "PCA code of the non-rigid landmark motion"),
    "expression_basis": ("[P, 478, 3]", "PCA basis: face_i = canonical_face + expression_pca[i] @ basis"),
    "blendshapes": ("[N, B]", "ARKit-named coefficients 0..1 for this person, names in the manifest"),
}


@dataclass
class BodyMotion:
    """The body's motion per frame as a flow field: frame(x) ~ template(x + flow(x)), in grid_sample's
    normalised image units (-1..1 across the frame), flow = mean + codes[i] @ basis, on a G x G lattice."""

    codes: np.ndarray  # [N, K] float32, smoothed in time
    mean: np.ndarray  # [2, G, G] float32 (x, y)
    basis: np.ndarray  # [K, 2, G, G] float32

    def save(self, path: Path) -> None:
        np.savez(path, codes=self.codes, mean=self.mean, basis=self.basis)

    @staticmethod
    def load(path: Path) -> BodyMotion:
        with np.load(path) as data:
            return BodyMotion(codes=data["codes"], mean=data["mean"], basis=data["basis"])


@dataclass
class Crop:
    """The square crop [x0, x0 + size) x [y0, y0 + size) of the source frame, resized to `resolution`.
    Source pixel (u, v) maps to dataset pixel ((u - x0), (v - y0)) * resolution / size. The crop may
    extend past the source image; those pixels are filled by edge replication."""

    x0: float
    y0: float
    size: float
    source_width: int
    source_height: int
    resolution: int

    def to_dataset(self, uv: np.ndarray) -> np.ndarray:
        return (np.asarray(uv) - [self.x0, self.y0]) * (self.resolution / self.size)

    def to_source(self, uv: np.ndarray) -> np.ndarray:
        return np.asarray(uv) * (self.size / self.resolution) + [self.x0, self.y0]


def heard_frames(record: dict | None, num_frames: int, fps: float) -> tuple[int, int]:
    """[first, end): the frames whose sound the dataset holds, from its manifest's `av_offset` record. Removing
    an offset (preprocess/av_offset.py `shift_audio`) leaves the clip's last `ms` (a negative offset: its
    first) in digital silence; a frame is heard when its centre is not there. The others are neither trained
    nor scored on: a mouth matched to silence it did not make teaches and measures nothing (its lips still
    move for sound that was cut away)."""
    if record is None or not record["applied"] or record["ms"] == 0:
        return 0, num_frames
    silent = abs(float(record["ms"])) / 1000.0 * fps  # frames of silence the shift added
    if record["ms"] > 0:
        return 0, int(np.clip(np.ceil(num_frames - silent - 0.5), 0, num_frames))
    return int(np.clip(np.ceil(silent - 0.5), 0, num_frames)), num_frames


@dataclass
class Split:
    """Frame index ranges [start, end): training first, validation the last `val_fraction` of the frames
    with sound (frames a removed A/V offset left silent are in neither: `heard_frames`)."""

    train: tuple[int, int]
    val: tuple[int, int]

    @staticmethod
    def of(num_frames: int, val_fraction: float, heard: tuple[int, int] | None = None) -> Split:
        first, end = heard or (0, num_frames)
        n_val = max(1, int(round((end - first) * val_fraction)))
        return Split(train=(first, end - n_val), val=(end - n_val, end))


@dataclass
class FeatureInfo:
    file: str
    extractor: str
    rate_hz: float
    dim: int
    window: int  # feature rows per video frame window (see avatar.audio.features.frame_windows)
    mean: list[float] = field(default_factory=list)  # clip statistics for normalisation, [dim]
    std: list[float] = field(default_factory=list)
    speech_model: str = ""  # folder of the speech encoder that made the extractor's speech-* part, if any


@dataclass
class Manifest:
    format_version: int
    source: dict  # {"path", "sha256", "duration_s", "fps", "width", "height", "has_audio", "audio_path"}
    fps: float
    num_frames: int
    resolution: int
    crop: Crop
    intrinsics: Intrinsics
    split: Split
    audio: dict  # {"file": "audio.wav", "sample_rate": 16000, "num_samples": int}
    features: FeatureInfo
    blendshape_names: list[str]
    versions: dict  # library versions that made the dataset
    stats: dict = field(default_factory=dict)  # measured quality figures (reprojection error, jitter, ...)
    # the source's A/V offset (preprocess/av_offset.py `AvOffset`: "ms", positive when its sound came later
    # than the lips, "confidence", "confident", "applied" when removed from audio.wav, "given" when set by
    # --av-offset); datasets made before the estimate have none
    av_offset: dict | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict) -> Manifest:
        data = dict(data)
        data["crop"] = Crop(**data["crop"])
        data["intrinsics"] = Intrinsics(**data["intrinsics"])
        data["split"] = Split(**{k: tuple(v) for k, v in data["split"].items()})
        data["features"] = FeatureInfo(**data["features"])
        return Manifest(**data)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_ABOVE_0 = (lambda v: _number(v) and v > 0, "a number above 0")
_NUMBER = (_number, "a number")
_AT_LEAST_1 = (lambda v: _whole(v) and v >= 1, "a whole number of at least 1")
_TEXT = (lambda v: isinstance(v, str) and v != "", "a file name")
_OBJECT = (lambda v: isinstance(v, dict), "an object {...}")
_RANGE = (
    lambda v: isinstance(v, list) and len(v) == 2 and all(map(_whole, v)) and 0 <= v[0] <= v[1],
    "[start, end] frame numbers, 0 <= start <= end",
)

# field -> (test, what it must be): the values every reader of a dataset divides by, counts with or opens
MANIFEST_RULES = {
    **{section: _OBJECT for section in ("source", "versions", "stats", "audio", "crop", "intrinsics", "split")},
    "features": _OBJECT,
    "fps": _ABOVE_0,
    "num_frames": _AT_LEAST_1,
    "resolution": _AT_LEAST_1,
    "crop.x0": _NUMBER,
    "crop.y0": _NUMBER,
    "crop.size": _ABOVE_0,
    "crop.source_width": _AT_LEAST_1,
    "crop.source_height": _AT_LEAST_1,
    "crop.resolution": _AT_LEAST_1,
    "intrinsics.fx": _ABOVE_0,
    "intrinsics.fy": _ABOVE_0,
    "intrinsics.cx": _NUMBER,
    "intrinsics.cy": _NUMBER,
    "intrinsics.width": _AT_LEAST_1,
    "intrinsics.height": _AT_LEAST_1,
    "split.train": _RANGE,
    "split.val": _RANGE,
    "audio.file": _TEXT,
    "audio.sample_rate": _AT_LEAST_1,
    "audio.num_samples": (lambda v: _whole(v) and v >= 0, "a whole number of at least 0"),
    "features.file": _TEXT,
    "features.extractor": (lambda v: isinstance(v, str) and v != "", "the name of a feature extractor"),
    "features.rate_hz": _ABOVE_0,
    "features.dim": _AT_LEAST_1,
    "features.window": _AT_LEAST_1,
    "features.mean": (lambda v: isinstance(v, list) and all(map(_number, v)), "a list of numbers"),
    "features.std": (
        lambda v: isinstance(v, list) and all(_number(x) and x > 0 for x in v),
        "a list of numbers above 0",
    ),
    "features.speech_model": (lambda v: isinstance(v, str), "a text"),
    "blendshape_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
    "av_offset": (lambda v: v is None or isinstance(v, dict), "an object {...} or null"),
}
# section -> (the fields it must have, the fields it may have; None: any)
MANIFEST_SECTIONS = {
    section: (
        {
            f.name
            for f in dataclasses.fields(cls)
            if dataclasses.MISSING is f.default and dataclasses.MISSING is f.default_factory
        },
        {f.name for f in dataclasses.fields(cls)},
    )
    for section, cls in {
        "": Manifest,
        "crop": Crop,
        "intrinsics": Intrinsics,
        "split": Split,
        "features": FeatureInfo,
    }.items()
} | {"audio": ({"file", "sample_rate", "num_samples"}, None)}


def manifest_problems(data) -> list[str]:
    """What is wrong with a manifest's JSON (missing, unknown or ill-typed fields, values out of range, fields
    that contradict each other), each naming its field: empty for a manifest every reader can rely on."""
    if not isinstance(data, dict):
        return ["not a JSON object {...}"]
    problems = []
    for section, (required, known) in MANIFEST_SECTIONS.items():
        fields = data.get(section) if section else data
        if not isinstance(fields, dict):
            continue  # said by its rule (or missing)
        prefix = f"{section}." if section else ""
        problems += [f"{prefix}{name}: missing" for name in sorted(required - set(fields))]
        problems += [
            f"{prefix}{name}: not a field this avatar version knows"
            for name in sorted(set(fields) - (known or set(fields)))
        ]
    for name, (valid, what) in MANIFEST_RULES.items():
        section, _, field_name = name.rpartition(".")
        fields = data.get(section) if section else data
        if isinstance(fields, dict) and field_name in fields and not valid(fields[field_name]):
            shown = json.dumps(fields[field_name])
            shown = shown if len(shown) <= 40 else f"{shown[:37]}..."
            problems.append(f"{name} {shown}: must be {what}")
    if problems:
        return problems
    n, features = data["num_frames"], data["features"]
    problems += [
        f"split.{part} {json.dumps(data['split'][part])}: ends after the last of the {n} frames (num_frames)"
        for part in ("train", "val")
        if data["split"][part][1] > n
    ]
    problems += [
        f"features.{stat}: {len(features[stat])} values for features.dim {features['dim']}"
        for stat in ("mean", "std")
        if len(features[stat]) != features["dim"]
    ]
    return problems


def _array_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of a .npy file (its header only), None when it is unreadable."""
    try:
        return np.load(path, mmap_mode="r").shape
    except (OSError, ValueError, EOFError):
        return None


def frame_name(i: int) -> str:
    return f"{i:06d}"


@dataclass(frozen=True)
class DatasetLayout:
    """Where each part of a dataset lives: the one spelling of the layout, for the builder that writes it
    and the reader that reads it."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    @property
    def tracking_dir(self) -> Path:
        return self.root / "tracking"

    @property
    def background(self) -> Path:
        return self.root / "background.png"

    @property
    def audio(self) -> Path:
        return self.root / "audio.wav"

    @property
    def features(self) -> Path:
        return self.root / "audio_features.npy"

    @property
    def body_motion(self) -> Path:
        return self.root / "body_motion.npz"

    @property
    def preview(self) -> Path:
        return self.root / "preview.mp4"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "contact_sheet.png"

    def frame(self, i: int, directory: Path | None = None) -> Path:
        """The JPEG of frame i (in `directory` instead of frames/ while a build writes a temporary one)."""
        return (directory or self.frames_dir) / f"{frame_name(i)}.jpg"

    def mask(self, i: int, directory: Path | None = None) -> Path:
        return (directory or self.masks_dir) / f"{frame_name(i)}.png"

    def tracking(self, name: str, directory: Path | None = None) -> Path:
        return (directory or self.tracking_dir) / f"{name}.npy"


def bit_mask(bits: np.ndarray, name: str) -> np.ndarray:
    """[H, W] bool mask `name` (one of MASK_BITS) of a frame's [H, W] uint8 mask bits."""
    return (bits >> MASK_BITS[name] & 1).astype(bool)


def read_rgb(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file, or a UserError that says the dataset is damaged."""

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"{path}: missing or unreadable. Re-run preprocessing with --force.")
    return img[:, :, ::-1].copy()


def read_mask_bits(path: Path) -> np.ndarray:
    """[H, W] uint8 MASK_BITS of a mask file."""

    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise UserError(f"{path}: missing or unreadable. Re-run preprocessing with --force.")
    return m


class Dataset:
    """Read-only access to a dataset directory. Frames and masks are read from disk on demand and
    tracking arrays are memory-mapped: opening a dataset of any length costs almost no RAM."""

    def __init__(self, root: Path | str, complete: bool = False):
        """Refuses (UserError) a manifest that is damaged or edited out of range, and files that disagree with it;
        with `complete`, also a dataset that lacks any part (training reads them all: it checks before its
        first stage what its later ones read)."""
        self.root = Path(root)
        self.layout = DatasetLayout(self.root)
        path = self.layout.manifest
        if not self.root.is_dir():
            raise UserError(
                f"{self.root}: no such dataset directory. Run `avatar preprocess VIDEO --out {self.root}` first."
            )
        if not path.is_file():
            raise UserError(
                f"{self.root}: not a complete dataset (no manifest.json). Preprocessing did not finish: "
                f"run `avatar preprocess VIDEO --out {self.root}` again, it resumes."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: corrupt manifest ({exc}). Re-run preprocessing with --force.") from exc
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise UserError(
                f"{path}: dataset format version {version}, this avatar version reads {FORMAT_VERSION}. "
                "Re-run `avatar preprocess ... --force` to rebuild it."
            )
        problems = manifest_problems(data)
        if problems:
            raise UserError(
                f"{path}: {'; '.join(problems)}. The manifest was edited or damaged: restore it, or rebuild the "
                "dataset with the `avatar preprocess` command that made it, adding --force."
            )
        self.manifest = Manifest.from_json(data)
        self._refuse(self.problems(complete))

    # ----- what the files hold against what the manifest says
    def problems(self, complete: bool) -> list[tuple[str, str]]:
        """(the part to rebuild, what is wrong) of every part whose files disagree with the manifest (frames or
        masks missing from their folder, arrays of another length); with `complete`, also every part that is
        absent (what training reads: all of them). The part is "" when it is absent altogether (a rerun of
        `avatar preprocess` makes it), else the step's output to delete before that rerun (a rerun keeps a
        step whose output is there)."""
        m, layout, n = self.manifest, self.layout, self.manifest.num_frames
        found: list[tuple[str, str]] = []
        for folder, suffix in ((layout.frames_dir, ".jpg"), (layout.masks_dir, ".png")):
            if not folder.is_dir():
                found += [("", f"{folder.name}/ is missing")] if complete else []
                continue
            names = set(os.listdir(folder))
            lacking = [frame_name(i) + suffix for i in range(n) if frame_name(i) + suffix not in names]
            if lacking:
                shown = ", ".join(lacking[:3]) + (f" ... {lacking[-1]}" if len(lacking) > 3 else "")
                found.append((f"{folder.name}/", f"{folder.name}/ lacks {len(lacking)} of the {n} frames ({shown})"))
        for path in (layout.background, self.root / m.audio["file"]):
            if complete and not path.is_file():
                found.append(("", f"{path.name} is missing"))
        features = self.root / m.features.file
        if features.is_file():
            shape = _array_shape(features)
            if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] != m.features.dim:
                held = "is unreadable" if shape is None else f"holds an array of shape {list(shape)}"
                found.append((features.name, f"{features.name} {held}, not [rows, {m.features.dim}] (features.dim)"))
        elif complete:
            found.append(("", f"{features.name} is missing"))
        found += self._tracking_problems(complete)
        if layout.body_motion.is_file():
            try:
                rows = len(self._body_motion.codes)
            except UserError:
                rows = None
            if rows != n:
                held = "is unreadable" if rows is None else f"holds {rows} frames, not {n} (num_frames)"
                found.append((layout.body_motion.name, f"{layout.body_motion.name} {held}"))
        elif complete:
            found.append(("", f"{layout.body_motion.name} is missing"))
        return found

    def _tracking_problems(self, complete: bool) -> list[tuple[str, str]]:
        layout, n, names = self.layout, self.manifest.num_frames, self.manifest.blendshape_names
        part = f"{layout.tracking_dir.name}/"
        if not layout.tracking_dir.is_dir():
            return [("", f"{part} is missing")] if complete else []
        found = []
        for name, (spec, _) in TRACKING_ARRAYS.items():
            path = layout.tracking(name)
            if not path.is_file():
                found += [(part, f"{part}{path.name} is missing")] if complete else []
                continue
            shape = _array_shape(path)
            per_frame = spec.startswith("[N")
            if shape is None or (per_frame and len(shape) == 0):
                found.append((part, f"{part}{path.name} is unreadable"))
            elif per_frame and shape[0] != n:
                found.append((part, f"{part}{path.name} holds {shape[0]} frames, not {n} (num_frames)"))
            elif name == "blendshapes" and shape[1:] != (len(names),):
                found.append((part, f"{part}{path.name}: {shape[1:]} values a frame for {len(names)} blendshape_names"))
        return found

    def _refuse(self, problems: list[tuple[str, str]]) -> None:
        """One UserError for all `problems` (see `problems`), with the rerun of `avatar preprocess` that mends them."""
        if not problems:
            return
        damaged = list(dict.fromkeys(part for part, _ in problems if part))
        source = self.manifest.source
        command = f"avatar preprocess {source.get('path') or 'VIDEO'}"
        command += f" --audio {source['audio_path']}" if source.get("audio_path") else ""
        raise UserError(
            f"{self.root}: the dataset is {'damaged' if damaged else 'incomplete'}: "
            + "; ".join(what for _, what in problems)
            + ". "
            + (f"Delete {', '.join(str(self.root / part) for part in damaged)}, then run" if damaged else "Run")
            + f" `{command} --out {self.root}` again, with the other options that made it: it rebuilds what is "
            "missing and keeps the rest."
        )

    # ----- sizes and cameras
    @property
    def num_frames(self) -> int:
        return self.manifest.num_frames

    @property
    def fps(self) -> float:
        return self.manifest.fps

    @property
    def intrinsics(self) -> Intrinsics:
        return self.manifest.intrinsics

    def heard(self) -> tuple[int, int]:
        """[first, end): the frames with sound (`heard_frames`)."""
        return heard_frames(self.manifest.av_offset, self.num_frames, self.fps)

    def indices(self, split: str) -> np.ndarray:
        """The split's frames that have sound: a dataset built before the split left out the frames a removed
        offset silenced still lists them in its ranges."""
        start, end = getattr(self.manifest.split, split)
        first, last = self.heard()
        return np.arange(max(start, first), min(end, last))

    # ----- per-frame images
    def frame(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB."""
        return read_rgb(self.layout.frame(i))

    def mask_bits(self, i: int) -> np.ndarray:
        """[H, W] uint8 with the MASK_BITS of frame i."""
        return read_mask_bits(self.layout.mask(i))

    def mask(self, i: int, name: str) -> np.ndarray:
        """[H, W] bool mask `name` (one of MASK_BITS) of frame i."""
        return bit_mask(self.mask_bits(i), name)

    @cached_property
    def background(self) -> np.ndarray:
        """[H, W, 3] uint8 RGB background plate."""
        return read_rgb(self.layout.background)

    # ----- arrays
    def tracking(self, name: str) -> np.ndarray:
        """A tracking array (see TRACKING_ARRAYS), memory-mapped."""
        if name not in TRACKING_ARRAYS:
            raise KeyError(f"unknown tracking array {name!r}; known: {sorted(TRACKING_ARRAYS)}")
        return np.load(self.layout.tracking(name), mmap_mode="r")

    @cached_property
    def audio_features(self) -> np.ndarray:
        """[T, F] raw audio features, memory-mapped."""
        return np.load(self.root / self.manifest.features.file, mmap_mode="r")

    def blinks(self) -> np.ndarray:
        """[N, 2] float32 tracked eyeBlinkLeft / eyeBlinkRight (UserError for a dataset without them)."""
        names = self.manifest.blendshape_names
        missing = [n for n in BLINK_NAMES if n not in names]
        if missing:
            raise UserError(
                f"{self.layout.manifest}: blendshape_names lacks {missing}. Rebuild the dataset with "
                "`avatar preprocess ... --force`."
            )
        shapes = self.tracking("blendshapes")
        return np.stack([np.asarray(shapes[:, names.index(n)], np.float32) for n in BLINK_NAMES], 1)

    def body_motion(self) -> BodyMotion:
        """The body's tracked motion (UserError for a dataset made before it was tracked). Read once."""
        return self._body_motion

    @cached_property
    def _body_motion(self) -> BodyMotion:
        path = self.layout.body_motion
        if not path.is_file():
            raise UserError(
                f"{self.root}: no body_motion.npz (a dataset made before the body's motion was tracked). "
                f"Run the same `avatar preprocess VIDEO --out {self.root}` again: it adds what is missing "
                "and keeps the rest."
            )
        try:
            return BodyMotion.load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path}: unreadable ({exc}). Re-run preprocessing with --force.") from exc

    def mouth_openings(self, frames: np.ndarray | None = None) -> np.ndarray:
        """[n] float64 inner-lip opening of `frames` (default all; `face_mesh.mouth_opening`) from the tracked
        3D landmarks: measured in 3D it does not shrink when the head nods or turns, as the 2D gap does."""

        points = self.tracking("landmarks_mp3d")
        return mouth_opening(points if frames is None else points[np.asarray(frames)]).astype(np.float64)

    def manifest_sha256(self) -> str:
        """Fingerprint of this build of the dataset (the manifest is written last and records every step)."""

        return sha256_of(self.layout.manifest)

    def feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        f = self.manifest.features
        return np.asarray(f.mean, np.float32), np.asarray(f.std, np.float32)

    def window_span_frames(self) -> int:
        """Frames two frames must be apart before their audio windows share no feature row (so a frame's
        window says nothing about another's audio)."""
        f = self.manifest.features
        return int(np.ceil(f.window / f.rate_hz * self.fps))

    def audio_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(normalised feature rows [T, F], each frame's window as row indices [N, W]): the frames' windows
        are `rows[window_rows]` (see avatar.audio.features), held as rows to keep memory to one copy.
        Normalised once per Dataset; callers read them and do not write."""
        return self._audio_rows

    @cached_property
    def _audio_rows(self) -> tuple[np.ndarray, np.ndarray]:

        f = self.manifest.features
        feats = normalize_features(np.asarray(self.audio_features), self.feature_stats())
        return feats, frame_window_rows(f.rate_hz, self.fps, self.num_frames, f.window, 0, len(feats))

    def audio_windows(self, context: int = 0, frames: np.ndarray | None = None) -> np.ndarray:
        """Normalised feature windows of `frames` (default all): [n, W, F], or [n, 2 * context + 1, W, F] with
        the neighbouring frames' windows when context > 0. Only the asked frames' windows are made: all of
        them hold each feature row about W * (2 * context + 1) times."""
        feats, rows = self.audio_rows()
        frames = np.arange(self.num_frames) if frames is None else np.asarray(frames, np.int64)
        if context > 0:  # neighbours, edges repeated as avatar.audio.features.context_windows repeats them
            frames = np.clip(frames[:, None] + np.arange(-context, context + 1), 0, self.num_frames - 1)
        return feats[rows[frames]]
