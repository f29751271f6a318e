"""`avatar batch` against `avatar render` one clip at a time: clips per minute of the same clips rendered by a loop
of `avatar render` commands (each loads the avatar again), by `avatar batch --workers 1` and by `--workers 2`
(a local Ray cluster started by each batch; its start is part of the time), with their ratios, in one run;
and the seconds a batch worker spent on a clip (its report's per-job time: the avatar's first load included).

Needs a trained run: $AVATAR_BENCH_RUN, or out/demo/run from `avatar demo`. Every measurement is a child
process timed from its start to its end, as a user would run it.

    python -m avatar.benchmarks.bench_batch [--quick]
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

from avatar.benchmarks.bench_export import SPEECH, trained_run


def cut_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """`count` clips of `seconds` each, consecutive stretches of the shared speech clip (16-bit PCM WAV)."""
    wave, rate = sf.read(str(SPEECH), dtype="float32")
    step = int(seconds * rate)
    clips = []
    for i in range(count):
        clips.append(folder / f"clip_{i}.wav")
        sf.write(str(clips[-1]), wave[i * step : (i + 1) * step], rate, subtype="PCM_16")
    return clips


def timed(command: list[str]) -> float:
    """Wall seconds of a child process that must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def run(quick: bool) -> list[dict]:
    run_dir = trained_run()
    if run_dir is None:
        return [{"name": "batch", "skipped": "no trained run: run `avatar demo` or set AVATAR_BENCH_RUN=RUN"}]
    if importlib.util.find_spec("ray") is None:
        return [{"name": "batch", "skipped": "ray is not installed (the `batch` extra)"}]
    count, seconds = (3, 1.0) if quick else (8, 3.0)
    avatar = [sys.executable, "-m", "avatar.cli"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        clips = cut_clips(folder, count, seconds)
        one_by_one = sum(
            timed([*avatar, "render", str(run_dir), "--audio", str(c), "--out", str(folder / "one" / f"{c.stem}.mp4")])
            for c in clips
        )
        rows.append({"name": "avatar render, one clip at a time", "seconds": one_by_one})
        for workers in (1, 2):
            jobs = folder / f"jobs_{workers}.csv"
            with open(jobs, "w", newline="") as f:
                table = csv.writer(f)
                table.writerow(["run", "audio", "out"])
                table.writerows([run_dir.resolve(), c, f"out_{workers}/{c.stem}.mp4"] for c in clips)
            report = folder / f"report_{workers}.json"
            wall = timed([*avatar, "batch", str(jobs), "--workers", str(workers), "--report", str(report)])
            worker_s = [job["seconds"] for job in json.loads(report.read_text())["jobs"]]
            rows.append(
                {
                    "name": f"avatar batch --workers {workers}",
                    "seconds": wall,
                    "worker_s_per_clip": round(sum(worker_s) / len(worker_s), 2),  # the first load included
                }
            )
    for row in rows:
        row.update(
            clips=count,
            clip_s=seconds,
            clips_per_min=round(60 * count / row["seconds"], 2),
            vs_one_at_a_time=round(one_by_one / row["seconds"], 2),
            seconds=round(row["seconds"], 1),
        )
    rows.append({"name": "2 workers / 1 worker", "ratio": round(rows[1]["seconds"] / max(rows[2]["seconds"], 1e-9), 2)})
    return rows


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
