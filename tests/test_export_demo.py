"""`avatar demo`: a clear message without the example data, and a rerun that reuses finished steps (the
three pipeline steps are replaced by recorders here; the real demo is measured by hand, see README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_fixtures import speech_like, write_wav

import avatar.demo as demo
from avatar.errors import UserError


def test_missing_example_data_is_explained(tmp_path):
    cfg = demo.DemoConfig(video=tmp_path / "nowhere.mp4", audio=tmp_path / "nowhere.wav", work=tmp_path / "demo")
    with pytest.raises(UserError, match="shared/data"):
        demo.run(cfg)
    assert not (tmp_path / "demo").exists()


def test_rerun_reuses_finished_steps(tmp_path, monkeypatch):
    import avatar.eval.evaluate
    import avatar.preprocess.build
    import avatar.render.video
    import avatar.train.runner

    calls: list[str] = []

    def fake_train(cfg):
        calls.append(f"train resume={cfg.resume} at {cfg.resolution} px")
        (Path(cfg.out)).mkdir(parents=True)
        (Path(cfg.out) / "avatar.pt").write_bytes(b"weights")

    def fake_render(cfg):
        calls.append("render")
        Path(cfg.out).write_bytes(b"video")

    def fake_eval(cfg):
        calls.append(f"eval {Path(cfg.drive_audio).name}")
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "metrics.json").write_text("{}")

    import avatar.config_io
    from avatar.train.config import TrainConfig

    monkeypatch.setattr(avatar.config_io, "load_preset", lambda command, name, cls: TrainConfig())
    monkeypatch.setattr(avatar.preprocess.build, "run", lambda cfg: calls.append("preprocess"))
    monkeypatch.setattr(avatar.train.runner, "run", fake_train)
    monkeypatch.setattr(avatar.render.video, "run", fake_render)
    monkeypatch.setattr(avatar.eval.evaluate, "run", fake_eval)
    video = tmp_path / "video.mp4"
    video.write_bytes(b"stand-in")
    audio = write_wav(tmp_path / "speech.wav", speech_like(0.5, 16000), 16000)
    cfg = demo.DemoConfig(video=video, audio=audio, work=tmp_path / "demo")
    result = demo.run(cfg)
    assert calls == ["preprocess", "train resume=False at 256 px", "render", "eval speech.wav"] and result.is_file()
    calls.clear()
    demo.run(cfg)
    assert calls == ["preprocess"]  # preprocessing checks its own cache; training, video and scores are reused


def test_train_scale_shortens_every_step_schedule():
    from avatar.train.config import TrainConfig

    base = TrainConfig()
    short = demo.scaled_steps(base, 0.2)
    assert short.audio_steps == round(0.2 * base.audio_steps) and short.deform_steps == round(0.2 * base.deform_steps)
    assert short.densify.stop_step == round(0.2 * base.densify.stop_step) and short.lpips_start < base.lpips_start
    assert demo.scaled_steps(base, 1.0) is base
