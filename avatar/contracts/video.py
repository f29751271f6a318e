"""Video decoding with PyAV: probe a file, and stream its frames resampled by timestamp to a fixed fps.

Resampling rule: output frame i shows the source frame on screen at time start_s + (i + 0.5) / fps
(the centre of its interval [i / fps, (i + 1) / fps)). Sampling at the centre is exact for equal
rates and never depends on rounding for variable frame rates. Frames stream one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.errors import UserError


@dataclass
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float  # the container's average frame rate (only informative for variable frame rate)
    start_s: float  # presentation time of the first video frame
    duration_s: float  # as the container states it (checked against the decoded stream later)
    has_audio: bool
    audio_start_s: float  # presentation time of the first audio sample (0 when there is no audio)


def upright_rgb(frame) -> np.ndarray:
    """[H, W, 3] uint8 RGB as a player shows it: phone videos store the picture sideways with a display
    rotation (counter-clockwise degrees) in the container."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _open(path: Path):
    import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

    try:
        return av.open(str(path))
    except Exception as exc:  # PyAV raises several types for unreadable input
        raise UserError(
            f"{path}: cannot be opened as a video ({exc}). The file is corrupt or not a video: "
            "give an mp4, mov, mkv or webm file."
        ) from exc


def probe_video(path: Path | str) -> VideoInfo:
    """Read the container's description; UserError for a missing file or anything that is not a video."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file. Give the path of a talking-head video.")
    with _open(path) as container:
        if not container.streams.video:
            raise UserError(f"{path}: has no video stream. Give a video file of the person talking.")
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        if not width or not height:
            raise UserError(f"{path}: the video stream has no picture size; the file is corrupt.")
        tb = float(video.time_base) if video.time_base else 0.0
        start_s = video.start_time * tb if video.start_time is not None else 0.0
        if video.duration:
            duration_s = video.duration * tb
        elif container.duration:
            duration_s = container.duration / 1e6 - start_s
        else:
            duration_s = float("nan")
        fps = float(video.average_rate) if video.average_rate else float("nan")
        first = next(_decoded(path, container), None)
        if first is None:
            raise UserError(f"{path}: the video stream has no frames. The file is corrupt or empty.")
        if int(round((getattr(first, "rotation", 0) or 0) / 90)) % 2:
            width, height = height, width  # shown rotated by a quarter turn
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_start_s = 0.0
        if audio is not None and audio.start_time is not None and audio.time_base:
            audio_start_s = audio.start_time * float(audio.time_base)
    return VideoInfo(path, width, height, fps, start_s, duration_s, audio is not None, audio_start_s)


def _frame_time(frame, fallback: float) -> float:
    return float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else fallback


def _decoded(path: Path, container) -> Iterator:
    import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

    try:
        yield from container.decode(video=0)
    except av.error.FFmpegError as exc:
        raise UserError(
            f"{path}: the video stream is corrupt ({exc}). Re-encode or re-download the file "
            "(e.g. `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`)."
        ) from exc


def resampled_frames(
    path: Path | str, fps: float, start_s: float, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Yield [H, W, 3] uint8 RGB frames of the source at fixed `fps`, output frame i being the source frame
    shown at start_s + (i + 0.5) / fps. Stops at the end of the stream (the last source frame lasts one
    source-frame interval) or after `max_frames`."""
    path = Path(path)
    limit = max_frames if max_frames is not None else np.iinfo(np.int64).max
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        nominal_dt = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / fps
        i = 0
        shown = None  # (time, av frame) on screen before the next decoded frame
        shown_rgb = None
        last_dt = nominal_dt
        for frame in _decoded(path, container):
            t = _frame_time(frame, (shown[0] + last_dt) if shown else start_s)
            if shown is not None and t <= shown[0]:
                continue  # out-of-order or duplicate timestamp: keep the earlier frame
            if shown is not None:
                last_dt = t - shown[0]
            # emit the frame on screen for every output centre that falls before this frame's time
            while i < limit and start_s + (i + 0.5) / fps < t:
                if shown is None:  # output times before the first frame show the first frame
                    shown = (t, frame)
                if shown_rgb is None:
                    shown_rgb = upright_rgb(shown[1])
                yield shown_rgb
                i += 1
            if i >= limit:
                return
            shown, shown_rgb = (t, frame), None
        if shown is None:
            return
        end_s = shown[0] + min(last_dt, 2 * nominal_dt)
        while i < limit and start_s + (i + 0.5) / fps < end_s:
            if shown_rgb is None:
                shown_rgb = upright_rgb(shown[1])
            yield shown_rgb
            i += 1


def frames_at_times(
    path: Path | str, times_s: list[float], seek_gap_s: float = 5.0
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time, [H, W, 3] RGB) for the frame on screen at each of the sorted `times_s`. Decoding runs
    forward; it seeks only across gaps longer than `seek_gap_s`, because a seek restarts decoding at a key
    frame (often seconds earlier), which costs more than decoding a short gap."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        frames = _decoded(path, container)
        shown = None  # (time, frame): the last decoded frame at or before the current target
        ahead = None  # (time, frame): a decoded frame past the current target, for the next targets
        for target in times_s:
            position = (ahead or shown or (float("-inf"),))[0]
            if target - position > seek_gap_s:
                try:
                    container.seek(int(target / tb), stream=stream, backward=True, any_frame=False)
                    frames, shown, ahead = _decoded(path, container), None, None
                except Exception:  # noqa: BLE001 - unseekable input: keep decoding forward
                    pass
            if ahead is not None and ahead[0] <= target:
                shown, ahead = ahead, None
            while ahead is None:
                frame = next(frames, None)
                if frame is None:
                    break
                t = _frame_time(frame, target)
                if t <= target or shown is None:
                    shown = (t, frame)
                else:
                    ahead = (t, frame)
            if shown is not None:
                yield target, upright_rgb(shown[1])
