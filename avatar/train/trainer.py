"""`avatar train`: the Runner that owns the three training stages, checkpoints, resume and logging.

Stages, in order (each resumes from its last checkpoint):
1. audio     -> expression: the audio encoder learns the tracked expression (audio_encoder.train_audio_encoder).
2. canonical the Gaussian head is fitted to the frames, moved by the landmark prior with the TRACKED
             expression; rendered over the plate with the person's body taken from the frame; densified.
3. deform    the spatial-audio attention, hash tri-plane and torso layer learn, conditioned on the tracked
             expression (teacher) or on the audio-predicted one, with extra weight on the mouth and LPIPS late.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avatar.config_io import to_dict
from avatar.contracts.atomic import atomic_path, write_json
from avatar.contracts.dataset import Dataset
from avatar.errors import UserError
from avatar.train.config import TrainConfig

RUN_FORMAT_VERSION = 2  # follows the avatar format (talking_head.AVATAR_FORMAT_VERSION)
STAGES = ("audio", "canonical", "deform")


def run(cfg: TrainConfig) -> Path:
    """Train (or resume) the avatar described by `cfg`; returns the path of the final avatar.pt."""
    return Runner(cfg).train()


def open_training_dataset(cfg: TrainConfig) -> Dataset:
    """The dataset, or a UserError that says what to do when it is missing, outdated or too short."""
    if str(cfg.dataset) in ("", "."):
        raise UserError("no dataset given. Usage: `avatar train DATASET --out RUN` (DATASET from `avatar preprocess`).")
    dataset = Dataset(cfg.dataset)
    start, end = dataset.manifest.split.train
    if end - start < max(cfg.min_train_frames, cfg.batch_size):
        raise UserError(f"{cfg.dataset}: only {end - start} training frames ({(end - start) / dataset.fps:.1f} s); at least "
                        f"{max(cfg.min_train_frames, cfg.batch_size)} are needed. Preprocess a longer video.")
    return dataset


class Runner:
    def __init__(self, cfg: TrainConfig, on_step: Callable[["Runner", str, int], None] | None = None):
        self.cfg = cfg
        self.on_step = on_step  # called after every completed step (used by tests to simulate Ctrl-C)
        self.dataset = open_training_dataset(cfg)
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / "checkpoints" / "latest.pt"
        if self.ckpt_path.exists() and not cfg.resume:
            raise UserError(f"{self.out}: already holds a run. Add --resume to continue it, or choose another --out.")
        if cfg.resume and not self.ckpt_path.exists():
            raise UserError(f"{self.ckpt_path}: no checkpoint to resume from. Start the run without --resume.")
        torch.set_num_threads(cfg.threads)
        cuda = torch.cuda.is_available()
        if cfg.device == "cuda" and not cuda:
            raise UserError("--device cuda: no CUDA GPU is visible. Use --device auto or cpu on this machine.")
        self.device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu")
        self._stop_requested = False
        self.model = None
        self.run_info: dict = {}

    # ------------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop after the current step, with a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    def log(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message)

    def train(self) -> Path:
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "config.json", to_dict(cfg))
        state = self._read_checkpoint() if cfg.resume else None
        if state is not None and state["run_info"].get("format_version") != RUN_FORMAT_VERSION:
            raise UserError(f"{self.ckpt_path}: a checkpoint of run format {state['run_info'].get('format_version')}, "
                            f"this version resumes format {RUN_FORMAT_VERSION}. Start a new run with another --out.")
        self.run_info = state["run_info"] if state else {
            "format_version": RUN_FORMAT_VERSION, "dataset": str(Path(cfg.dataset).resolve()), "preset": cfg.preset,
            "status": "training", "stage_seconds": {}, "metrics": {},
        }
        self._write_run_info()
        self.writer = SummaryWriter(str(self.out / "tb"))
        previous = signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        try:
            stage = state["stage"] if state else STAGES[0]
            if stage == "audio":
                state = self._audio_stage()
                stage = "canonical"
            from avatar.train.stages import CanonicalStage, DeformStage, restore_model

            self.model = restore_model(state).to(self.device)
            for name, cls in (("canonical", CanonicalStage), ("deform", DeformStage)):
                if STAGES.index(stage) > STAGES.index(name):
                    continue
                resuming = state["stage"] == name and "optimizer" in state  # not a fresh stage start
                cls(self, state if resuming else None).run()
                state = {"stage": STAGES[STAGES.index(name) + 1] if name != "deform" else "done"}
            final = self.out / "avatar.pt"
            self.model.cpu().save(final)
            self.model.head.export_ply(self.out / "head.ply")
            self.run_info["status"] = "done"
            self.run_info["num_gaussians"] = {"head": len(self.model.head), "mouth": len(self.model.mouth)}
            self._write_run_info()
            self.log(f"done: {final}")
            return final
        finally:
            signal.signal(signal.SIGINT, previous)
            self.writer.close()

    def _read_checkpoint(self) -> dict:
        try:
            return torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch raises many types for truncated or foreign files
            raise UserError(f"{self.ckpt_path}: not a readable checkpoint ({exc}). Start a new run with another "
                            "--out.") from exc

    # ------------------------------------------------------------------ stage 1
    def _audio_stage(self) -> dict:
        from avatar.model.audio_encoder import train_audio_encoder
        from avatar.train.initialize import initial_model

        started, cpu_started = time.perf_counter(), time.process_time()
        self.log(f"stage 1/3 audio -> expression ({self.cfg.audio_steps} steps per member)")
        encoder, metrics = train_audio_encoder(self.dataset, self.cfg.audio, self.cfg.audio_steps, self.cfg.seed, log=self.log)
        self.run_info["metrics"]["audio"] = metrics
        self.log(f"audio encoder: validation lip-opening correlation {metrics['val_lip_corr']:.3f}")
        model = initial_model(self.dataset, self.cfg, encoder)
        self.run_info["stage_seconds"]["audio"] = time.perf_counter() - started
        self.run_info.setdefault("stage_cpu_seconds", {})["audio"] = time.process_time() - cpu_started
        state = {"stage": "canonical", "step": 0, "spec": to_dict(model.spec), "model": model.state_dict(), "run_info": self.run_info}
        self.save_checkpoint(state)
        return state

    # ------------------------------------------------------------------ files
    def save_checkpoint(self, state: dict) -> None:
        state["run_info"] = self.run_info
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)
        self._write_run_info()

    def _write_run_info(self) -> None:
        write_json(self.out / "run.json", _jsonable(self.run_info))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_run_info(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())
