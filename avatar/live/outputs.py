"""What a live session leaves behind: its recording (`--record`) and its latency log (`--latency-log`).

The recording is an mp4 of every frame (a dropped frame repeats the one before, so the video keeps its frame
rate) with the sound that drove them, cut to the picture's duration as `avatar render` cuts it; it is written
under a temporary name and appears only when the session has ended, complete. The latency log is written as
the session goes, one JSON line per frame made (`Session._frame`: frame, audio_s, wall_s, latency_s, size)
and a summary line at the end, so a monitor can follow it; it is the project's latency contract (read by
`avatar.live.latency` and the benchmark).
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np

from avatar.audio.io import SAMPLE_RATE
from avatar.contracts.atomic import atomic_path, jsonable
from avatar.errors import UserError
from avatar.render.mux import AUDIO_RATE, VideoWriter
from avatar.render.video import check_output


def numbered(path: Path, session: int) -> Path:
    """The output of a server's `session`-th session: PATH itself for the first, NAME-2.EXT, ... after it."""
    return path if session <= 1 else path.with_name(f"{path.stem}-{session}{path.suffix}")


def check_log(path: Path) -> Path:
    """Refuse, before any work, a latency log that cannot be written."""
    if path.is_dir():
        raise UserError(f"--latency-log {path}: is a directory. Give a file name such as {path / 'latency.jsonl'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise UserError(f"--latency-log {path}: cannot write there ({exc.strerror or exc}).") from exc
    return path


class Resampler:
    """16 kHz mono float32 chunks -> the recording's 48 kHz, one stream (no seams between chunks)."""

    def __init__(self):
        import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is written

        self._av = av
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        self._pts = 0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if not len(samples):
            return np.zeros(0, np.float32)
        frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None], "flt", "mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, self._pts
        self._pts += len(samples)
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


_ABORT = object()  # the recorder's queue: leave no file


class Recorder:
    """The session's mp4, encoded in a thread of its own so that the frames it is given are not delayed."""

    def __init__(self, path: Path, size: int, fps: float, crf: int = 20):
        self.path = check_output(path)
        self.size, self.fps, self.crf = size, fps, crf
        self._queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self._abandon = False
        self._thread = threading.Thread(target=self._write, daemon=True, name="avatar-record")
        self._thread.start()

    def frame(self, k: int, image: np.ndarray | None, audio: np.ndarray, info: dict | None) -> None:
        self._queue.put((image, audio))

    def status(self, text: str) -> None:
        pass

    def close(self, summary: dict) -> None:
        """Finish the file (it appears under its name now); an empty session leaves none. Interrupted while
        it finishes (a second Ctrl-C), it leaves none."""
        self._queue.put(None)
        try:
            self._thread.join()
        except KeyboardInterrupt:
            self.abort()
            raise
        if self.error is not None:
            raise UserError(f"--record {self.path}: the recording failed ({self.error}); no file was left.")

    def abort(self) -> None:
        """The session failed: no file is left."""
        self._abandon = True
        self._queue.put(_ABORT)
        self._thread.join()

    def _write(self) -> None:
        try:
            first = self._queue.get()
            if first is None or first is _ABORT:
                return
            with atomic_path(self.path) as tmp:
                writer = VideoWriter(tmp, self.size, self.size, self.fps, 1, crf=self.crf, speed="veryfast")
                try:
                    self._frames(writer, first)
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
        except BaseException as exc:  # said by close(), in the session's thread
            self.error = exc

    def _frames(self, writer: VideoWriter, item) -> None:
        resample, sound = Resampler(), np.zeros(0, np.float32)
        last = np.zeros((self.size, self.size, 3), np.uint8)
        while item is not None:
            if item is _ABORT or self._abandon:
                raise RuntimeError("the session failed")
            image, audio = item
            last = last if image is None else image
            writer.write_frames(last[None])
            sound = np.concatenate([sound, resample(audio)])
            want = writer.samples_until(writer.frames_written) - writer.samples_written
            if len(sound) >= want:  # the resampler holds a few samples back: they come with the next frame
                writer.write_audio(sound[:want, None])
                sound = sound[want:]
            item = self._queue.get()
        want = writer.samples_until(writer.frames_written) - writer.samples_written
        writer.write_audio(np.pad(sound, (0, max(0, want - len(sound))))[:want, None])


def read_log(path: Path) -> tuple[list[dict], dict | None]:
    """A latency log's frame lines and its summary line (None while the session is still going)."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if lines and lines[-1].get("summary"):
        return lines[:-1], lines[-1]
    return lines, None


class LatencyLog:
    """One JSON line per frame made, then the session's summary line (`read_log` reads them)."""

    def __init__(self, path: Path):
        self.path = check_log(path)
        self._file = open(path, "w")  # noqa: SIM115 - open for the whole session, closed in close()

    def frame(self, k: int, image: np.ndarray | None, audio: np.ndarray, info: dict | None) -> None:
        if info is not None:
            self._file.write(json.dumps(jsonable(info)) + "\n")
            self._file.flush()

    def status(self, text: str) -> None:
        pass

    def close(self, summary: dict) -> None:
        self._file.write(json.dumps(jsonable(summary)) + "\n")
        self._file.close()

    def abort(self) -> None:
        """The session failed: the lines so far stay, with no summary."""
        self._file.close()
