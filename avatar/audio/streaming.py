"""Chunked audio analysis with the same result as all at once, in bounded memory.

A mel row t is centred on sample t * hop and depends only on samples within `MARGIN_ROWS * hop` of its
centre (see `MelFeatures`), so chunks that overlap by that margin reproduce the all-at-once rows exactly
(`rows_in_chunks`); the phonetic rows and a speech encoder's are made on their own fixed window grid
(`avatar.audio.grid`), which a stream reproduces exactly too. `avatar.audio.clip.AudioClip` runs them all
over one decoding of a file; `SampleReader` cuts a stream of sound into exact lengths for muxing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

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
