"""Files: atomic writes (a file or directory appears under its final name only when complete), JSON, hashes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar.errors import UserError


def _umask() -> int:
    """The process umask (read by setting it, so restored at once): tempfile makes private 0600 / 0700
    entries, and finished outputs should get the usual permissions instead."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The temporary name keeps the final suffix (so encoders that guess the format from it work).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=suffix if suffix is not None else final.suffix, dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive(directory: Path | str, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory` for the block: one writer at a time (two would sweep each other's
    temporaries and overwrite each other's files); a UserError saying `busy` when another process holds it. The
    lock belongs to the open directory, so a killed process leaves none behind."""

    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(busy) from None
        yield
    finally:
        os.close(fd)


def jsonable(value: Any) -> Any:
    """Plain JSON data from what the pipeline records: numpy scalars and arrays become numbers and lists,
    paths strings, and inf / nan (not JSON) null."""

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path | str, data: Any) -> None:
    """`data` (made JSON-able by `jsonable`) as an indented JSON file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n")


def save_npy(path: Path | str, array: Any) -> None:

    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(array))


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a file's content, read in blocks (videos can be large)."""

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_versioned(path: Path, version: int, kind: str, remedy: str) -> dict:
    """A torch-saved dict with a "format_version", or a UserError naming the file, what is wrong and `remedy`.

    `kind` names the file for the message ("avatar file", "checkpoint")."""

    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UserError(f"{path}: not a readable {kind} ({exc}). {remedy}") from exc
    found = data.get("format_version") if isinstance(data, dict) else None
    if found != version:
        raise UserError(f"{path}: {kind} format version {found}, this version reads {version}. {remedy}")
    return data
