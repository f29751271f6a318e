"""The audio encoder alone, on other voices: a minute per fit instead of a training and a rendered evaluation.

Fits only the audio -> expression encoder (avatar.train.audio_fit, as the `tiny` preset does) on DATASET,
with any of its options changed, for each seed; then drives it with each OTHER dataset's audio and correlates
the predicted inner-lip opening with that person's tracked opening, in time with their sound (lag 0, their
A/V offset taken out as `avatar eval --drive` does). Before rendering: what the encoder decides, not what the
landmark detector sees (a mouth that moves too little loses more in the render; `avatar eval --drive` gives that).
Printed per seed and as means: the held-out correlation (where the motion gain is chosen), the validation
correlation (the own-voice frames never trained on), the gain, and each driver's correlation.

    .venv/bin/python -m avatar.benchmarks.probe_encoder DATASET --drivers OTHER [OTHER ...] [--seeds 0 1]
        [--set time_shift=4 ...] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace

import numpy as np
import torch

from avatar.audio.io import load_audio
from avatar.config_io import load_preset
from avatar.contracts.dataset import Dataset
from avatar.eval.cross_drive import driver_in_sync
from avatar.model.audio_encoder import AudioEncoder, AudioEncoderConfig
from avatar.model.driving import DrivingData, audio_windows
from avatar.tables import format_table
from avatar.train.audio_fit import fit_audio_encoder
from avatar.train.config import TrainConfig
from avatar.train.expression import ExpressionSpace

TINY = load_preset("train", "tiny", TrainConfig)  # its encoder options and steps per member are the starting point


def configured(changes: list[str]) -> AudioEncoderConfig:
    """The `tiny` preset's encoder config with `name=value` changes (values read as JSON: 4, 0.8, [3, 5])."""
    cfg = TINY.audio
    for change in changes:
        name, _, value = change.partition("=")
        if not hasattr(cfg, name):
            raise SystemExit(f"--set {change}: the audio encoder has no option {name!r}")
        parsed = json.loads(value)
        cfg = replace(cfg, **{name: tuple(parsed) if isinstance(parsed, list) else parsed})
    return cfg


@dataclass
class Driver:
    """Another dataset's voice, featurised once for every seed: its windows as the encoder hears them, and
    its person's tracked opening in time with the sound."""

    name: str
    chunks: list[np.ndarray]
    truth: np.ndarray

    @staticmethod
    def of(dataset: Dataset, driving: DrivingData, context: int) -> Driver:
        chunks = list(audio_windows(dataset.layout.audio, driving, context, dataset.fps))
        return Driver(dataset.root.name, chunks, driver_in_sync(dataset, load_audio(dataset.layout.audio))[0])

    def correlation(self, encoder: AudioEncoder) -> float:
        """The encoder's lip opening (around the closed mouth, gains and pause gate applied) against the truth."""
        levels = encoder.levels(self.chunks)
        with torch.no_grad():
            expression = torch.cat([encoder(torch.as_tensor(c), clip=levels)[1] for c in self.chunks])
        predicted = ((expression - encoder.closed) @ encoder.opening).numpy()
        n = min(len(self.truth), len(predicted))
        return float(np.corrcoef(predicted[:n], self.truth[:n])[0, 1])


def probe(
    dataset: Dataset, space: ExpressionSpace, drivers: list[Driver], cfg: AudioEncoderConfig, steps: int, seed: int
) -> dict:
    encoder, metrics = fit_audio_encoder(dataset, space, cfg, steps, seed)
    row = {
        "seed": seed,
        "held-out": metrics["memory_held_out_corr"],
        "val": metrics["val_lip_corr"],
        "gain": metrics["gain"],
    }
    return row | {f"<- {driver.name}": driver.correlation(encoder) for driver in drivers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="the dataset the encoder learns from")
    parser.add_argument("--drivers", nargs="+", required=True, help="other datasets whose voices drive it")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="encoder options to change")
    parser.add_argument("--steps", type=int, default=TINY.audio_steps, help="most steps per member (`audio_steps`)")
    args = parser.parse_args()
    cfg = configured(args.set)
    dataset = Dataset(args.dataset)
    driving, space = DrivingData.from_dataset(dataset), ExpressionSpace.fit(dataset)
    drivers = [Driver.of(Dataset(d), driving, cfg.context) for d in args.drivers]
    rows = [probe(dataset, space, drivers, cfg, args.steps, seed) for seed in args.seeds]
    mean = {key: "mean" if key == "seed" else float(np.mean([r[key] for r in rows])) for key in rows[0]}
    title = f"{dataset.root.name}: audio encoder {' '.join(args.set) or 'defaults'}, {args.steps} steps"
    print(format_table(rows + [mean], title=title))


if __name__ == "__main__":
    main()
