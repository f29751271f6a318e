"""Shared fixtures: the real test material in ../shared/data and short clips cut from it at run time."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test material not found at {SHARED_DATA}")
    return SHARED_DATA


def cut_clip(src: Path, dst: Path, start_s: float, duration_s: float, extra: list[str] | None = None) -> Path:
    """Cut [start, start + duration) of `src` into `dst` with ffmpeg (re-encoded, so cuts are exact)."""
    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-loglevel",
        "error",
        "-ss",
        str(start_s),
        "-i",
        str(src),
        "-t",
        str(duration_s),
        *(extra or []),
        str(dst),
    ]
    subprocess.run(cmd, check=True)
    return dst


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture
def one_torch_thread():
    """Many small ops on a shared 2-core machine: one torch thread is several times faster than two spinning
    against each other (and against other jobs)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
