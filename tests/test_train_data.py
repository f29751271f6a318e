"""Training data: frames at the training resolution through a bounded cache, batches, a resumable sampler."""

from __future__ import annotations

import numpy as np
import torch

from avatar.data.batches import FrameSampler, TrainingData
from avatar.data.frames import MASK_NAMES, FrameStore
from avatar.train.expression import ExpressionSpace
from tests.train_fixtures import tiny_dataset  # noqa: F401 - the fixture


def test_frame_cache_stays_within_its_budget(tiny_dataset):
    store = FrameStore(tiny_dataset, 64, cache_mb=0.1)  # room for 6 frames of 64x64 (rgb + masks)
    for i in range(20):
        rgb, masks = store.get(i)
        assert rgb.shape == (64, 64, 3) and masks.shape == (64, 64, len(MASK_NAMES))
        assert store.cached_bytes <= 0.1 * 2**20
    assert np.array_equal(store.get(19)[0], store._read(19)[0])


def test_batches_and_resumable_sampler(tiny_dataset):
    targets = ExpressionSpace.fit(tiny_dataset).targets
    data = TrainingData(tiny_dataset, 32, context=2, expression=targets)
    batch = data.batch([0, 5, 7])
    assert batch.rgb.shape == (3, 32, 32, 3) and batch.audio.shape[:2] == (3, 5)
    assert batch.mask("head").shape == (3, 32, 32, 1) and 0 < float(batch.mask("head").mean()) < 1
    assert batch.rotation.shape == (3, 3, 3) and batch.expression.shape == (3, targets.shape[1])

    sampler = FrameSampler(np.arange(10), batch_size=3, seed=1)
    first = [sampler.next() for _ in range(2)]
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sampler.state_dict().items()}
    rest = [sampler.next() for _ in range(5)]
    again = FrameSampler(np.arange(10), batch_size=3, seed=1)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(rest, [again.next() for _ in range(5)]))
    assert len(torch.cat(first).unique()) == 6  # no repeats within a pass


def test_audio_windows_of_some_frames_are_those_of_all(tiny_dataset):
    """The windows cut from the rows for a few frames (what evaluation and training batches ask for) equal
    the whole clip's windows with their neighbours (edges repeated), and the training batches carry them."""
    from avatar.audio.features import context_windows, frame_windows, normalize_features

    f = tiny_dataset.manifest.features
    rows = normalize_features(np.asarray(tiny_dataset.audio_features), tiny_dataset.feature_stats())
    whole = context_windows(frame_windows(rows, f.rate_hz, tiny_dataset.fps, tiny_dataset.num_frames, f.window), 2)
    some = np.array([0, 1, 40, tiny_dataset.num_frames - 1])
    np.testing.assert_array_equal(tiny_dataset.audio_windows(2, some), whole[some])
    np.testing.assert_array_equal(tiny_dataset.audio_windows(2), whole)
    np.testing.assert_array_equal(tiny_dataset.audio_windows(), whole[:, 2])
    data = TrainingData(tiny_dataset, 32, context=2, expression=ExpressionSpace.fit(tiny_dataset).targets)
    np.testing.assert_array_equal(data.batch(some).audio.numpy(), whole[some])
