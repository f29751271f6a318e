"""What a training stage is handed by the runner: the only door between a stage and the runner's state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from avatar.contracts.dataset import Dataset
from avatar.data.batches import TrainingData
from avatar.train.config import TrainConfig
from avatar.train.expression import ExpressionSpace


class StopRequested(KeyboardInterrupt):
    """A stop was asked for (Ctrl-C): the stage has written a checkpoint to resume from."""


@dataclass
class StageContext:
    cfg: TrainConfig
    dataset: Dataset
    data: TrainingData  # frames, masks and tracked conditions at the training resolution
    expression: ExpressionSpace  # the audio encoder's targets, fitted once for the run
    device: torch.device
    writer: object  # tensorboard SummaryWriter: add_scalar / add_image
    log: Callable[[str], None]
    should_stop: Callable[[], bool]  # True once a stop was requested; the stage checkpoints and raises StopRequested
    save: Callable[[str, object, dict], None]  # (stage, model or None, the stage's progress) -> a checkpoint
    record: Callable[[str, dict, float, float], None]  # (stage, metrics, seconds, cpu seconds) -> run.json
    on_step: Callable[[str, int], None] | None = None  # after every completed step (tests simulate Ctrl-C with it)
