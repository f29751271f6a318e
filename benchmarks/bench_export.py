"""`avatar render` speed and memory: frames per second of each stage, and peak resident memory for 1 and 30
minutes of audio (long audio is made by looping a shared speech clip).

Needs a trained run: $AVATAR_BENCH_RUN, or out/demo/run from `avatar demo`. Each measurement runs
`avatar render` in a child process, whose peak RSS the kernel reports when it exits. The memory rows render
one frame per 20 s of audio: everything that could grow with the audio's length (decoding, the three feature
passes, the muxed sound track, the schedules) runs in full, while rendering 30 minutes at 25 fps with the
CPU rasterizer would take many hours.

    python benchmarks/bench_export.py [--quick]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

from avatar.examples import example_data
from avatar.tables import format_table

SPEECH = example_data() / "musetalk_eng_speech_60s.wav"
MEMORY_FPS = 0.05  # one frame per 20 s: 90 frames for 30 minutes of audio


def trained_run() -> Path | None:
    for candidate in (os.environ.get("AVATAR_BENCH_RUN"), Path("out/demo/run")):
        if candidate and (Path(candidate) / "avatar.pt").is_file():
            return Path(candidate)
    return None


def looped_speech(path: Path, seconds: float) -> Path:
    """`seconds` of the shared speech clip looped, written block by block (16-bit PCM WAV)."""

    clip, rate = sf.read(str(SPEECH), dtype="float32")
    total = int(seconds * rate)
    with sf.SoundFile(str(path), "w", rate, channels=1 if clip.ndim == 1 else clip.shape[1], subtype="PCM_16") as out:
        written = 0
        while written < total:
            block = clip[: total - written]
            out.write(block)
            written += len(block)
    return path


def measure(command: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, wall seconds, stdout) of a child process."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-2000:]}")
    return usage.ru_maxrss / 1024, wall, output


def stage_rates(output: str) -> dict[str, float]:
    """frames/s per stage from the table `avatar render` prints."""
    rates = {}
    for line in output.splitlines():
        match = re.match(r"\s+([a-z -]+?)\s+([\d.]+)\s+([\d.]+)$", line)
        if match:
            rates[match.group(1).strip().replace(" ", "_") + "_fps"] = float(match.group(3))
    return rates


def run(quick: bool) -> list[dict]:
    run_dir = trained_run()
    if run_dir is None:
        return [{"name": "export", "skipped": "no trained run: run `avatar demo` or set AVATAR_BENCH_RUN=RUN"}]
    if not SPEECH.is_file():
        return [{"name": "export", "skipped": f"{SPEECH} missing (the shared example data)"}]
    # (audio seconds, output fps or None for the run's own): one speed row, then the memory rows
    if quick:
        cases = [(4, 5.0), (60, MEMORY_FPS), (300, MEMORY_FPS)]
    else:
        cases = [(20, None), (60, MEMORY_FPS), (300, MEMORY_FPS), (1800, MEMORY_FPS)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for seconds, fps in cases:
            audio = looped_speech(Path(tmp) / f"speech_{seconds}s.wav", seconds)
            command = [
                sys.executable,
                "-m",
                "avatar.cli",
                "render",
                str(run_dir),
                "--audio",
                str(audio),
                "--out",
                str(Path(tmp) / "out.mp4"),
                "--device",
                "cpu",
            ]
            if fps is not None:
                command += ["--fps", str(fps)]
            peak_mb, wall, output = measure(command)
            rows.append(
                {
                    "name": f"render {seconds / 60:g} min of audio at {fps or 'native'} fps",
                    "peak_rss_mb": round(peak_mb, 1),
                    "wall_s": round(wall, 1),
                    **stage_rates(output),
                }
            )
    return rows


if __name__ == "__main__":
    print(format_table(run("--quick" in sys.argv)))
