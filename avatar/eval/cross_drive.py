"""`avatar eval RUN --drive DATASET` / `--drive-audio FILE`: the avatar driven by audio it was not trained on.

This is how the product is used (a TTS voice, another speaker, a dub), so it is scored as well as the
own-voice validation. The avatar renders the other audio exactly as `avatar render` does (its own pose
track and blinks); the inner-lip opening (`face_mesh.mouth_opening` of the 3D landmarks, which the head's
pose does not change) is detected on every rendered frame by the evaluation's landmark detector and
compared with:
- `--drive`: the other person's tracked opening on their own video: correlation at lag 0 and the best
  within +-5 frames (and that lag), and the share of silent frames with a closed mouth. Their video's own
  A/V offset is taken out first (`driver_in_sync`): lag 0 means in time with the sound, not with lips that
  were off it; frames that taking it out left silent (`heard_frames`) are not scored;
- `--drive-audio`: the audio itself: the share of pauses (200 ms or more) with a closed mouth, of vowel
  frames with an open one, and the correlation of the opening with the loudness envelope.
Both report the motion ratio: the rendered opening's spread over the avatar's OWN person's real spread
(recorded in the avatar). "Closed" is the person's closed-mouth range: below a quarter of the way from
their 10th to their 90th percentile opening. Rows: the avatar, the static head (the same frames with
the deformation off: a mouth that never moves), and, when the training dataset is at hand, the avatar on
its own held-out voice scored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar.audio.features import frame_log_energy as frame_loudness
from avatar.audio.io import SAMPLE_RATE, load_audio, num_frames_for
from avatar.audio.phonetic import VISEME_NAMES, PhoneticFeatures
from avatar.contracts.atomic import atomic_path
from avatar.contracts.dataset import Dataset
from avatar.contracts.face_mesh import INNER_LIP_LOWER, INNER_LIP_UPPER, MOUTH_CORNERS, mouth_opening
from avatar.errors import UserError
from avatar.eval.frames import frame_conditions, quantize
from avatar.eval.landmarks import LANDMARK_SCALE, FaceLandmarker
from avatar.metrics.lip_sync import lagged_pearson, motion_ratio, pearson
from avatar.model.driving import audio_windows, blink_schedule
from avatar.preprocess.av_offset import estimate_offset, remaining_offset_ms
from avatar.render.video import driven_batches
from avatar.tables import format_table

MAX_LAG = 5  # frames either way for the best-lag correlation
PAUSE_S = 0.2  # a pause is at least this long
EDGE_FRAMES = 2  # the mouth may still be closing/opening this many frames into a pause
QUIET_DB = -20.0  # a frame is quiet below the clip's median loudness of sounding frames by this much
OPEN_VISEMES = ("open", "mid")  # vowels with a clearly open mouth
STRIP_FRAMES = 100  # mouth crops of the first 4 s at 25 fps in mouth_strip.png


def closed_threshold(openings: np.ndarray) -> float:
    """Upper end of a person's closed-mouth range from their tracked openings."""
    low, high = np.quantile(np.asarray(openings, np.float64), [0.1, 0.9])
    return float(low + 0.25 * (high - low))


def lagged_correlation(pred: np.ndarray, truth: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, float, int]:
    """(correlation at lag 0, the best within +-max_lag, its lag): lag > 0 means the avatar moves later."""
    by_lag = {lag: lagged_pearson(truth, pred, lag) for lag in range(-max_lag, max_lag + 1)}
    finite = {k: v for k, v in by_lag.items() if np.isfinite(v)}
    best = max(finite, key=finite.get) if finite else 0
    return by_lag[0], by_lag[best], best


def driver_in_sync(dataset: Dataset, wave: np.ndarray) -> tuple[np.ndarray, float]:
    """(the driving dataset's tracked openings in time with its sound, the offset taken out in ms): its
    preprocessing removed a confident offset from its sound; otherwise (an offset kept, or a dataset made
    before the estimate, which is estimated here) the openings are moved by it."""
    openings = dataset.mouth_openings()
    offset_ms = remaining_offset_ms(dataset.manifest.av_offset)
    if offset_ms is None:
        found = estimate_offset(PhoneticFeatures(classes="visemes")(wave), 100.0, openings, dataset.fps)
        offset_ms = found.ms if found.confident else 0.0
    if offset_ms == 0:
        return openings, 0.0
    frames = np.arange(len(openings), dtype=np.float64)  # the lips that made the sound at frame j: j - offset
    return np.interp(frames - offset_ms * dataset.fps / 1000.0, frames, openings), offset_ms


def quiet_frames(loudness: np.ndarray) -> np.ndarray:
    """[N] bool: frames more than QUIET_DB below the median loudness of the sounding frames."""
    sounding = loudness[loudness > np.log(1e-4)]
    if sounding.size == 0:
        return np.ones(len(loudness), bool)
    return loudness < np.median(sounding) + QUIET_DB / 20.0 * np.log(10.0)


def pauses(quiet: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    """[start, end) runs of at least `min_frames` quiet frames."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2]) if e - s >= min_frames]


def vowel_frames(wave: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """[num_frames] bool: frames whose centre the phone decoder places in an open or mid vowel."""

    classes = PhoneticFeatures(classes="visemes", sigma_ms=0.0)(wave).argmax(1)
    rows = np.clip(np.round((np.arange(num_frames) + 0.5) / fps * 100.0).astype(int), 0, len(classes) - 1)
    return np.isin(classes[rows], [VISEME_NAMES.index(v) for v in OPEN_VISEMES])


@dataclass
class Rendered:
    openings: np.ndarray  # [N] detected opening per frame (nan where no face was found)
    detected: float  # share of frames with a face found
    crops: list[np.ndarray] = field(default_factory=list)  # [S, S, 3] mouth crops of the first frames

    def since(self, first: int) -> Rendered:
        """The frames from `first` on (the crops as they were)."""
        kept = self.openings[first:]
        return Rendered(kept, float(np.mean(np.isfinite(kept))) if len(kept) else 0.0, self.crops)


def mouth_crop(image: np.ndarray, points: np.ndarray, size: int = 64) -> np.ndarray:
    """[size, size, 3] square around the mouth (points: landmarks at LANDMARK_SCALE)."""

    scale = image.shape[0] / LANDMARK_SCALE
    mouth = points[[INNER_LIP_UPPER, INNER_LIP_LOWER, *MOUTH_CORNERS], :2] * scale
    centre = mouth.mean(0)
    half = 0.8 * np.linalg.norm(mouth[2] - mouth[3]) + 1.0
    x0, y0 = (centre - half).round().astype(int)
    x1, y1 = (centre + half).round().astype(int)
    padded = np.pad(image, ((image.shape[0],) * 2, (image.shape[1],) * 2, (0, 0)))
    crop = padded[y0 + image.shape[0] : y1 + image.shape[0], x0 + image.shape[1] : x1 + image.shape[1]]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def rendered_openings(frames, landmarker, keep_crops: int = 0) -> Rendered:
    """Openings of an iterable of [B, H, W, 3] uint8 batches (and the mouth crops of the first frames)."""
    values, crops = [], []
    for batch in frames:
        for image in batch:
            points = landmarker(image)
            values.append(np.nan if points is None else float(mouth_opening(points)))
            if len(crops) < keep_crops:
                crops.append(np.zeros((64, 64, 3), np.uint8) if points is None else mouth_crop(image, points))
    openings = np.asarray(values, np.float64)
    return Rendered(openings, float(np.mean(np.isfinite(openings))) if len(openings) else 0.0, crops)


def write_strip(crops: list[np.ndarray], path: Path, per_row: int = 25) -> None:
    """Consecutive mouth crops in rows of `per_row` frames (one second at 25 fps), as a PNG."""

    rows = []
    for start in range(0, len(crops), per_row):
        row = crops[start : start + per_row]
        row = row + [np.zeros_like(crops[0])] * (per_row - len(row))
        rows.append(np.concatenate(row, axis=1))
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), np.concatenate(rows)[:, :, ::-1])


def _filled(openings: np.ndarray) -> np.ndarray:
    """Undetected frames take the nearest detected value (so series stay aligned in time)."""
    ok = np.isfinite(openings)
    if ok.all() or not ok.any():
        return np.nan_to_num(openings)
    return np.interp(np.arange(len(openings)), np.flatnonzero(ok), openings[ok])


def score(
    rendered: Rendered,
    own: np.ndarray,
    truth: np.ndarray | None = None,
    loudness: np.ndarray | None = None,
    vowels: np.ndarray | None = None,
    fps: float = 25.0,
) -> dict:
    """The measures of the module docstring for one method's rendered openings."""
    pred = _filled(rendered.openings)
    closed = closed_threshold(own)
    out = {
        "face_detected": rendered.detected,
        "motion_ratio": motion_ratio(pred, own),
        "opening_mean": float(np.mean(pred)),
        "closed_threshold": closed,
    }
    if truth is not None:
        lag0, best, lag = lagged_correlation(pred, truth[: len(pred)])
        out.update({"corr_lag0": lag0, "corr_best": best, "best_lag": lag})
    if loudness is not None:
        quiet = quiet_frames(loudness)
        out["loudness_corr"] = pearson(pred, loudness)
        out["silent_frames"] = int(quiet.sum())
        out["silent_closed"] = float(np.mean(pred[quiet] <= closed)) if quiet.any() else float("nan")
        found = pauses(quiet, int(np.ceil(PAUSE_S * fps)))
        inner = [pred[s + EDGE_FRAMES : max(e - EDGE_FRAMES, s + EDGE_FRAMES + 1)] for s, e in found]
        out["pauses"] = len(found)
        out["pauses_closed"] = float(np.mean([seg.max() <= closed for seg in inner])) if found else float("nan")
    if vowels is not None:
        out["vowel_frames"] = int(vowels.sum())
        out["vowels_open"] = float(np.mean(pred[vowels] > closed)) if vowels.any() else float("nan")
    return out


def drive(
    head,
    audio: Path,
    num_frames: int,
    fps: float,
    batch: int,
    landmarker,
    deform: bool,
    keep_crops: int = 0,
    pose: str = "track",
) -> Rendered:
    """Render the first `num_frames` frames of `audio` as `avatar render --pose POSE` would (the person's
    blinks) and detect their openings."""

    def limited():
        seen = 0
        for chunk in audio_windows(audio, head.driving, head.audio_context, fps):
            if seen >= num_frames:
                return
            yield chunk[: num_frames - seen]
            seen += len(chunk)

    blinks = blink_schedule(head.driving, num_frames, fps, None)
    levels = head.audio_encoder.levels(limited())

    def images():
        for frames, cond in driven_batches(head, limited(), blinks, pose, fps, batch, levels):
            with torch.no_grad():
                yield quantize(head.render(cond, deform=deform)["rgb"])
            print(f"[eval] {'avatar' if deform else 'static head'}: {frames.stop}/{num_frames} frames", flush=True)

    return rendered_openings(images(), landmarker, keep_crops)


def person_openings(head, run: Path, own: Dataset | None) -> np.ndarray:
    """The avatar's person's tracked openings over the training frames: recorded in the avatar, or for an
    avatar from before they were recorded (in 3D) read from its dataset `own`."""
    if head.driving.openings is not None:
        return head.driving.openings
    if own is None:
        raise UserError(
            f"{run}: the avatar does not record its person's mouth openings (made by an older "
            "version) and its dataset is not at hand. Give it with --dataset PATH, or retrain."
        )
    return own.mouth_openings(own.indices("train"))


def cross_driven(
    head,
    run: Path,
    drive_dataset: Path | None,
    drive_audio: Path | None,
    max_frames: int | None,
    batch: int,
    own: Dataset | None,
    baselines: bool = True,
    strip: Path | None = None,
    pose: str = "track",
    own_voice_row: bool = True,
) -> dict:
    """metrics.json's dict of a cross-driven evaluation (see the module docstring); `strip`: where to write
    the avatar's mouth crops of the first STRIP_FRAMES frames as a PNG; `pose`: the renders' head motion;
    `own_voice_row`: also score the avatar on its own held-out voice when `own` is given."""

    own_open = person_openings(head, run, own)
    truth = None
    if drive_dataset is not None:
        other = Dataset(drive_dataset)
        audio, fps = other.layout.audio, other.fps
        wave = load_audio(audio)
        truth, offset_ms = driver_in_sync(other, wave)
        first, end = other.heard()
        truth = truth[:end]
        source = {"drive": str(other.root), "driver_video": other.manifest.source["path"]}
        source["driver_offset_ms"] = round(offset_ms, 1)
    else:
        audio, fps, first = Path(drive_audio), head.fps, 0
        source = {"drive_audio": str(audio)}
        wave = load_audio(audio)
    count = num_frames_for(len(wave), SAMPLE_RATE, fps)
    count = min(count, max_frames or count, len(truth) if truth is not None else count)
    if count - first < 3:
        raise UserError(
            f"{audio}: {len(wave) / SAMPLE_RATE:.2f} s of audio drives {count} frames; at least 3 are "
            "needed to score the mouth's motion. Give longer audio."
        )
    if truth is not None:
        truth = truth[:count]
    heard_truth = None if truth is None else truth[first:]
    loud = frame_loudness(wave, fps, count)[first:]
    vowels = vowel_frames(wave, fps, count) if truth is None else None
    methods = {}
    with FaceLandmarker() as landmarker:
        for name, deform in (("avatar", True), ("static_head", False))[: 2 if baselines else 1]:
            rendered = drive(head, audio, count, fps, batch, landmarker, deform, STRIP_FRAMES if deform else 0, pose)
            if deform and strip is not None and rendered.crops:
                write_strip(rendered.crops, strip)
            methods[name] = score(rendered.since(first), own_open, heard_truth, loud, vowels, fps)
            methods[name]["frames"] = count - first
        if truth is not None:
            real = Rendered(truth, 1.0).since(first)
            methods["driver_real"] = score(real, own_open, real.openings, loud, None, fps)
        if own_voice_row and own is not None:
            if own.manifest.features.extractor == head.driving.features.extractor:
                methods["own_voice"] = own_voice(head, own, landmarker, batch)
            else:
                print(
                    f"note: no own-voice row: {own.root} now holds {own.manifest.features.extractor!r} audio "
                    f"features, the avatar was trained on {head.driving.features.extractor!r}."
                )
    return {"run": str(run), **source, "fps": fps, "pose": pose, "max_lag": MAX_LAG, "methods": methods}


def own_voice(head, dataset: Dataset, landmarker, batch: int) -> dict:
    """The avatar on its own held-out voice (validation frames, tracked pose), scored like the others."""

    val = dataset.indices("val")
    audio = dataset.audio_windows(head.audio_context, val)
    device = next(head.parameters()).device
    levels = head.audio_encoder.levels([audio])

    def images():
        for start in range(0, len(val), batch):
            idx = val[start : start + batch]
            with torch.no_grad():
                cond = frame_conditions(dataset, idx, audio[start : start + len(idx)], device, levels)
                yield quantize(head.render(cond)["rgb"])

    rendered = rendered_openings(images(), landmarker)
    truth = dataset.mouth_openings(val)
    wave = load_audio(dataset.layout.audio)
    a = int(round(val[0] / dataset.fps * 16000))
    loud = frame_loudness(wave[a:], dataset.fps, len(val))
    own_open = person_openings(head, dataset.root, dataset)
    return {**score(rendered, own_open, truth, loud, None, dataset.fps), "frames": len(val)}


DRIVE_COLUMNS = (
    "frames",
    "corr_lag0",
    "corr_best",
    "best_lag",
    "motion_ratio",
    "silent_closed",
    "pauses_closed",
    "vowels_open",
    "loudness_corr",
    "face_detected",
)


def format_drive_table(result: dict) -> str:
    rows = [{"method": name, **{c: m.get(c) for c in DRIVE_COLUMNS}} for name, m in result["methods"].items()]
    return format_table(rows)
