"""The two baselines the avatar must beat, and the row it is measured towards, as frame sources scored by
the same code as the avatar.

- Static head: the trained avatar without its audio-driven deformation (the canonical head in the tracked
  pose). What the lips would do if the audio were ignored.
- Nearest audio: for each evaluated frame, the training frame whose audio-feature window is closest,
  shown as it is. A lookup "lip-sync" that needs no model: the avatar has to generalise better than it.
- Tracked expression (not a baseline): the avatar showing the frame's TRACKED expression instead of the one
  its audio encoder predicts. What its picture model draws when the lips are right, so the avatar's gap to
  it is the audio prediction's, and the static head's gap to it the picture's.
"""

from __future__ import annotations

import numpy as np
import torch

from avatar.contracts.dataset import Dataset
from avatar.eval.frames import render_frames, resize_rgb
from avatar.train.expression import ExpressionSpace


def nearest_windows(train: np.ndarray, query: np.ndarray, chunk: int = 256) -> np.ndarray:
    """[T, ...] training windows, [Q, ...] query windows -> [Q] index into `train` of each query's
    nearest window (Euclidean over all window entries). Chunked, so memory stays O(chunk * T)."""
    train_flat = torch.from_numpy(np.ascontiguousarray(train, np.float32).reshape(len(train), -1))
    query_flat = torch.from_numpy(np.ascontiguousarray(query, np.float32).reshape(len(query), -1))
    out = [torch.cdist(query_flat[i : i + chunk], train_flat).argmin(1) for i in range(0, len(query_flat), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def candidate_frames(dataset: Dataset, indices: np.ndarray) -> np.ndarray:
    """Training frames whose audio window shares no sample with the window of any evaluated frame: at the
    boundary between the splits, the last training windows would otherwise contain the evaluated audio."""
    span = dataset.window_span_frames()
    train = dataset.indices("train")
    gap = np.abs(train[:, None] - np.asarray(indices)[None, :]).min(1)
    return train[gap >= span]


class NearestAudioBaseline:
    """Frame source: evaluated frame i -> the training frame with the nearest audio window, resized to `size`."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, size: int):
        self.dataset, self.size = dataset, size
        windows = dataset.audio_windows()  # [N, W, F], normalised with the clip's statistics
        train = candidate_frames(dataset, indices)
        chosen = train[nearest_windows(windows[train], windows[np.asarray(indices)])]
        self.match = dict(zip(np.asarray(indices).tolist(), chosen.tolist()))  # evaluated -> training frame

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """[B] dataset frame indices (among those given at construction) -> [B, size, size, 3] uint8 RGB."""
        return np.stack([resize_rgb(self.dataset.frame(self.match[int(i)]), self.size) for i in indices])


def static_head_frames(head, cond, size: int) -> np.ndarray:
    """The avatar's canonical head, posed and blinking like the frame but with no audio-driven deformation:
    [B, size, size, 3] uint8."""
    return render_frames(head, cond, size, deform=False)


class TrackedExpression:
    """Frame source: the avatar rendered with evaluated frame i's tracked expression (targets of the expression
    space its audio encoder was fitted to, refitted from the dataset's training frames as training does)."""

    def __init__(self, head, dataset: Dataset, size: int):
        self.head, self.size = head, size
        self.targets = torch.from_numpy(ExpressionSpace.fit(dataset).targets)

    def __call__(self, indices: np.ndarray, cond) -> np.ndarray:
        expression = self.targets[np.asarray(indices)].to(cond.audio.device)
        return render_frames(self.head, cond, self.size, expression=expression)
