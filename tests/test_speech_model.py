"""The optional speech-encoder features (`--speech-model DIR`), with a tiny randomly initialised HuBERT that
the tests build and save themselves: row timing, streaming, the dataset -> training -> render path, and
the messages for a missing model or package."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("transformers")

from avatar.audio.features import extractor_named, speech_features  # noqa: E402
from avatar.audio.grid import num_rows  # noqa: E402
from avatar.audio.speech_model import SpeechModelFeatures, frames_to_rows, receptive_field  # noqa: E402
from avatar.errors import UserError  # noqa: E402
from tests.export_fixtures import probe, speech_like, write_wav  # noqa: E402
from tests.train_fixtures import tiny_config, tiny_dataset, tiny_preprocess_config  # noqa: E402, F401 - the fixture

SR = 16000
HIDDEN = 24

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_tiny_hubert(folder, seed: int = 0):
    """A 2-layer HuBERT with the usual 320-sample frame stride and 400-sample receptive field."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
    )
    HubertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_hubert(tmp_path_factory.mktemp("speech_model") / "tiny-hubert")


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    import librosa
    import soundfile as sf

    wave, rate = sf.read(str(shared_data / "genefacepp_macron_speech_12s.wav"), dtype="float32", always_2d=True)
    return librosa.resample(wave.mean(1), orig_sr=rate, target_sr=SR).astype(np.float32)


def test_receptive_field_and_row_timing():
    assert receptive_field([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]) == 400  # wav2vec2 / HuBERT
    # frame j is centred at 320 j + 200 samples: a ramp over frames read at the rows' centres (160 t samples)
    frames = np.arange(10, dtype=np.float32)[:, None]
    rows = frames_to_rows(frames, 320, 400, 30)[:, 0]
    expected = np.clip((np.arange(30) * 160 - 200) / 320, 0, 9)
    np.testing.assert_allclose(rows, expected, atol=1e-6)


def test_rows_align_with_the_mel_rows_and_stream_exactly(model_dir, speech):
    learned = SpeechModelFeatures(str(model_dir), window_s=4.0, overlap_s=1.0)
    both = speech_features("mel", model_dir)
    for wave in (speech[: SR + 77], speech[: 3 * SR - 1]):
        rows = both(wave)
        assert rows.shape == (num_rows(wave.size), both.mel.dim + HIDDEN) and rows.dtype == np.float32
    whole = learned(speech)
    assert whole.shape == (num_rows(speech.size), HIDDEN) and np.all(np.isfinite(whole))
    np.testing.assert_allclose(whole.mean(1), 0.0, atol=1e-4)  # standardised per row
    for size in (SR, 7777):
        blocks = list(learned.stream(speech[i : i + size] for i in range(0, speech.size, size)))
        assert len(blocks) >= 3
        np.testing.assert_array_equal(np.concatenate(blocks), whole)
    # the grid's windows differ from one 12 s input only through the attention's reach
    one_input = learned.rows(speech)
    agree = np.mean(np.sum(one_input * whole, 1) / HIDDEN)
    assert agree > 0.5


def test_very_short_audio(model_dir):
    learned = SpeechModelFeatures(str(model_dir))
    for samples in (0, 100, 3000):
        rows = learned(np.zeros(samples, np.float32) + 1e-3)
        assert rows.shape == (num_rows(samples), HIDDEN) and np.all(np.isfinite(rows))


def test_the_name_follows_the_model_files(model_dir, tmp_path):
    extractor = speech_features("mel+visemes", model_dir)
    assert extractor_named(extractor.name, str(model_dir)).name == extractor.name
    assert extractor_named(extractor.name, "") is None  # the folder is part of what makes the rows
    other = save_tiny_hubert(tmp_path / "other", seed=1)
    assert speech_features("mel+visemes", other).name != extractor.name
    assert extractor_named(extractor.name, str(other)) is None


def test_bad_model_folders_are_named(tmp_path, model_dir, monkeypatch):
    with pytest.raises(UserError, match="not a model folder"):
        speech_features("mel", tmp_path / "nowhere")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    with pytest.raises(UserError, match="not a speech encoder"):
        speech_features("mel", tmp_path / "text")
    with pytest.raises(UserError, match=r"has hidden states 0\.\.2"):  # before any audio is processed
        speech_features("mel", model_dir, layer=5)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    with pytest.raises(UserError, match="pip install transformers"):
        speech_features("mel", model_dir)


def test_dataset_training_and_render_with_a_speech_model(tiny_dataset, model_dir, tmp_path):
    """Features rebuilt with the model on an existing dataset (only that step runs), a short run trained on
    them, new audio rendered through the same model; without the model folder the render says which."""
    from avatar.contracts.dataset import Dataset
    from avatar.preprocess.build import run as preprocess
    from avatar.render.config import RenderConfig
    from avatar.render.video import run as render
    from avatar.train.runner import run as train

    root = tmp_path / "dataset"
    shutil.copytree(tiny_dataset.root, root)
    source = Dataset(root).manifest.source["path"]
    preprocess(replace(tiny_preprocess_config(source, root), speech_model=model_dir))
    dataset = Dataset(root)
    f = dataset.manifest.features
    assert f.speech_model == str(model_dir.resolve()) and f.dim == tiny_dataset.manifest.features.dim + HIDDEN
    np.testing.assert_array_equal(
        np.asarray(dataset.audio_features)[:, :-HIDDEN], np.asarray(tiny_dataset.audio_features)
    )  # the other parts as they were
    train(tiny_config(root, tmp_path / "run"))
    audio = write_wav(tmp_path / "speech.wav", speech_like(0.8, SR), SR)
    out = render(RenderConfig(run=tmp_path / "run", audio=audio, out=tmp_path / "out.mp4", fps=10.0))
    assert probe(out)["num_frames"] == 8
    shutil.move(model_dir, tmp_path / "moved")
    try:
        with pytest.raises(UserError, match=f"speech model saved in {model_dir.resolve()}"):
            render(RenderConfig(run=tmp_path / "run", audio=audio, out=tmp_path / "again.mp4", fps=10.0))
    finally:
        shutil.move(tmp_path / "moved", model_dir)
