"""The viewer's timeline: which frame the audio is at now, and the conditions that render it.

Audio features are computed once when a clip is loaded (by the same streaming code as `avatar render`),
keeping only each frame's own window [N, W, F]; the neighbouring-frame context is rebuilt per frame by
index, so a long clip costs 5 KB per frame rather than 9x that.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from avatar.model.driving import audio_windows, blink_schedule, pose_schedule
from avatar.model.talking_head import FrameConditions

if TYPE_CHECKING:
    from avatar.model.talking_head import FrameConditions, TalkingHead

PoseSource = Literal["track", "still", "smooth"]


class Playback:
    """Audio-driven frames on a wall clock: play, pause, seek; conditions of any frame."""

    def __init__(self, head: TalkingHead, audio: Path):
        self.head = head
        self.audio_path = Path(audio)
        context = head.audio_context
        centres = []

        def kept(chunks):
            for chunk in chunks:
                centres.append(chunk[:, context])
                yield chunk

        chunks = kept(audio_windows(self.audio_path, head.driving, context))
        self.levels = head.audio_encoder.levels(chunks)  # see AudioEncoder.levels
        self.windows = np.concatenate(centres)  # [N, W, F]
        self.num_frames = len(self.windows)
        self.fps = head.fps
        self._poses = {
            mode: pose_schedule(head.driving, self.num_frames, mode) for mode in ("track", "still", "smooth")
        }
        self._blinks = blink_schedule(head.driving, self.num_frames, self.fps, None)  # [N, 2]
        self.playing = False
        self._start_frame = 0
        self._start_time = 0.0

    # ----- clock
    def frame(self, now: float | None = None) -> int:
        """The frame shown at wall time `now`: playback loops at the end of the clip."""
        if not self.playing:
            return self._start_frame
        elapsed = (time.monotonic() if now is None else now) - self._start_time
        return (self._start_frame + int(elapsed * self.fps)) % self.num_frames

    def play(self, now: float | None = None) -> None:
        if not self.playing:
            self._start_time = time.monotonic() if now is None else now
            self.playing = True

    def pause(self, now: float | None = None) -> None:
        if self.playing:
            self._start_frame = self.frame(now)
            self.playing = False

    def seek(self, frame: int, now: float | None = None) -> None:
        self._start_frame = int(np.clip(frame, 0, self.num_frames - 1))
        self._start_time = time.monotonic() if now is None else now

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    # ----- conditions
    def pose(self, frame: int, source: PoseSource) -> tuple[np.ndarray, np.ndarray]:
        """Head-to-camera rotation [3, 3] and translation [3] of `frame`."""
        rotations, translations, _ = self._poses[source]
        return rotations[frame], translations[frame]

    def conditions(self, frame: int, source: PoseSource = "track", blink: float | None = None) -> FrameConditions:
        """One frame's FrameConditions (B = 1). `blink` None: the person's own sampled blinks."""

        k = self.head.audio_context
        neighbours = np.clip(np.arange(frame - k, frame + k + 1), 0, self.num_frames - 1)
        rotation, translation, body = (part[frame] for part in self._poses[source])
        blinks = self._blinks[frame] if blink is None else np.full(2, blink, np.float32)
        return FrameConditions.from_arrays(
            self.head.K.device,
            self.windows[neighbours][None],
            rotation[None],
            translation[None],
            blinks[None],
            body[None],
            self.levels,
        )
