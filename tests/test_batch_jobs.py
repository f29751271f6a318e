"""The jobs file of `avatar batch`, read and checked before any job runs (no Ray here): render and avatar jobs,
options as columns with their types, paths relative to the file, and one clear message for what is wrong."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from avatar.batch.jobs import AvatarJob, RenderJob, read_jobs
from avatar.config_io import parse_option
from avatar.errors import UserError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_render_and_avatar_jobs_from_csv(tmp_path):
    jobs = read_jobs(
        write(
            tmp_path / "jobs.csv",
            "run,audio,out,fps,pose,paste-back,video,preset,train.head.num_face,preprocess.resolution\n"
            "runs/a,clips/1.wav,out/1.mp4,12.5,still,true,,,,\n"
            "runs/a,/abs/2.wav,out/2.mp4,,,,,,,\n"
            "\n"
            "runs/a,,,,,,videos/a.mp4,tiny,300,128\n",
        )
    )
    first, second, avatar = jobs
    assert isinstance(first, RenderJob) and isinstance(avatar, AvatarJob)
    assert (first.line, second.line, avatar.line) == (2, 3, 5)  # blank rows are skipped, lines kept
    assert first.render.run == tmp_path / "runs/a" and first.render.audio == tmp_path / "clips/1.wav"
    assert (first.render.fps, first.render.pose, first.render.paste_back) == (12.5, "still", True)
    assert second.render.audio == Path("/abs/2.wav") and second.render.fps is None and second.render.pose == "track"
    preprocess, train = avatar.configs(gpu=False)
    assert avatar.dataset == tmp_path / "runs/a_dataset" and preprocess.out == avatar.dataset
    assert (preprocess.video, preprocess.resolution) == (tmp_path / "videos/a.mp4", 128)
    assert (train.preset, train.head.num_face, train.out, train.device, train.resume) == (
        "tiny",
        300,
        tmp_path / "runs/a",
        "cpu",
        False,
    )


def test_jsonl_values_keep_their_types(tmp_path):
    lines = [
        {"run": "r", "audio": "a.wav", "out": "o.mp4", "blink": 0, "resolution": None, "paste_back": False},
        {"video": "v.mp4", "run": "r2", "train.audio.voices.copies": 2, "dataset": "/data/ds"},
    ]
    render, avatar = read_jobs(write(tmp_path / "jobs.jsonl", "\n".join(map(json.dumps, lines)) + "\n"))
    assert (render.render.blink, render.render.resolution, render.render.paste_back) == (0.0, None, False)
    assert avatar.dataset == Path("/data/ds") and avatar.configs(gpu=True)[1].audio.voices.copies == 2
    assert avatar.configs(gpu=True)[1].preset == "default" and avatar.configs(gpu=False)[1].preset == "tiny"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run,audio,out,colour\nr,a.wav,o.mp4,red\n", "line 2: unknown column 'colour'; render jobs take run"),
        ("run,audio,out,fps\nr,a.wav,o.mp4,fast\n", "line 2: column 'fps': 'fast' is not a number"),
        ("run,audio,out,pose\nr,a.wav,o.mp4,wobble\n", "'wobble' is not one of track, still, smooth"),
        ("run,audio,out,crf\nr,a.wav,o.mp4,99\n", "line 2: --crf 99: must be at most 51"),
        ("run,audio,out,threads\nr,a.wav,o.mp4,4\n", "column 'threads' is set by `avatar batch` for each worker"),
        ("run,audio\nr,a.wav\n", "a render job needs run, audio, out (missing: out)"),
        ("run,audio,out,video\nr,a.wav,o.mp4,v.mp4\n", "give audio (a render job) or video (an avatar job), not both"),
        ("run,video,fps\nr,v.mp4,10\n", "column 'fps' belongs to render jobs"),
        ("run,video,train.head.colour\nr,v.mp4,1\n", "unknown column 'train.head.colour'"),
        ("run,video,preset\nr,v.mp4,huge\n", "line 2: no preset 'huge' for `avatar train`"),
        ("run,audio,out\nr,a.wav,o.mp4\nr,b.wav,o.mp4\n", "lines 2 and 3 both write"),
        ("run,audio,out\nr,a.wav,o.mp4,extra\n", "line 2: more cells than the header has columns"),
        ("run,audio,out\n", "holds no jobs"),
    ],
)
def test_a_wrong_jobs_file_is_refused_with_the_line_and_the_fix(tmp_path, text, message):
    with pytest.raises(UserError) as refused:
        read_jobs(write(tmp_path / "jobs.csv", text))
    assert message in str(refused.value)


def test_other_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="no such jobs file"):
        read_jobs(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="a jobs file is .csv or .jsonl"):
        read_jobs(write(tmp_path / "jobs.txt", "run,audio,out\n"))
    with pytest.raises(UserError, match="line 2: not JSON"):
        read_jobs(write(tmp_path / "jobs.jsonl", '{"run": "r", "audio": "a", "out": "o.mp4"}\n{run\n'))


def test_a_render_is_done_when_its_video_is_newer_than_its_audio_and_avatar(tmp_path):
    (tmp_path / "run").mkdir()
    (job,) = read_jobs(write(tmp_path / "jobs.csv", "run,audio,out\nrun,a.wav,o.mp4\n"))
    assert not job.done()  # nothing there
    for name in ("a.wav", "run/avatar.pt", "o.mp4"):
        (tmp_path / name).write_bytes(b"x")
    now = time.time()
    os.utime(tmp_path / "o.mp4", (now, now))
    os.utime(tmp_path / "a.wav", (now - 10, now - 10))
    os.utime(tmp_path / "run/avatar.pt", (now - 10, now - 10))
    assert job.done()
    os.utime(tmp_path / "run/avatar.pt", (now + 10, now + 10))  # the avatar was trained again since
    assert not job.done()


def test_an_address_where_no_cluster_answers_is_said_at_once(tmp_path, capsys):
    from avatar.cli import main

    jobs = write(tmp_path / "jobs.csv", "run,audio,out\nrun,a.wav,o.mp4\n")
    assert main(["batch", str(jobs), "--address", "127.0.0.1:1"]) == 2
    assert "--address 127.0.0.1:1: no Ray cluster reached (nothing answers there)" in capsys.readouterr().err


def test_ray_is_imported_by_the_batch_driver_alone():
    """Ray is an optional extra: `avatar render` and everything else work without it."""
    root = Path(__file__).resolve().parents[1]
    importing = sorted(
        str(path.relative_to(root))
        for folder in ("avatar", "preprocess", "benchmarks", "configs", "cuda")
        for path in (root / folder).rglob("*.py")
        if re.search(r"^\s*(import ray|from ray\b)", path.read_text(), re.MULTILINE)
    )
    assert importing == ["avatar/batch/cluster.py"]


def test_one_batch_of_a_jobs_file_at_a_time(tmp_path, capsys):
    from avatar.cli import main
    from avatar.contracts.atomic import exclusive

    jobs = write(tmp_path / "jobs.csv", "run,audio,out\nrun,a.wav,o.mp4\n")
    with exclusive(jobs, "held by the test"):
        assert main(["batch", str(jobs)]) == 2
    assert "another `avatar batch` is running these jobs" in capsys.readouterr().err


def test_option_text_parsing():
    assert parse_option(tuple[int, ...], "256, 512") == (256, 512)
    assert parse_option(tuple[float, float], "0.5 1") == (0.5, 1.0)
    assert parse_option(int | None, "None") is None and parse_option(bool, "Yes") is True
    with pytest.raises(ValueError, match="give 2 values"):
        parse_option(tuple[float, float], "1 2 3")
    with pytest.raises(ValueError, match="is not an integer"):
        parse_option(int, "1.5")
