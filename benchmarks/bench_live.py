"""`avatar live` in real time: frames per second, latency p50 / p95 / max, dropped frames, A/V offset and the
time per stage, for the stdin mode and the browser mode; with a driver dataset, the quality cost against
`avatar render` of the same audio.

    python -m avatar.benchmarks.bench_live [--quick] [--seconds 60] [--run RUN] [--drive DATASET]

- stdin: `avatar live RUN --audio-in -` in a child process, fed speech at real time in 40 ms writes; the
  latency log gives the session's figures, and the writer's own clock gives the latency from each sample's
  write to its frame being ready (and its drift: the slope of that latency over the session).
- browser: `avatar live RUN` with headless Chromium whose microphone is the same speech file (it loops); the
  page's WebRTC statistics give the frames the browser received, its jitter buffer, and the A/V offset as it
  plays (audio minus video estimated playout timestamps, both in the sender's clock: > 0 the sound leads).
- quality (--drive DATASET, not with --quick): the dataset's audio through `avatar live --audio-in` (a file
  played in real time) and through `avatar render`; the mouth opening detected on both recordings is scored
  against the driver's own tracked opening (`avatar.eval.cross_drive.score`): correlation and motion.
Each row carries the 1-minute load average before and after it: the machine is shared.

Needs a trained run: --run, $AVATAR_BENCH_RUN, or out/demo/run from `avatar demo`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar.audio.io import SAMPLE_RATE, load_audio, save_wav
from avatar.examples import example_data
from avatar.live.outputs import read_log

SPEECH = example_data() / "musetalk_eng_speech_60s.wav"
WRITE_S = 0.04  # the stdin writer's pieces


def trained_run() -> Path | None:
    for candidate in (os.environ.get("AVATAR_BENCH_RUN"), Path("out/demo/run")):
        if candidate and (Path(candidate) / "avatar.pt").is_file():
            return Path(candidate)
    return None


def live_command(run: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "avatar.cli", "live", str(run), *options]


def start_live(command: list[str], stdin=None) -> tuple[subprocess.Popen, str]:
    """A running `avatar live` (binary pipes: stdin takes PCM) and the address it printed (once it is loaded
    and warm)."""
    child = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = child.stdout.readline().decode()
    match = re.search(r"(https?://\S+)", line)
    if match is None:
        child.kill()
        raise RuntimeError(f"`avatar live` did not start: {line}{child.stderr.read().decode()[-2000:]}")
    return child, match.group(1)


def write_in_real_time(stream, pcm: bytes, piece_s: float = WRITE_S) -> dict[int, float]:
    """Write s16le mono 16 kHz `pcm` at the pace it is spoken; returns {samples written: time.time() then}."""
    step = int(piece_s * SAMPLE_RATE) * 2
    written, start = {}, time.time()
    for i in range(0, len(pcm), step):
        wait = start + (i + step) / 2 / SAMPLE_RATE - time.time()
        if wait > 0:
            time.sleep(wait)
        stream.write(pcm[i : i + step])
        stream.flush()
        written[(i + len(pcm[i : i + step])) // 2] = time.time()
    return written


def writer_latency(frames: list[dict], written: dict[int, float]) -> np.ndarray:
    """[frames] seconds from the write of each frame's last sample (`audio_s`) to the frame being ready."""
    ends = np.array(sorted(written))
    times = np.array([written[k] for k in ends])
    index = np.searchsorted(ends, np.array([f["audio_s"] for f in frames]) * SAMPLE_RATE - 1e-6)
    return np.array([f["wall_s"] for f in frames]) - times[np.minimum(index, len(times) - 1)]


def session_row(name: str, summary: dict, load: tuple[float, float]) -> dict:
    row = {
        "name": name,
        "fps": summary["fps"],
        "frames": summary["frames"],
        "dropped": summary["dropped"],
        "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p95": summary["latency_ms_p95"],
        "latency_ms_max": summary["latency_ms_max"],
        "sizes": " ".join(f"{k}:{v}" for k, v in summary["sizes"].items()),
        **{f"{stage.replace(' ', '_')}_ms": ms for stage, ms in summary["stage_ms_per_frame"].items()},
        "load_before": load[0],
        "load_after": load[1],
    }
    return row


def stdin_row(run: Path, wave: np.ndarray, tmp: Path, options: tuple[str, ...] = ()) -> dict:
    log = tmp / "stdin.jsonl"
    child, _ = start_live(live_command(run, "--audio-in", "-", "--latency-log", str(log), *options), subprocess.PIPE)
    load = os.getloadavg()[0]
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    written = write_in_real_time(child.stdin, pcm)
    _, err = child.communicate(timeout=120)
    if child.returncode != 0:
        raise RuntimeError(f"`avatar live --audio-in -` failed: {err.decode()[-2000:]}")
    frames, summary = read_log(log)
    latency = writer_latency(frames, written)
    audio_s = np.array([f["audio_s"] for f in frames])
    row = session_row(f"stdin, {len(wave) / SAMPLE_RATE:.0f} s of speech", summary, (load, os.getloadavg()[0]))
    row.update(
        writer_latency_ms_p50=1000 * float(np.median(latency)),
        writer_latency_ms_p95=1000 * float(np.percentile(latency, 95)),
        drift_ms_per_min=60000 * float(np.polyfit(audio_s, latency, 1)[0]) if len(frames) > 2 else None,
        av_offset_ms=0.0,  # the sound sent with frame k is the audio of [k, k + 1) / fps, by construction
    )
    return row


STATS = "return window.liveState"


def browser_row(run: Path, wave: np.ndarray, tmp: Path, seconds: float) -> dict:
    """A microphone session of `seconds` in headless Chromium (the speech file as its microphone)."""
    from selenium import webdriver  # noqa: PLC0415 - only the browser rows drive a browser
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    microphone, log = tmp / "microphone.wav", tmp / "browser.jsonl"
    save_wav(microphone, wave)
    child, address = start_live(live_command(run, "--latency-log", str(log)))
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        f"--user-data-dir={tmp / 'chromium'}", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    load = os.getloadavg()[0]
    samples = []
    try:
        driver.get(address)
        driver.find_element("id", "start").click()
        start = time.time()
        while time.time() - start < seconds:
            time.sleep(1.0)
            stats = driver.execute_script(STATS)["stats"]
            if stats and time.time() - start > 5:  # after the browser's buffers have settled
                samples.append(stats)
    finally:
        driver.quit()
        child.terminate()
        child.communicate(timeout=60)
    _, summary = read_log(log)
    if summary is None:
        raise RuntimeError("the browser session left no summary")
    row = session_row(f"browser, {seconds:.0f} s", summary, (load, os.getloadavg()[0]))

    def median(key):
        values = [s[key] for s in samples if s.get(key) is not None]
        return float(np.median(values)) if values else None

    row.update(
        browser_fps=median("framesPerSecond"),
        browser_jitter_buffer_ms=median("jitterBufferMs"),
        av_offset_ms=median("avOffsetMs"),
    )
    return row


def quality_rows(run: Path, drive: Path, tmp: Path, lookahead_ms: int | None = None) -> list[dict]:
    """The driver dataset's audio said live (a file in real time, recorded) and by `avatar render`; each
    recording's detected mouth opening scored against the driver's tracked opening."""
    from avatar.audio.features import frame_log_energy  # noqa: PLC0415
    from avatar.contracts.dataset import Dataset  # noqa: PLC0415 - the quality rows only
    from avatar.eval.cross_drive import driver_in_sync, person_openings, rendered_openings, score  # noqa: PLC0415
    from avatar.eval.landmarks import FaceLandmarker  # noqa: PLC0415
    from avatar.model.talking_head import TalkingHead  # noqa: PLC0415

    dataset = Dataset(drive)
    audio = dataset.layout.audio
    live_mp4, render_mp4 = tmp / "live.mp4", tmp / "render.mp4"
    options = ["--audio-in", str(audio), "--record", str(live_mp4), "--latency-log", str(tmp / "quality.jsonl")]
    if lookahead_ms is not None:
        options += ["--lookahead-ms", str(lookahead_ms)]
    child, _ = start_live(live_command(run, *options))
    _, err = child.communicate(timeout=600)
    if child.returncode != 0:
        raise RuntimeError(f"`avatar live --audio-in FILE` failed: {err.decode()[-2000:]}")
    replayed = replay(run, load_audio(audio), tmp / "replay.mp4", lookahead_ms)
    subprocess.run(
        [sys.executable, "-m", "avatar.cli", "render", str(run), "--audio", str(audio), "--out", str(render_mp4)],
        check=True, capture_output=True,
    )  # fmt: skip
    head = TalkingHead.load(run)
    own = person_openings(head, run, None)
    wave = load_audio(audio)
    truth, _ = driver_in_sync(dataset, wave)  # the driver's lips in time with its sound, as `avatar eval --drive`
    rows = []
    with FaceLandmarker() as landmarker:
        videos = (("avatar render", render_mp4), ("live features, every frame", replayed), ("avatar live", live_mp4))
        for name, video in videos:
            rendered = rendered_openings(_batches(video), landmarker)
            n = min(len(rendered.openings), len(truth))
            rendered.openings = rendered.openings[:n]
            scored = score(rendered, own, truth[:n], frame_log_energy(wave, dataset.fps, n), None, dataset.fps)
            rows.append({"name": f"quality: {name}, driven by {drive.name}", "frames": n, **scored})
    _, summary = read_log(tmp / "quality.jsonl")
    offline = rows[0]
    for row in rows[1:]:
        row.update(
            corr_vs_render=row["corr_best"] / offline["corr_best"],
            motion_vs_render=row["motion_ratio"] / offline["motion_ratio"],
            lookahead_ms=summary["lookahead_ms"],
        )
    rows[2].update(dropped=summary["dropped"], load=os.getloadavg()[0])
    return rows


def replay(run: Path, wave: np.ndarray, out: Path, lookahead_ms: int | None = None) -> Path:
    """`wave` through a live session that makes every frame in time (`Session.replay`), recorded to `out`."""
    from avatar.device import set_threads  # noqa: PLC0415 - the quality rows only
    from avatar.live.config import LiveConfig  # noqa: PLC0415
    from avatar.live.features import LiveFeatures  # noqa: PLC0415
    from avatar.live.outputs import Recorder  # noqa: PLC0415
    from avatar.live.phones import PhoneStream  # noqa: PLC0415
    from avatar.live.session import LiveAvatar, Session  # noqa: PLC0415
    from avatar.live.timeline import AudioTimeline  # noqa: PLC0415
    from avatar.model.driving import feature_extractor  # noqa: PLC0415
    from avatar.model.talking_head import TalkingHead  # noqa: PLC0415

    cfg = LiveConfig(run=run, **({} if lookahead_ms is None else {"lookahead_ms": lookahead_ms}))
    set_threads(cfg.threads)  # as `avatar live` does: torch's all-core default crawls on a busy machine
    head = TalkingHead.load(run)
    extractor = feature_extractor(head.driving.features)
    phones = PhoneStream() if extractor.phonetic is not None else None
    try:
        if phones is not None:
            phones.start()
        avatar = LiveAvatar(head, cfg.pose, cfg.seed)
        features = LiveFeatures(
            extractor, head.driving.features, avatar.fps, head.audio_context, cfg.lookahead_ms / 1000, cfg.history_s,
            phones=phones,
        )  # fmt: skip
        recorder = Recorder(out, avatar.output, avatar.fps)
        Session(avatar, features, AudioTimeline(self_clocked=True), [recorder], say=lambda text: None).replay(wave)
    finally:
        if phones is not None:
            phones.close()
    return out


def _batches(video: Path, batch: int = 32):
    import av  # noqa: PLC0415 - media libraries load when used

    with av.open(str(video)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == batch:
                yield np.stack(frames)
                frames = []
        if frames:
            yield np.stack(frames)


def run(quick: bool, seconds: float | None = None, run_dir: Path | None = None, drive: Path | None = None):
    run_dir = run_dir or trained_run()
    if run_dir is None:
        return [{"name": "live", "skipped": "no trained run: run `avatar demo` or set AVATAR_BENCH_RUN=RUN"}]
    if not SPEECH.is_file():
        return [{"name": "live", "skipped": f"{SPEECH} missing (the shared example data)"}]
    seconds = seconds or (6.0 if quick else 60.0)
    wave = load_audio(SPEECH)[: int(seconds * SAMPLE_RATE)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        rows.append(stdin_row(run_dir, wave, Path(tmp)))
        if shutil.which("chromium") and shutil.which("chromedriver"):
            rows.append(browser_row(run_dir, wave, Path(tmp), seconds))
        else:
            rows.append({"name": "browser", "skipped": "chromium + chromium-driver not installed"})
        if drive is not None and not quick:
            rows += quality_rows(run_dir, drive, Path(tmp))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 s sessions")
    parser.add_argument("--seconds", type=float, default=None, help="session length (default 60, quick 6)")
    parser.add_argument("--run", type=Path, default=None, help="the trained run (default $AVATAR_BENCH_RUN)")
    parser.add_argument("--drive", type=Path, default=None, help="a dataset whose audio and mouth score quality")
    args = parser.parse_args()
    from avatar.tables import format_table  # noqa: PLC0415

    print(format_table(run(args.quick, args.seconds, args.run, args.drive)))
