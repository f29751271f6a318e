"""Rows of a whole-utterance analysis, defined on a fixed grid of windows so that a stream reproduces them.

Some analyses see their whole input at once: the phone decoder normalises an utterance by its own cepstral
mean, a speech transformer attends over all of it. Their rows of one long clip could not be reproduced by a
stream in bounded memory, so a clip's rows are defined instead by windows of `window_s` starting every
`window_s - overlap_s`, each giving the rows of its middle: every row comes from a window that extends at
least `overlap_s / 2` beyond it on both sides (except at the ends of the audio). A training clip, a
render-time stream and the viewer then give the same rows, whatever the chunking of the audio.

Rows are at 100 Hz: row t is centred at t / 100 s, and a wave of n samples at 16 kHz has 1 + n // 160 rows
(librosa's centred frames for hop 160, so these rows line up with the mel rows of the same wave).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

RATE_HZ = 100.0
HOP = 160  # samples per row at 16 kHz

# (wave [S], index of its first sample in the clip) -> [num_rows(S), F] rows of that wave analysed alone
RowsOf = Callable[[np.ndarray, int], np.ndarray]


def num_rows(num_samples: int) -> int:
    """Rows of a 16 kHz wave of `num_samples`."""
    return 1 + num_samples // HOP


def grid_rows(
    chunks: Iterable[np.ndarray], rows_of: RowsOf, window_s: float, overlap_s: float, rate_hz: float = RATE_HZ
) -> Iterator[np.ndarray]:
    """Consecutive blocks of a clip's rows on the fixed window grid, from its audio given as consecutive
    sample chunks, holding at most `window_s` of samples. Concatenated, the blocks are the clip's rows
    whatever the chunking (one chunk of the whole clip included)."""
    step = int(round((window_s - overlap_s) * rate_hz))  # rows
    half = int(round(overlap_s / 2 * rate_hz))
    window = (step + 2 * half) * HOP  # samples
    if step <= 0 or half <= 0:
        raise ValueError("need window_s > overlap_s > 0")
    buffer = np.zeros(0, np.float32)
    first, offset = True, 0
    for chunk in chunks:
        buffer = np.concatenate([buffer, np.asarray(chunk, np.float32).reshape(-1)])
        while buffer.size >= window:
            rows = rows_of(buffer[:window], offset)
            yield rows[0 if first else half : step + half]
            buffer = buffer[step * HOP :]
            first, offset = False, offset + step * HOP
    rows = rows_of(buffer, offset)
    yield rows[0 if first else half :]
