"""Bad places and concurrent use get one clear message: unwritable --out, a second build of the same
dataset, an audio directory, a busy viewer port, a sideways video, an interrupt, no subcommand; --help names
what each command takes, --device is one option, train picks the CPU preset without a GPU."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from avatar.cli import main
from avatar.errors import UserError
from tests.conftest import cut_clip


@pytest.fixture(scope="module")
def clip(shared_data, clip_dir):
    return cut_clip(shared_data / "mimictalk_german_anchor_20s.mp4", clip_dir / "german_3s.mp4", 1.0, 3.0)


def test_preprocess_into_an_unwritable_place(clip, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in ("/proc/avatar_dataset", str(blocker / "sub")):
        assert main(["preprocess", str(clip), "--out", out, "--min-duration-s", "1"]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: cannot create the dataset directory" in err and "Traceback" not in err


def test_preprocess_names_the_inputs_a_user_mixes_up(tmp_path, capsys):
    from avatar.preprocess.build import run
    from avatar.preprocess.config import PreprocessConfig

    out = tmp_path / "ds"
    assert main(["preprocess", str(tmp_path / "face.png"), "--out", str(out)]) == 2
    assert "face.png: is a still image. Give a video" in capsys.readouterr().err
    assert main(["preprocess", str(tmp_path / "talk.mp4"), "--audio", str(tmp_path), "--out", str(out)]) == 2
    assert f"{tmp_path}: is a directory (given with --audio)" in capsys.readouterr().err
    with pytest.raises(UserError, match="--resolution 0: must be at least"):  # `avatar demo` makes its own config
        run(PreprocessConfig(video=tmp_path / "talk.mp4", out=out, resolution=0))
    assert not out.exists()


def test_a_second_build_of_the_same_dataset_is_refused(clip, tmp_path):
    from avatar.preprocess.build import build_lock, run
    from avatar.preprocess.config import PreprocessConfig
    from avatar.preprocess.steps import MARKER_DIR

    out = tmp_path / "ds"
    (out / MARKER_DIR).mkdir(parents=True)
    with build_lock(out):  # as if another process were building it
        with pytest.raises(UserError, match="another `avatar preprocess` is building"):
            run(PreprocessConfig(video=clip, out=out, min_duration_s=1.0))


def test_sideways_faces_are_noticed_with_the_turn_that_fixes_them():
    from avatar.preprocess.build import face_roll_deg, sideways_warning

    upright = np.zeros((5, 478, 2))
    upright[:, 33], upright[:, 263] = (100, 200), (300, 205)  # the person's right and left outer eye corners
    assert sideways_warning("v.mp4", face_roll_deg(upright)) is None
    size = 512
    clockwise = np.stack([size - 1 - upright[..., 1], upright[..., 0]], -1)  # what ffmpeg's transpose=1 does
    roll = face_roll_deg(clockwise)
    warning = sideways_warning("v.mp4", roll)
    assert "sideways" in warning and "ffmpeg -i v.mp4 -vf transpose=2 " in warning
    turned_back = np.stack([clockwise[..., 1], size - 1 - clockwise[..., 0]], -1)  # transpose=2: counter-clockwise
    assert abs(face_roll_deg(turned_back)) < 5
    counter = np.stack([upright[..., 1], size - 1 - upright[..., 0]], -1)
    assert "-vf transpose=1 " in sideways_warning("v.mp4", face_roll_deg(counter))
    upside_down = size - 1 - upright
    assert "upside down" in sideways_warning("v.mp4", face_roll_deg(upside_down))


def test_audio_directory_is_named_as_a_directory(tmp_path):
    from avatar.audio.io import load_audio

    with pytest.raises(UserError, match="is a directory"):
        load_audio(tmp_path)


def test_a_busy_port_or_a_foreign_host_is_said_before_the_avatar_loads(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["view", str(tmp_path / "no_run"), "--port", str(port)]) == 2
        assert f"--port {port}: in use on 127.0.0.1" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "no_run"), "--host", "192.0.2.1"]) == 2  # TEST-NET: no machine's own
    assert "--host 192.0.2.1: cannot listen there" in capsys.readouterr().err


def test_an_empty_host_is_refused_and_ipv6_hosts_bind(tmp_path, capsys):
    from avatar.hosts import listening_port

    for host in ("", " "):
        assert main(["view", str(tmp_path / "no_run"), "--host", host]) == 2
        assert f"--host {host!r}: empty. Give 127.0.0.1 or ::1 (this machine only)" in capsys.readouterr().err
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    assert listening_port("::1", 0) > 0  # bound with an IPv6 socket (an IPv4 one cannot bind ::1)
    with socket.socket(socket.AF_INET6) as held:  # a port this test holds: no other program can take it
        held.bind(("::1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(UserError, match=f"--port {port}: in use on ::1"):
            listening_port("::1", port)


def test_the_viewer_url_opens_here_and_a_reach_beyond_this_machine_is_said():
    from avatar.hosts import exposure_warning
    from avatar.hosts import url as viewer_url

    assert viewer_url("::1", 8767) == "http://[::1]:8767"
    assert viewer_url("::", 8767) == "http://[::1]:8767"
    assert viewer_url("0.0.0.0", 8767) == "http://127.0.0.1:8767"
    assert viewer_url("localhost", 8767) == "http://localhost:8767"
    assert viewer_url("fe80::1%eth0", 8767) == "http://[fe80::1%25eth0]:8767"
    for host in ("127.0.0.1", "::1", "localhost"):
        assert exposure_warning(host, 8767) is None
    for host in ("0.0.0.0", "::"):
        said = exposure_warning(host, 8767)
        assert f"listens on every network interface (--host {host})" in said and "--host 127.0.0.1" in said
    assert "listens on 192.0.2.1 (--host 192.0.2.1)" in exposure_warning("192.0.2.1", 8767)


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    out = capsys.readouterr()
    assert "avatar preprocess" in out.out and "give a command" in out.err
    assert main(["--help"]) == 0


@pytest.mark.parametrize(
    "name, positional",
    [
        ("preprocess", "VIDEO"),
        ("train", "DATASET"),
        ("render", "RUN"),
        ("view", "RUN"),
        ("eval", "RUN"),
        ("bench", "RUN"),
    ],
)
def test_help_names_what_each_command_takes(name, positional, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    usage = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("usage:"))
    assert usage.split()[-1] == positional and "PATH" not in usage


def test_device_is_one_option_everywhere():
    import typing

    from avatar.cli import COMMANDS, command
    from avatar.device import resolve_device

    with_device = [name for name in COMMANDS if "device" in typing.get_type_hints(command(name)[0])]
    assert set(with_device) == {"train", "render", "view", "live", "eval", "bench"}
    for name in with_device:
        cls = command(name)[0]
        assert typing.get_type_hints(cls)["device"] is str and cls.device == "auto"
    for name in ("tpu", "mps"):
        with pytest.raises(UserError, match=f"--device {name}: .*[Uu]se auto, cpu, cuda or cuda:N"):
            resolve_device(name)


@pytest.mark.parametrize("gpu, preset", [(False, "tiny"), (True, "default")])
def test_train_starts_from_the_cpu_preset_without_a_gpu_and_says_so(gpu, preset, monkeypatch, capsys):
    import torch

    import avatar.train.runner

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(avatar.train.runner, "run", seen.append)
    assert main(["train", "DATASET"]) == 0
    assert seen[0].preset == preset
    assert ("training uses --preset tiny" in capsys.readouterr().err) == (not gpu)


def test_an_interrupted_render_does_not_talk_about_checkpoints(monkeypatch, capsys):
    import avatar.render.video

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(avatar.render.video, "run", interrupted)
    assert main(["render", "RUN", "--audio", "a.wav"]) == 130
    err = capsys.readouterr().err
    assert "nothing half-written" in err and "checkpoint" not in err


def test_sigterm_during_render_leaves_no_temporary(tmp_path):
    """A render killed with SIGTERM unwinds like Ctrl-C: its temporary output is removed."""
    import os
    import signal
    import subprocess
    import sys

    script = f"""
import sys, time
import avatar.render.video as video
from avatar.contracts.atomic import atomic_path
def slow(cfg):
    with atomic_path(cfg.out) as tmp:
        tmp.write_bytes(b"partial")
        print("writing", flush=True)
        time.sleep(30)
video.run = slow
from avatar.cli import main
sys.exit(main(["render", "RUN", "--audio", "a.wav", "--out", {str(tmp_path / "out.mp4")!r}]))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_mediapipe_start_up_noise_is_silenced_and_real_messages_pass():
    """Every detector the pipeline makes (face mesh, face detection, selfie segmentation) starts its graph on
    its own threads, which print the W0000 feedback-manager notice while the first image goes through: each
    detector's first real image below is that moment, so a detector made without its silenced warm-up image
    (`Solution`) prints the notice here (checked: it then fails), with no pause needed to give it time."""
    import subprocess
    import sys

    script = """
import os, sys, numpy as np
from avatar.contracts.face_mesh import FaceMesh, quiet_native_stderr
from avatar.preprocess.landmarks import detect_landmarks
from avatar.preprocess.masks import MaskMaker
from avatar.errors import UserError
blank = np.zeros((64, 64, 3), np.uint8)
with FaceMesh(static=True) as mesh:
    mesh.faces(blank)
masks = MaskMaker()
masks.person(blank)
masks.close()
try:
    detect_landmarks([blank] * 2, show_progress=False)  # face detection and a tracking face mesh
except UserError:
    pass
with quiet_native_stderr():
    os.write(2, b"a real native warning\\n")
"""
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stderr
    assert "W0000" not in err and "XNNPACK" not in err and "absl::InitializeLog" not in err
    assert "GetPrototype" not in err and "a real native warning" in err


def test_stale_render_temporaries_are_swept_and_fresh_ones_kept(tmp_path):
    import os
    import time

    from avatar.render.video import STALE_S, check_output

    stale, fresh = tmp_path / ".talk.abc123.mp4", tmp_path / ".talk.def456.mp4"
    stale.write_bytes(b"left by a killed render")
    fresh.write_bytes(b"another render, still writing")
    old = time.time() - STALE_S - 60
    os.utime(stale, (old, old))
    check_output(tmp_path / "talk.mp4")
    assert not stale.exists() and fresh.exists()
