"""The training checkpoint: one typed record, written and read in one place.

A checkpoint holds the model (spec + weights) once it exists, the run's bookkeeping and the current stage's
own resumable state (`progress`: optimizer, batch sampler, random generator, densifier statistics, finished
audio-encoder members, ...), so a resumed run takes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from avatar.contracts.atomic import atomic_path, load_versioned

# Bumped with the avatar format (talking_head.AVATAR_FORMAT_VERSION) and when a stage's saved progress changes
# shape (4: the deform stage no longer trains the torso's warp, so its optimizer holds other parameters; 5: the
# torso follows the body's tracked motion, its pose warp is gone).
RUN_FORMAT_VERSION = 5


@dataclass
class Checkpoint:
    stage: str  # the stage to run (or resume) next: "audio", "canonical", "deform" or "done"
    run_info: dict  # run.json's content
    spec: dict | None = None  # the model's HeadSpec, None before the audio stage has built the model
    model: dict | None = None  # its state dict
    progress: dict = field(default_factory=dict)  # the stage's resumable state; empty: the stage starts fresh
    format_version: int = RUN_FORMAT_VERSION

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.__dict__, tmp)

    @staticmethod
    def load(path: Path) -> Checkpoint:
        data = load_versioned(path, RUN_FORMAT_VERSION, "checkpoint", "Start a new run with another --out.")
        return Checkpoint(**data)
