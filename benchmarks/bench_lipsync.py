"""Lip sync of trained avatars on audio they were not trained on: one table over every driver.

Each RUN (from `avatar train` on one of the shared videos) is driven, as `avatar eval --drive` /
`--drive-audio` drive it (avatar.eval.cross_drive: rendered, the mouth detected on every frame), by
- every OTHER run's dataset: that person's voice, scored against that person's tracked mouth (correlation at
  lag 0 and best within +-5 frames, its lag, the motion ratio, the silent frames with a closed mouth);
- the speech clips in ../shared/data without video (the espeak-ng voices, MuseTalk's English speech,
  Macron's voice from another recording, a radio interview over a music bed): motion ratio, pauses closed,
  vowels open, loudness correlation;
- its own held-out voice (the validation frames), scored like the cross-driven pairs;
- with `--tts DIR`, eight more synthetic voices (`TTS_SET`: English, British, French and German espeak-ng voices
  saying other texts), made at run time into DIR: the set to develop the pause and motion behaviour on, so
  that the two shared espeak clips stay a test.
The motion ratio is always over the avatar's own person's real spread. The static head (the deformation off)
is the baseline of every row with `--static`.

    python benchmarks/bench_lipsync.py RUN [RUN ...] [--max-frames N] [--static] [--tts DIR] [--out table.json]

In `avatar bench`: the runs listed in $AVATAR_BENCH_RUNS, separated by ':'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import torch

from avatar.contracts.atomic import write_json
from avatar.errors import UserError
from avatar.eval.cross_drive import DRIVE_COLUMNS, cross_driven, own_voice
from avatar.eval.evaluate import evaluation_dataset
from avatar.eval.landmarks import FaceLandmarker
from avatar.examples import example_data
from avatar.model.talking_head import TalkingHead
from avatar.tables import format_table

SHARED = example_data()
SPEECH_CLIPS = (
    "espeak_en_us_male_26s.wav",
    "espeak_en_us_female_12s.wav",
    "musetalk_eng_speech_60s.wav",
    "genefacepp_macron_speech_12s.wav",
    "sadtalker_hdtf_radio31_8s.wav",
)
# (file stem, espeak-ng voice, words a minute, pitch 0-99, text): voices and texts the shared clips do not use
TTS_SET = (
    (
        "tts_us_f1",
        "en-us+f1",
        160,
        55,
        "Good evening. Tonight we look at the weather for the coming week. Rain in "
        "the north, sunshine in the south. And later, the sports results.",
    ),
    (
        "tts_us_f4",
        "en-us+f4",
        175,
        65,
        "Welcome to the museum. Please keep your ticket with you. The first room "
        "shows paintings from the old harbour, and the second, maps of the city.",
    ),
    (
        "tts_gb_f2",
        "en-gb+f2",
        150,
        50,
        "I would like to thank everyone who made this possible. Without you, none "
        "of this would have happened. Thank you, and good night.",
    ),
    (
        "tts_us_m3",
        "en-us+m3",
        165,
        50,
        "Let me explain how the system works. First, the camera records a short "
        "video. Then, the model learns your face. Finally, it speaks.",
    ),
    (
        "tts_gb_m",
        "en-gb",
        145,
        50,
        "The train to Edinburgh will depart from platform four. Passengers for York, "
        "please change at Leeds. We apologise for the delay.",
    ),
    (
        "tts_us_m7",
        "en-us+m7",
        170,
        40,
        "Our quarterly numbers are in. Sales grew by twelve percent, and costs "
        "fell. Next year, we plan to open three new offices.",
    ),
    (
        "tts_fr_f2",
        "fr+f2",
        150,
        50,
        "Bonjour à tous. Merci d'être venus ce matin. Nous allons parler de l'avenir "
        "de notre ville, et de ses habitants.",
    ),
    (
        "tts_de_m2",
        "de+m2",
        150,
        50,
        "Guten Abend, meine Damen und Herren. Hier sind die Nachrichten. Das Wetter "
        "bleibt kalt, mit Schnee in den Bergen.",
    ),
)
COLUMNS = tuple(c for c in DRIVE_COLUMNS if c not in ("frames", "face_detected"))  # frames has its own column


def avatar_rows(
    run: Path, others: list[Path], clips: list[Path], max_frames: int | None, static: bool, batch: int = 8
) -> list[dict]:

    head = TalkingHead.load(run)
    name = Path(head.driving.source.path).stem
    rows = []

    def add(driver: str, result: dict) -> None:
        for method, m in result["methods"].items():
            if method == "static_head" and not static:
                continue
            if method in ("avatar", "static_head"):
                rows.append(
                    {
                        "avatar": name,
                        "driver": driver,
                        "method": method,
                        "frames": m["frames"],
                        **{k: m.get(k) for k in COLUMNS},
                    }
                )

    try:
        own = evaluation_dataset(head, run, None)
    except UserError as exc:
        print(f"note: no own-voice row for {run}: {exc}")
        own = None
    for other in others:
        dataset = TalkingHead.load(other).driving.dataset["path"]
        add(
            Path(dataset).name,
            cross_driven(head, run, Path(dataset), None, max_frames, batch, own, static, own_voice_row=False),
        )
    for clip in clips:
        add(clip.stem, cross_driven(head, run, None, clip, max_frames, batch, own, static, own_voice_row=False))
    if own is None:
        return rows
    with FaceLandmarker() as landmarker:
        m = own_voice(head, own, landmarker, batch)
    rows.append(
        {
            "avatar": name,
            "driver": "own held-out voice",
            "method": "avatar",
            "frames": m["frames"],
            **{k: m.get(k) for k in COLUMNS},
        }
    )
    return rows


def synthesise_tts(folder: Path) -> list[Path]:
    """The clips of TTS_SET as WAV files in `folder` (made once, reused after)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit(
            "--tts: espeak-ng is not on the PATH; install it (Debian/Ubuntu: apt-get install "
            "espeak-ng) or leave out --tts."
        )
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for stem, voice, rate, pitch, text in TTS_SET:
        path = folder / f"{stem}.wav"
        if not path.is_file():
            tmp = path.with_suffix(".part.wav")
            subprocess.run([espeak, "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(tmp), text], check=True)
            tmp.replace(path)
        clips.append(path)
    return clips


def format_rows(rows: list[dict]) -> str:
    return format_table([{k: r.get(k) for k in ("avatar", "driver", "method", "frames", *COLUMNS)} for r in rows])


def table(runs: list[Path], max_frames: int | None, static: bool, extra_clips: list[Path] = ()) -> list[dict]:
    clips = [SHARED / c for c in SPEECH_CLIPS if (SHARED / c).is_file()] + list(extra_clips)
    rows = []
    for run in runs:
        rows += avatar_rows(run, [r for r in runs if r != run], clips, max_frames, static)
        print(format_rows(rows), flush=True)
    return rows


def run(quick: bool) -> list[dict]:
    """Rows for `avatar bench`: the runs in $AVATAR_BENCH_RUNS (avatars trained on the shared videos)."""
    runs = [Path(p) for p in os.environ.get("AVATAR_BENCH_RUNS", "").split(":") if p]
    if not runs:
        return [{"name": "lip sync", "skipped": "no runs: set AVATAR_BENCH_RUNS=RUN1:RUN2 (from `avatar train`)"}]
    return [
        {"name": f"lip sync {r['avatar']} <- {r['driver']}", **r}
        for r in table(runs, 50 if quick else None, static=False)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories from `avatar train`")
    parser.add_argument("--max-frames", type=int, default=None, help="drive at most this many frames per driver")
    parser.add_argument("--static", action="store_true", help="also score the static head on every driver")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--tts",
        type=Path,
        default=None,
        metavar="DIR",
        help="also drive with the eight espeak-ng voices of TTS_SET, made into DIR (needs espeak-ng)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = table(args.runs, args.max_frames, args.static, synthesise_tts(args.tts) if args.tts else [])
    if args.out is not None:
        write_json(args.out, rows)
        print(f"wrote {args.out}")
    print(json.dumps({"rows": len(rows)}))


if __name__ == "__main__":
    main()
