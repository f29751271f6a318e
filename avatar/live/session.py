"""One live session: the clock that turns a timeline of audio into frames as they fall due, never later.

    timeline ──take──▶ LiveFeatures (mel here, phones in their process) ──stack──▶ LiveAvatar.render ──▶ sinks
       ▲ source thread (microphone, stdin, file)          (FRAMES_IN_FLIGHT render threads)   frame k and the
                                                                                    audio of [k, k+1) / fps, in order

Frame k shows the audio of [k, k + 1) / fps and is made once the audio up to its end plus the look-ahead is
in (or, when the audio is late, once silence has been put in its place). A frame that could only start more
than `MAX_LATE_S` after its audio was due is dropped: the session jumps to the newest frame whose audio is in,
so the delay cannot grow. The render size steps down when the loop's work for a frame (its features and the
wait for a free render thread) does not fit the frame interval, and back up when it fits with room
(`SizeControl`); every change is said to the sinks (the page, the log, stderr).
Each sink gets every frame in order with its sound: the image, or None for a dropped frame.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import cv2
import numpy as np
import torch

from avatar.audio.io import SAMPLE_RATE
from avatar.device import FRAMES_IN_FLIGHT
from avatar.live.features import LiveFeatures
from avatar.live.timeline import AudioTimeline
from avatar.model.audio_encoder import NO_LEVELS, ClipLevels
from avatar.model.driving import blink_schedule, pose_schedule
from avatar.model.talking_head import FrameConditions
from avatar.render.video import StageTimer
from avatar.viewer.app import Layers, render_view, training_fov_y

JITTER_S = 0.25  # audio this late is waited for; later, silence stands in for it (a stall)
MAX_LATE_S = 0.06  # a frame that would start later than this after its audio was due is dropped
PHONES_WAIT_S = 0.03  # at most this long for the phone decoder to catch up with a frame's audio
BLINK_FRAMES = 25 * 60 * 30  # blinks are drawn for 30 minutes at a time (then the schedule repeats)
POSE_BLOCK = 1500  # frames of head pose computed at once
LEVELS_BLOCK = 25  # the clip's levels are measured again every this many frames


class Sink(Protocol):
    """Where a session's frames go: the page (WebRTC), a recording, the latency log."""

    def frame(self, k: int, image: np.ndarray | None, audio: np.ndarray, info: dict | None) -> None:
        """Frame k's [H, W, 3] uint8 image (None: dropped, show the previous one), its sound (16 kHz mono) and
        its latency-log record (`Session.record`; None when dropped)."""

    def status(self, text: str) -> None:
        """Something the person watching should know (a lower resolution, dropped frames, a stalled input)."""

    def close(self, summary: dict) -> None:
        """The session has ended."""

    def abort(self) -> None:
        """The session failed: leave nothing half-written."""


def size_ladder(output: int, smallest: int) -> list[int]:
    """Render sizes from `output` down to `smallest` in steps of about 1/8, even numbers."""
    sizes = [output]
    while sizes[-1] > smallest:
        nxt = max(smallest, int(sizes[-1] * 7 / 8) // 2 * 2)
        if nxt >= sizes[-1]:
            break
        sizes.append(nxt)
    return sizes


class SizeControl:
    """The render size, judged every `WINDOW` frames: a step down when frames took more than `DOWN` of the frame
    interval or were dropped, unless the smaller size was no faster when last tried, and back up when this size
    is no faster than the larger one (on a CPU the cost per Gaussian dominates at small sizes: `HELPS` is the
    gain a step must bring); a step up after `SETTLE` frames when the larger size would fit within `UP` of the
    interval (its time there, or this one grown with the pixels). Times older than `REPEAT` frames are
    forgotten (the machine's load changes). When no size helps, frames are dropped, and that is said too (at
    most every `REPEAT` frames)."""

    DOWN, UP, HELPS, WINDOW, SETTLE, REPEAT = 0.9, 0.7, 0.95, 25, 75, 250

    def __init__(self, sizes: list[int], interval_s: float):
        self.sizes, self.interval, self.index = sizes, interval_s, 0
        self.average: float | None = None
        self.seen: dict[int, tuple[float, int]] = {}  # size -> (average frame time there, when: frame count)
        self.frames = self.since_change = self.dropped = 0
        self.said_drops = -self.REPEAT

    @property
    def size(self) -> int:
        return self.sizes[self.index]

    def update(self, seconds: float, dropped: int) -> str | None:
        """Account one frame's processing time and the frames dropped before it; a message when the size changes
        or frames go on being dropped."""
        self.average = seconds if self.average is None else 0.9 * self.average + 0.1 * seconds
        window = self.frames // self.WINDOW
        self.frames += 1 + dropped  # frames of the stream, made or dropped: the judgement keeps to time
        self.since_change += 1 + dropped
        self.dropped += dropped
        if self.frames // self.WINDOW == window:
            return None
        dropped, self.dropped = self.dropped, 0
        self.seen[self.size] = (self.average, self.frames)
        larger = self.sizes[self.index - 1] if self.index > 0 else None
        smaller = self.sizes[self.index + 1] if self.index + 1 < len(self.sizes) else None
        if dropped or self.average > self.DOWN * self.interval:
            if larger is not None and self.average >= self.HELPS * self._seen(larger, float("inf")):
                return self._change(-1, "is no faster at a smaller size")
            if smaller is not None and self._seen(smaller, 0.0) < self.HELPS * self.average:
                return self._change(+1, "cannot keep up")
            if dropped and self.frames - self.said_drops >= self.REPEAT:
                self.said_drops = self.frames
                shown = self.WINDOW / (self.WINDOW + dropped) / self.interval
                return f"dropping frames to stay in time: about {shown:.0f} FPS shown (this machine renders no faster)"
        elif larger is not None and self.since_change >= self.SETTLE:
            if self._seen(larger, self.average * (larger / self.size) ** 2) < self.UP * self.interval:
                return self._change(-1, "has room again")
        return None

    def _seen(self, size: int, otherwise: float) -> float:
        """The average frame time at `size` when last judged, unless that is older than REPEAT frames (the
        machine's load changes)."""
        average, when = self.seen.get(size, (otherwise, self.frames))
        return average if self.frames - when <= self.REPEAT else otherwise

    def _change(self, step: int, why: str) -> str:
        self.index += step
        self.since_change, self.average = 0, None
        full = self.sizes[0]
        if self.index == 0:
            return f"back to {full} px: the machine {why}"
        return f"rendering at {self.size} px, shown at {full} px: the machine {why} at 25 FPS"


class LiveAvatar:
    """A loaded avatar (TalkingHead) ready for a stream: one frame at a time, from its window stack and index,
    with the person's own head motion and blinks (the schedules `avatar render` uses)."""

    def __init__(self, head, pose: str, seed: int, output: int | None = None):
        self.head, self.pose, self.seed = head, pose, seed
        self.fps = float(head.fps)
        self.output = int(output or head.resolution)
        self.device = next(head.parameters()).device
        self.blinks = blink_schedule(head.driving, BLINK_FRAMES, self.fps, None, seed)
        self._poses: tuple[int, tuple[np.ndarray, ...]] | None = None

    def pose_of(self, k: int) -> tuple[np.ndarray, ...]:
        """(rotation [3, 3], translation [3], body [K]) of frame k."""
        first = k // POSE_BLOCK * POSE_BLOCK
        if self._poses is None or self._poses[0] != first:
            self._poses = (first, pose_schedule(self.head.driving, POSE_BLOCK, self.pose, self.fps, first))
        return tuple(part[k - first] for part in self._poses[1])

    def conditions(self, stack: np.ndarray, k: int, levels: ClipLevels) -> FrameConditions:
        rotation, translation, body = self.pose_of(k)
        blink = self.blinks[k % len(self.blinks)]
        return FrameConditions.from_arrays(
            self.device, stack[None], rotation[None], translation[None], blink[None], body[None], levels
        )

    @torch.no_grad()
    def render(self, cond: FrameConditions, size: int) -> np.ndarray:
        """[output, output, 3] uint8: at the training camera, rendered at `size` and scaled to the output."""
        if size == self.head.resolution:
            rgb = self.head.render(cond)["rgb"][0]
            image = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        else:  # the viewer's training view at any size (the torso and plate scaled with it)
            image = render_view(self.head, cond, Layers(), np.eye(4), training_fov_y(self.head), size, size)
        if image.shape[0] != self.output:
            interp = cv2.INTER_AREA if image.shape[0] > self.output else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.output, self.output), interpolation=interp)
        return image


class RollingLevels:
    """The stream's `ClipLevels` (motion gain, noise floor: `AudioEncoder.levels`) over its last `frames`
    frames, measured again every LEVELS_BLOCK frames; the noise floor is the lowest measured so far.

    Why the lowest: a file's floor comes from all of it, pauses included; the last seconds of a stream are
    often all speech (its start always is), and a floor measured on them sits where soft speech is, so the
    pause gate closes the mouth on words (measured in docs/live.md)."""

    def __init__(self, encoder, frames: int):
        self.encoder = encoder
        self.measures: deque[np.ndarray] = deque(maxlen=max(1, frames // LEVELS_BLOCK))
        self.pending: list[np.ndarray] = []
        self.value = NO_LEVELS

    def add(self, stack: np.ndarray) -> None:
        self.pending.append(stack)
        if len(self.pending) == LEVELS_BLOCK:
            self.measures.append(self.encoder.frame_measures(np.stack(self.pending)))
            self.pending = []
            levels = self.encoder.levels_of(np.concatenate(self.measures))
            if self.value is not NO_LEVELS:
                levels = replace(levels, noise_floor=min(levels.noise_floor, self.value.noise_floor))
            self.value = levels


@dataclass
class Report:
    """What a session did, for its summary line."""

    frames: int = 0
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)
    stalls: int = 0
    started: float = 0.0
    ended: float = 0.0
    timer: StageTimer = field(default_factory=StageTimer)

    def summary(self, fps: float, lookahead_s: float, silence_s: float) -> dict:
        seconds = max(self.ended - self.started, 1e-9)
        lat = np.asarray(self.latencies) * 1000 if self.latencies else np.full(1, np.nan)
        shown = self.frames + self.dropped
        return {
            "summary": True,
            "frames": self.frames,
            "dropped": self.dropped,
            "fps": self.frames / seconds if shown else 0.0,
            "target_fps": fps,
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "latency_ms_max": float(np.max(lat)),
            "lookahead_ms": 1000 * lookahead_s,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items(), reverse=True)},
            "stalls": self.stalls,
            "silence_inserted_s": silence_s,
            "duration_s": seconds,
            "stage_ms_per_frame": {k: 1000 * v / max(self.frames, 1) for k, v in self.timer.seconds.items()},
        }


class Session:
    """Run one stream of audio through the avatar into the sinks, in real time (see the module docstring)."""

    def __init__(
        self,
        avatar: LiveAvatar,
        features: LiveFeatures,
        timeline: AudioTimeline,
        sinks: list[Sink],
        min_size: int = 64,
        history_s: float = 20.0,
        say: Callable[[str], None] = print,
    ):
        self.avatar, self.features, self.timeline, self.sinks, self.say = avatar, features, timeline, sinks, say
        self.fps = avatar.fps
        self.sizes = SizeControl(size_ladder(avatar.output, min(min_size, avatar.output)), 1 / self.fps)
        if avatar.head.resolution < avatar.output:  # rendering above the training size gains nothing
            self.sizes.sizes = [s for s in self.sizes.sizes if s <= avatar.head.resolution] or [avatar.head.resolution]
        self.levels = RollingLevels(avatar.head.audio_encoder, int(history_s * self.fps))
        self.report = Report()
        self.audio = np.zeros(0, np.float32)  # taken samples not yet handed to the sinks
        self.audio_start = 0  # stream index of self.audio[0]
        self._audio_lock = threading.Lock()  # the loop adds to self.audio while render threads hand it out
        self.stalled_since: float | None = None
        self.summary: dict | None = None  # set when the session has ended
        self._out_lock = threading.Lock()
        self._next_out, self._done = 0, {}  # the next frame to go out; frames ready before their turn

    def _status(self, text: str) -> None:
        self.say(text)
        for sink in self.sinks:
            sink.status(text)

    def run(self, stop) -> dict:
        """Frames until the audio ends (or `stop` is set); returns the summary. Ctrl-C ends the session as the
        end of its audio would (its recording is completed) and then goes on; on an error the sinks are aborted
        (no recording is left) and the error goes on."""
        try:
            return self._run(stop)
        except KeyboardInterrupt:
            self._finish()
            raise
        except BaseException:
            for sink in self.sinks:
                sink.abort()
            raise

    def _run(self, stop) -> dict:
        while not self.timeline.started(0.2):
            if stop.is_set():
                return self._finish()
        if self.timeline.t0 is None:  # the input ended before any audio came
            return self._finish()
        self.report.started = time.time()
        in_flight: deque[Future] = deque()
        with ThreadPoolExecutor(FRAMES_IN_FLIGHT, thread_name_prefix="live-render") as pool:
            k = 0
            while not stop.is_set():
                if not self._audio_for(k):
                    break
                start = time.perf_counter()  # from here the loop works (or waits for a render): its duty
                now = time.monotonic()
                if now - self.timeline.due(self.features.samples_for(k)) > MAX_LATE_S:
                    skip = max(0, min(self.features.num_frames - 1, self._due_frame(now)) - k)
                else:
                    skip = 0
                for j in range(k, k + skip):
                    self._out(j, None)
                self.report.dropped += skip
                k += skip
                size = self.sizes.size
                cond = self._prepare(k)
                in_flight.append(pool.submit(self._render_out, k, cond, size))
                while len(in_flight) >= FRAMES_IN_FLIGHT or (in_flight and in_flight[0].done()):
                    in_flight.popleft().result()  # (an error in a render thread goes on from here)
                message = self.sizes.update(time.perf_counter() - start, skip)
                if message:
                    self._status(message)
                k += 1
            while in_flight:
                in_flight.popleft().result()
        return self._finish()

    def _audio_for(self, k: int) -> bool:
        """Bring frame k's audio onto the features (silence for audio that is late); False when the stream has
        ended and k is past its last frame."""
        tl, need = self.timeline, self.features.samples_for(k)
        while True:
            if not tl.wait_for(need, tl.due(need) + JITTER_S):
                filled = tl.fill(need)
                if filled and self.stalled_since is None:
                    self.stalled_since = time.monotonic()
                    self.report.stalls += 1
                    self._status("the audio input stalled: the avatar rests until more comes")
            elif self.stalled_since is not None and tl.received > need:
                self.stalled_since = None
            wait = tl.due(min(need, tl.received)) - time.monotonic()  # audio written ahead waits for its time
            if wait > 0:
                time.sleep(wait)
            with self.report.timer("features"):
                new = tl.take()
                if len(new):
                    self.features.push(new)
                    self._keep_audio(new)
                if tl.ended and not self.features.ended and tl.received == self.features.samples:
                    self.features.end()
            if k < self.features.num_frames:
                return True
            if self.features.ended:
                return False

    def _due_frame(self, now: float) -> int:
        """The newest frame whose audio (with the look-ahead) was due by `now`."""
        seconds = now - self.timeline.t0 - self.features.lookahead_s
        return int(np.floor(seconds * self.fps)) - 1

    def _prepare(self, k: int, phones_wait_s: float = PHONES_WAIT_S) -> FrameConditions:
        """Frame k's conditions (its window stack, pose, blinks and the stream's levels so far)."""
        features = self.features
        with self.report.timer("phones wait"):
            if features.phones is not None:
                features.phones.sync(features.samples_for(k), phones_wait_s)
        with self.report.timer("features"):
            stack = features.window_stack(k)
        cond = self.avatar.conditions(stack, k, self.levels.value)
        with self.report.timer("motion gain"):
            self.levels.add(stack)
        return cond

    def _render(self, cond: FrameConditions, size: int) -> tuple[np.ndarray, float]:
        """(the image, seconds it took): run by the render threads."""
        start = time.perf_counter()
        return self.avatar.render(cond, size), time.perf_counter() - start

    def _render_out(self, k: int, cond: FrameConditions, size: int) -> None:
        """A render thread's work: frame k, out to the sinks once the frames before it are out."""
        image, seconds = self._render(cond, size)
        self._out(k, image, size, seconds)

    def _out(self, k: int, image: np.ndarray | None, size: int = 0, seconds: float = 0.0) -> None:
        """Frame k is ready (None: dropped): to the sinks, in order, from whichever thread got it."""
        with self._out_lock:
            self._done[k] = (image, size, seconds)
            while self._next_out in self._done:
                j = self._next_out
                image, size, seconds = self._done.pop(j)
                self.report.timer.add("render", seconds)
                self._emit(j, image, None if image is None else self._record(j, size))
                self._next_out += 1

    def _frame(self, k: int, phones_wait_s: float = PHONES_WAIT_S) -> tuple[np.ndarray, dict]:
        """Frame k's image and its latency-log record, made here and now (the replay)."""
        image, seconds = self._render(self._prepare(k, phones_wait_s), self.sizes.size)
        self.report.timer.add("render", seconds)
        return image, self._record(k, self.sizes.size)

    def _record(self, k: int, size: int) -> dict:
        """Frame k's latency-log record as it goes out: the frame, the end of the audio it shows (s), when it was
        ready (time.time()), the latency from that audio's arrival, and the size it was rendered at."""
        self.report.frames += 1
        self.report.sizes[size] = self.report.sizes.get(size, 0) + 1
        end = int(round((k + 1) / self.fps * SAMPLE_RATE))
        latency = time.monotonic() - self.timeline.arrival(min(end, self.timeline.received))
        self.report.latencies.append(latency)
        return {"frame": k, "audio_s": end / SAMPLE_RATE, "wall_s": time.time(), "latency_s": latency,
                "size": size}  # fmt: skip

    def _keep_audio(self, samples: np.ndarray) -> None:
        """Taken samples wait here until the frame they belong to goes out (`_emit`)."""
        with self._audio_lock:
            self.audio = np.concatenate([self.audio, samples])

    def _emit(self, k: int, image: np.ndarray | None, info: dict | None) -> None:
        end = int(round((k + 1) / self.fps * SAMPLE_RATE))
        with self._audio_lock:
            audio = self.audio[: max(0, end - self.audio_start)]
            audio = np.pad(audio, (0, max(0, end - self.audio_start - len(audio))))
            self.audio, self.audio_start = self.audio[len(audio) :], end
        with self.report.timer("sinks"):
            for sink in self.sinks:
                sink.frame(k, image, audio, info)

    def replay(self, wave: np.ndarray, piece: int = SAMPLE_RATE // 25) -> dict:
        """The session as it is when every frame is made in time, without a clock: `wave` comes in `piece`s as a
        live input does, each frame is made as soon as its look-ahead is in, none is dropped and the phone
        decoder is waited for. What the live features cost in quality, apart from what a slow machine costs
        (`avatar.benchmarks.bench_live`); latencies mean nothing here."""
        self.report.started = time.time()
        self.timeline.put(wave)
        self.timeline.close()
        self.timeline.take()
        k = 0
        for i in range(0, len(wave) + piece, piece):
            if i < len(wave):
                self.features.push(wave[i : i + piece])
                self._keep_audio(wave[i : i + piece])
            else:
                self.features.end()
            while k < self.features.num_frames:
                self._emit(k, *self._frame(k, phones_wait_s=60.0))
                k += 1
        return self._finish()

    def _finish(self) -> dict:
        if self.summary is not None:  # ended already (Ctrl-C while the sinks were closing)
            return self.summary
        self.report.ended = time.time()
        self.summary = self.report.summary(self.fps, self.features.lookahead_s, self.timeline.filled / SAMPLE_RATE)
        for sink in self.sinks:
            sink.close(self.summary)
        return self.summary
