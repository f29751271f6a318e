"""Short real clips for the tracking, mask and background tests: decoded once per test session."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from tests.conftest import SHARED_DATA

ANCHOR = "mimictalk_german_anchor_20s.mp4"  # 25 fps, 512x512, static studio shot


@lru_cache(maxsize=4)
def real_frames(name: str = ANCHOR, start_s: float = 2.0, num_frames: int = 75, size: int = 512) -> np.ndarray:
    """[num_frames, size, size, 3] uint8 RGB frames from `start_s` of a shared video."""
    import av
    import cv2

    frames = []
    with av.open(str(Path(SHARED_DATA) / name)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time < start_s - 1e-6:
                continue
            img = frame.to_ndarray(format="rgb24")
            if img.shape[0] != size:
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            frames.append(img)
            if len(frames) == num_frames:
                break
    return np.stack(frames)


@lru_cache(maxsize=4)
def real_detections(name: str = ANCHOR, start_s: float = 2.0, num_frames: int = 75, size: int = 512):
    from avatar.preprocess.track import detect_landmarks

    return detect_landmarks(iter(real_frames(name, start_s, num_frames, size)), show_progress=False)
