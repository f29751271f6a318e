"""`avatar bench`: the table, the component benchmark protocol, and the run rows (with a stand-in avatar)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from eval_fixtures import eval_dataset  # noqa: F401 - a fixture

from avatar.bench import BenchConfig, component_rows, format_report, render_rows, run, training_rows
from avatar.contracts.camera import Intrinsics


def test_component_benchmarks_are_collected_and_a_failure_is_a_row(tmp_path, monkeypatch):
    package = tmp_path / "some_benchmarks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bench_good.py").write_text(
        "def run(quick):\n    return [{'name': 'thing', 'ms': 1.5 if quick else 3.0}]\n"
    )
    (package / "bench_broken.py").write_text("def run(quick):\n    raise RuntimeError('no GPU')\n")
    (package / "helper.py").write_text("raise AssertionError('not a benchmark: never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = component_rows(True, importlib.import_module("some_benchmarks"))
    assert rows == [
        {"section": "bench_broken", "name": "bench_broken", "error": "RuntimeError: no GPU"},
        {"section": "bench_good", "name": "thing", "ms": 1.5},
    ]
    report = format_report(rows)
    assert "== bench_broken" in report and "== bench_good" in report and "RuntimeError: no GPU" in report


def test_training_rows_from_the_run_record(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({"stage_seconds": {"audio": 30.0, "canonical": 100.0, "deform": 50.0}})
    )
    (tmp_path / "config.json").write_text(json.dumps({"audio_steps": 600, "canonical_steps": 400, "deform_steps": 100}))
    rows = {r["name"]: r for r in training_rows(tmp_path)}
    assert rows["stage canonical"]["it_per_s"] == pytest.approx(4.0)
    assert rows["stage deform"]["it_per_s"] == pytest.approx(2.0)
    assert "it_per_s" not in rows["stage audio"]
    assert rows["total"]["minutes"] == pytest.approx(3.0)


class BlankHead:
    """Stands in for a TalkingHead: renders black frames of the requested camera's size."""

    resolution, audio_context = 32, 1

    def __init__(self):
        self.intrinsics = Intrinsics.from_fov(20, 32, 32)
        self.sizes = []

    def render(self, cond, background=None, deform=True, camera=None, show_torso=True, expression=None):
        size = camera.width if camera is not None else self.resolution
        assert camera is None or (camera.K[0, 2].item() == size / 2 and background.shape == (size, size, 3))
        self.sizes.append(size)
        return {"rgb": torch.zeros(len(cond.audio), size, size, 3)}


def test_render_rows_time_every_resolution(eval_dataset):
    dataset = eval_dataset
    pytest.importorskip("avatar.model.talking_head")  # FrameConditions
    from avatar.eval.frames import frame_conditions

    head = BlankHead()
    val = dataset.indices("val")[:3]
    audio = dataset.audio_windows(head.audio_context, val)
    conds = [frame_conditions(dataset, val[i : i + 1], audio[i : i + 1], torch.device("cpu")) for i in range(3)]
    rows = render_rows(head, conds, warmup=1, resolutions=(64, 96), device=torch.device("cpu"))
    assert [r["name"] for r in rows] == [
        "render 32 (training camera, torso)",
        "render 64 (head only)",
        "render 96 (head only)",
    ]
    assert head.sizes == [32] * 3 + [64] * 3 + [96] * 3
    assert all(r["fps"] > 0 and r["peak_memory_mb"] > 0 for r in rows)


def test_bench_without_a_run_prints_the_table(capsys):
    rows = run(BenchConfig(quick=True, components=False))  # the real components are slow: tested above
    assert rows[0]["section"] == "device"
    assert "device" in capsys.readouterr().out


def test_the_tts_development_set_is_made_once_and_needs_espeak(tmp_path, monkeypatch):
    bench = importlib.import_module("avatar.benchmarks.bench_lipsync")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="espeak-ng is not on the PATH"):
        bench.synthesise_tts(tmp_path / "tts")
    tools = tmp_path / "bin"
    tools.mkdir()
    calls = tmp_path / "calls"
    fake = tools / "espeak-ng"  # writes its arguments where -w says, and counts its calls
    fake.write_text(f'#!/bin/sh\necho x >> {calls}\nwhile [ "$1" != "-w" ]; do shift; done\necho "$@" > "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    clips = bench.synthesise_tts(tmp_path / "tts")
    assert [c.stem for c in clips] == [stem for stem, *_ in bench.TTS_SET]
    assert all(c.is_file() for c in clips) and "Guten Abend" in clips[-1].read_text()
    bench.synthesise_tts(tmp_path / "tts")  # the second time reuses the files
    assert len(calls.read_text().split()) == len(bench.TTS_SET)


def test_the_encoder_probe_reads_option_changes_and_refuses_unknown_ones():
    probe = importlib.import_module("avatar.benchmarks.probe_encoder")
    cfg = probe.configured(["time_shift=6", "memory_k=[3, 5]", "voice_dropout=0.8"])
    assert (cfg.time_shift, cfg.memory_k, cfg.voice_dropout) == (6, (3, 5), 0.8)
    assert probe.configured([]) == probe.AudioEncoderConfig()
    with pytest.raises(SystemExit, match="no option 'time_shifts'"):
        probe.configured(["time_shifts=6"])
