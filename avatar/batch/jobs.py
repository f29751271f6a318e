"""The jobs file of `avatar batch`: one job a row (.csv, with a header row) or a line (.jsonl, one JSON object).

A render job has `run`, `audio` and `out`, and any option of `avatar render` as a further column (`fps`,
`pose`, `paste_back` or `paste-back`, ...). An avatar job has `video` and `run` (and optionally `preset`,
`dataset`, `preprocess.OPTION`, `train.OPTION`, nested ones as `train.head.num_face`): preprocess, then train.
A blank cell leaves an option at its default. Relative paths are relative to the jobs file. The whole file is
checked before any job starts (unknown columns, values of the wrong type or out of range), with the line that
is wrong; what only running can find (a missing or corrupt audio file, a missing run) fails that job alone.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar.cli import command
from avatar.config_io import check_values, from_dict, load_preset, option_types, parse_option
from avatar.errors import UserError
from avatar.render.config import RenderConfig
from avatar.train.runner import latest_checkpoint

RENDER_NEEDS = ("run", "audio", "out")
AVATAR_NEEDS = ("video", "run")
AVATAR_OPTIONAL = ("preset", "dataset")
# options the batch sets itself, per worker or per job: not columns
WORKER_OPTIONS = {"device": "--gpus-per-worker", "threads": "--threads"}
PREPROCESS_OWN = {"video", "out"}
TRAIN_OWN = {"dataset", "out", "resume", "preset", "threads", "device"}
FILE_OPTIONS = {"background"}  # text options that may name a file (relative to the jobs file too)


@dataclass
class RenderJob:
    line: int
    """where the job is in the jobs file"""
    render: RenderConfig
    """exactly what `avatar render` would be given (run, audio and out absolute)"""

    kind = "render"

    @property
    def run(self) -> Path:
        return self.render.run

    def done(self) -> bool:
        """Its video exists and is newer than its audio and its avatar (outputs appear only when complete)."""
        try:
            made = self.render.out.stat().st_mtime
            return made >= max(self.render.audio.stat().st_mtime, (self.run / "avatar.pt").stat().st_mtime)
        except OSError:
            return False

    def describe(self) -> dict:
        return {"run": self.run, "audio": self.render.audio, "out": self.render.out}


@dataclass
class AvatarJob:
    line: int
    video: Path
    run: Path
    dataset: Path
    """where the preprocessed dataset goes (default: beside the run, RUN_dataset)"""
    preset: str | None = None
    """training preset; default `default` on a GPU cluster, `tiny` without GPUs"""
    preprocess: dict = field(default_factory=dict)
    """preprocess options by dotted name"""
    train: dict = field(default_factory=dict)
    """train options by dotted name"""

    kind = "avatar"

    def done(self) -> bool:
        return (self.run / "avatar.pt").is_file()

    def describe(self) -> dict:
        return {"run": self.run, "video": self.video, "dataset": self.dataset}

    def configs(self, gpu: bool, threads: int = 2) -> tuple[Any, Any]:
        """(PreprocessConfig, TrainConfig) of this job; the training resumes where an earlier try stopped."""
        preprocess_cls, _ = command("preprocess")
        train_cls, _ = command("train")
        preset = self.preset or ("default" if gpu else "tiny")
        preprocess = from_dict(
            preprocess_cls, nested(self.preprocess), preprocess_cls(video=self.video, out=self.dataset)
        )
        train = dataclasses.replace(
            from_dict(train_cls, nested(self.train), load_preset("train", preset, train_cls)),
            dataset=self.dataset,
            out=self.run,
            preset=preset,
            resume=latest_checkpoint(self.run).is_file(),
            threads=threads,
            device="cuda" if gpu else "cpu",
        )
        return preprocess, train


Job = RenderJob | AvatarJob


def nested(dotted: dict[str, Any]) -> dict:
    """{"head.num_face": 200} -> {"head": {"num_face": 200}} (what config_io.from_dict takes)."""
    out: dict = {}
    for name, value in dotted.items():
        *parents, last = name.split(".")
        place = out
        for parent in parents:
            place = place.setdefault(parent, {})
        place[last] = value
    return out


def read_jobs(path: Path) -> list[Job]:
    """Every job of a jobs file, checked; render jobs know the avatar job that makes their run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such jobs file. Give a .csv or .jsonl file with one job a row.")
    rows = list(_rows(path))
    if not rows:
        raise UserError(f"{path}: holds no jobs. Give one job a row (render: run,audio,out; avatar: video,run).")
    columns = Columns()
    jobs = [columns.job(path, line, cells) for line, cells in rows]
    _refuse_clashes(path, jobs)
    return jobs


def _rows(path: Path):
    """(line number, {column: text}) of each non-blank row; JSON values become the text a cell would hold."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return
            for cells in reader:
                if None in cells:
                    raise UserError(f"{path} line {reader.line_num}: more cells than the header has columns.")
                if any((v or "").strip() for v in cells.values()):
                    yield reader.line_num, {k.strip(): (v or "").strip() for k, v in cells.items()}
    elif path.suffix.lower() == ".jsonl":
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise UserError(f"{path} line {number}: not JSON ({exc}). Give one JSON object a line.") from None
            if not isinstance(data, dict):
                raise UserError(f'{path} line {number}: give one JSON object a line, such as {{"run": ...}}.')
            yield number, {k: _as_text(v) for k, v in data.items()}
    else:
        raise UserError(f"{path}: a jobs file is .csv or .jsonl.")


def _as_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


class Columns:
    """The columns a job may have and their types, from the configs of the commands the jobs run."""

    def __init__(self):
        preprocess_cls, _ = command("preprocess")
        train_cls, _ = command("train")
        self.render = {k: t for k, t in option_types(RenderConfig).items() if k not in WORKER_OPTIONS}
        self.preprocess = {k: t for k, t in option_types(preprocess_cls).items() if k not in PREPROCESS_OWN}
        self.train = {k: t for k, t in option_types(train_cls).items() if k not in TRAIN_OWN}

    def known(self) -> str:
        render = ", ".join(k for k in self.render if k not in RENDER_NEEDS)
        return (
            f"render jobs take {', '.join(RENDER_NEEDS)} and the options of `avatar render` ({render}); avatar "
            f"jobs take {', '.join(AVATAR_NEEDS + AVATAR_OPTIONAL)}, preprocess.OPTION and train.OPTION (the "
            "options of `avatar preprocess --help` and `avatar train --help`, nested ones as train.head.num_face)"
        )

    def job(self, path: Path, line: int, cells: dict[str, str]) -> Job:
        where = f"{path} line {line}"
        cells = {name.replace("-", "_"): text for name, text in cells.items()}
        for name in cells:
            if name in WORKER_OPTIONS:
                raise UserError(
                    f"{where}: column {name!r} is set by `avatar batch` for each worker ({WORKER_OPTIONS[name]}); "
                    "remove it."
                )
            if not (name in self.render or name in AVATAR_NEEDS + AVATAR_OPTIONAL or self._avatar_type(name)):
                raise UserError(f"{where}: unknown column {name!r}; {self.known()}.")
        given = {name: text for name, text in cells.items() if text != ""}
        if given.get("video") and given.get("audio"):
            raise UserError(f"{where}: give audio (a render job) or video (an avatar job), not both.")
        if given.get("video"):
            return self._avatar_job(path, line, given)
        return self._render_job(path, line, given)

    def _avatar_type(self, name: str):
        step, _, option = name.partition(".")
        return {"preprocess": self.preprocess, "train": self.train}.get(step, {}).get(option)

    def _render_job(self, path: Path, line: int, given: dict[str, str]) -> RenderJob:
        where = f"{path} line {line}"
        missing = [name for name in RENDER_NEEDS if name not in given]
        if missing:
            raise UserError(
                f"{where}: a render job needs {', '.join(RENDER_NEEDS)} (missing: {', '.join(missing)}); an "
                "avatar job needs video and run."
            )
        values = {}
        for name, text in given.items():
            if name not in self.render:
                raise UserError(f"{where}: column {name!r} belongs to avatar jobs (video, run); this is a render job.")
            values[name] = _value(path, where, name, self.render[name], text)
        cfg = dataclasses.replace(RenderConfig(run=values["run"], audio=values["audio"]), **values)
        _check(where, cfg)
        return RenderJob(line, cfg)

    def _avatar_job(self, path: Path, line: int, given: dict[str, str]) -> AvatarJob:
        where = f"{path} line {line}"
        if "run" not in given:
            raise UserError(f"{where}: an avatar job needs video and run (the run directory training writes).")
        steps: dict[str, dict] = {"preprocess": {}, "train": {}}
        for name, text in given.items():
            if name in AVATAR_NEEDS + AVATAR_OPTIONAL:
                continue
            typ = self._avatar_type(name)
            if typ is None:
                raise UserError(
                    f"{where}: column {name!r} belongs to render jobs (run, audio, out); this is an avatar job."
                )
            step, _, option = name.partition(".")
            steps[step][option] = _value(path, where, name, typ, text)
        video, run = (_value(path, where, name, Path, given[name]) for name in ("video", "run"))
        dataset = _value(path, where, "dataset", Path, given["dataset"]) if "dataset" in given else None
        job = AvatarJob(
            line,
            video,
            run,
            dataset or run.with_name(f"{run.name}_dataset"),
            given.get("preset"),
            steps["preprocess"],
            steps["train"],
        )
        for gpu in (False, True) if job.preset is None else (False,):  # either default preset takes the options
            try:
                configs = job.configs(gpu)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            for cfg in configs:
                _check(where, cfg)
        return job


def _value(path: Path, where: str, name: str, typ: Any, text: str) -> Any:
    """A cell as its option's type; paths (and files named by FILE_OPTIONS) relative to the jobs file."""
    try:
        value = parse_option(typ, text)
    except ValueError as exc:
        raise UserError(f"{where}: column {name!r}: {exc}.") from None
    if isinstance(value, Path) and not value.is_absolute():
        value = (path.parent / value).resolve()
    if name in FILE_OPTIONS and (path.parent / value).is_file():
        value = str((path.parent / value).resolve())
    return value


def _check(where: str, cfg: Any) -> None:
    try:
        check_values(cfg)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _refuse_clashes(path: Path, jobs: list[Job]) -> None:
    """Two jobs writing one file or one run would overwrite each other: refuse before any work."""
    seen: dict[tuple[str, Path], int] = {}
    for job in jobs:
        key = (job.kind, job.render.out if isinstance(job, RenderJob) else job.run)
        if key in seen:
            raise UserError(
                f"{path}: lines {seen[key]} and {job.line} both write {key[1]}; give each job its own "
                + ("out." if job.kind == "render" else "run.")
            )
        seen[key] = job.line
