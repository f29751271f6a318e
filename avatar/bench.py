"""`avatar bench [RUN]`: one speed and memory table for the whole pipeline.

Rows come from two places:
- component benchmarks, `benchmarks/bench_*.py` (render, hash, export, preprocess, ... each owned by its
  component): every such module has `run(quick: bool) -> list[dict]`, one dict per row, with at least "name";
- a trained RUN, when given: end-to-end render speed (audio encoder + deformation + rasterization +
  compositing) at each resolution, peak memory, and the training speed the run recorded.
Works on CPU (torch backends) and on a GPU; the device is in the table.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, ClassVar

import numpy as np
import torch
import tyro

import avatar.benchmarks
from avatar.contracts.atomic import write_json
from avatar.device import resolve_device
from avatar.errors import UserError
from avatar.model.driving import audio_windows, blink_schedule, pose_schedule
from avatar.model.talking_head import FrameConditions, TalkingHead
from avatar.rasterizer.types import Camera
from avatar.tables import format_table


@dataclass
class BenchConfig:
    """Print a table of speed and memory: the component benchmarks, and a trained avatar when RUN is given."""

    LIMITS: ClassVar[dict] = {
        "frames": (1, None),
        "warmup": (0, None),
        "threads": (1, None),
        "resolutions": (16, 4096),
    }  # checked by config_io.check_values

    run: Annotated[Path | None, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = None
    """a run directory written by `avatar train` (optional)"""
    quick: bool = False
    """fewer repetitions everywhere (a smoke test, not a measurement)"""
    resolutions: tuple[int, ...] = (256, 512)
    """square render sizes timed for the RUN"""
    frames: int = 30
    """frames timed per resolution (after `warmup`); quick: 3"""
    warmup: int = 3
    """untimed frames first (CUDA kernels compile and caches fill); quick: 1"""
    components: bool = True
    """run the component benchmarks in benchmarks/bench_*.py"""
    device: str = "auto"
    """torch device: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"""
    threads: int | None = None
    """CPU threads torch may use; default torch's own choice"""
    out: Path | None = None
    """also write the rows as JSON here"""


def component_rows(quick: bool, package: ModuleType = avatar.benchmarks) -> list[dict]:
    """Rows of every `bench_*` module of `package` (a module that fails gives one row with its error)."""
    rows: list[dict] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        try:
            result = importlib.import_module(f"{package.__name__}.{info.name}").run(quick)
        except Exception as exc:  # one broken benchmark must not hide the others
            rows.append({"section": info.name, "name": info.name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows += [{"section": info.name, **row} for row in (result or [])]
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def audio_feature_windows(head, audio: Path, keep: int) -> tuple[np.ndarray, dict]:
    """The first `keep` [keep, C, W, F] windows of `audio` as `avatar render` computes them, and the row that
    times the features of the whole clip (streamed: only `keep` windows are held). Where the audio packages are
    not installed (a GPU machine given only what the render itself needs), all-zero windows (silence) of the
    same shape stand in and the row says so."""

    row = {"section": "avatar render (batch 1)", "name": "audio features"}
    start, frames, kept = time.perf_counter(), 0, []
    try:
        for chunk in audio_windows(audio, head.driving, head.audio_context):
            frames += len(chunk)
            if sum(map(len, kept)) < keep:
                kept.append(np.array(chunk[:keep]))
    except ImportError as exc:
        f = head.driving.features
        silent = np.zeros((keep, 2 * head.audio_context + 1, f.window, f.dim), np.float32)
        return silent, {**row, "skipped": f"{exc}; silent windows drive the render rows"}
    seconds = time.perf_counter() - start
    return np.concatenate(kept)[:keep], {
        **row,
        "frames": frames,
        "ms_per_frame": 1000 * seconds / max(frames, 1),
        "fps": frames / max(seconds, 1e-9),
    }


def driving_conditions(head, windows: np.ndarray, count: int, device: torch.device) -> list:
    """`count` single-frame FrameConditions from `windows` (looped) with the avatar's own poses and blinks."""

    rows = np.resize(np.arange(len(windows)), count)
    rotation, translation, body = pose_schedule(head.driving, count, "track")
    blinks = blink_schedule(head.driving, count, head.fps, None)
    return [
        FrameConditions.from_arrays(
            device,
            windows[rows[i : i + 1]],
            rotation[i : i + 1],
            translation[i : i + 1],
            blinks[i : i + 1],
            body[i : i + 1],
        )
        for i in range(count)
    ]


def render_rows(head, conds: list, warmup: int, resolutions: tuple[int, ...], device: torch.device) -> list[dict]:
    """End-to-end render speed of `head` (TalkingHead) at its training camera and at each square size, one
    frame at a time (batch 1): audio encoder + deformation + rasterization + compositing."""

    frames = len(conds) - warmup
    rows = []
    for size in (None, *resolutions):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def render(cond, size=size):
            if size is None:  # the training camera, with the torso layer and the plate
                return head.render(cond)
            K = torch.as_tensor(head.intrinsics.scaled(size, size).K, dtype=torch.float32, device=device)
            w2c = torch.eye(4, device=device)
            w2c[:3, :3], w2c[:3, 3] = cond.rotation[0], cond.translation[0]
            # the torso layer and the plate exist only at the training resolution: head over black here
            return head.render(
                cond,
                background=torch.zeros(size, size, 3, device=device),
                camera=Camera(w2c, K, size, size),
                show_torso=False,
            )

        for cond in conds[:warmup]:
            render(cond)
        _sync(device)
        start = time.perf_counter()
        for cond in conds[warmup:]:
            render(cond)
        _sync(device)
        seconds = (time.perf_counter() - start) / frames
        label = f"{head.resolution} (training camera, torso)" if size is None else f"{size} (head only)"
        rows.append(
            {
                "section": "avatar render (batch 1)",
                "name": f"render {label}",
                "ms_per_frame": 1000 * seconds,
                "fps": 1 / seconds,
                "peak_memory_mb": _peak_memory_mb(device),
            }
        )
    return rows


def training_rows(run_dir: Path) -> list[dict]:
    """Training speed as the run recorded it (steps from config.json, seconds from run.json)."""
    run_info = json.loads((run_dir / "run.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    rows = []
    for stage, seconds in run_info.get("stage_seconds", {}).items():
        steps = config.get(f"{stage}_steps")
        row = {"section": "training (as recorded in run.json)", "name": f"stage {stage}", "seconds": seconds}
        if stage != "audio" and steps:  # the audio stage's steps are per ensemble member and may stop early
            row.update(steps=steps, it_per_s=steps / seconds if seconds else None)
        rows.append(row)
    total = sum(run_info.get("stage_seconds", {}).values())
    rows.append(
        {
            "section": "training (as recorded in run.json)",
            "name": "total",
            "seconds": total,
            "minutes": total / 60,
            "peak_memory_mb": run_info.get("peak_memory_mb"),
        }
    )
    return rows


def format_report(rows: list[dict]) -> str:
    """One table per section (each component benchmark, the avatar's rendering, its training), in order."""
    sections: dict[str, list[dict]] = {}
    for row in rows:
        sections.setdefault(row.get("section", ""), []).append({k: v for k, v in row.items() if k != "section"})
    return "\n\n".join(format_table(part, f"== {name}") for name, part in sections.items())


def run(cfg: BenchConfig) -> list[dict]:

    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    frames, warmup = (3, 1) if cfg.quick else (cfg.frames, cfg.warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rows: list[dict] = [{"section": "device", "name": name}]
    if cfg.components:
        rows += component_rows(cfg.quick)
    if cfg.run is not None:
        if not (cfg.run / "run.json").is_file():
            raise UserError(f"{cfg.run}: not a run directory (no run.json). Give a directory made by `avatar train`.")
        head = TalkingHead.load(cfg.run, device=device)
        # the run keeps its clip's sound
        windows, features_row = audio_feature_windows(head, cfg.run / "audio.wav", warmup + frames)
        rows.append(features_row)
        rows += render_rows(
            head, driving_conditions(head, windows, warmup + frames, device), warmup, cfg.resolutions, device
        )
        rows += training_rows(cfg.run)
    print(format_report(rows))
    if cfg.out is not None:
        write_json(cfg.out, rows)
    return rows
