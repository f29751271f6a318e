"""scripts/gpu_check.sh --dry-run: the GPU check's steps run on CPU and land in one JSON with their timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = ["install", "build_gsplat", "build_hash_triplane", "pytest_cuda", "dataset", "train", "bench"]


def test_dry_run_records_every_step_and_positive_speeds(tmp_path, shared_data):
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
        "CLIP": str(shared_data / "mimictalk_german_anchor_20s.mp4"),
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "gpu_check.log").stat().st_size > 0
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())

    steps = result["steps"]
    assert list(steps) == STEPS
    cuda = torch.cuda.is_available()
    # what must hold here: installs and CUDA builds are GPU-only steps, the CUDA tests are collected and every
    # one of them skips itself without a GPU, and the CPU steps all succeed
    expected = {"install": "skipped", "build_gsplat": "skipped", "build_hash_triplane": "skipped"}
    expected |= {"pytest_cuda": "ok" if cuda else "skipped", "dataset": "ok", "train": "ok", "bench": "ok"}
    assert {name: step["status"] for name, step in steps.items()} == expected, proc.stdout
    for name, step in steps.items():  # a step that ran took time, within its limit; a skipped one none
        ran = name == "pytest_cuda" or expected[name] == "ok"
        assert (0 < step["seconds"] <= step["limit_s"] + 10) if ran else step["seconds"] == 0, (name, step)
    tests = result["tests"]
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    assert tests["passed"] > 0 if cuda else tests["skipped"] == tests["tests"]

    training = result["training"]
    assert training["status"] == "done"
    assert set(training["it_per_s"]) == {"canonical", "deform"} and all(v > 0 for v in training["it_per_s"].values())
    renders = [row for row in result["bench"] if row.get("section") == "avatar render (batch 1)"]
    assert renders and all(row["ms_per_frame"] > 0 and row["fps"] > 0 for row in renders)
    assert [line for line in proc.stdout.splitlines() if line.startswith("[gpu_check] bench: ok")]
