"""`avatar render`: new audio -> a lip-synced mp4 of the avatar, streamed chunk by chunk.

    audio file ─read once─▶ feature rows ─▶ windows (chunks) ─▶ TalkingHead.render (batches, two at once) ─▶ H.264 ┐
         └───────────────── decoded again at 48 kHz, cut to each batch's end ──────────────▶ AAC ───┴▶ mp4

Sync: the video has `num_frames_for(audio samples, 16 kHz, fps)` frames (the audio duration times fps,
halves rounded up) and the sound is cut or padded to exactly that many frames' duration. Memory does not
grow with the audio's length beyond the clip's feature rows (`AudioClip`, about 60 kB a second): every
other stage holds at most one chunk. The file appears only when complete.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from tqdm import tqdm

from avatar.audio.io import iter_audio
from avatar.audio.streaming import SampleReader
from avatar.contracts.atomic import atomic_path
from avatar.device import FRAMES_IN_FLIGHT, resolve_device, set_threads
from avatar.errors import UserError
from avatar.model.audio_encoder import NO_LEVELS, ClipLevels
from avatar.model.driving import blink_schedule, pose_schedule, read_clip, track_positions
from avatar.model.talking_head import FrameConditions, TalkingHead
from avatar.render.config import RenderConfig
from avatar.render.mux import AUDIO_RATE, VideoWriter
from avatar.render.paste_back import SourceFrames, feather_weights, output_size, paste
from avatar.tables import format_table

if TYPE_CHECKING:
    from avatar.model.talking_head import FrameConditions, TalkingHead

CONTAINERS = (".mp4", ".mov", ".mkv")
COLOURS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "green": (0, 177, 64),
    "blue": (0, 71, 187),
}


class StageTimer:
    """Wall time per pipeline stage, for the frames-per-second table printed at the end."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        """Count time measured elsewhere (another thread's) to `stage`."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def timed(self, stage: str, items: Iterator) -> Iterator:
        """`items`, with the time spent producing each one counted to `stage`."""
        while True:
            with self(stage):
                item = next(items, None)
            if item is None:
                return
            yield item

    def report(self, frames: int, audio_s: float, total_s: float) -> str:
        """The table of stages: seconds and frames per second (none for a stage that took no time)."""
        rows = [
            {"stage": stage, "seconds": seconds, "frames/s": frames / seconds if seconds > 0 else None}
            for stage, seconds in {**self.seconds, "total": total_s}.items()
        ]
        title = f"{frames} frames ({audio_s:.2f} s of audio) in {total_s:.1f} s, {audio_s / total_s:.2f}x real time"
        return format_table(rows, title)


def refuse_overwriting_input(out: Path, source: Path, what: str = "the input --audio") -> None:
    """The output must not replace an input it is made from (`--audio clip.mp4 --out clip.mp4`, or the training
    video that --paste-back reads), also through links."""

    out, source = Path(out), Path(source)
    same = out.resolve() == source.resolve() or (out.exists() and source.exists() and os.path.samefile(out, source))
    if same:
        raise UserError(
            f"--out {out}: is {what} {source}; writing it would replace your input. Give another --out path."
        )


def check_output(out: Path) -> Path:
    """Refuse, before any work, an output the run could not write: wrong container, a directory, or a place
    where no file can be created."""
    out = Path(out)
    if out.suffix.lower() not in CONTAINERS:
        raise UserError(f"{out}: write the video as {', '.join(CONTAINERS)} (H.264 + AAC).")
    if out.is_dir():
        raise UserError(f"{out}: is a directory. Give a file name such as {out / 'talking.mp4'}.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.stem}.probe."):
            pass
    except OSError as exc:
        raise UserError(f"{out}: cannot write there ({exc.strerror or exc}). Choose a writable --out path.") from exc
    sweep_stale_temporaries(out)
    return out


STALE_S = 600.0  # a render writes its temporary continuously; one untouched this long was left by a killed render


def sweep_stale_temporaries(out: Path, older_than_s: float = STALE_S) -> list[Path]:
    """Remove the temporaries (`.NAME.XXXX.mp4`) that killed renders of `out` left behind; returns them.
    `avatar batch` stops its own renders and then removes theirs at once (`older_than_s=0`)."""
    removed = []
    for path in out.parent.glob(f".{out.stem}.*{out.suffix}"):
        try:
            if time.time() - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def background_image(spec: str, resolution: int) -> np.ndarray | None:
    """[resolution, resolution, 3] float32 0..1 from --background, or None for the training plate."""

    spec = spec.strip()
    if spec.lower() == "plate":
        return None
    rgb = None
    if spec.lower() in COLOURS:
        rgb = COLOURS[spec.lower()]
    elif spec.startswith("#") and len(spec) == 7:
        try:
            rgb = tuple(int(spec[i : i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            rgb = None
    elif spec.count(",") == 2:
        try:
            rgb = tuple(int(v) for v in spec.split(","))
        except ValueError:
            rgb = None
    if rgb is not None:
        if not all(0 <= v <= 255 for v in rgb):
            raise UserError(f"--background {spec}: colour components go from 0 to 255.")
        return np.broadcast_to(np.asarray(rgb, np.float32) / 255, (resolution, resolution, 3)).copy()
    image = cv2.imread(spec, cv2.IMREAD_COLOR) if Path(spec).is_file() else None
    if image is None:
        raise UserError(
            f"--background {spec}: not 'plate', a colour (white, #20a040, 32,160,64) or a readable image file."
        )
    h, w = image.shape[:2]
    side = min(h, w)  # centre square, then the render size
    square = image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side, ::-1]
    interp = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
    return (
        cv2.resize(np.ascontiguousarray(square), (resolution, resolution), interpolation=interp).astype(np.float32)
        / 255
    )


def run(cfg: RenderConfig) -> Path:
    """`avatar render RUN --audio FILE --out OUT.mp4`."""

    check_output(cfg.out)  # before the avatar loads: a bad --out fails at once
    refuse_overwriting_input(cfg.out, cfg.audio)
    set_threads(cfg.threads)
    head = TalkingHead.load(cfg.run, device=resolve_device(cfg.device))
    return render_video(cfg, head)


def render_video(cfg: RenderConfig, head: TalkingHead) -> Path:
    """Render `cfg.audio` spoken by a loaded avatar into `cfg.out`; returns the path written. `avatar render`
    loads the avatar for one clip; `avatar batch` loads it once per worker and renders many clips through here
    (`cfg.run`, `cfg.device` and `cfg.threads` are the loader's: not read here)."""

    start = time.perf_counter()
    out = check_output(cfg.out)
    refuse_overwriting_input(out, cfg.audio)
    if cfg.paste_back:
        refuse_overwriting_input(out, Path(head.driving.source.path), "the training video that --paste-back reads")
    head.spec.backend = cfg.backend
    driving = head.driving
    timer = StageTimer()
    resolution = int(cfg.resolution or head.resolution)
    if resolution < 16 or resolution % 2:
        raise UserError(f"--resolution {resolution}: give an even number of pixels, at least 16.")
    fps = float(cfg.fps or head.fps)
    if fps <= 0:
        raise UserError(f"--fps {cfg.fps}: give a positive frame rate.")
    with timer("audio features"):
        clip = read_clip(cfg.audio, driving)
    num_frames = clip.num_frames(fps)
    if num_frames == 0:
        raise UserError(f"{cfg.audio}: {clip.duration_s:.3f} s of audio is shorter than half a frame at {fps:g} fps.")
    if clip.silent:
        print(f"{cfg.audio}: the audio is silent; the avatar keeps a still, closed mouth.", file=sys.stderr)
    device = next(head.parameters()).device
    plate = background_image(cfg.background, head.resolution)
    background = torch.from_numpy(plate).to(device) if plate is not None else None
    blinks = blink_schedule(driving, num_frames, fps, cfg.blink, cfg.seed)
    window = driving.features.window
    with timer("motion gain"):  # a pass over the whole clip first: how lazily this voice moves the mouth
        levels = head.audio_encoder.levels(clip.windows(fps, window, head.audio_context, cfg.chunk_frames))
    print(f"motion gain of this clip: {levels.gain:.2f}")
    windows = timer.timed("audio features", clip.windows(fps, window, head.audio_context, cfg.chunk_frames))
    channels = clip.channels
    sound = SampleReader(
        iter_audio(cfg.audio, AUDIO_RATE, "mono" if channels == 1 else "stereo"), 1 if channels == 1 else 2
    )
    source = None
    if cfg.paste_back:
        source = SourceFrames(driving.source, driving.fps)
        width, height = output_size(source.width, source.height)
        weights = feather_weights(int(round(driving.source.crop.size)))
    else:
        width = height = resolution
    progress = _progress(num_frames)
    try:
        with atomic_path(out) as tmp:
            writer = VideoWriter(tmp, width, height, fps, channels, cfg.crf, cfg.encoder_speed, cfg.audio_kbps)
            try:

                def rendered(cond: FrameConditions) -> tuple[np.ndarray, float]:  # in a render thread
                    begin = time.perf_counter()
                    rgb = head.render(cond, background=background)["rgb"]
                    rgb = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()  # [B, H, W, 3]
                    return rgb, time.perf_counter() - begin

                def write(frames: range, rgb: np.ndarray) -> None:
                    if resolution != rgb.shape[1] and not cfg.paste_back:
                        with timer("resize"):
                            interp = cv2.INTER_AREA if rgb.shape[1] > resolution else cv2.INTER_CUBIC
                            rgb = np.stack(
                                [cv2.resize(im, (resolution, resolution), interpolation=interp) for im in rgb]
                            )
                    if source is not None:
                        with timer("paste-back"):
                            shown = driving.source.first_frame + track_positions(
                                driving, len(frames), cfg.pose, fps, frames.start
                            )
                            rgb = np.stack(
                                [paste(im, source[j], driving.source.crop, weights) for im, j in zip(rgb, shown)]
                            )
                    with timer("encode"):
                        writer.write_frames(rgb)
                        writer.write_audio(sound.read(writer.samples_until(frames.stop) - writer.samples_written))
                    progress.update(len(frames))

                # FRAMES_IN_FLIGHT batches rendered at once (one's networks beside the other's compositing),
                # written in order while the next ones render
                def write_oldest(in_flight: deque[tuple[range, Future]]) -> None:
                    frames, future = in_flight.popleft()
                    rgb, seconds = future.result()
                    timer.add(f"render ({FRAMES_IN_FLIGHT} at once)", seconds)  # (their seconds overlap)
                    write(frames, rgb)

                in_flight: deque[tuple[range, Future]] = deque()
                with ThreadPoolExecutor(FRAMES_IN_FLIGHT, thread_name_prefix="render") as pool:
                    for frames, cond in driven_batches(head, windows, blinks, cfg.pose, fps, cfg.batch_frames, levels):
                        in_flight.append((frames, pool.submit(rendered, cond)))
                        if len(in_flight) >= FRAMES_IN_FLIGHT:
                            write_oldest(in_flight)
                    while in_flight:
                        write_oldest(in_flight)
                with timer("encode"):
                    writer.close()
            except BaseException:
                writer.abort()
                raise
    finally:
        progress.close()
        if source is not None:
            source.close()
    for label, part in (("phone decoding", clip.extractor.phonetic), ("speech model", clip.extractor.learned)):
        if part is not None:  # part of reading the clip, shown on its own line
            timer.seconds["audio features"] -= part.seconds
            timer.seconds[label] = part.seconds
    print(timer.report(num_frames, clip.duration_s, time.perf_counter() - start))
    print(f"wrote {out} ({num_frames} frames at {fps:g} fps, {width}x{height}, H.264 + AAC)")
    return out


def driven_batches(
    head: TalkingHead,
    windows: Iterator[np.ndarray],
    blinks: np.ndarray,
    pose: str,
    fps: float,
    batch_frames: int,
    levels: ClipLevels = NO_LEVELS,
) -> Iterator[tuple[range, FrameConditions]]:
    """(output frames, their FrameConditions) in batches of at most `batch_frames`, from chunks of feature
    windows [b, C, W, F] of consecutive frames, the avatar's pose schedule, the blinks [N, 2] and the clip's
    levels (`AudioEncoder.levels`)."""

    device = next(head.parameters()).device
    first = 0
    for chunk in windows:
        for lo in range(0, len(chunk), batch_frames):
            frames = range(first + lo, first + min(len(chunk), lo + batch_frames))
            rotation, translation, body = pose_schedule(head.driving, len(frames), pose, fps, frames.start)
            yield (
                frames,
                FrameConditions.from_arrays(
                    device,
                    chunk[lo : lo + len(frames)],
                    rotation,
                    translation,
                    blinks[frames.start : frames.stop],
                    body,
                    levels,
                ),
            )
        first += len(chunk)


def _progress(total: int):

    return tqdm(total=total, unit="frame", desc="render", disable=not sys.stderr.isatty(), file=sys.stderr)
