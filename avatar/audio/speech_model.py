"""Optional audio rows from a local pretrained speech encoder (HuBERT, wav2vec2, WavLM).

The published talking-head systems hear speech through encoders pretrained on thousands of hours of many
voices; none ships inside a package here, so this part exists for users who have one: a Hugging Face
`save_pretrained` folder on disk (`avatar preprocess VIDEO --speech-model DIR`) and `transformers` installed
(`pip install transformers`). Nothing is downloaded: the folder is opened with `local_files_only`.

One hidden layer of the model, resampled from the model's frame rate (50 Hz for these models) to the 100 Hz
row grid of the other features by linear interpolation between frame centres, and standardised per row
(the layer's values differ in scale from model to model; a row's own mean and spread keep it stateless, so
a clip needs no second pass through the model). The model attends over its whole input, so a clip's rows
are defined on the fixed window grid of `avatar.audio.grid`, like the phone decoder's.

The part's name carries a digest of the model's files: features made with one model are never read as
those of another, and an avatar whose model folder was changed or moved says so instead of mumbling.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from avatar.audio.grid import HOP, RATE_HZ, grid_rows, num_rows
from avatar.errors import UserError

SPEECH_MODEL_PREFIX = "speech-"  # the name of a speech-encoder part starts so (SpeechModelFeatures.name)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SUPPORTED = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")  # config.json model_type: a conv frontend + encoder


def model_digest(folder: Path) -> str:
    """sha256 over the folder's config.json and weight files (names and contents), first 12 hex digits."""
    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


def _read_config(folder: Path) -> dict:
    config = folder / "config.json"
    if not folder.is_dir() or not config.is_file():
        raise UserError(
            f"--speech-model {folder}: not a model folder (no config.json). Give the folder a Hugging "
            "Face model was saved to with save_pretrained (config.json and model.safetensors)."
        )
    data = json.loads(config.read_text())
    if data.get("model_type") not in SUPPORTED:
        raise UserError(
            f"--speech-model {folder}: model_type {data.get('model_type')!r} is not a speech encoder this "
            f"version reads; supported: {', '.join(SUPPORTED)}."
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"--speech-model {folder}: no weights ({' or '.join(WEIGHT_FILES)}) in the folder.")
    return data


def receptive_field(kernels: list[int], strides: list[int]) -> int:
    """Samples one output frame of a stack of 1D convolutions sees."""
    field_, jump = 1, 1
    for k, s in zip(kernels, strides):
        field_ += (k - 1) * jump
        jump *= s
    return field_


def frames_to_rows(hidden: np.ndarray, stride: int, field_: int, rows: int) -> np.ndarray:
    """[frames, D] model frames (frame j covers samples [j * stride, j * stride + field_)) -> [rows, D] at the
    row centres (row t at sample t * HOP), linearly interpolated between frame centres, edges held."""
    position = (np.arange(rows) * HOP - field_ / 2.0) / stride  # row centre in frame units
    position = np.clip(position, 0.0, len(hidden) - 1.0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(hidden) - 1)
    a = (position - low)[:, None]
    return ((1 - a) * hidden[low] + a * hidden[high]).astype(np.float32)


@dataclass
class SpeechModelFeatures:
    """Rows of hidden layer `layer` (-1: the last) of the speech encoder saved in `path`; same interface as
    the other parts of `avatar.audio.features.SpeechFeatures`."""

    path: str
    layer: int = -1
    window_s: float = 20.0  # the fixed grid of avatar.audio.grid
    overlap_s: float = 2.0
    rate_hz: float = RATE_HZ
    seconds: float = field(default=0.0, compare=False, repr=False)  # time spent in the model so far (for reports)

    def __post_init__(self):
        self.path = str(Path(self.path).expanduser().resolve())
        self._config = _read_config(Path(self.path))
        if importlib.util.find_spec("transformers") is None:
            raise UserError(
                f"--speech-model {self.path}: needs the `transformers` package. Install it with "
                "`.venv/bin/pip install transformers`, or leave --speech-model out."
            )
        layers = int(self._config.get("num_hidden_layers", 0))
        if not -layers - 1 <= self.layer <= layers:
            raise UserError(
                f"--speech-model-layer {self.layer}: the model in {self.path} has hidden states 0..{layers}."
            )

    @cached_property
    def digest(self) -> str:
        return model_digest(Path(self.path))

    @property
    def name(self) -> str:
        return f"{SPEECH_MODEL_PREFIX}{self.digest}-l{self.layer}-w{self.window_s:g}s"

    @property
    def dim(self) -> int:
        return int(self._config["hidden_size"])

    @cached_property
    def _model(self):
        from transformers import AutoModel  # noqa: PLC0415 - optional backend

        device = "cuda" if torch.cuda.is_available() else "cpu"  # a transformer is the one costly analysis
        model = AutoModel.from_pretrained(self.path, local_files_only=True).eval().to(device)
        return model, torch

    @cached_property
    def _normalize_input(self) -> bool:
        processor = Path(self.path) / "preprocessor_config.json"
        return bool(json.loads(processor.read_text()).get("do_normalize", False)) if processor.is_file() else False

    def rows(self, wave: np.ndarray, first_sample: int = 0) -> np.ndarray:
        """Rows of `wave` [S] (16 kHz) heard by the model as one input -> [1 + S // 160, dim] float32.
        `first_sample` (where the wave starts in the clip) does not change them: the model is deterministic."""
        del first_sample
        model, torch = self._model
        wave = np.asarray(wave, np.float32).reshape(-1)
        cfg = model.config
        field_ = receptive_field(list(cfg.conv_kernel), list(cfg.conv_stride))
        stride = int(np.prod(cfg.conv_stride))
        padded = np.pad(wave, (0, max(0, field_ - wave.size)))  # under one model frame: its frame over silence
        if self._normalize_input:
            padded = (padded - padded.mean()) / np.sqrt(padded.var() + 1e-7)
        start = time.perf_counter()
        with torch.no_grad():
            out = model(torch.from_numpy(padded)[None].to(model.device), output_hidden_states=True)
        hidden = out.hidden_states[self.layer][0].float().cpu().numpy()  # [frames, D]
        self.seconds += time.perf_counter() - start
        rows = frames_to_rows(hidden, stride, field_, num_rows(wave.size))
        rows -= rows.mean(1, keepdims=True)
        rows /= rows.std(1, keepdims=True) + 1e-5
        return rows

    def stream(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive blocks of the clip's rows on the fixed window grid (bounded memory)."""
        return grid_rows(chunks, self.rows, self.window_s, self.overlap_s, self.rate_hz)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """[S] float32 at 16 kHz -> [1 + S // 160, dim] float32."""
        return np.concatenate(list(self.stream([np.asarray(wave, np.float32).reshape(-1)])))
