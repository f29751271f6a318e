"""Every numeric option is checked before any work: one clear message naming the option, exit 2, nothing
written; an output that is an input is refused."""

from __future__ import annotations

import os

import pytest

from avatar.cli import main


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["render", "RUN", "--audio", "a.wav", "--batch-frames", "-1"], "--batch-frames -1"),
        (["render", "RUN", "--audio", "a.wav", "--batch-frames", "0"], "--batch-frames 0"),
        (["render", "RUN", "--audio", "a.wav", "--fps", "0"], "--fps 0.0"),
        (["render", "RUN", "--audio", "a.wav", "--resolution", "0"], "--resolution 0"),
        (["render", "RUN", "--audio", "a.wav", "--crf", "99"], "--crf 99"),
        (["render", "RUN", "--audio", "a.wav", "--audio-kbps", "0"], "--audio-kbps 0"),
        (["render", "RUN", "--audio", "a.wav", "--threads", "0"], "--threads 0"),
        (["eval", "RUN", "--batch-size", "0"], "--batch-size 0"),
        (["eval", "RUN", "--resolution", "7"], "--resolution 7"),
        (["eval", "RUN", "--max-frames", "0"], "--max-frames 0"),
        (["train", "DATASET", "--batch-size", "0"], "--batch-size 0"),
        (["train", "DATASET", "--resolution", "0"], "--resolution 0"),
        (["train", "DATASET", "--audio.lr", "nan"], "--audio.lr nan"),
        (["train", "DATASET", "--lr-means", "-1"], "--lr-means -1.0"),
        (["train", "DATASET", "--seed", "-1"], "--seed -1"),
        (["train", "DATASET", "--val-frames", "0"], "--val-frames 0"),
        (["train", "DATASET", "--head.num-face", "0"], "--head.num-face 0"),
        (["train", "DATASET", "--head.sh-degree", "9"], "--head.sh-degree 9"),
        (["train", "DATASET", "--audio.members", "0"], "--audio.members 0"),
        (["train", "DATASET", "--audio.dropout", "1.5"], "--audio.dropout 1.5"),
        (["train", "DATASET", "--audio.memory-k", "3", "0"], "--audio.memory-k 3 0"),
        (["train", "DATASET", "--densify.every", "0"], "--densify.every 0"),
        (["train", "DATASET", "--triplane.num-levels", "0"], "--triplane.num-levels 0"),
        (["render", "RUN", "--audio", "a.wav", "--seed", "-1"], "--seed -1"),
        (["preprocess", "VIDEO", "--val-fraction", "0"], "--val-fraction 0.0"),  # training needs validation frames
        (["view", "RUN", "--port", "70000"], "--port 70000"),
        (["live", "RUN", "--port", "70000"], "--port 70000"),
        (["live", "RUN", "--lookahead-ms", "-1"], "--lookahead-ms -1"),
        (["live", "RUN", "--min-resolution", "8"], "--min-resolution 8"),
        (["bench", "--frames", "0"], "--frames 0"),
        (["bench", "--resolutions", "0"], "--resolutions 0"),
        (["demo", "--train-resolution", "0"], "--train-resolution 0"),
        (["demo", "--train-scale", "-1"], "--train-scale -1.0"),
    ],
)
def test_bad_numbers_are_refused_by_name(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # train may first note that it picked the CPU preset
    assert err.startswith(f"error: {flag}:") and ("must be" in err or "finite" in err)
    assert "Traceback" not in err


def test_options_that_must_agree_are_refused_together(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "DATASET", "--audio.embed-dim", "64", "--audio.heads", "3"]) == 2
    assert "--audio.heads must divide --audio.embed-dim" in capsys.readouterr().err
    assert main(["train", "DATASET", "--triplane.base-resolution", "64", "--triplane.max-resolution", "32"]) == 2
    assert "--triplane.max-resolution 32: must be at least --triplane.base-resolution (64)" in capsys.readouterr().err
    assert main(["train", "DATASET", "--audio.gain-min-corr", "0.6", "--audio.gain-full-corr", "0.5"]) == 2
    assert "--audio.gain-full-corr 0.5: must be above --audio.gain-min-corr (0.6)" in capsys.readouterr().err
    assert main(["train", "DATASET", "--audio.context", "2", "--audio.pause-lead", "3"]) == 2
    assert "--audio.pause-lead 3: at most --audio.context (2)" in capsys.readouterr().err


def test_every_range_names_an_option_and_every_preset_is_in_range():
    from avatar.cli import COMMANDS, command
    from avatar.config_io import check_values, load_preset, presets

    for name in COMMANDS:
        cls = command(name)[0]
        for cfg in [load_preset(name, preset, cls) for preset in presets(name)] or [cls()]:
            check_values(cfg)  # a range that names no option is a ValueError


def test_preprocess_nan_fps_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "dataset"
    assert main(["preprocess", str(tmp_path / "clip.mp4"), "--out", str(out), "--fps", "nan"]) == 2
    assert "--fps nan: give a finite number" in capsys.readouterr().err
    assert not out.exists()


def test_render_refuses_to_replace_its_input(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"the user's video")
    link, hard = tmp_path / "link.mp4", tmp_path / "hard.mp4"
    os.symlink(clip, link)
    os.link(clip, hard)
    for out in (clip, link, hard):
        assert main(["render", str(tmp_path / "run"), "--audio", str(clip), "--out", str(out)]) == 2
        assert "would replace your input" in capsys.readouterr().err
    assert clip.read_bytes() == b"the user's video"


def test_default_threads_leave_cores_free():
    import torch

    from avatar.device import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(None) == max(1, (os.cpu_count() or 2) // 2) == torch.get_num_threads()
        assert set_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv", [["render", "RUN", "--audio", "a.wav"], ["view", "RUN"], ["live", "RUN"]])
def test_render_and_view_set_their_threads_before_the_avatar_loads(argv, tmp_path, monkeypatch):
    import avatar.device
    import avatar.live.app
    import avatar.render.video
    import avatar.viewer.app

    seen = []
    for module in (avatar.device, avatar.render.video, avatar.viewer.app, avatar.live.app):
        monkeypatch.setattr(module, "set_threads", seen.append)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2 and main([*argv, "--threads", "1"]) == 2  # then: no such run
    assert seen == [None, 1]  # None: set_threads' default, half the cores


def test_eval_refuses_a_file_as_its_out_and_a_directory_as_drive_audio(tmp_path, capsys):
    taken = tmp_path / "metrics.json"
    taken.write_text("{}")
    assert main(["eval", str(tmp_path / "run"), "--out", str(taken)]) == 2
    assert f"--out {taken}: is a file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "run"), "--drive-audio", str(tmp_path)]) == 2
    assert f"--drive-audio {tmp_path}: is a directory" in capsys.readouterr().err
