"""`avatar eval` on a small real dataset: the nearest-audio baseline, and the whole evaluation with an
oracle avatar whose answers are known (it shows each frame's own ground truth)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from eval_fixtures import FPS, SIZE, eval_dataset  # noqa: F401 - a fixture

from avatar.contracts.dataset import Dataset
from avatar.eval.baselines import NearestAudioBaseline, nearest_windows
from avatar.model.audio_encoder import ClipLevels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def dataset(eval_dataset) -> Dataset:
    return eval_dataset


class OracleHead:
    """Stands in for a trained TalkingHead: with deformation it shows the ground-truth frame whose audio
    windows are the conditions' (so its scores are perfect); without, always the first frame."""

    resolution, feature_window, audio_context = SIZE, 16, 2

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.driving = SimpleNamespace(features=dataset.manifest.features)  # trained on this dataset's features
        self.windows = torch.from_numpy(dataset.audio_windows(self.audio_context))  # [N, C, W, F]
        self.audio_encoder = SimpleNamespace(levels=lambda chunks: ClipLevels())  # no motion gain on exact frames

    def render(self, cond, deform: bool = True, expression=None) -> dict:
        """`expression` (the tracked one) makes the oracle show the frame before the first (still the right one
        for its pose and audio in a real avatar: here, one the scores can tell apart)."""
        frames = []
        for audio in cond.audio.cpu():
            i = int((self.windows - audio).flatten(1).abs().sum(1).argmin()) if deform else 0
            i = i - 1 if expression is not None else i
            frames.append(torch.from_numpy(self.dataset.frame(i)).float() / 255)
        return {"rgb": torch.stack(frames)}


def test_nearest_windows_finds_exact_matches():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 16, 4))
    picks = np.array([3, 41, 7, 7])
    assert (nearest_windows(train, train[picks] + 1e-3, chunk=3) == picks).all()


def test_nearest_audio_baseline_on_a_real_dataset(dataset):
    val = dataset.indices("val")
    baseline = NearestAudioBaseline(dataset, val, size=64)
    chosen = np.array([baseline.match[i] for i in val])
    train = dataset.indices("train")
    train = train[train < val[0] - 4]  # windows of 16 rows at 100 Hz span 4.8 frames at 30 fps: no shared audio
    assert np.isin(chosen, train).all()
    windows = dataset.audio_windows()
    dist = np.linalg.norm((windows[val][:, None] - windows[train][None]).reshape(len(val), len(train), -1), axis=-1)
    assert (chosen == train[dist.argmin(1)]).all()
    frames = baseline(val[:2])
    assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8


def test_eval_end_to_end_with_an_oracle_avatar(dataset, tmp_path):
    import av

    pytest.importorskip("avatar.model.talking_head")  # FrameConditions
    from avatar.eval.config import EvalConfig
    from avatar.eval.evaluate import evaluate

    cfg = EvalConfig(run=tmp_path, batch_size=4, video_size=128)
    indices = dataset.indices("val")
    video = tmp_path / "side_by_side.mp4"
    result = evaluate(OracleHead(dataset), dataset, indices, cfg, video, torch.device("cpu"))

    avatar, static = result["methods"]["avatar"], result["methods"]["static_head"]
    assert avatar["frames"] == len(indices) and avatar["lip_frames"] == len(indices)
    assert math.isinf(avatar["psnr"]) and avatar["lpips"] == pytest.approx(0, abs=1e-6)
    assert avatar["lmd"] == pytest.approx(0, abs=1e-3) and avatar["mouth_corr"] == pytest.approx(1.0)
    assert static["lmd"] > 0.1 and static["psnr"] < 40
    assert set(result["margins"]) == {"static_head", "nearest_audio"}  # the tracked-expression row is no baseline
    tracked = result["methods"]["tracked_expression"]
    assert tracked["frames"] == len(indices) and tracked["psnr"] < 60 and "tracked_expression" not in result["margins"]
    assert result["margins"]["static_head"]["lmd"] == pytest.approx(static["lmd"], abs=1e-3)
    assert result["avatar_beats_baselines"]["lmd"]
    reference = result["methods"]["ground_truth"]  # the truth at the evaluation size: as good as the oracle here
    assert reference["lmd"] == pytest.approx(0, abs=1e-3) and "ground_truth" not in result["margins"]
    with av.open(str(video)) as container:
        v, a = container.streams.video[0], container.streams.audio[0]
        assert (v.width, v.height) == (256, 128) and v.frames == len(indices)
        assert float(a.duration * a.time_base) == pytest.approx(len(indices) / FPS, abs=0.1)


def test_eval_cli_explains_a_missing_run(tmp_path, capsys):
    pytest.importorskip("avatar.model.talking_head")
    from avatar.cli import main

    assert main(["eval", str(tmp_path / "nothing_here")]) == 2
    err = capsys.readouterr().err
    assert "nothing_here" in err and "avatar train" in err
