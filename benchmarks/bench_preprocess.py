"""`avatar preprocess` speed and memory: seconds, CPU seconds and frames/s of each build step, the total,
and the peak resident memory, per shared video (each built from scratch in a child process, whose peak RSS
the kernel reports when it exits). CPU seconds count all threads of the process and depend less on other
load than wall-clock seconds do on a shared machine.

    python benchmarks/bench_preprocess.py [--quick] [--long-minutes M]

--quick: a 6 s cut of one video at 256 px (a smoke test). --long-minutes M: also a synthetic M-minute
1920x1080 video (a shared clip upscaled and looped) for the memory bound of long inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

from avatar.examples import example_data

DATA = example_data()
VIDEOS = ("dfrf_macron_address_50s.mp4", "mimictalk_german_anchor_20s.mp4", "edtalk_obama_20s.mp4")


def _ffmpeg(*args: str) -> None:

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def build(video: Path, resolution: int, label: str) -> dict:
    """Preprocess `video` from scratch in a child process; one row of measurements."""
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        out = Path(tmp) / "dataset"
        cmd = [
            sys.executable,
            "-m",
            "avatar.cli",
            "preprocess",
            str(video),
            "--out",
            str(out),
            "--resolution",
            str(resolution),
        ]
        log = Path(tmp) / "log.txt"
        start = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time and peak memory
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            return {"name": f"preprocess {label}", "error": log.read_text().strip().splitlines()[-1:]}
        manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["stats"]
    row = {
        "name": f"preprocess {label}",
        "frames": manifest["num_frames"],
        "resolution": resolution,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "realtime_factor": round(manifest["num_frames"] / manifest["fps"] / wall, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # the kernel reports KiB
        "face_found": stats["faces"]["face_found_fraction"],
        "audio_minus_video_frames": round(stats["sync"]["audio_minus_video_frames"], 2),
    }
    for step, rec in stats["steps"].items():
        row[f"{step}_fps"] = rec.get("frames_per_s")
        row[f"{step}_fps_cpu"] = rec.get("frames_per_cpu_s")  # frames per CPU second: less load-dependent
        row[f"{step}_cpu_s"] = rec.get("cpu_seconds")
    return row


def long_video(path: Path, minutes: float) -> Path:
    """A `minutes`-long 1080p talking video: the German anchor upscaled, padded to 16:9 and looped."""
    _ffmpeg(
        "-stream_loop",
        "-1",
        "-i",
        str(DATA / VIDEOS[1]),
        "-t",
        str(minutes * 60),
        "-vf",
        "scale=1080:1080,pad=1920:1080:420:0",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(path),
    )
    return path


def run(quick: bool, long_minutes: float = 0.0) -> list[dict]:
    if not DATA.is_dir():
        return [{"name": "preprocess", "error": f"no shared videos at {DATA}"}]
    if quick:
        with tempfile.TemporaryDirectory() as tmp:
            clip = Path(tmp) / "clip.mp4"
            _ffmpeg("-ss", "2", "-i", str(DATA / VIDEOS[1]), "-t", "6", str(clip))
            return [build(clip, 256, "6 s cut, 256 px")]
    rows = [build(DATA / v, 512, v) for v in VIDEOS]
    if long_minutes > 0:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(
                build(long_video(Path(tmp) / "long.mp4", long_minutes), 512, f"{long_minutes:g} min 1920x1080 (looped)")
            )
    return rows


if __name__ == "__main__":
    minutes = float(sys.argv[sys.argv.index("--long-minutes") + 1]) if "--long-minutes" in sys.argv else 0.0
    for row in run("--quick" in sys.argv, minutes):
        print(json.dumps(row), flush=True)
