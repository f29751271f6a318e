"""Typed config dataclasses <-> dicts, and named presets: `configs/<command>/<name>.toml` in the repository,
installed as the package data of `avatar.configs` and read through `importlib.resources`."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from avatar.errors import UserError

PRESETS = resources.files("avatar.configs")
T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain JSON-able data (paths become strings)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


def from_dict(cls: type[T], data: dict, base: T | None = None) -> T:
    """Build `cls` from `data`, starting from `base` (or the defaults); nested dataclasses recurse and
    keys missing from `data` keep their base value. Unknown keys are an error that names them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}; known: {sorted(names)}")
    base = base if base is not None else cls()  # type: ignore[call-arg]
    kwargs = {}
    for f in dataclasses.fields(cls):
        current = getattr(base, f.name)
        if f.name not in data:
            kwargs[f.name] = current
            continue
        value, typ = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(typ) and isinstance(value, dict):
            value = from_dict(typ, value, current)
        elif typ is Path or typing.get_origin(typ) is typing.Union and Path in typing.get_args(typ):
            value = Path(value) if value is not None else None
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return dataclasses.replace(base, **kwargs)


def option_types(cls: type) -> dict[str, Any]:
    """Every option of a config class by its dotted name (`audio.lr`, as on the command line), with its type."""
    hints = typing.get_type_hints(cls)
    types: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            types.update({f"{f.name}.{name}": inner for name, inner in option_types(typ).items()})
        else:
            types[f.name] = typ
    return types


TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


def parse_option(typ: Any, text: str) -> Any:
    """An option's value written as text (a table cell), as `typ`: numbers, true/false, a choice of a Literal,
    'none' for an optional one, space- or comma-separated tuples. A ValueError says what is expected."""
    text = text.strip()
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        (typ,) = [a for a in args if a is not type(None)]
        args = typing.get_args(typ)
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        if text not in args:
            raise ValueError(f"{text!r} is not one of {', '.join(map(str, args))}")
        return text
    if origin is tuple:
        parts = text.replace(",", " ").split()
        if Ellipsis not in args and len(parts) != len(args):
            raise ValueError(f"{text!r}: give {len(args)} values")
        return tuple(parse_option(args[0 if Ellipsis in args else i], part) for i, part in enumerate(parts))
    if typ is bool:
        if text.lower() not in TRUE + FALSE:
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() in TRUE
    if typ in (int, float):
        try:
            return typ(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {'an integer' if typ is int else 'a number'}") from None
    if typ is Path:
        return Path(text)
    return text


def check_values(cfg: Any, prefix: str = "", limits: dict | None = None) -> None:
    """Refuse bad numbers before any work: every float option must be finite, and the options a config
    class lists in its `LIMITS` (field -> (lowest, highest), None for open) must lie in their range; a tuple
    option's every element is checked. Nested configs are checked too (`--audio.lr` style names), against
    their own `LIMITS` and the dotted names of their parent's (`"audio.lr"`: the nested configs belong to the
    model, the ranges a command accepts to the command). Then `cfg.check()`, when the class has one, checks
    rules between options."""

    limits = {**getattr(type(cfg), "LIMITS", {}), **(limits or {})}
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = {key.split(".")[0] for key in limits} - names
    if unknown:
        raise ValueError(f"{type(cfg).__name__}.LIMITS names no option: {sorted(unknown)}")
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), f"--{prefix}{f.name.replace('_', '-')}"
        if dataclasses.is_dataclass(value):
            inner = {key.split(".", 1)[1]: v for key, v in limits.items() if key.startswith(f"{f.name}.")}
            check_values(value, f"{prefix}{f.name}.", inner)
            continue
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        low, high = limits.get(f.name, (None, None))
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                continue
            if isinstance(number, float) and not math.isfinite(number):
                raise UserError(f"{flag} {shown}: give a finite number.")
            if low is not None and number < low:
                raise UserError(
                    f"{flag} {shown}: must be at least {low}" + (f" and at most {high}." if high is not None else ".")
                )
            if high is not None and number > high:
                raise UserError(
                    f"{flag} {shown}: must be at most {high}" + (f" and at least {low}." if low is not None else ".")
                )
    if hasattr(cfg, "check"):
        cfg.check()


def presets(command: str) -> list[str]:
    folder = PRESETS / command
    return (
        sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))
        if folder.is_dir()
        else []
    )


def load_preset(command: str, name: str, cls: type[T]) -> T:
    path = PRESETS / command / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"no preset {name!r} for `avatar {command}`; available: {presets(command) or 'none'}")
    return from_dict(cls, tomllib.loads(path.read_text()))
