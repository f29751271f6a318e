"""`avatar train`: the Runner owns the loop over the stages (avatar.train.stages), checkpoints, resume and logging.

Each stage gets a StageContext and nothing else of the runner. The runner writes a checkpoint when the run
starts and, between stages, at the next stage's start; inside a stage the stage writes its own progress through
the context. One `avatar train` at a time holds a run directory (a lock on it).
At the end the run directory holds the self-contained avatar (`avatar.pt`, with its driving data), the
training clip's sound (`audio.wav`, for the viewer and the benchmark), `head.ply`, `run.json`, `config.json`,
the checkpoints and the tensorboard logs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from avatar.config_io import to_dict
from avatar.contracts.atomic import atomic_path, exclusive, write_json
from avatar.contracts.dataset import Dataset, DatasetLayout
from avatar.data.batches import TrainingData
from avatar.device import resolve_device
from avatar.errors import UserError
from avatar.model.driving import DrivingData
from avatar.model.talking_head import TalkingHead
from avatar.train.checkpoint import RUN_FORMAT_VERSION, Checkpoint
from avatar.train.config import TrainConfig
from avatar.train.context import StageContext, StopRequested
from avatar.train.expression import ExpressionSpace
from avatar.train.stages import AudioStage, CanonicalStage, DeformStage, ImageStage, Stage, TorsoStage

__all__ = ["RUN_FORMAT_VERSION", "Runner", "latest_checkpoint", "run"]


def run(cfg: TrainConfig) -> Path:
    """Train (or resume) the avatar described by `cfg`; returns the path of the final avatar.pt."""
    return Runner(cfg).train()


def latest_checkpoint(out: Path | str) -> Path:
    """Where a run keeps the checkpoint that `--resume` continues from."""
    return Path(out) / "checkpoints" / "latest.pt"


def open_training_dataset(cfg: TrainConfig) -> Dataset:
    """The dataset, or a UserError that says what to do when it is missing, outdated, incomplete or too short:
    before the first stage starts, since every stage reads its own part of it."""
    if str(cfg.dataset) in ("", "."):
        raise UserError("no dataset given. Usage: `avatar train DATASET --out RUN` (DATASET from `avatar preprocess`).")
    dataset = Dataset(cfg.dataset, complete=True)
    dataset.blinks()  # a dataset tracked before the blinks were is refused here, not after the audio stage
    start, end = dataset.manifest.split.train
    if end - start < max(cfg.min_train_frames, cfg.batch_size):
        raise UserError(
            f"{cfg.dataset}: only {end - start} training frames ({(end - start) / dataset.fps:.1f} s); at least "
            f"{max(cfg.min_train_frames, cfg.batch_size)} are needed. Preprocess a longer video."
        )
    return dataset


# options that may differ on --resume: where and how fast it runs, how often it reports
RESUMABLE_CHANGES = frozenset(
    {"resume", "threads", "device", "out", "dataset", "log_every", "image_every", "checkpoint_every", "cache_mb"}
)


def refuse_occupied(out: Path) -> None:
    """A new run goes into an empty or new directory, never over a dataset or someone's files."""

    if DatasetLayout(out).manifest.is_file():
        raise UserError(
            f"--out {out}: is a dataset (it has manifest.json). Give a new directory for the run, "
            f"e.g. --out {out.parent / 'run'}."
        )
    leftovers = {"config.json", "run.json", "tb", "checkpoints"}  # a start that ended before its first checkpoint
    if out.is_dir() and any(p.name not in leftovers for p in out.iterdir()):
        raise UserError(f"--out {out}: is not empty and holds no run. Give a new or empty directory for the run.")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file. Give a directory for the run.")


def training_lock(out: Path):
    """One `avatar train` per run directory at a time (two would write over each other's checkpoints)."""
    return exclusive(
        out,
        f"--out {out}: another `avatar train` is training this run right now. Wait for it to "
        "finish, or choose another --out.",
    )


def refuse_changed_settings(out: Path, cfg: TrainConfig) -> None:
    """--resume continues the run as it was started: refuse, before anything is written, settings that differ
    from the run's config.json (a different preset or resolution would not fit its checkpoint)."""

    saved_path = out / "config.json"
    if not saved_path.is_file():
        return
    saved, current = _flat(json.loads(saved_path.read_text())), _flat(to_dict(cfg))
    changed = [
        f"--{k.replace('_', '-')} {current[k]} (the run has {saved[k]})"
        for k in sorted(set(saved) | set(current))
        if k.split(".")[0] not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    ]
    if changed:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        preset = saved.get("preset")
        raise UserError(
            f"{out}: --resume with settings that differ from the run's: {shown}. Resume with the run's "
            f"own settings (the command that started it{f', --preset {preset}' if preset else ''}), or "
            "train into a new --out."
        )


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Runner:
    def __init__(self, cfg: TrainConfig, on_step: Callable[[Runner, str, int], None] | None = None):
        self.cfg = cfg
        # fresh stage objects per run: an image stage keeps its optimizer and sampler while it runs
        self.stages: tuple[Stage, ...] = (AudioStage(), CanonicalStage(), TorsoStage(), DeformStage())
        self.on_step = on_step  # called after every completed step (used by tests to simulate Ctrl-C)
        self.dataset = open_training_dataset(cfg)
        self.out = Path(cfg.out)
        self.ckpt_path = latest_checkpoint(self.out)
        if self.out.is_dir():
            with training_lock(self.out):  # a run in training is said first (not "add --resume")
                pass
        if self.ckpt_path.exists() and not cfg.resume:
            raise UserError(f"{self.out}: already holds a run. Add --resume to continue it, or choose another --out.")
        if cfg.resume and not self.ckpt_path.exists():
            raise UserError(f"{self.ckpt_path}: no checkpoint to resume from. Start the run without --resume.")
        if not cfg.resume:
            refuse_occupied(self.out)
        else:
            refuse_changed_settings(self.out, cfg)
        torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self._stop_requested = False
        self._stage: Stage | None = None  # the stage running now
        self.run_info: dict = {}

    # ------------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop after the current step, with a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    def _interrupt(self, signum, frame) -> None:
        """Ctrl-C: an image stage stops after its current step, with a checkpoint of that step. The audio stage
        checkpoints whole encoder members only (a stop request would lose the member in progress just the same,
        after its re-voicing or memory search had run on), and a second Ctrl-C means now: those stop at once,
        from the last checkpoint."""
        if self._stop_requested or not isinstance(self._stage, ImageStage):
            raise KeyboardInterrupt
        self.request_stop()
        os.write(2, b"\nstopping after this step with a checkpoint (Ctrl-C again stops at once, from the last one)\n")

    @staticmethod
    def log(message: str) -> None:

        tqdm.write(message)

    def train(self) -> Path:
        checkpoint = Checkpoint.load(self.ckpt_path) if self.cfg.resume else None
        self.out.mkdir(parents=True, exist_ok=True)
        with training_lock(self.out):
            try:
                return self._train(checkpoint)
            except Exception as exc:  # an interrupt leaves "training": --resume goes on from the checkpoint
                if self.run_info:
                    self.run_info.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    self._write_run_info()
                raise

    def _train(self, checkpoint: Checkpoint | None) -> Path:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - tensorboard loads only when a run logs

        cfg = self.cfg
        write_json(self.out / "config.json", to_dict(cfg))
        self.run_info = (
            checkpoint.run_info
            if checkpoint
            else {
                "format_version": RUN_FORMAT_VERSION,
                "dataset": str(Path(cfg.dataset).resolve()),
                "dataset_manifest_sha256": self.dataset.manifest_sha256(),
                "preset": cfg.preset,
                "status": "training",
                "stage_seconds": {},
                "stage_cpu_seconds": {},
                "metrics": {},
            }
        )
        if checkpoint is None:  # from its start on, a run has a checkpoint to --resume from
            self._save(self.stages[0].name, None, {})
        else:
            self._write_run_info()
        expression = ExpressionSpace.fit(self.dataset)
        writer = SummaryWriter(str(self.out / "tb"))
        ctx = StageContext(
            cfg=cfg,
            dataset=self.dataset,
            expression=expression,
            device=self.device,
            writer=writer,
            log=self.log,
            data=TrainingData(self.dataset, cfg.resolution, cfg.audio.context, expression.targets, cfg.cache_mb),
            should_stop=lambda: self._stop_requested,
            save=self._save,
            record=self._record,
            on_step=None if self.on_step is None else (lambda name, step: self.on_step(self, name, step)),
        )
        names = [stage.name for stage in self.stages]
        current = checkpoint.stage if checkpoint else names[0]
        model = None
        if checkpoint is not None and checkpoint.model is not None:
            model = TalkingHead.from_state(checkpoint.spec, checkpoint.model).to(self.device)
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            for k, stage in enumerate(self.stages):
                if current == "done" or names.index(current) > k:
                    continue
                progress = checkpoint.progress if checkpoint is not None and checkpoint.stage == stage.name else {}
                self._stage = stage
                model = stage.run(ctx, model, progress).to(self.device)
                self._save(names[k + 1] if k + 1 < len(names) else "done", model, {})
                if self._stop_requested:  # asked during the stage's validation, which does not stop
                    raise StopRequested
            return self._finish(model)
        finally:
            self._stage = None
            signal.signal(signal.SIGINT, previous)
            writer.close()

    def _finish(self, model) -> Path:

        final = self.out / "avatar.pt"
        model = model.cpu()
        model.driving = DrivingData.from_dataset(self.dataset)
        model.save(final)
        model.head.export_ply(self.out / "head.ply")
        with atomic_path(self.out / "audio.wav") as tmp:
            shutil.copyfile(self.dataset.layout.audio, tmp)
        self.run_info["status"] = "done"
        self.run_info["num_gaussians"] = {"head": len(model.head), "mouth": len(model.mouth)}
        self._write_run_info()
        self.log(f"done: {final}")
        return final

    # ------------------------------------------------------------------ the context's doors
    def _save(self, stage: str, model, progress: dict) -> None:
        state = Checkpoint(
            stage=stage,
            run_info=self.run_info,
            progress=progress,
            spec=None if model is None else to_dict(model.spec),
            model=None if model is None else model.state_dict(),
        )
        state.save(self.ckpt_path)
        self._write_run_info()

    def _record(self, stage: str, metrics: dict, seconds: float, cpu_seconds: float) -> None:
        self.run_info["metrics"][stage] = metrics
        self.run_info["stage_seconds"][stage] = seconds
        self.run_info.setdefault("stage_cpu_seconds", {})[stage] = cpu_seconds
        self.log(
            f"{stage} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        )
        self._write_run_info()

    def _write_run_info(self) -> None:
        write_json(self.out / "run.json", self.run_info)
