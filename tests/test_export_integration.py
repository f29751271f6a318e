"""`avatar render` on a real trained avatar: a few seconds of a shared video, preprocessed at low resolution
and trained for a handful of steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import cut_clip
from export_fixtures import probe, speech_like, write_wav

from avatar.audio.io import num_frames_for
from avatar.render.config import RenderConfig
from avatar.render.video import run


@pytest.fixture(scope="session")
def tiny_run(shared_data, clip_dir, tmp_path_factory) -> Path:
    """A real run: 6 s of the German anchor at 128 px, the `tiny` preset cut to a few steps at 32 px."""
    from avatar.config_io import load_preset, presets
    from avatar.preprocess.build import run as preprocess
    from avatar.preprocess.config import PreprocessConfig
    from avatar.train.config import TrainConfig
    from avatar.train.runner import run as train

    root = tmp_path_factory.mktemp("tiny_run")
    clip = cut_clip(shared_data / "mimictalk_german_anchor_20s.mp4", clip_dir / "german_6s.mp4", 2.0, 6.0)
    preprocess(PreprocessConfig(video=clip, out=root / "dataset", resolution=128))
    base = load_preset("train", "tiny", TrainConfig) if "tiny" in presets("train") else TrainConfig()
    short = dict(
        resolution=32,
        audio_steps=2,
        canonical_steps=1,
        torso_steps=1,
        deform_steps=1,
        lpips_start=10**6,
        val_frames=1,
        checkpoint_every=10**6,
        image_every=10**6,
        threads=2,
    )
    short = {k: v for k, v in short.items() if hasattr(base, k)}
    train(dataclasses.replace(base, dataset=root / "dataset", out=root / "run", **short))
    return root / "run"


def render(tiny_run: Path, audio: Path, out: Path, **overrides) -> Path:
    cfg = RenderConfig(run=tiny_run, audio=audio, out=out, device="cpu", batch_frames=10)
    return run(dataclasses.replace(cfg, **overrides))


def test_real_avatar_video_is_in_sync(tiny_run, tmp_path, shared_data):
    audio = write_wav(tmp_path / "speech.wav", speech_like(2.03, 44100, channels=2), 44100)
    info = probe(render(tiny_run, audio, tmp_path / "out.mp4", fps=5.0))
    assert info["num_frames"] == num_frames_for(int(2.03 * 16000), 16000, 5.0) == 10
    assert (info["video_codec"], info["audio_codec"], info["audio_channels"]) == ("h264", "aac", 2)
    assert abs(info["audio_s"] - info["video_s"]) < 1 / 5
    assert info["frames"].std() > 5  # a picture, not a blank frame


def test_real_avatar_keeps_still_in_silence(tiny_run, tmp_path):
    audio = write_wav(tmp_path / "silence.wav", speech_like(1.0, 16000, silent=True), 16000)
    frames = probe(render(tiny_run, audio, tmp_path / "out.mp4", fps=5.0, pose="still", blink=0.0, crf=0))["frames"]
    assert np.abs(frames.astype(np.int16) - frames[:1]).max() <= 1


def test_real_avatar_pasted_back(tiny_run, tmp_path):
    from avatar.model.talking_head import TalkingHead

    source = TalkingHead.load(tiny_run).driving.source
    audio = write_wav(tmp_path / "speech.wav", speech_like(0.6, 16000), 16000)
    info = probe(render(tiny_run, audio, tmp_path / "out.mp4", fps=5.0, paste_back=True))
    assert (info["width"], info["height"]) == (source.width // 2 * 2, source.height // 2 * 2)
