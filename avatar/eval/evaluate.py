"""`avatar eval RUN`: the avatar and two baselines on the validation frames, scored by the same code.

The validation frames (the last 10 % of the clip's frames with sound) are driven by their own audio, tracked
head pose and tracked blinks, and compared with the ground-truth frames; beside the baselines, the avatar with
the tracked expression (`eval.baselines`) shows how much of its gap is the audio prediction's. Writes
RUN/eval/metrics.json and RUN/eval/side_by_side.mp4 (ground truth | avatar, with the clip's audio).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from avatar.audio.io import load_audio
from avatar.contracts.atomic import atomic_path, write_json
from avatar.contracts.dataset import Dataset, DatasetLayout, bit_mask
from avatar.contracts.face_mesh import lip_contour_ids
from avatar.device import resolve_device
from avatar.errors import UserError
from avatar.eval.baselines import NearestAudioBaseline, TrackedExpression, static_head_frames
from avatar.eval.config import EvalConfig
from avatar.eval.cross_drive import cross_driven, format_drive_table
from avatar.eval.frames import frame_conditions, render_frames, resize_mask, resize_rgb, to_chw
from avatar.eval.landmarks import LANDMARK_SCALE, FaceLandmarker
from avatar.eval.scorer import REGIONS, FrameRegions, SequenceScorer, mouth_boxes
from avatar.metrics.lpips import LPIPS
from avatar.model.talking_head import TalkingHead
from avatar.render.mux import AUDIO_RATE, VideoWriter
from avatar.tables import format_table

# metric -> True when higher is better; margins are signed so that positive means "the avatar is better"
HIGHER_IS_BETTER = {
    **{
        f"{metric}{suffix}": metric != "lpips"
        for suffix in ("", *(f"_{r}" for r in REGIONS))
        for metric in ("psnr", "ssim", "lpips")
    },
    "lmd": False,
    "lmd_centred": False,
    "mouth_corr": True,
}
LIP_SYNC_METRICS = ("lmd", "mouth_corr")  # the avatar must beat both baselines on these
# the ground truth itself at the evaluation resolution, scored like a method: the best score reachable at this
# resolution (its LMD is the landmark detector's noise floor once images are this small). Not a baseline.
REFERENCE = "ground_truth"
# the avatar with the tracked expression (eval.baselines.TrackedExpression): what it is measured towards, not a
# baseline to beat
TRACKED = "tracked_expression"

# (frame indices [B], conditions, ground truth [B, S, S, 3] uint8) -> [B, S, S, 3] uint8
FrameSource = Callable[[np.ndarray, object, np.ndarray], np.ndarray]


def frame_regions(
    dataset: Dataset, indices: np.ndarray, boxes: np.ndarray, size: int, device: torch.device
) -> FrameRegions:
    """The regions of dataset frames `indices` at the evaluation size: head, torso and background from the
    dataset's masks (each mask file read once), and their mouth boxes."""
    bits = [dataset.mask_bits(i) for i in indices]

    def masks(name: str, invert: bool = False) -> torch.Tensor:
        stack = np.stack([resize_mask(bit_mask(b, name), size) != invert for b in bits])
        return torch.from_numpy(stack)[:, None].to(device)

    return FrameRegions(
        {"head": masks("head"), "torso": masks("torso"), "background": masks("person", invert=True)}, boxes
    )


def _margins(methods: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Per baseline, avatar minus baseline (or baseline minus avatar for lower-is-better metrics)."""
    avatar = methods["avatar"]
    out = {}
    for name, base in methods.items():
        if name in ("avatar", REFERENCE, TRACKED):
            continue
        out[name] = {}
        for key, higher in HIGHER_IS_BETTER.items():
            a, b = avatar.get(key), base.get(key)
            ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
            out[name][key] = ((a - b) if higher else (b - a)) if ok else None
    return out


def evaluate(
    head, dataset: Dataset, indices: np.ndarray, cfg: EvalConfig, video_path: Path | None, device: torch.device
) -> dict:
    """Render and score every method on `indices`; stream the side-by-side video. Returns metrics.json's dict."""

    size = cfg.resolution or head.resolution
    feature_window = dataset.manifest.features.window
    if feature_window != head.feature_window:
        raise UserError(
            f"{cfg.run}: the avatar expects audio windows of {head.feature_window} rows, the dataset "
            f"{dataset.root} has {feature_window}. Evaluate the avatar on the dataset it was trained on."
        )
    trained_on, holds = head.driving.features.extractor, dataset.manifest.features.extractor
    if trained_on != holds:
        raise UserError(
            f"{dataset.root}: holds {holds!r} audio features, the avatar {cfg.run} was trained on "
            f"{trained_on!r}. Rebuild the features with `avatar preprocess VIDEO --out {dataset.root} "
            "--features ...` (only that step runs), or retrain the avatar."
        )
    audio = dataset.audio_windows(head.audio_context, indices)  # [n, C, W, F], the clip's own statistics
    levels = head.audio_encoder.levels([audio])  # the evaluated frames heard as one clip
    sources: dict[str, FrameSource] = {"avatar": lambda idx, cond, truth: render_frames(head, cond, size)}
    if cfg.baselines:
        nearest = NearestAudioBaseline(dataset, indices, size)
        sources["static_head"] = lambda idx, cond, truth: static_head_frames(head, cond, size)
        sources["nearest_audio"] = lambda idx, cond, truth: nearest(idx)
        tracked = TrackedExpression(head, dataset, size)
        sources[TRACKED] = lambda idx, cond, truth: tracked(idx, cond)
    sources[REFERENCE] = lambda idx, cond, truth: truth

    lips = dataset.tracking("landmarks")[indices][:, lip_contour_ids()] * (size / dataset.manifest.resolution)
    boxes = mouth_boxes(lips, size)
    lpips = LPIPS(cfg.lpips_net).to(device)
    seconds = dict.fromkeys(sources, 0.0)
    with FaceLandmarker() as landmarker:
        scorers = {name: SequenceScorer(lpips, landmarker) for name in sources}
        with _side_by_side(video_path, dataset, indices, cfg.video_size) as write_video:
            for start in range(0, len(indices), cfg.batch_size):
                idx = indices[start : start + cfg.batch_size]
                gt_full = [dataset.frame(i) for i in idx]  # [H, W, 3] uint8 at the dataset's resolution
                gt_landmarks = [landmarker(f) for f in gt_full]
                truth = np.stack([resize_rgb(f, size) for f in gt_full])
                gt = to_chw(truth, device)
                regions = frame_regions(dataset, idx, boxes[start : start + len(idx)], size, device)
                cond = frame_conditions(dataset, idx, audio[start : start + len(idx)], device, levels)
                for name, source in sources.items():
                    t0 = time.perf_counter()
                    frames = source(idx, cond, truth)  # [B, size, size, 3] uint8
                    seconds[name] += time.perf_counter() - t0
                    scorers[name].add(to_chw(frames, device), gt, regions, gt_landmarks)
                    if name == "avatar" and write_video is not None:
                        write_video(
                            np.stack(
                                [
                                    np.concatenate(
                                        [resize_rgb(truth, cfg.video_size), resize_rgb(pred, cfg.video_size)], axis=1
                                    )
                                    for truth, pred in zip(gt_full, frames)
                                ]
                            )
                        )
                print(f"[eval] {min(start + cfg.batch_size, len(indices))}/{len(indices)} frames", flush=True)
    methods = {
        name: {**scorer.summary(), "seconds_per_frame": seconds[name] / len(indices)}
        for name, scorer in scorers.items()
    }
    result = {
        "run": str(cfg.run),
        "dataset": str(dataset.root),
        "split": cfg.split,
        "frames": [int(indices[0]), int(indices[-1]) + 1],
        "resolution": size,
        "landmark_scale": LANDMARK_SCALE,
        "mouth_box_side": int(boxes[0, 1] - boxes[0, 0]),
        "lpips_net": cfg.lpips_net,
        "methods": methods,
    }
    if cfg.baselines:
        margins = _margins(methods)
        result["margins"] = margins  # positive: the avatar is better by this much
        result["avatar_beats_baselines"] = {
            key: all(m[key] is not None and m[key] > 0 for m in margins.values()) for key in LIP_SYNC_METRICS
        }
    return result


def _clip_audio(dataset: Dataset, indices: np.ndarray, sample_rate: int) -> np.ndarray:
    """[S] mono float32 audio of frames indices[0] .. indices[-1], from the start of the first."""

    wave = load_audio(dataset.root / dataset.manifest.audio["file"], sample_rate)
    a = int(round(indices[0] / dataset.fps * sample_rate))
    b = int(round((indices[-1] + 1) / dataset.fps * sample_rate))
    return wave[a:b]


@contextlib.contextmanager
def _side_by_side(path: Path | None, dataset: Dataset, indices: np.ndarray, panel: int):
    """Yields write([B, panel, 2 * panel, 3] uint8) that appends frames and the sound up to their end,
    or None when no video is wanted. The file appears only when complete."""
    if path is None:
        yield None
        return

    if panel % 2:
        raise UserError(f"--video-size {panel}: must be even (H.264 needs even frame sizes).")
    wave = _clip_audio(dataset, indices, AUDIO_RATE)
    with atomic_path(path) as tmp:
        writer = VideoWriter(tmp, 2 * panel, panel, dataset.fps, audio_channels=1)
        try:

            def write(frames: np.ndarray) -> None:
                writer.write_frames(frames)
                end = writer.samples_until(writer.frames_written)
                writer.write_audio(wave[writer.samples_written : end, None])

            yield write
            writer.close()
        except BaseException:
            writer.abort()
            raise


MAIN_COLUMNS = ("psnr", "ssim", "lpips", "lmd", "lmd_centred", "mouth_corr", "mouth_motion", "face_detected")


def format_result(result: dict) -> str:
    """The printed evaluation: the methods against the main metrics; PSNR / SSIM / LPIPS per method and region;
    the avatar's margins over each baseline (positive: the avatar is better)."""
    methods = result["methods"]
    main = [{"method": name, **{c: m.get(c) for c in MAIN_COLUMNS}} for name, m in methods.items()]
    regions = [
        {"method": name, "region": r, **{metric: m.get(f"{metric}_{r}") for metric in ("psnr", "ssim", "lpips")}}
        for name, m in methods.items()
        for r in REGIONS
    ]
    tables = [
        format_table(main, "metrics on the frames"),
        format_table(regions, "per region (head, torso incl. neck, background, mouth box)"),
    ]
    if "margins" in result:
        margins = [
            {"avatar vs": base, **{c: m[c] for c in MAIN_COLUMNS if c in m}} for base, m in result["margins"].items()
        ]
        tables.append(
            format_table(margins, "the avatar's margins (positive: the avatar is better; per region in metrics.json)")
        )
    return "\n\n".join(tables)


def evaluation_dataset(head, run: Path, override: Path | None) -> Dataset:
    """The dataset to score on: `override`, else the one the avatar recorded, refused with a clear message
    when it has moved away or changed since training (a rebuilt dataset may have other frames or splits)."""
    recorded = head.driving.dataset
    path = Path(recorded["path"])
    if override is None:
        if not DatasetLayout(path).manifest.is_file():
            raise UserError(
                f"{run}: the avatar was trained on the dataset {path}, which is no longer there. "
                "Give its new place with `avatar eval RUN --dataset PATH`."
            )
        dataset = Dataset(path)
        if dataset.manifest_sha256() != recorded["manifest_sha256"]:
            raise UserError(
                f"{path}: not the dataset the avatar {run} was trained on (rebuilt or changed since: "
                "its manifest differs). Give the original with --dataset PATH, or retrain the avatar."
            )
        return dataset
    dataset = Dataset(override)
    if dataset.manifest_sha256() != recorded["manifest_sha256"]:
        print(f"note: {override} is not the dataset the avatar was trained on ({path}); scoring on it anyway.")
    return dataset


def run_cross_driven(cfg: EvalConfig, head) -> dict:
    """`avatar eval RUN --drive DATASET` or `--drive-audio FILE` (avatar.eval.cross_drive)."""

    try:
        own = evaluation_dataset(head, Path(cfg.run), cfg.dataset)
    except UserError as exc:
        print(f"note: no own-voice row ({exc})")
        own = None
    name = Path(cfg.drive or cfg.drive_audio).stem
    out = cfg.out or Path(cfg.run) / "eval" / f"drive_{name}"
    result = cross_driven(
        head,
        Path(cfg.run),
        cfg.drive,
        cfg.drive_audio,
        cfg.max_frames,
        cfg.batch_size,
        own,
        cfg.baselines,
        out / "mouth_strip.png",
        cfg.pose,
    )
    write_json(out / "metrics.json", result)
    print(format_drive_table(result))
    print(f"wrote {out / 'metrics.json'} and {out / 'mouth_strip.png'} (the avatar's mouth, frame by frame)")
    return result


def run(cfg: EvalConfig) -> dict:

    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    if cfg.out is not None and cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"--out {cfg.out}: is a file; the evaluation writes a directory there. Give a directory path.")
    if cfg.drive is not None and cfg.drive_audio is not None:
        raise UserError("--drive and --drive-audio: give one of them (a dataset, or an audio file).")
    if cfg.drive_audio is not None and not Path(cfg.drive_audio).is_file():
        what = "is a directory" if Path(cfg.drive_audio).is_dir() else "no such file"
        raise UserError(f"--drive-audio {cfg.drive_audio}: {what}. Give an audio file (wav, mp3, flac, ...).")
    head = TalkingHead.load(cfg.run, device=device)
    if cfg.drive is not None or cfg.drive_audio is not None:
        return run_cross_driven(cfg, head)
    dataset = evaluation_dataset(head, Path(cfg.run), cfg.dataset)
    indices = dataset.indices(cfg.split)[: cfg.max_frames]
    if len(indices) < 3:
        raise UserError(
            f"{dataset.root}: the {cfg.split} split has {len(indices)} frames; at least 3 are needed "
            "for the mouth-opening correlation. Use a longer clip or --split train."
        )
    out = cfg.out or Path(cfg.run) / "eval"
    video_path = out / "side_by_side.mp4" if cfg.video else None
    result = evaluate(head, dataset, indices, cfg, video_path, device)
    if video_path is not None:
        result["video"] = str(video_path)
    write_json(out / "metrics.json", result)
    print(format_result(result))
    print(f"wrote {out / 'metrics.json'}" + (f" and {video_path}" if video_path else ""))
    return result
