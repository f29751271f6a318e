"""`avatar demo`: the whole story on the shared example data, on a CPU, in one command.

preprocess a shared talking video -> train the `tiny` preset -> render a shared speech clip the avatar
never heard into an mp4 with sound -> score its mouth on that clip (`avatar eval --drive-audio`: motion,
pauses closed, vowels open, and a strip of mouth crops to look at). Each step keeps its result in --work,
so a rerun reuses finished steps (an interrupted training resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from avatar.cli import command
from avatar.config_io import load_preset
from avatar.errors import UserError
from avatar.examples import ENVIRONMENT_VARIABLE, example_data
from avatar.train.runner import latest_checkpoint

SHARED_DATA = example_data()


@dataclass
class DemoConfig:
    """Preprocess a shared video, train a `tiny` avatar on it, and make it say a speech clip it never heard."""

    LIMITS: ClassVar[dict] = {
        "dataset_resolution": (64, 4096),
        "train_resolution": (16, 4096),
        "train_scale": (0.01, 100),
    }  # checked by config_io.check_values

    video: Path = SHARED_DATA / "mimictalk_german_anchor_20s.mp4"
    """the talking video to learn the person from"""
    audio: Path = SHARED_DATA / "sadtalker_hdtf_radio31_8s.wav"
    """the new speech to say (e.g. ../shared/data/musetalk_eng_speech_60s.wav for a minute)"""
    work: Path = Path("out/demo")
    """where the dataset, the run and the video go (kept, so a rerun reuses finished steps)"""
    preset: str = "tiny"
    """training preset (configs/train/NAME.toml)"""
    dataset_resolution: int = 256
    """side of the dataset images (quick to write; the demo trains at up to this size)"""
    train_resolution: int = 256
    """training and video resolution (the `tiny` preset's own); 128 trains a minute faster and blurrier"""
    pose: str = "track"
    """head motion of the video: track, still or smooth (see `avatar render --help`)"""
    train_scale: float = 1.0
    """multiply the preset's training steps (and its step-based schedules) by this; below 1 on a slow or busy
    machine, for a quicker, blurrier avatar"""


def scaled_steps(cfg, scale: float):
    """A TrainConfig whose stage lengths, LPIPS start and densification schedule are `scale` times the preset's."""
    if scale == 1.0:
        return cfg
    n = lambda steps: max(1, int(round(steps * scale)))  # noqa: E731
    densify = dataclasses.replace(
        cfg.densify,
        start_step=n(cfg.densify.start_step),
        every=n(cfg.densify.every),
        stop_step=n(cfg.densify.stop_step),
    )
    return dataclasses.replace(
        cfg,
        audio_steps=n(cfg.audio_steps),
        canonical_steps=n(cfg.canonical_steps),
        torso_steps=n(cfg.torso_steps),
        deform_steps=n(cfg.deform_steps),
        lpips_start=n(cfg.lpips_start),
        densify=densify,
    )


def _check_inputs(cfg: DemoConfig) -> None:
    for path, what in ((cfg.video, "video"), (cfg.audio, "speech clip")):
        if not Path(path).is_file():
            raise UserError(
                f"{Path(path).resolve()}: the demo's example {what} is missing. The demo expects the shared example "
                f"data at {SHARED_DATA.resolve()} (a folder `shared/data` beside the repository, or set "
                f"${ENVIRONMENT_VARIABLE}); give your own files with --video and --audio."
            )


def _step(name: str, timings: dict[str, float]):
    """Print a step heading; returns a function that records the step's time."""
    print(f"\n== {name}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    return lambda: timings.__setitem__(name, time.perf_counter() - start)


def run(cfg: DemoConfig) -> Path:

    PreprocessConfig, preprocess = command("preprocess")  # noqa: N806 - a class
    TrainConfig, train = command("train")  # noqa: N806
    RenderConfig, render = command("render")  # noqa: N806
    EvalConfig, evaluate = command("eval")  # noqa: N806

    _check_inputs(cfg)
    work = Path(cfg.work)
    dataset, run_dir, video = work / "dataset", work / "run", work / f"{Path(cfg.audio).stem}.mp4"
    timings: dict[str, float] = {}
    start = time.perf_counter()

    done = _step(f"1/4 preprocess {cfg.video} -> {dataset} (finished steps are reused)", timings)
    preprocess(PreprocessConfig(video=Path(cfg.video), out=dataset, resolution=cfg.dataset_resolution))
    done()

    avatar = run_dir / "avatar.pt"
    done = _step(f"2/4 train the `{cfg.preset}` preset at {cfg.train_resolution} px -> {run_dir}", timings)
    if avatar.is_file():
        print(f"{avatar} exists: training is finished, reusing it.", file=sys.stderr)
    else:
        resume = latest_checkpoint(run_dir).is_file()
        train_cfg = dataclasses.replace(
            scaled_steps(load_preset("train", cfg.preset, TrainConfig), cfg.train_scale),
            dataset=dataset,
            out=run_dir,
            preset=cfg.preset,
            resume=resume,
            resolution=cfg.train_resolution,
        )
        train(train_cfg)
    done()

    done = _step(f"3/4 render {cfg.audio} -> {video}", timings)
    inputs = max(avatar.stat().st_mtime, Path(cfg.audio).stat().st_mtime)
    if video.is_file() and video.stat().st_mtime > inputs:
        print(f"{video} is newer than the avatar and the audio: reusing it.", file=sys.stderr)
    else:
        render(RenderConfig(run=run_dir, audio=Path(cfg.audio), out=video, pose=cfg.pose))  # type: ignore[arg-type]
    done()

    lip_sync = work / "lip_sync"
    done = _step(f"4/4 score the mouth on the new audio -> {lip_sync}", timings)
    scored = lip_sync / "metrics.json"
    if scored.is_file() and scored.stat().st_mtime > video.stat().st_mtime:
        print(f"{scored} is newer than the video: reusing it.", file=sys.stderr)
    else:
        evaluate(EvalConfig(run=run_dir, drive_audio=Path(cfg.audio), out=lip_sync, baselines=False))
    done()

    total = time.perf_counter() - start
    print(
        "\n"
        + ", ".join(f"{name.split(' ')[1]} {seconds / 60:.1f} min" for name, seconds in timings.items())
        + f"; total {total / 60:.1f} min"
    )
    print(f"Your avatar saying {Path(cfg.audio).name}: {video.resolve()}")
    print(f"Its mouth, frame by frame: {(lip_sync / 'mouth_strip.png').resolve()}")
    print(f"Make it speak as you speak (microphone, in the browser): avatar live {run_dir}")
    return video
