"""Lip-sync proxy of the audio encoder: how well the predicted expression opens the mouth on the validation
frames (the last 10 % of each clip, audio never trained on), against the ridge baseline of issue 4.

For each dataset directory (made by `avatar preprocess`; in `avatar bench`, those listed in
$AVATAR_BENCH_DATASETS, separated by ':'):
- ridge: ridge regression from the +-80 ms normalised log-mel window of a frame to its inner-lip opening
  (avatar.contracts.face_mesh.mouth_opening of the tracked landmarks), fitted on the training frames; the penalty is picked on the
  last 10 % of the training frames;
- encoder: `fit_audio_encoder` (network + example memory, with the memory share it chose), its prediction
  turned into an expression code, the landmarks rebuilt (canonical + code @ basis) and the same opening
  measured there.
Numbers are correlations over time on the validation frames, against the opening of the tracked 2D landmarks
("vs 2D") and of the tracked expression code ("vs code"). "silence": the mouth opening predicted for silent audio (all-zero normalised features), as the
percentile of the tracked training-frame openings (near 0 %: closed). Train time is wall clock and process CPU
seconds (CPU seconds depend less on how loaded the machine is).

    python benchmarks/bench_lipsync.py DATASET [DATASET ...] [--steps 600] [--seeds 0] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from avatar.contracts.dataset import Dataset
from avatar.contracts.face_mesh import mouth_opening
from avatar.model.audio_encoder import AudioEncoderConfig
from avatar.train.audio_fit import fit_audio_encoder, predict_expression
from avatar.train.expression import ExpressionSpace

RIDGE_PENALTIES = [1.0, 10.0, 100.0, 1e3, 1e4]


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def ridge_baseline(dataset: Dataset, opening: np.ndarray) -> np.ndarray:
    """[N] ridge prediction of `opening` from each frame's log-mel window (the energy and pitch rows left out)."""
    n_mels = dataset.manifest.features.dim - 2
    x = dataset.audio_windows()[:, :, :n_mels].reshape(dataset.num_frames, -1).astype(np.float64)
    train = dataset.indices("train")

    def fit(rows: np.ndarray, penalty: float) -> np.ndarray:
        mean_x, mean_y = x[rows].mean(0), opening[rows].mean()
        xc = x[rows] - mean_x
        w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (opening[rows] - mean_y))
        return (x - mean_x) @ w + mean_y

    split = int(round(len(train) * 0.9))
    penalty = max(RIDGE_PENALTIES, key=lambda p: corr(fit(train[:split], p)[train[split:]], opening[train[split:]]))
    return fit(train, penalty)


def evaluate(root: Path, cfg: AudioEncoderConfig, steps: int, seeds: list[int]) -> dict:
    dataset = Dataset(root)
    train, val = dataset.indices("train"), dataset.indices("val")
    open_2d = mouth_opening(dataset.tracking("landmarks"))  # what `avatar eval` measures on images
    space = ExpressionSpace.fit(dataset)
    open_code = space.opening_of_codes(np.asarray(dataset.tracking("expression_pca")))
    ridge = ridge_baseline(dataset, open_2d)
    windows = dataset.audio_windows(context=cfg.context)[val]
    row = {"dataset": Path(dataset.manifest.source["path"]).stem, "val_frames": len(val),
           "ridge_vs_2d": corr(ridge[val], open_2d[val]), "code_vs_2d": corr(open_code[val], open_2d[val])}
    results = []
    for seed in seeds:
        wall, cpu = time.perf_counter(), time.process_time()
        encoder, metrics = fit_audio_encoder(dataset, space, cfg, steps, seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        opening = space.opening_of_codes(space.to_codes(predict_expression(encoder, windows)))
        silent = space.to_codes(predict_expression(encoder, np.zeros_like(windows[:1])))
        silent_percentile = 100 * float(np.mean(open_code[train] < space.opening_of_codes(silent)[0]))
        results.append({"enc_vs_2d": corr(opening, open_2d[val]), "enc_vs_code": corr(opening, open_code[val]),
                        "train_wall_s": wall, "train_cpu_s": cpu, "best_steps": metrics["best_steps"],
                        "silence_pct": silent_percentile, "memory_share": metrics["memory_weight"]})
    for key in ("enc_vs_2d", "enc_vs_code", "train_wall_s", "train_cpu_s", "silence_pct", "memory_share"):
        row[key] = float(np.mean([r[key] for r in results]))
    row["enc_vs_2d_per_seed"] = [round(r["enc_vs_2d"], 3) for r in results]
    row["best_steps"] = [r["best_steps"] for r in results]
    return row


def parse_overrides(pairs: list[str]) -> dict:
    """key=value strings -> AudioEncoderConfig field values of the field's own type."""
    types = {f.name: type(getattr(AudioEncoderConfig(), f.name)) for f in dataclasses.fields(AudioEncoderConfig)}
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        out[key] = types[key](value)
    return out


def run(quick: bool) -> list[dict]:
    """Rows for `avatar bench`: the datasets in $AVATAR_BENCH_DATASETS (this needs preprocessed datasets)."""
    roots = [Path(p) for p in os.environ.get("AVATAR_BENCH_DATASETS", "").split(":") if p]
    if not roots:
        return [{"name": "lip sync", "skipped": "no datasets: set AVATAR_BENCH_DATASETS=DS1:DS2 (from `avatar preprocess`)"}]
    steps = 100 if quick else 600
    rows = []
    for root in roots:
        if not (root / "manifest.json").is_file():
            rows.append({"name": f"lip sync {root.name}", "skipped": f"no dataset at {root}"})
            continue
        r = evaluate(root, AudioEncoderConfig(), steps, [0])
        rows.append({"name": f"lip sync {r['dataset']}", "val_frames": r["val_frames"],
                     "ridge_corr": round(r["ridge_vs_2d"], 3), "encoder_corr": round(r["enc_vs_2d"], 3),
                     "memory_share": r["memory_share"], "silence_percentile": round(r["silence_pct"]),
                     "train_wall_s": round(r["train_wall_s"], 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="dataset directories from `avatar preprocess`")
    parser.add_argument("--steps", type=int, default=600, help="training steps per ensemble member (at most)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training per seed, numbers averaged")
    parser.add_argument("--set", nargs="*", default=[], help="AudioEncoderConfig overrides, key=value")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(AudioEncoderConfig(), **parse_overrides(args.set))
    print(f"config: {dataclasses.asdict(cfg)}; steps {args.steps}; seeds {args.seeds}")
    header = (f"{'dataset':<12} {'val':>4} {'ridge':>6} {'encoder':>8} {'enc/code':>8} {'code/2D':>8} {'silence':>7} "
              f"{'wall s':>7} {'cpu s':>6}  per seed")
    print(header)
    for root in args.datasets:
        if not (root / "manifest.json").is_file():
            print(f"{root.name:<12} (no dataset at {root})")
            continue
        r = evaluate(root, cfg, args.steps, args.seeds)
        print(f"{r['dataset']:<12} {r['val_frames']:>4} {r['ridge_vs_2d']:>6.3f} {r['enc_vs_2d']:>8.3f} "
              f"{r['enc_vs_code']:>8.3f} {r['code_vs_2d']:>8.3f} {r['silence_pct']:>6.0f}% {r['train_wall_s']:>7.1f} {r['train_cpu_s']:>6.1f}  "
              f"{r['enc_vs_2d_per_seed']} best steps {r['best_steps']}", flush=True)


if __name__ == "__main__":
    main()
