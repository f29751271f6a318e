"""`avatar batch` on a local Ray cluster of 2 CPUs (one for the module): an avatar job and the render jobs that
wait for it, a corrupt audio file that fails its job alone, a rerun that does nothing, a batch stopped with
Ctrl-C midway and completed by a rerun, and a worker killed mid-render whose job is tried again."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from avatar.audio.io import load_audio
from avatar.batch.cluster import import_ray, start_local
from avatar.batch.cluster import run as batch
from avatar.batch.config import BatchConfig
from avatar.cli import main
from tests.conftest import cut_clip
from tests.export_fixtures import expected_frames, probe
from tests.train_fixtures import tiny_dataset  # noqa: F401 - the fixture

SPEECH = "musetalk_eng_speech_60s.wav"
PREPROCESS = {  # the session's tiny dataset's own settings: the avatar job finds its steps done
    "resolution": 128,
    "min_duration_s": 2.0,
    "crop_samples": 8,
    "preview_seconds": 1.0,
    "contact_sheet_frames": 4,
}
TRAIN = {  # seconds, not minutes: tests/train_fixtures.tiny_config as columns
    "resolution": 32,
    "batch_size": 2,
    "audio_steps": 3,
    "canonical_steps": 4,
    "torso_steps": 3,
    "deform_steps": 4,
    "lpips_start": 2,
    "image_every": 2,
    "checkpoint_every": 3,
    "val_frames": 2,
    "min_train_frames": 20,
    "head.num_face": 200,
    "head.num_shell": 100,
    "head.max_gaussians": 400,
    "mouth.num_gaussians": 30,
    "densify.start_step": 2,
    "densify.every": 2,
    "densify.stop_step": 4,
    "triplane.num_levels": 4,
    "triplane.log2_hashmap_size": 12,
    "triplane.max_resolution": 64,
    "audio.members": 1,
    "audio.channels": 8,
    "audio.embed_dim": 8,
    "audio.heads": 2,
    "audio.eval_every": 2,
    "audio.voices.copies": 1,
}


@pytest.fixture(scope="module")
def ray_cluster():
    """The module's local cluster (2 CPUs); a batch run in this process uses it, a batch in a child process
    reaches it with --address."""
    ray = import_ray()
    start_local(ray, 2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def speech(shared_data, clip_dir) -> list[Path]:
    """Eight short speech clips (1.2 .. 2.6 s) cut from a shared recording."""
    return [cut_clip(shared_data / SPEECH, clip_dir / f"batch_{i}.wav", 3.0 + 4 * i, 1.2 + 0.2 * i) for i in range(8)]


@pytest.fixture(scope="module")
def made(ray_cluster, tiny_dataset, speech, tmp_path_factory):
    """A batch of an avatar job (the tiny dataset's clip -> a run, at test settings) and two render jobs of its
    run: (folder, records). The dataset is a copy of the session's, so the job's preprocessing finds its steps
    done (preprocessing's own resumption) and training is the work."""
    root = tmp_path_factory.mktemp("batch_made")
    shutil.copytree(tiny_dataset.root, root / "macron_dataset")
    video = Path(tiny_dataset.manifest.source["path"])
    avatar = {"video": str(video), "run": "macron", "dataset": "macron_dataset", "preset": "tiny"}
    avatar |= {f"preprocess.{k}": v for k, v in PREPROCESS.items()} | {f"train.{k}": v for k, v in TRAIN.items()}
    renders = [{"run": "macron", "audio": str(speech[i]), "out": f"made/{i}.mp4", "fps": 10} for i in (0, 1)]
    jobs = root / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(job) + "\n" for job in [*renders, avatar]))  # the avatar job last
    return root, batch(BatchConfig(jobs=jobs, report=root / "report.json"))


def check_video(out: Path, audio: Path, fps: float) -> None:
    """The right number of frames for the audio's duration, and its sound in the video."""
    info = probe(out)
    assert info["num_frames"] == expected_frames(audio, fps)
    duration = len(load_audio(audio)) / 16000
    assert abs(info["video_s"] - duration) <= 1 / fps and abs(info["audio_s"] - duration) <= 1 / fps
    sound, said = load_audio(out), load_audio(audio)
    assert np.sqrt(np.mean(sound**2)) > 0.5 * np.sqrt(np.mean(said**2))  # not silence


def render_jobs(path: Path, run: Path, clips: list[Path]) -> Path:
    """A CSV of render jobs of `run`, one per clip, at 10 fps: out/0.mp4, out/1.mp4, ..."""
    path.write_text("run,audio,out,fps\n" + "".join(f"{run},{clip},out/{i}.mp4,10\n" for i, clip in enumerate(clips)))
    return path


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_an_avatar_job_then_its_render_jobs(made, speech):
    root, records = made
    assert [(r["kind"], r["status"], r["attempts"]) for r in records] == [
        ("render", "done", 1),
        ("render", "done", 1),
        ("avatar", "done", 1),
    ]
    avatar = root / "macron" / "avatar.pt"
    for i in (0, 1):  # each render waited for the avatar: it would have failed to load it otherwise
        check_video(root / "made" / f"{i}.mp4", speech[i], 10.0)
        assert (root / "made" / f"{i}.mp4").stat().st_mtime > avatar.stat().st_mtime
    assert json.loads((root / "report.json").read_text())["jobs"] == records


def test_a_rerun_does_nothing_and_says_so(made, capsys):
    root, _ = made
    before = {p: p.stat().st_mtime_ns for p in (root / "made").iterdir()}
    assert main(["batch", str(root / "jobs.jsonl"), "--report", str(root / "again.json")]) == 0
    assert "all 3 jobs of" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (root / "made").iterdir()} == before
    assert {r["status"] for r in json.loads((root / "again.json").read_text())["jobs"]} == {"skipped"}


def test_four_render_jobs_one_corrupt(made, speech, tmp_path, capsys):
    root, _ = made
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    audio = [speech[2], speech[3], corrupt, speech[4]]
    with open(tmp_path / "jobs.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["run", "audio", "out", "fps", "pose"])
        for i, clip in enumerate(audio):
            rows.writerow([root / "macron", clip, f"out/{i}.mp4", 10 if i != 1 else 8, "still" if i == 3 else ""])
    code = main(["batch", str(tmp_path / "jobs.csv"), "--workers", "2", "--report", str(tmp_path / "report.json")])
    assert code != 0
    printed = capsys.readouterr()
    for i in (0, 1, 3):
        check_video(tmp_path / "out" / f"{i}.mp4", audio[i], 8.0 if i == 1 else 10.0)
    assert not (tmp_path / "out" / "2.mp4").exists() and not temporaries(tmp_path / "out")
    report = json.loads((tmp_path / "report.json").read_text())["jobs"]
    bad = [r for r in report if r["status"] == "failed"]
    assert [(r["line"], r["audio"], r["failed"], r["attempts"]) for r in bad] == [(4, str(corrupt), "render", 2)]
    assert str(corrupt) in bad[0]["message"] and "cannot be decoded" in bad[0]["message"]
    assert "failed jobs:" in printed.out and "render out/2.mp4" in printed.out
    assert "1 of 4 jobs failed" in printed.err


def default_sigint() -> None:
    """SIGINT handled as in a terminal, however the tests were started: a shell's background job (`make test &`)
    ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_batch_stopped_midway_completes_on_rerun(made, speech, ray_cluster, tmp_path, capsys):
    """Ctrl-C (SIGINT) once the first clip is done: the workers stop, the finished clips stay, no temporary is
    left; the rerun renders the rest and says how many it skipped."""
    root, _ = made
    jobs = render_jobs(tmp_path / "jobs.csv", root / "macron", speech)
    command = [sys.executable, "-m", "avatar.cli", "batch", str(jobs), "--workers", "2", "--address", ray_cluster]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    said = []
    for line in child.stderr:  # waits for the condition: the first finished job
        said.append(line)
        if line.startswith("done:"):
            child.send_signal(signal.SIGINT)
            break
    said += child.stderr.readlines()
    assert child.wait(timeout=60) == 130, "".join(said)
    assert "interrupted: its workers are stopped" in "".join(said)
    finished = sorted(p.name for p in (tmp_path / "out").glob("*.mp4"))
    assert 1 <= len(finished) < 8 and not temporaries(tmp_path / "out")
    assert main(["batch", str(jobs), "--workers", "2"]) == 0
    assert f"8 jobs, {len(finished)} finished already (skipped)" in capsys.readouterr().err
    for i in range(8):
        check_video(tmp_path / "out" / f"{i}.mp4", speech[i], 10.0)


def worker_processes(title: str) -> list[int]:
    """Ray worker processes of this test process's cluster whose title starts with `title` (the children of
    its raylet, which is a child of this process)."""

    def children(pid: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found

    def name(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    raylets = [pid for pid in children(os.getpid()) if "raylet" in name(pid)]
    return [pid for raylet in raylets for pid in children(raylet) if name(pid).startswith(title)]


def test_a_worker_killed_mid_render_is_replaced_and_its_job_tried_again(made, speech, tmp_path):
    root, _ = made
    clips = speech[5:7]
    jobs = render_jobs(tmp_path / "jobs.csv", root / "macron", clips)
    done: list = []
    runner = threading.Thread(target=lambda: done.append(batch(BatchConfig(jobs=jobs, workers=1))))
    runner.start()
    deadline = time.monotonic() + 120
    while not (rendering := worker_processes("ray::RenderWorker.render")) and time.monotonic() < deadline:
        time.sleep(0.05)  # polls for the condition: a worker rendering
    assert rendering, "no worker started rendering"
    os.kill(rendering[0], signal.SIGKILL)
    runner.join(timeout=120)
    (records,) = done
    assert [r["status"] for r in records] == ["done", "done"]
    assert sorted(r["attempts"] for r in records) == [1, 2]
    for i, clip in enumerate(clips):
        check_video(tmp_path / "out" / f"{i}.mp4", clip, 10.0)
    assert not temporaries(tmp_path / "out")


def test_a_worker_over_its_memory_fails_its_job_with_a_message(tmp_path):
    """--memory-mb binds: beyond it an allocation fails (the job is reported), the machine is not run out of."""
    code = (
        "import torch\n"
        "from avatar.batch.workers import limit_memory, outcome\n"
        "limit_memory(int(open('/proc/self/status').read().split('VmData:')[1].split()[0]) * 1024 + 200 * 2**20)\n"
        "small = torch.zeros(10 * 2**20)\n"  # 40 MB: within the bound
        "try:\n"
        "    torch.zeros(2**28)\n"  # 1 GiB: beyond it
        "except Exception as exc:\n"
        "    print(outcome(0.0, 'render', exc)['message'])\n"
    )
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert said.stdout.startswith("ran out of the worker's memory (raise --memory-mb)"), said
