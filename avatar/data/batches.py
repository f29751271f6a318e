"""Batches of training frames: images, masks, tracked pose/expression/blink and audio windows as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from avatar.contracts.dataset import Dataset
from avatar.data.frames import MASK_NAMES, FrameStore


@dataclass
class FrameBatch:
    indices: Tensor  # [B] dataset frame ids
    rgb: Tensor  # [B, H, W, 3] 0..1
    masks: Tensor  # [B, H, W, len(MASK_NAMES)] soft 0..1
    rotation: Tensor  # [B, 3, 3]
    translation: Tensor  # [B, 3]
    blink: Tensor  # [B, 2]
    body: Tensor  # [B, K] the body's tracked motion codes (avatar.contracts.dataset.BodyMotion)
    expression: Tensor  # [B, E] tracked expression targets (normalised, see avatar.train.expression)
    code: Tensor  # [B, P] tracked expression PCA code of the dataset
    audio: Tensor  # [B, 2K+1, W, F] normalised audio windows of the frame and its neighbours

    def to(self, device: torch.device | str) -> FrameBatch:
        return FrameBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def mask(self, name: str) -> Tensor:
        """[B, H, W, 1] soft mask `name` (one of avatar.contracts.dataset.MASK_BITS)."""
        c = MASK_NAMES.index(name)
        return self.masks[..., c : c + 1]


class TrainingData:
    """Everything per frame that training reads; images come through the bounded FrameStore, the small
    per-frame arrays (pose, expression, and the normalised audio rows that the windows are cut from) are
    held in memory."""

    def __init__(self, dataset: Dataset, resolution: int, context: int, expression: np.ndarray, cache_mb: float = 512):
        self.dataset = dataset
        self.store = FrameStore(dataset, resolution, cache_mb)
        self.context = context
        self.rotation = torch.from_numpy(np.array(dataset.tracking("rotation"), np.float32))
        self.translation = torch.from_numpy(np.array(dataset.tracking("translation"), np.float32))
        self.blink = torch.from_numpy(dataset.blinks())
        self.body = torch.from_numpy(dataset.body_motion().codes)
        self.expression = torch.from_numpy(np.asarray(expression, np.float32))
        self.code = torch.from_numpy(np.array(dataset.tracking("expression_pca"), np.float32))
        rows, window_rows = dataset.audio_rows()
        self.audio_rows, self.window_rows = torch.from_numpy(rows), torch.from_numpy(window_rows)  # [T, F], [N, W]

    def batch(self, indices) -> FrameBatch:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        items = [self.store.get(int(i)) for i in idx]
        rgb = torch.from_numpy(np.stack([im for im, _ in items])).float() / 255
        masks = torch.from_numpy(np.stack([m for _, m in items])).float() / 255
        ctx = (idx[:, None] + torch.arange(-self.context, self.context + 1)).clamp(0, self.dataset.num_frames - 1)
        return FrameBatch(
            idx,
            rgb,
            masks,
            self.rotation[idx],
            self.translation[idx],
            self.blink[idx],
            self.body[idx],
            self.expression[idx],
            self.code[idx],
            self.audio_rows[self.window_rows[ctx]],
        )


class FrameSampler:
    """Shuffled passes over `indices` from a seeded generator; its state is part of a checkpoint, so a
    resumed run draws exactly the batches an uninterrupted run would."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int):
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.zeros(0, dtype=torch.long)
        self.position = 0

    def next(self) -> Tensor:
        if self.position + self.batch_size > len(self.order):
            self.order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
            self.position = 0
        out = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]
