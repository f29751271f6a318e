"""Tracking quality and speed on the shared videos: `python benchmarks/bench_tracking.py [--quick]`.

Per video (whole frame resized to 512, resampled to 25 fps, the default 20-degree camera): frames/s (wall)
and CPU ms/frame of detect_landmarks (with decoding), LandmarkFaceModel.fit, MaskMaker and
BackgroundAccumulator; mean
reprojection error of the tracked model (smoothed pose + expression) and of the raw rigid pose at 512;
pose jitter ratios raw/smoothed; the smoothing lag; the correlation of jawOpen with the audio log energy
(at lag 0, and the best lag within +-4 frames with the lag: positive = the jaw moves first).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from avatar.audio.features import frame_log_energy
from avatar.audio.io import load_audio
from avatar.contracts.camera import Intrinsics
from avatar.contracts.video import resampled_frames
from avatar.examples import example_data
from avatar.metrics.lip_sync import lagged_pearson
from avatar.preprocess.background import BackgroundAccumulator
from avatar.preprocess.masks import MaskMaker
from avatar.preprocess.track import BLENDSHAPE_NAMES, LandmarkFaceModel, detect_landmarks
from avatar.tables import format_table

DATA = example_data()
VIDEOS = ("dfrf_macron_address_50s.mp4", "mimictalk_german_anchor_20s.mp4", "edtalk_obama_20s.mp4")
FPS, SIZE = 25.0, 512


def _frames(path: Path, max_frames: int | None):

    for rgb in resampled_frames(path, FPS, 0.0, max_frames):
        yield cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA) if rgb.shape[0] != SIZE else rgb


def jaw_energy_correlation(jaw: np.ndarray, path: Path, max_lag: int = 4) -> tuple[float, float, int]:
    """(corr at lag 0, best corr, its lag in frames) of jawOpen with the log energy at each frame's centre."""

    energy = frame_log_energy(load_audio(path), FPS, len(jaw))

    def corr(lag: int) -> float:  # lag > 0: jaw[i] against energy[i + lag]
        return lagged_pearson(jaw, energy, lag)

    best = max(range(-max_lag, max_lag + 1), key=corr)
    return corr(0), corr(best), best


def measure(name: str, max_frames: int | None) -> dict:

    path = DATA / name
    t0, c0 = time.perf_counter(), time.process_time()
    det = detect_landmarks(_frames(path, max_frames), source=str(path), show_progress=False)
    t_detect, c_detect = time.perf_counter() - t0, time.process_time() - c0
    n = det.num_frames
    t0, c0 = time.perf_counter(), time.process_time()
    result = LandmarkFaceModel().fit(det, Intrinsics.from_fov(20.0, SIZE, SIZE), FPS)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    maker, acc = MaskMaker(), BackgroundAccumulator(SIZE, SIZE)
    t_mask = t_bg = c_mask = c_bg = 0.0
    for i, rgb in enumerate(_frames(path, n)):
        t0, c0 = time.perf_counter(), time.process_time()
        bits = maker(rgb, result.arrays["landmarks"][i])
        t1, c1 = time.perf_counter(), time.process_time()
        acc.add(rgb, bits)
        t_mask, t_bg = t_mask + t1 - t0, t_bg + time.perf_counter() - t1
        c_mask, c_bg = c_mask + c1 - c0, c_bg + time.process_time() - c1
    t0, c0 = time.perf_counter(), time.process_time()
    acc.result()
    t_bg, c_bg = t_bg + time.perf_counter() - t0, c_bg + time.process_time() - c0
    maker.close()
    s = result.stats
    jaw = result.arrays["blendshapes"][:, BLENDSHAPE_NAMES.index("jawOpen")]
    c0, c_best, lag = jaw_energy_correlation(jaw, path)
    return {
        "name": f"tracking {name}",
        "frames": n,
        "detect_fps": round(n / t_detect, 1),
        "fit_fps": round(n / t_fit, 1),
        "masks_fps": round(n / t_mask, 1),
        "background_fps": round(n / t_bg, 1),
        # CPU time (all threads) per frame: less sensitive than wall time to other work on the machine
        "cpu_ms_per_frame": {
            "detect+decode": round(1000 * c_detect / n, 2),
            "fit": round(1000 * c_fit / n, 2),
            "masks": round(1000 * c_mask / n, 2),
            "background": round(1000 * c_bg / n, 2),
        },
        "face_found": round(float(det.valid.mean()), 4),
        "reproj_px_512": round(s["reprojection_error_px_at_512"], 3),
        "reproj_p95_px_512": round(s["reprojection_error_p95_px_at_512"], 3),
        "rigid_raw_reproj_px_512": round(s["rigid_only_reprojection_error_px_at_512"], 3),
        "jitter_ratio_rot": round(s["jitter_ratio_rotation"], 2),
        "jitter_ratio_trans": round(s["jitter_ratio_translation"], 2),
        "lag_frames": s["smoothing_lag_frames"],
        "jaw_energy_corr": round(c0, 3),
        "jaw_energy_corr_best": round(c_best, 3),
        "jaw_energy_best_lag": lag,
    }


def run(quick: bool) -> list[dict]:
    if not DATA.is_dir():
        return [{"name": "tracking", "error": f"no shared videos at {DATA}"}]
    return [measure(VIDEOS[1], 125)] if quick else [measure(v, None) for v in VIDEOS]


if __name__ == "__main__":
    print(format_table(run("--quick" in sys.argv)))
