"""A live session's audio: one timeline of 16 kHz mono samples, when each came in, and the sources that fill it.

Sample n of a session is due at t0 + n / 16 kHz. A source that keeps its own clock (a microphone, a file played
in real time) sets t0 by its arrivals: t0 follows the earliest arrival, so a clock that runs a little fast never
builds a backlog. A source that may run ahead (stdin) is paced instead: t0 is its first arrival, samples
written ahead wait for their time (at most `AHEAD_S` of them: then the writer is held back), and a sample's
latency counts from when it is due. When the audio is late (`avatar.live.session.JITTER_S`), the session fills
the timeline with silence and goes on (the avatar rests); the audio that comes after a stall is due when it
comes (t0 moves), so a stall never makes the delay grow.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from avatar.audio.io import SAMPLE_RATE, iter_audio

AHEAD_S = 5.0  # audio a paced source may hold ahead of real time
PACE_S = 0.02  # a file is released in pieces this long


class AudioTimeline:
    """Samples put by a source thread, taken by the session; thread-safe."""

    def __init__(self, self_clocked: bool):
        self.self_clocked = self_clocked
        self._cond = threading.Condition()
        self._pending: list[np.ndarray] = []
        self.received = 0  # samples on the timeline (silence filled in included)
        self.filled = 0  # samples of silence filled in for late audio
        self.ended = False
        self.t0: float | None = None  # time.monotonic() when sample 0 was due
        self._arrivals: deque[tuple[int, float]] = deque()  # (samples received, when) per put
        self._resync = False  # silence was filled in: a paced source's next audio is due when it comes

    def put(self, samples: np.ndarray, now: float | None = None) -> None:
        """The next float32 samples from the source, which arrived at `now` (default: this moment)."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if not len(samples):
            return
        now = time.monotonic() if now is None else now
        with self._cond:
            end = self.received + len(samples)
            if self.self_clocked:
                self.t0 = min(self.t0 if self.t0 is not None else now, now - end / SAMPLE_RATE)
            elif self.t0 is None or self._resync:  # the first audio, or the first after a stall: due now
                self.t0 = now - self.received / SAMPLE_RATE
            self._resync = False
            self._pending.append(samples)
            self.received = end
            self._arrivals.append((end, now))
            self._cond.notify_all()

    def close(self) -> None:
        """The source has ended."""
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def started(self, timeout_s: float) -> bool:
        """Wait until the first sample (or the end) is in."""
        with self._cond:
            return self._cond.wait_for(lambda: self.t0 is not None or self.ended, timeout_s)

    def due(self, samples: int) -> float:
        """When the first `samples` are due (monotonic time)."""
        return self.t0 + samples / SAMPLE_RATE

    def wait_for(self, samples: int, deadline: float) -> bool:
        """Wait until `samples` are on the timeline, the source ended, or `deadline` (monotonic) passed.
        False only when the deadline passed first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.received >= samples or self.ended, max(0.0, deadline - time.monotonic())
            )

    def fill(self, samples: int) -> int:
        """Silence up to `samples` (the audio is late); returns how much was filled."""
        with self._cond:
            missing = samples - self.received
            if missing <= 0:
                return 0
            self._pending.append(np.zeros(missing, np.float32))
            self.received, self.filled = samples, self.filled + missing
            self._arrivals.append((samples, time.monotonic()))
            self._resync = True
            return missing

    def take(self) -> np.ndarray:
        """Every sample put since the last take."""
        with self._cond:
            pending, self._pending = self._pending, []
            self._cond.notify_all()  # a paced writer may go on
        return np.concatenate(pending) if pending else np.zeros(0, np.float32)

    def arrival(self, samples: int) -> float:
        """When the first `samples` were in and due (monotonic): a sample written ahead of time counts from
        when it was due."""
        with self._cond:
            while len(self._arrivals) > 1 and self._arrivals[0][0] < samples:
                self._arrivals.popleft()  # the session asks in order: older records are done with
            came = next((when for end, when in self._arrivals if end >= samples), time.monotonic())
            return max(came, self.due(samples))

    def wait_room(self, stop: threading.Event) -> None:
        """Block a paced source while it is more than AHEAD_S ahead of real time."""
        with self._cond:
            while not stop.is_set() and self.t0 is not None:
                ahead = self.received / SAMPLE_RATE - (time.monotonic() - self.t0)
                if ahead <= AHEAD_S:
                    return
                self._cond.wait(min(ahead - AHEAD_S, 0.5))


def read_stdin(timeline: AudioTimeline, stop: threading.Event, fd: int | None = None, warn=print) -> None:
    """Raw 16 kHz mono s16le PCM from stdin (or `fd`) onto the timeline as it arrives, until end of file.
    Reads may split a sample between them; an odd byte left at the very end is said and dropped."""
    fd = sys.stdin.fileno() if fd is None else fd
    carry = b""
    try:
        while not stop.is_set():
            timeline.wait_room(stop)
            data = os.read(fd, 6400)
            if not data:
                break
            data = carry + data
            whole = len(data) // 2 * 2
            carry = data[whole:]
            timeline.put(np.frombuffer(data[:whole], "<i2").astype(np.float32) / 32768.0)
    finally:
        if carry:
            warn(
                "stdin: the audio ended with an odd number of bytes; raw s16le has 2 bytes per sample, so the "
                "last byte (half a sample) was dropped."
            )
        timeline.close()


def play_file(timeline: AudioTimeline, path: Path, stop: threading.Event) -> None:
    """A file's sound onto the timeline in real time (as a person would say it), in PACE_S pieces."""
    piece = int(PACE_S * SAMPLE_RATE)
    start = None
    sent = 0
    try:
        for chunk in iter_audio(path):
            for i in range(0, len(chunk), piece):
                if stop.is_set():
                    return
                part = chunk[i : i + piece]
                if start is None:
                    start = time.monotonic()
                wait = start + (sent + len(part)) / SAMPLE_RATE - time.monotonic()
                if wait > 0:
                    stop.wait(wait)
                timeline.put(part)
                sent += len(part)
    finally:
        timeline.close()
