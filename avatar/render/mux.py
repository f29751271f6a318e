"""An H.264 + AAC video file written incrementally, with the sound cut to the picture's exact duration.

Frame i is shown at i / fps. The caller hands over frames in order and, after each batch, the sound up to
the end of the last frame shown (`audio_until`): the two streams are written interleaved, so nothing
waits in memory however long the video, and the sound ends where the last frame ends.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

AUDIO_RATE = 48000  # AAC's usual rate; also keeps AAC's 1024-sample packets well under one video frame


def frame_rate(fps: float) -> Fraction:
    """fps as the exact fraction containers store (29.97 -> 30000/1001)."""
    for denominator in (1, 1001):
        candidate = Fraction(round(fps * denominator), denominator)
        if abs(float(candidate) - fps) < 1e-6:
            return candidate
    return Fraction(fps).limit_denominator(100000)


class VideoWriter:
    """Writes [B, H, W, 3] uint8 RGB frames and float32 [n, C] sound into `path` (format from its suffix)."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        audio_channels: int,
        crf: int = 18,
        speed: str = "veryfast",
        audio_kbps: int = 160,
    ):
        import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

        if width % 2 or height % 2:
            raise ValueError(f"H.264 4:2:0 needs even frame sizes, got {width}x{height}")
        self.rate = frame_rate(fps)
        self.width, self.height = width, height
        self.container = av.open(str(path), mode="w")
        self.video = self.container.add_stream("libx264", rate=self.rate)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.options = {"crf": str(crf), "preset": speed}
        self.layout = "mono" if audio_channels == 1 else "stereo"
        self.channels = 1 if audio_channels == 1 else 2
        self.audio = self.container.add_stream("aac", rate=AUDIO_RATE)
        self.audio.layout = self.layout
        self.audio.bit_rate = audio_kbps * 1000
        self.frames_written = 0
        self.samples_written = 0

    def samples_until(self, frame: int) -> int:
        """Sound samples from time 0 to the start of `frame` (= the end of frame - 1)."""
        return int(round(frame / self.rate * AUDIO_RATE))

    def write_frames(self, rgb: np.ndarray) -> None:
        import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

        for image in rgb:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_written
            self.container.mux(self.video.encode(frame))
            self.frames_written += 1

    def write_audio(self, samples: np.ndarray) -> None:
        """Append [n, channels] float32 sound (n may be 0)."""
        import av  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

        if not len(samples):
            return
        packed = np.ascontiguousarray(samples, np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=self.layout)
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.samples_written
        self.container.mux(self.audio.encode(frame))
        self.samples_written += len(samples)

    def close(self) -> None:
        """Flush both encoders and finish the file (call only when every frame and sample is written)."""
        self.container.mux(self.video.encode(None))
        self.container.mux(self.audio.encode(None))
        self.container.close()

    def abort(self) -> None:
        """Release the file after a failure (the caller discards it)."""
        self.container.close()
