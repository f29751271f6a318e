"""`avatar eval` on a small real dataset: the nearest-audio baseline, and the whole evaluation with an
oracle avatar whose answers are known (it shows each frame's own ground truth)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avatar.contracts.audio import MelFeatures, feature_stats, load_audio, save_wav
from avatar.contracts.camera import Intrinsics
from avatar.contracts.dataset import (FORMAT_VERSION, MASK_BITS, Crop, Dataset, FeatureInfo, Manifest, Split,
                                      frame_name)
from avatar.eval.baselines import NearestAudioBaseline, nearest_windows


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """On the shared 2-core machine one thread is several times faster than two fighting other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

SIZE = 128
FPS = 30.0
NUM_FRAMES = 90  # 3 s of the Macron address: 81 training frames, 9 validation frames


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory) -> Dataset:
    """A minimal dataset in the contract's format, from the first 3 s of a real video: real frames, real audio
    features, a fixed elliptical head mask and a still pose (only what the evaluation reads)."""
    import av
    import cv2

    root = tmp_path_factory.mktemp("eval_dataset")
    video = shared_data / "dfrf_macron_address_50s.mp4"
    (root / "frames").mkdir()
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    head = ((xx - 64) / 30) ** 2 + ((yy - 56) / 40) ** 2 <= 1
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == NUM_FRAMES:
                break
            rgb = cv2.resize(frame.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(root / "frames" / f"{frame_name(i)}.jpg"), rgb[:, :, ::-1])
            cv2.imwrite(str(root / "masks" / f"{frame_name(i)}.png"), (head << MASK_BITS["head"]).astype(np.uint8))
    wave = load_audio(video)[: int(NUM_FRAMES / FPS * 16000)]
    save_wav(root / "audio.wav", wave)
    extractor = MelFeatures()
    feats = extractor(wave)
    np.save(root / "audio_features.npy", feats)
    mean, std = feature_stats(feats)
    (root / "tracking").mkdir()
    np.save(root / "tracking" / "rotation.npy", np.tile(np.eye(3, dtype=np.float32), (NUM_FRAMES, 1, 1)))
    np.save(root / "tracking" / "translation.npy", np.tile(np.float32([0, 0, 1.2]), (NUM_FRAMES, 1)))
    np.save(root / "tracking" / "blendshapes.npy", np.zeros((NUM_FRAMES, 2), np.float32))
    n_val = NUM_FRAMES // 10
    manifest = Manifest(
        format_version=FORMAT_VERSION, source={"path": str(video)}, fps=FPS, num_frames=NUM_FRAMES, resolution=SIZE,
        crop=Crop(0, 0, 512, 512, 512, SIZE), intrinsics=Intrinsics.from_fov(20, SIZE, SIZE),
        split=Split((0, NUM_FRAMES - n_val), (NUM_FRAMES - n_val, NUM_FRAMES)),
        audio={"file": "audio.wav", "sample_rate": 16000, "num_samples": len(wave)},
        features=FeatureInfo("audio_features.npy", extractor.name, extractor.rate_hz, extractor.dim, 16,
                             mean.tolist(), std.tolist()),
        blendshape_names=["eyeBlinkLeft", "eyeBlinkRight"], versions={},
    )
    (root / "manifest.json").write_text(json.dumps(manifest.to_json()))
    return Dataset(root)


class OracleHead:
    """Stands in for a trained TalkingHead: with deformation it shows the ground-truth frame whose audio
    windows are the conditions' (so its scores are perfect); without, always the first frame."""

    resolution, feature_window, audio_context = SIZE, 16, 2

    def __init__(self, dataset: Dataset):
        self.dataset, self.dataset_root = dataset, dataset.root
        self.windows = torch.from_numpy(dataset.audio_windows(self.audio_context))  # [N, C, W, F]

    def render(self, cond, deform: bool = True) -> dict:
        frames = []
        for audio in cond.audio.cpu():
            i = int((self.windows - audio).flatten(1).abs().sum(1).argmin()) if deform else 0
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
    assert set(result["margins"]) == {"static_head", "nearest_audio"}
    assert result["margins"]["static_head"]["lmd"] == pytest.approx(static["lmd"], abs=1e-3)
    assert result["avatar_beats_baselines"]["lmd"]
    with av.open(str(video)) as container:
        v, a = container.streams.video[0], container.streams.audio[0]
        assert (v.width, v.height) == (256, 128) and v.frames == len(indices)
        assert float(a.duration * a.time_base) == pytest.approx(len(indices) / FPS, abs=0.1)
