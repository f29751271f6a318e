"""Audio features of a clip of any length, computed chunk by chunk with the same result as all at once.

Three passes over the file, each streaming decoded audio with bounded memory:
1. `scan_audio`: sample count, the clip-wide voicing threshold of the pitch feature, loudness (cheap: RMS only);
2. `clip_feature_stats`: the clip's own feature mean/std for normalisation (running sums);
3. `window_chunks`: normalised [b, 2K+1, W, F] windows for consecutive chunks of frames.
A mel row t is centred on sample t * hop and depends only on samples within `MARGIN_ROWS * hop` of its
centre (see `MelFeatures`), so chunks that overlap by that margin reproduce the all-at-once rows exactly;
the phonetic rows and a speech encoder's are made on their own fixed window grid (`avatar.audio.grid`),
which a stream reproduces exactly too. Only the mel columns are normalised, so the second pass reads only them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.audio.features import SpeechFeatures, context_windows, frame_window_rows, normalize_features
from avatar.audio.io import SAMPLE_RATE, is_silent, iter_audio, num_frames_for
from avatar.errors import UserError

MARGIN_ROWS = 4  # 4 hops of 10 ms = 640 samples >= the 512-sample half window of the pitch tracker
ROWS_PER_CHUNK = 3000  # 30 s of feature rows per extractor call
MAX_CHUNK_S = 30.0  # a chunk of frames covers at most this much audio, whatever the frame rate


class SampleReader:
    """Exact-length reads from a stream of audio chunks ([n] or [n, C]); zeros once the stream has ended."""

    def __init__(self, chunks: Iterator[np.ndarray], channels: int = 1):
        self._chunks = chunks
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._channels = channels
        self.exhausted = False

    def read(self, n: int) -> np.ndarray:
        while self._pending_len < n and not self.exhausted:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.exhausted = True
            elif len(chunk):
                self._pending.append(chunk)
                self._pending_len += len(chunk)
        shape = (0,) if self._channels == 1 else (0, self._channels)
        data = np.concatenate(self._pending) if self._pending else np.zeros(shape, np.float32)
        out, rest = data[:n], data[n:]
        self._pending, self._pending_len = ([rest] if len(rest) else []), len(rest)
        if len(out) < n:
            pad = [(0, n - len(out))] + [(0, 0)] * (out.ndim - 1)
            out = np.pad(out, pad)
        return out


def rows_in_chunks(
    chunks: Iterator[np.ndarray],
    rows_of: Callable[[np.ndarray], np.ndarray],
    hop: int,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> Iterator[np.ndarray]:
    """Apply `rows_of` (a centred-frame analysis: [S] -> [1 + S // hop, ...]) to a stream of [n] samples,
    yielding consecutive blocks of its rows, equal to `rows_of(whole stream)` split into blocks."""
    margin = MARGIN_ROWS * hop
    buffer = np.zeros(0, np.float32)
    buffer_start = 0  # stream index of buffer[0]
    ended = False
    first_row = 0
    while True:
        end_row = first_row + rows_per_chunk
        needed = end_row * hop + margin  # samples the rows [first_row, end_row) depend on
        pieces = [buffer]
        have = buffer_start + len(buffer)
        while not ended and have < needed:
            chunk = next(chunks, None)
            if chunk is None:
                ended = True
            else:
                pieces.append(chunk)
                have += len(chunk)
        buffer = np.concatenate(pieces)
        if ended:  # the clip's own end: the analysis pads it exactly as it pads the whole clip
            end_row = min(end_row, 1 + have // hop)
            stop = have
        else:
            stop = needed
        if first_row >= end_row:
            return
        start = max(0, first_row * hop - margin)  # a multiple of hop, so row k of the piece is a stream row
        rows = rows_of(buffer[start - buffer_start : stop - buffer_start])
        skip = (first_row * hop - start) // hop
        yield rows[skip : skip + end_row - first_row]
        first_row = end_row
        keep_from = max(0, first_row * hop - margin)
        buffer, buffer_start = buffer[keep_from - buffer_start :], keep_from


@dataclass
class AudioScan:
    path: Path
    num_samples: int  # at SAMPLE_RATE
    voicing_rms: float  # the whole clip's voicing threshold (MelFeatures.voicing_threshold)
    silent: bool  # below -50 dBFS throughout (avatar.audio.features.is_silent)

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def num_frames(self, fps: float) -> int:
        return num_frames_for(self.num_samples, SAMPLE_RATE, fps)


def scan_audio(path: Path | str, extractor: SpeechFeatures) -> AudioScan:
    """First, cheap pass: length, voicing threshold and silence of a clip, streaming. UserError when the file
    is missing, not decodable, has no sound, or is shorter than 0.1 s. Holds the clip's frame RMS values
    (4 bytes per 10 ms) to take their exact median."""
    path = Path(path)
    count = 0
    block_verdicts: list[bool] = []
    remainder = np.zeros(0, np.float32)
    block = SAMPLE_RATE // 10  # is_silent's 100 ms blocks, aligned to the clip's start as it aligns them

    def tapped() -> Iterator[np.ndarray]:
        nonlocal count, remainder
        for chunk in iter_audio(path):
            count += len(chunk)
            remainder = np.concatenate([remainder, chunk])
            whole = len(remainder) // block * block
            if whole:
                block_verdicts.append(is_silent(remainder[:whole]))
                remainder = remainder[whole:]
            yield chunk

    loudness = extractor.loudness
    rms = np.concatenate(list(rows_in_chunks(tapped(), loudness.frame_rms, loudness.hop)) or [np.zeros(0, np.float32)])
    if count < SAMPLE_RATE // 10:
        raise UserError(f"{path}: the audio track is empty or shorter than 0.1 s. Give a file with speech in it.")
    silent = all(block_verdicts) if block_verdicts else is_silent(remainder)
    return AudioScan(path, count, float(loudness.voicing_threshold(rms)), silent)


def _mel_rows(scan: AudioScan, extractor: SpeechFeatures) -> Iterator[np.ndarray]:
    mel = extractor.mel
    return rows_in_chunks(iter_audio(scan.path), lambda wave: mel(wave, voicing_rms=scan.voicing_rms), mel.hop)


def feature_rows(scan: AudioScan, extractor: SpeechFeatures) -> Iterator[np.ndarray]:
    """Consecutive blocks of the clip's raw [T, F] features (T = 1 + num_samples // hop): each part's own
    stream, cut to the blocks of the first."""
    streams = [_mel_rows(scan, extractor)] if extractor.mel is not None else []
    streams += [part.stream(iter_audio(scan.path)) for part in extractor.windowed_parts]
    if len(streams) == 1:
        yield from streams[0]
        return
    pending = [np.zeros((0, 0), np.float32) for _ in streams[1:]]
    for block in streams[0]:
        parts = [block]
        for k, stream in enumerate(streams[1:]):
            while len(pending[k]) < len(block):
                more = next(stream)
                pending[k] = np.concatenate([pending[k], more]) if len(pending[k]) else more
            parts.append(pending[k][: len(block)])
            pending[k] = pending[k][len(block) :]
        yield np.concatenate(parts, axis=1)


def clip_feature_stats(scan: AudioScan, extractor: SpeechFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Second pass: the clip's feature mean and std [F], as `feature_stats` gives them for the whole clip."""
    mean = np.zeros(extractor.dim, np.float32)
    std = np.ones(extractor.dim, np.float32)
    if extractor.mel is None:
        return mean, std
    total = np.zeros(extractor.mel.dim, np.float64)
    squares = np.zeros(extractor.mel.dim, np.float64)
    rows = 0
    for block in _mel_rows(scan, extractor):
        block = block.astype(np.float64)
        total += block.sum(0)
        squares += (block**2).sum(0)
        rows += len(block)
    mel_mean = total / rows
    mean[: extractor.normalized] = mel_mean  # the class columns after them keep mean 0 and std 1
    std[: extractor.normalized] = np.sqrt(np.maximum(squares / rows - mel_mean**2, 0.0)) + 1e-4
    return mean, std


def window_chunks(
    scan: AudioScan,
    extractor: SpeechFeatures,
    stats: tuple[np.ndarray, np.ndarray],
    fps: float,
    window: int,
    context: int,
    chunk_frames: int,
) -> Iterator[np.ndarray]:
    """Third pass: [b, 2 * context + 1, window, F] normalised windows of frames 0, 1, ... in chunks of
    `chunk_frames`, equal to context_windows(frame_windows(normalize_features(all rows), ...), context)."""
    num_frames = scan.num_frames(fps)
    total_rows = 1 + scan.num_samples // extractor.hop
    chunk_frames = max(1, min(chunk_frames, int(fps * MAX_CHUNK_S)))  # rows held span ~ a chunk's duration
    blocks = feature_rows(scan, extractor)
    held = np.zeros((0, extractor.dim), np.float32)  # normalised rows [held_start, held_start + len)
    held_start = 0
    for first in range(0, num_frames, chunk_frames):
        last = min(num_frames, first + chunk_frames)
        reach_start, reach_end = max(0, first - context), min(num_frames, last + context)
        rows = frame_window_rows(extractor.rate_hz, fps, reach_end - reach_start, window, reach_start, total_rows)
        while held_start + len(held) <= rows.max():
            held = np.concatenate([held, normalize_features(next(blocks), stats)])
        held, held_start = held[rows.min() - held_start :], int(rows.min())  # later chunks never look back
        windows = held[rows - held_start]  # [reach_end - reach_start, W, F]
        # each frame's neighbours, edges repeated exactly as context_windows repeats them for the whole clip
        reach = np.clip(np.arange(first - context, last + context), 0, num_frames - 1) - reach_start
        yield context_windows(windows[reach], context)[context : context + last - first]
