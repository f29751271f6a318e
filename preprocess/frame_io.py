"""Frames on disk: streaming them back with read-ahead, and writing images without stalling the caller.
Every step after `frames` reads the dataset's JPEGs in order; these keep one core busy on decoding and
encoding while the other runs the step's own work."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avatar.contracts.dataset import DatasetLayout, read_rgb


def progress(iterable, name: str, total: int | None):
    """A per-step progress bar on a terminal (none in logs and tests)."""

    return tqdm(iterable, desc=name, total=total, unit="frame", disable=None, leave=False)


def stored_frames(root: Path, num_frames: int, name: str = "", read_ahead: int = 4) -> Iterator[np.ndarray]:
    """Stream the dataset's RGB frames back from disk (with a progress bar when `name` is given). A helper
    thread decodes the next few JPEGs while the caller works on the current frame."""
    layout = DatasetLayout(root)
    paths = [layout.frame(i) for i in range(num_frames)]
    with ThreadPoolExecutor(1) as pool:
        pending: deque = deque(pool.submit(read_rgb, p) for p in paths[:read_ahead])
        for i in progress(range(num_frames), name, num_frames) if name else range(num_frames):
            if i + read_ahead < num_frames:
                pending.append(pool.submit(read_rgb, paths[i + read_ahead]))
            yield pending.popleft().result()


class ThreadedImageWriter:
    """Writes images on helper threads (OpenCV encodes without holding the GIL), at most `limit` pending."""

    def __init__(self, threads: int = 2, limit: int = 8):
        self.pool = ThreadPoolExecutor(threads)
        self.pending: deque = deque()
        self.limit = limit

    def write(self, path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
        self.pending.append(self.pool.submit(cv2.imwrite, str(path), image, params or []))
        while len(self.pending) > self.limit:
            self.pending.popleft().result()

    def __enter__(self) -> ThreadedImageWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()  # re-raises a failed write
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
