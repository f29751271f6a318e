"""The `avatar` command: one tyro CLI over the pipeline's typed configs.

    avatar preprocess VIDEO --out DATASET      video -> dataset
    avatar train DATASET --out RUN             dataset -> avatar (presets: --preset tiny|default|quality)
    avatar render RUN --audio FILE --out MP4   audio -> lip-synced video
    avatar view RUN                            live browser viewer
    avatar live RUN [--audio-in - | FILE]      the avatar speaks as you speak (microphone, stdin, file)
    avatar eval RUN                            metrics on the validation frames
    avatar bench [RUN]                         speed and memory table
    avatar demo                                preprocess + train + render on the shared example data
    avatar batch JOBS.csv|.jsonl               many render and avatar jobs at once, on Ray

`--preset NAME` (anywhere on the line) starts from `configs/<command>/NAME.toml`; flags override it.
Modules are imported only for the command that runs, so `avatar --help` is fast.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import threading
from pathlib import Path

from avatar.config_io import check_values, load_preset, presets
from avatar.errors import UserError

# command -> (config class, runner taking that config), as "module:attribute"
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("avatar.preprocess.config:PreprocessConfig", "avatar.preprocess.build:run"),
    "train": ("avatar.train.config:TrainConfig", "avatar.train.runner:run"),
    "render": ("avatar.render.config:RenderConfig", "avatar.render.video:run"),
    "view": ("avatar.viewer.config:ViewerConfig", "avatar.viewer.app:run"),
    "live": ("avatar.live.config:LiveConfig", "avatar.live.app:run"),
    "eval": ("avatar.eval.config:EvalConfig", "avatar.eval.evaluate:run"),
    "bench": ("avatar.bench:BenchConfig", "avatar.bench:run"),
    "demo": ("avatar.demo:DemoConfig", "avatar.demo:run"),
    "batch": ("avatar.batch.config:BatchConfig", "avatar.batch.cluster:run"),
}


# what an interrupt leaves, per command (others: nothing, since outputs appear only when complete)
INTERRUPTED = {
    "preprocess": "finished steps are kept; run the same command again to resume.",
    "train": "the last checkpoint is kept; run the same command with --resume to continue.",
    "demo": "finished steps and checkpoints are kept; run the same command again to resume.",
    "batch": "its workers are stopped (and its local cluster); finished jobs are kept and a rerun skips them.",
    "live": "the session was ended there: its recording and latency log are complete up to that moment.",
}


def cpu_preset(name: str) -> str:
    """`default` is the GPU preset; without a CUDA device, `avatar train` starts from `tiny` (and says so)."""
    if name != "train":
        return "default"
    import torch  # noqa: PLC0415 - the command's own import: --help stays fast

    if torch.cuda.is_available() or "tiny" not in presets(name):
        return "default"
    print(
        "note: no CUDA GPU here, so training uses --preset tiny (the CPU preset); give --preset default to override.",
        file=sys.stderr,
    )
    return "tiny"


# fields naming a directory or file of a given kind: a run, a dataset, a video
PLACES = {"run": "run", "dataset": "dataset", "drive": "dataset", "video": "video"}


def refuse_swapped_places(name: str, cfg) -> None:
    """A dataset given where a run is expected, or a run where a dataset or a video is, gets one message with
    the command that takes it (the readers would only find their own files missing, and talk of unfinished
    preprocessing or training); so does a run that an `avatar train` is still writing."""
    from avatar.contracts.atomic import exclusive  # noqa: PLC0415 - the command's own import: --help stays fast
    from avatar.contracts.dataset import DatasetLayout  # noqa: PLC0415

    for field, wanted in PLACES.items():
        path = getattr(cfg, field, None)
        if not isinstance(path, Path) or not path.is_dir():
            continue
        if DatasetLayout(path).manifest.is_file():
            if wanted == "run":
                raise UserError(
                    f"{path}: is a dataset (made by `avatar preprocess`), not a trained run. Train an "
                    f"avatar on it first, `avatar train {path} --out RUN`, and give that RUN to `avatar {name}`."
                )
            if wanted == "video":
                raise UserError(
                    f"{path}: is a dataset already (made by `avatar preprocess`). Train an avatar on it: "
                    f"`avatar train {path} --out RUN`."
                )
        elif (path / "run.json").is_file():
            if wanted == "run" and not (path / "avatar.pt").is_file():
                with exclusive(
                    path,
                    f"{path}: is still being trained (an `avatar train` is writing it). Wait for it "
                    f"to finish, then run `avatar {name}` again.",
                ):
                    pass
            if wanted == "dataset":
                try:
                    recorded = json.loads((path / "run.json").read_text()).get("dataset")
                except (OSError, ValueError, AttributeError):
                    recorded = None
                resume = f"; to continue training it, `avatar train {recorded or 'DATASET'} --out {path} --resume`"
                raise UserError(
                    f"{path}: is a run (made by `avatar train`), not a dataset. Give a dataset made by "
                    f"`avatar preprocess`"
                    + (f" (this run was trained on {recorded})" if recorded else "")
                    + (resume if name == "train" else "")
                    + "."
                )
            if wanted == "video":
                raise UserError(
                    f"{path}: is a trained run, not a video. Make it talk: `avatar render {path} --audio "
                    "FILE --out OUT.mp4`."
                )
        elif wanted == "video":
            raise UserError(f"{path}: is a directory. Give the path of a video file.")


def threading_main() -> bool:

    return threading.current_thread() is threading.main_thread()


def _resolve(spec: str):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def command(name: str):
    """(config class, runner) of a command: the one place that binds command names to the packages that run
    them (the library itself never imports the dataset builder, `preprocess/`)."""
    return tuple(_resolve(spec) for spec in COMMANDS[name])


def _pop_preset(args: list[str]) -> tuple[str | None, list[str]]:
    for i, a in enumerate(args):
        if a == "--preset" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2 :]
        if a.startswith("--preset="):
            return a.split("=", 1)[1], args[:i] + args[i + 1 :]
    return None, args


def _terminated(signum, frame):
    """SIGTERM (a `kill`, a closed terminal session) unwinds like Ctrl-C, so temporaries are removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:

    import tyro  # noqa: PLC0415 - the command's own import: --help stays fast

    if threading_main():
        signal.signal(signal.SIGTERM, _terminated)

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        if not argv:
            print(f"error: give a command: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        if argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    name, rest = argv[0], argv[1:]
    preset, rest = _pop_preset(rest)
    try:
        config_cls, runner = command(name)
        default = load_preset(name, preset, config_cls) if preset else None
        if preset is None and presets(name) and "default" in presets(name):
            preset = cpu_preset(name)
            default = load_preset(name, preset, config_cls)
        cfg = tyro.cli(
            config_cls,
            args=rest,
            default=default,
            prog=f"avatar {name}",
            description=(config_cls.__doc__ or "")
            + (f"\nPresets: {', '.join(presets(name))}" if presets(name) else ""),
        )
        check_values(cfg)
        refuse_swapped_places(name, cfg)
        runner(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: "
            + INTERRUPTED.get(name, "nothing half-written was left (outputs appear only when complete)."),
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
