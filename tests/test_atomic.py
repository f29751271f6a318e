"""Atomic writes: all or nothing, and finished files readable like any other."""

from __future__ import annotations

import os
import stat

import pytest

from avatar.contracts.atomic import atomic_dir, atomic_path, write_json


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_finished_file_and_directory_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").read_text().strip().startswith("{")
    # not tempfile's private 0600 / 0700: other users and tools (web servers, players) can read results
    assert mode(tmp_path / "a.json") == 0o644
    assert mode(tmp_path / "d") == 0o755


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    final = tmp_path / "out.mp4"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("encoder died")
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
