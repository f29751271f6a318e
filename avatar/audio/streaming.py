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


class IncrementalRows:
    """`rows_of` (a centred-frame analysis: [S] -> [1 + S // hop, ...]) over a stream of samples pushed as they
    come: each row as soon as the samples within `MARGIN_ROWS * hop` of its centre are in, equal to that row of
    `rows_of(whole stream)`; `end` gives the rest, the stream's end padded as the analysis pads a whole clip.
    Rows are computed in blocks of `min_rows` to `max_rows` (a live stream wants every row at once, a file
    few long calls)."""

    def __init__(self, rows_of: Callable[[np.ndarray], np.ndarray], hop: int, min_rows: int = 1,
                 max_rows: int = ROWS_PER_CHUNK):  # fmt: skip
        self.rows_of, self.hop, self.min_rows, self.max_rows = rows_of, hop, min_rows, max_rows
        self.margin = MARGIN_ROWS * hop
        self.pieces: list[np.ndarray] = []  # the samples from buffer_start on, joined when rows are made
        self.buffer_start = 0  # stream index of the first held sample
        self.samples = 0  # samples pushed so far
        self.next_row = 0  # the first row not yet given

    @property
    def buffer(self) -> np.ndarray:
        if len(self.pieces) != 1:
            self.pieces = [np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)]
        return self.pieces[0]

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Blocks of the rows that `samples` completed (possibly none)."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self.pieces.append(samples)
        self.samples += len(samples)
        blocks = []
        while (complete := (self.samples - self.margin) // self.hop) - self.next_row >= self.min_rows:
            end_row = min(complete, self.next_row + self.max_rows)
            blocks.append(self._rows(end_row, end_row * self.hop + self.margin))
        return blocks

    def end(self) -> list[np.ndarray]:
        """Blocks of the remaining rows: the stream has ended."""
        blocks, last = [], 1 + self.samples // self.hop
        while self.next_row < last:
            blocks.append(self._rows(min(last, self.next_row + self.max_rows), self.samples))
        return blocks

    def _rows(self, end_row: int, stop: int) -> np.ndarray:
        """Rows [next_row, end_row) from the samples before `stop`; the buffer keeps what later rows need."""
        start = max(0, self.next_row * self.hop - self.margin)  # a multiple of hop: row k of the piece is a stream row
        rows = self.rows_of(self.buffer[start - self.buffer_start : stop - self.buffer_start])
        skip = (self.next_row * self.hop - start) // self.hop
        rows = rows[skip : skip + end_row - self.next_row]
        self.next_row = end_row
        keep_from = max(0, end_row * self.hop - self.margin)
        self.pieces, self.buffer_start = [self.buffer[keep_from - self.buffer_start :]], keep_from
        return rows


def rows_in_chunks(
    chunks: Iterator[np.ndarray],
    rows_of: Callable[[np.ndarray], np.ndarray],
    hop: int,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> Iterator[np.ndarray]:
    """Apply `rows_of` (a centred-frame analysis: [S] -> [1 + S // hop, ...]) to a stream of [n] samples,
    yielding consecutive blocks of its rows, equal to `rows_of(whole stream)` split into blocks."""
    rows = IncrementalRows(rows_of, hop, rows_per_chunk, rows_per_chunk)
    for chunk in chunks:
        yield from rows.push(chunk)
    yield from rows.end()
