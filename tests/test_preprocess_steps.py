"""The step cache: skip what is done, redo what changed (and everything after it), leave no marker on failure."""

from __future__ import annotations

import pytest

from avatar.preprocess.steps import StepRunner


def _pipeline(root, calls: list[str], force=False, setting=1, fail_in: str | None = None) -> StepRunner:
    runner = StepRunner(root, force)

    def step(name):
        def fn():
            calls.append(name)
            if name == fail_in:
                raise RuntimeError("interrupted")
            return {"frames": 10, "warnings": [f"{name} says hello"] if name == "b" else []}

        return fn

    runner.run("a", {}, step("a"))
    runner.run("b", {"setting": setting}, step("b"))
    runner.run("c", {}, step("c"))
    return runner


def test_rerun_skips_and_reports_measurements(tmp_path):
    calls: list[str] = []
    first = _pipeline(tmp_path, calls)
    assert calls == ["a", "b", "c"]
    assert first.records["a"]["frames_per_s"] > 0
    again = _pipeline(tmp_path, calls)
    assert calls == ["a", "b", "c"]  # nothing ran again
    assert again.records["b"]["warnings"] == ["b says hello"]  # the cached record, warnings included


def test_changed_setting_redoes_that_step_and_later_ones(tmp_path):
    calls: list[str] = []
    _pipeline(tmp_path, calls)
    _pipeline(tmp_path, calls, setting=2)
    assert calls == ["a", "b", "c", "b", "c"]


def test_force_redoes_everything(tmp_path):
    calls: list[str] = []
    _pipeline(tmp_path, calls)
    _pipeline(tmp_path, calls, force=True)
    assert calls == ["a", "b", "c"] * 2


def test_interrupted_step_leaves_no_marker_and_resumes(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        _pipeline(tmp_path, calls, fail_in="b")
    assert (tmp_path / ".steps" / "a.json").is_file() and not (tmp_path / ".steps" / "b.json").exists()
    _pipeline(tmp_path, calls)
    assert calls == ["a", "b", "b", "c"]


def test_missing_output_redoes_the_step(tmp_path):
    runner = StepRunner(tmp_path, force=False)
    calls: list[str] = []

    def write():
        calls.append("write")
        (tmp_path / "out.txt").write_text("x")
        return {}

    runner.run("w", {}, write, ("out.txt",))
    (tmp_path / "out.txt").unlink()  # someone deleted the step's output
    StepRunner(tmp_path, force=False).run("w", {}, write, ("out.txt",))
    assert calls == ["write", "write"] and (tmp_path / "out.txt").is_file()
