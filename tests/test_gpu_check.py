"""scripts/gpu_check.sh --dry-run: the GPU check's steps run on CPU and land in one JSON with their timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert all(
        step["status"] in ("ok", "skipped", "failed", "timeout") and step["seconds"] >= 0 for step in steps.values()
    )
    assert [steps[name]["status"] for name in STEPS[:3]] == ["skipped"] * 3  # installs and CUDA builds: GPU only
    assert steps["pytest_cuda"]["status"] in ("ok", "skipped")  # skipped without a GPU
    assert result["tests"]["failures"] == result["tests"]["errors"] == 0
    assert [steps[name]["status"] for name in ("dataset", "train", "bench")] == ["ok"] * 3, proc.stdout

    training = result["training"]
    assert training["status"] == "done"
    assert set(training["it_per_s"]) == {"canonical", "deform"} and all(v > 0 for v in training["it_per_s"].values())
    renders = [row for row in result["bench"] if row.get("section") == "avatar render (batch 1)"]
    assert renders and all(row["ms_per_frame"] > 0 and row["fps"] > 0 for row in renders)
    assert [line for line in proc.stdout.splitlines() if line.startswith("[gpu_check] bench: ok")]
