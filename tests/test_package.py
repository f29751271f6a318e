"""The package away from the checkout: a wheel installs one top-level package, `avatar`, that works from any
directory (presets, CUDA sources and benchmarks inside it), and the editable install maps the same folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a copy: the build writes build/ and *.egg-info/ beside the sources it is given
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "out", "build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (path,) = out.glob("avatar-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel in it; the installed dependencies (torch first) are reused, not reinstalled."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # a plain path line: this environment's packages are importable, its .pth files (our editable finder) are not run
    (site / "reuse_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return venv


def test_the_wheel_holds_one_top_level_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"avatar"}
    for member in (
        "avatar/configs/train/tiny.toml",
        "avatar/configs/preprocess/default.toml",
        "avatar/cuda/hash_triplane.cu",
        "avatar/cuda/hash_triplane.h",
        "avatar/cuda/hash_triplane.py",
        "avatar/preprocess/build.py",
        "avatar/benchmarks/bench_render.py",
        "avatar/live/page.html",
    ):
        assert member in names
    shipped = {n for n in names if n.endswith((".py", ".toml", ".cu", ".cpp", ".h"))}
    for folder, package in (
        ("avatar", "avatar"),
        ("preprocess", "avatar/preprocess"),
        ("configs", "avatar/configs"),
        ("cuda", "avatar/cuda"),
        ("benchmarks", "avatar/benchmarks"),
    ):
        for source in (REPO / folder).rglob("*"):
            if source.suffix in (".py", ".toml", ".cu", ".cpp", ".h") and "__pycache__" not in source.parts:
                assert f"{package}/{source.relative_to(REPO / folder).as_posix()}" in shipped, source


def test_the_declared_requirements_name_what_the_code_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in project["dependencies"]}
    assert {"torch", "gsplat", "mediapipe", "numpy", "librosa", "pocketsphinx", "av", "tyro", "viser"} <= declared
    assert {"aiortc", "websockets"} <= declared  # avatar live
    assert {"lpips", "gpu", "dev"} <= set(project["optional-dependencies"])


def test_the_installed_command_works_from_any_directory(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AVATAR_EXAMPLES")}
    run = lambda *args: subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    usage = run(str(installed / "bin" / "avatar"), "--help")
    assert usage.returncode == 0 and "avatar train DATASET --out RUN" in usage.stdout
    # a preset-loading command: the quality preset's values (package data) become tyro's defaults
    quality = tomllib.loads((REPO / "configs" / "train" / "quality.toml").read_text())
    train = run(str(installed / "bin" / "avatar"), "train", "--preset", "quality", "--help")
    assert train.returncode == 0 and "Presets: default, quality, tiny" in train.stdout
    assert quality["deform_steps"] != 600 and f"default: {quality['deform_steps']}" in train.stdout
    probe = run(
        str(installed / "bin" / "python"),
        "-c",
        "import avatar, avatar.preprocess.build, avatar.cuda.hash_triplane as k, pkgutil, avatar.benchmarks\n"
        "print(avatar.__file__)\n"
        "print(all((k.CUDA_SOURCE_DIR / n).is_file() for n in k.SOURCES))\n"
        "print(sorted(m.name for m in pkgutil.iter_modules(avatar.benchmarks.__path__))[0])\n"
        "import importlib.util; print(importlib.util.find_spec('preprocess'))",
    )
    assert probe.returncode == 0, probe.stderr
    where, sources, first_benchmark, top_level_preprocess = probe.stdout.split()
    assert Path(where).is_relative_to(installed) and sources == "True" and first_benchmark.startswith("bench_")
    assert top_level_preprocess == "None"  # no second top-level package


def test_the_editable_install_maps_the_same_folders(tmp_path):
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import avatar.preprocess.build as b, avatar.configs as c; print(b.__file__); print(list(c.__path__)[0])",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    build, configs = probe.stdout.split()
    assert Path(build) == REPO / "preprocess" / "build.py" and Path(configs) == REPO / "configs"
