"""One audio file as an avatar hears it: read and featurised in ONE pass, then cut into frame windows at will.

`AudioClip.read` decodes the file once and feeds every analysis from that one stream (the mel part, the
phonetic decoder, a speech encoder), each chunk by chunk with the same rows as all at once
(`avatar.audio.streaming`); the decoded samples are never held whole, only the feature rows (100 rows of
about 150 floats a second: 60 kB/s). The pitch column waits for the whole clip's voicing threshold, which
only the end of the clip settles. The clip's statistics are then those preprocessing gives a training clip
(`feature_stats`), so a file's render-time features equal its training features. Windows for any frame rate
and context are cut from the held rows, as often as needed (the motion-gain pass and the render pass), with
no second decoding.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.audio.features import (
    SpeechFeatures,
    context_windows,
    feature_stats,
    frame_window_rows,
    normalize_features,
)
from avatar.audio.io import SAMPLE_RATE, audio_channels, is_silent, iter_audio, num_frames_for
from avatar.audio.streaming import MAX_CHUNK_S, rows_in_chunks
from avatar.errors import UserError

SILENCE_BLOCK = SAMPLE_RATE // 10  # is_silent's 100 ms blocks, aligned to the clip's start


class _Meter:
    """Counts the samples of a stream and judges each 100 ms block silent or not, as they pass."""

    def __init__(self):
        self.count = 0
        self.verdicts: list[bool] = []
        self.remainder = np.zeros(0, np.float32)

    def tap(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for chunk in chunks:
            self.count += len(chunk)
            self.remainder = np.concatenate([self.remainder, chunk])
            whole = len(self.remainder) // SILENCE_BLOCK * SILENCE_BLOCK
            if whole:
                self.verdicts.append(is_silent(self.remainder[:whole]))
                self.remainder = self.remainder[whole:]
            yield chunk

    @property
    def silent(self) -> bool:
        return all(self.verdicts) if self.verdicts else is_silent(self.remainder)


def _aligned(streams: list[Iterator[np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """Blocks of the first stream with the same rows of each other stream beside them."""
    pending = [np.zeros((0, 0), np.float32) for _ in streams[1:]]
    for block in streams[0]:
        parts = [block]
        for k, stream in enumerate(streams[1:]):
            while len(pending[k]) < len(block):
                more = next(stream)
                pending[k] = np.concatenate([pending[k], more]) if len(pending[k]) else more
            parts.append(pending[k][: len(block)])
            pending[k] = pending[k][len(block) :]
        yield parts


@dataclass
class AudioClip:
    path: Path
    extractor: SpeechFeatures
    channels: int  # of the file's first audio stream (the sound muxed into a video keeps them)
    num_samples: int  # at SAMPLE_RATE
    silent: bool  # below -50 dBFS throughout (avatar.audio.io.is_silent)
    rows: np.ndarray  # [1 + num_samples // hop, F] float32 raw features, exactly `extractor(whole clip)`
    stats: tuple[np.ndarray, np.ndarray]  # the clip's feature mean and std [F] (`feature_stats`)

    @staticmethod
    def read(path: Path | str, extractor: SpeechFeatures) -> AudioClip:
        """Decode `path` once and featurise it. UserError when the file is missing, not decodable, has no
        sound, or is shorter than 0.1 s."""
        path = Path(path)
        channels = audio_channels(path)
        meter = _Meter()
        mel, parts = extractor.mel, extractor.windowed_parts
        copies = itertools.tee(meter.tap(iter_audio(path)), int(mel is not None) + len(parts))
        streams = [part.stream(copy) for part, copy in zip(parts, copies[int(mel is not None) :])]
        if mel is not None:  # each mel row with its frame's RMS beside it, until the voicing threshold is known
            unvoiced = rows_in_chunks(copies[0], lambda wave: np.column_stack(mel.rows_and_rms(wave)), mel.hop)
            streams.insert(0, unvoiced)
        blocks = [np.concatenate(parts, axis=1) for parts in _aligned(streams)]
        if meter.count < SAMPLE_RATE // 10:
            raise UserError(f"{path}: the audio track is empty or shorter than 0.1 s. Give a file with speech in it.")
        rows = np.concatenate(blocks)
        if mel is not None:
            rms, rows = rows[:, mel.dim], np.delete(rows, mel.dim, axis=1)
            rows[:, : mel.dim] = mel.voiced(rows[:, : mel.dim], rms, mel.voicing_threshold(rms))
        rows = np.ascontiguousarray(rows, np.float32)
        return AudioClip(path, extractor, channels, meter.count, meter.silent, rows,
                         feature_stats(rows, extractor.normalized))  # fmt: skip

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def num_frames(self, fps: float) -> int:
        return num_frames_for(self.num_samples, SAMPLE_RATE, fps)

    def windows(self, fps: float, window: int, context: int, chunk_frames: int = 200) -> Iterator[np.ndarray]:
        """Chunks of [b, 2 * context + 1, window, F] windows of frames 0, 1, ... at `fps`, normalised with the
        clip's statistics: `context_windows(frame_windows(normalize_features(rows, stats), ...), context)`
        cut into chunks of `chunk_frames`. A silent clip gives all zeros, the input the audio encoder is
        trained to answer with the person's closed mouth (a digitally silent clip normalises to exactly
        that; near-silence, whose noise normalisation would blow up to speech level, is given it too)."""
        num_frames = self.num_frames(fps)
        chunk_frames = max(1, min(chunk_frames, int(fps * MAX_CHUNK_S)))  # windows held span ~ a chunk
        if self.silent:
            rest = np.zeros((2 * context + 1, window, self.extractor.dim), np.float32)
            for first in range(0, num_frames, chunk_frames):
                yield np.broadcast_to(rest, (min(chunk_frames, num_frames - first),) + rest.shape)
            return
        for first in range(0, num_frames, chunk_frames):
            last = min(num_frames, first + chunk_frames)
            reach_start, reach_end = max(0, first - context), min(num_frames, last + context)
            rows = frame_window_rows(
                self.extractor.rate_hz, fps, reach_end - reach_start, window, reach_start, len(self.rows)
            )
            windows = normalize_features(self.rows[rows], self.stats)  # [reach_end - reach_start, W, F]
            # each frame's neighbours, edges repeated exactly as context_windows repeats them for the whole clip
            reach = np.clip(np.arange(first - context, last + context), 0, num_frames - 1) - reach_start
            yield context_windows(windows[reach], context)[context : context + last - first]
