"""A tiny real dataset for the model and training tests, built by the real preprocessing pipeline from 4 s of
the Macron address at 128 px (import `tiny_dataset` into a test module to use it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar.audio.revoice import VoiceAugmentConfig
from avatar.contracts.dataset import Dataset
from avatar.model.audio_encoder import AudioEncoderConfig
from avatar.model.gaussians import HeadConfig
from avatar.model.hash_triplane import HashTriplaneConfig
from avatar.model.mouth import MouthConfig
from avatar.train.config import TrainConfig
from avatar.train.densify import DensifyConfig
from tests.conftest import cut_clip


@pytest.fixture(scope="session")
def tiny_dataset(shared_data, clip_dir, tmp_path_factory) -> Dataset:
    from avatar.preprocess.build import run

    clip = cut_clip(shared_data / "dfrf_macron_address_50s.mp4", clip_dir / "macron_4s.mp4", 10.0, 4.0)
    out = tmp_path_factory.mktemp("train_ds") / "macron"
    run(tiny_preprocess_config(clip, out))
    return Dataset(out)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """A real run trained for a few steps on `tiny_dataset` (`tiny_config`); read it only (copy it to change it)."""
    from avatar.train.runner import run

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    run(tiny_config(tiny_dataset.root, out))
    return out


def tiny_preprocess_config(clip: Path, out: Path):
    """The options that made `tiny_dataset` (a rerun with them resumes its build)."""
    from avatar.preprocess.config import PreprocessConfig

    return PreprocessConfig(
        video=clip,
        out=out,
        resolution=128,
        min_duration_s=2.0,
        crop_samples=8,
        preview_seconds=1.0,
        contact_sheet_frames=4,
    )


def tiny_config(dataset: Path, out: Path, **overrides) -> TrainConfig:
    """A few steps of every stage at 32 px with a few hundred Gaussians: seconds, not minutes."""
    base = dict(
        dataset=dataset,
        out=out,
        resolution=32,
        batch_size=2,
        audio_steps=3,
        canonical_steps=4,
        torso_steps=3,
        deform_steps=4,
        lpips_start=2,
        log_every=1,
        image_every=2,
        checkpoint_every=3,
        val_frames=2,
        min_train_frames=20,
        head=HeadConfig(num_face=200, num_shell=100, max_gaussians=400),
        mouth=MouthConfig(num_gaussians=30),
        densify=DensifyConfig(start_step=2, every=2, stop_step=4, grow_fraction=0.1),
        triplane=HashTriplaneConfig(num_levels=4, log2_hashmap_size=12, max_resolution=64),
        audio=AudioEncoderConfig(
            members=1, channels=8, embed_dim=8, heads=2, eval_every=2, voices=VoiceAugmentConfig(copies=1)
        ),
    )
    base.update(overrides)
    return TrainConfig(**base)
