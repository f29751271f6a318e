"""A live stream's audio as the avatar hears it: each frame's window stack as soon as its look-ahead is in.

What `avatar.audio.clip.AudioClip` computes over a whole file is computed here over a stream pushed as it
arrives, on a rolling window:
- mel rows by `IncrementalRows`: each row equals the file's as soon as the 32 ms around it are in;
- the voicing threshold and the normalisation statistics over the rows of the last `history_s` seconds (up
  to the newest row) less the long pauses (`LiveFeatures._talk`), beside the training clip's statistics
  weighted as `prior_s` seconds of rows (early in a stream the history is short, and a few words would set the
  scale; with less than `min_talk_s` of talk they stand alone);
- the phone classes from `avatar.live.phones.PhoneStream` (a decoder that follows the stream), smoothed as a
  file's are;
- silence: a history below -50 dBFS throughout gives all-zero windows, the input the encoder answers with the
  closed mouth (the rule of `AudioClip.windows`); the pause gate reads the windows, so it needs nothing more.

Frame k shows the audio of [k, k + 1) / fps; its stack needs rows up to the end of frame k + K's window (K:
the encoder's context frames), 162 ms after the frame's end at 25 fps with K = 2 (242 ms with K = 4). The
look-ahead says how long after the frame's end its stack is made: rows not yet heard then repeat the newest
one, as a file's last row is repeated. With a look-ahead, a history and a pause allowance that cover the
whole stream and no prior, the stacks equal `AudioClip.windows` of the same audio (tested); the phone classes
then equal the stream decoder's final path.
"""

from __future__ import annotations

import numpy as np

from avatar.audio.features import SpeechFeatures, feature_stats, frame_window_rows
from avatar.audio.io import SAMPLE_RATE, is_silent, num_frames_for
from avatar.audio.phonetic import PHONES, SILENCE
from avatar.audio.streaming import IncrementalRows
from avatar.contracts.dataset import FeatureInfo
from avatar.errors import UserError
from avatar.live.phones import PhoneStream

SILENCE_BLOCK = SAMPLE_RATE // 10  # is_silent's 100 ms blocks, from the stream's start
QUIET_RMS = 10 ** (-50 / 20)  # is_silent's -50 dBFS
RELATIVE_QUIET = 10 ** (-30 / 20)  # a row 30 dB under the history's loud rows is a pause
SILENCE_LABEL = PHONES.index(SILENCE)


class LiveFeatures:
    """Push samples in; take the [2K+1, W, F] normalised window stack of any frame whose look-ahead is in."""

    def __init__(
        self,
        extractor: SpeechFeatures,
        info: FeatureInfo,
        fps: float,
        context: int,
        lookahead_s: float,
        history_s: float = 20.0,
        prior_s: float = 3.0,
        phones: PhoneStream | None = None,
        pause_keep_s: float = 0.5,
        min_talk_s: float = 1.0,
    ):
        if extractor.learned is not None:
            raise UserError(
                "the avatar hears audio through a speech model (`avatar preprocess --speech-model`), which needs "
                "whole windows of audio: `avatar live` takes avatars trained on mel and phone features only."
            )
        if extractor.phonetic is not None and phones is None:
            raise ValueError("an extractor with phone classes needs a PhoneStream")
        self.extractor, self.fps, self.context, self.window = extractor, fps, context, info.window
        self.lookahead_s, self.history_rows, self.prior_rows = lookahead_s, int(history_s * 100), prior_s * 100
        self.pause_keep_rows, self.min_talk_rows = int(pause_keep_s * 100), int(min_talk_s * 100)
        self.prior = (np.asarray(info.mean, np.float64), np.asarray(info.std, np.float64))
        self.phones = phones if extractor.phonetic is not None else None
        mel = extractor.mel
        self.hop = extractor.hop
        self.mel_rows = (
            IncrementalRows(lambda wave: np.column_stack(mel.rows_and_rms(wave)), self.hop) if mel is not None else None
        )
        self.rows = np.zeros((0, mel.dim + 1 if mel is not None else 0), np.float32)  # raw mel rows + RMS
        self.first_row = 0  # stream row of self.rows[0]
        self.samples = 0
        self.ended = False
        self.block_silent: list[bool] = []  # per 100 ms block of the stream
        self.partial = np.zeros(0, np.float32)  # the samples after the last whole block

    # ----- input
    def push(self, wave: np.ndarray) -> None:
        """The next float32 samples of the stream."""
        wave = np.asarray(wave, np.float32).reshape(-1)
        self.samples += len(wave)
        self.partial = np.concatenate([self.partial, wave])
        whole = len(self.partial) // SILENCE_BLOCK
        for b in range(whole):
            self.block_silent.append(is_silent(self.partial[b * SILENCE_BLOCK : (b + 1) * SILENCE_BLOCK]))
        self.partial = self.partial[whole * SILENCE_BLOCK :]
        if self.mel_rows is not None:
            self._keep(self.mel_rows.push(wave))
        if self.phones is not None:
            self.phones.push(wave)

    def end(self) -> None:
        """The stream has ended: its last rows are padded as a file's are."""
        if self.mel_rows is not None:
            self._keep(self.mel_rows.end())
        if self.phones is not None:
            self.phones.end()
        self.ended = True

    def _keep(self, blocks: list[np.ndarray]) -> None:
        if blocks:
            self.rows = np.concatenate([self.rows, *blocks])

    # ----- frames
    @property
    def num_frames(self) -> int:
        """Frames whose stacks can be made now: their look-ahead is in (all of them once the stream ended)."""
        if self.ended:
            return num_frames_for(self.samples, SAMPLE_RATE, self.fps)
        return max(0, int(np.floor((self.samples / SAMPLE_RATE - self.lookahead_s) * self.fps + 1e-9)))

    def samples_for(self, frame: int) -> int:
        """Samples of the stream that frame `frame` waits for: its end plus the look-ahead."""
        return int(np.ceil(((frame + 1) / self.fps + self.lookahead_s) * SAMPLE_RATE - 1e-6))

    @property
    def known_rows(self) -> int:
        """Rows computed so far (all of the stream's once it ended)."""
        if self.mel_rows is not None:
            return self.first_row + len(self.rows)
        return 1 + self.samples // self.hop if self.ended else self.samples // self.hop

    def window_stack(self, frame: int) -> np.ndarray:
        """[2K+1, W, F] float32 normalised windows of `frame` and its neighbours."""
        known = self.known_rows
        lo_row = max(0, known - self.history_rows)
        if self._silent(lo_row, known) or known == 0:
            return np.zeros((2 * self.context + 1, self.window, self.extractor.dim), np.float32)
        frames = np.arange(frame - self.context, frame + self.context + 1)
        frames = np.clip(frames, 0, self.num_frames - 1 if self.ended else None)
        first, last = int(frames.min()), int(frames.max())
        rows = frame_window_rows(self.extractor.rate_hz, self.fps, last - first + 1, self.window, first, known)
        rows = rows[frames - first]  # [C, W]
        r_lo, r_hi = int(rows.min()), int(rows.max()) + 1
        parts = []
        if self.mel_rows is not None:
            mel = self.extractor.mel
            history = self.rows[lo_row - self.first_row : known - self.first_row]
            history = history[self._talk(history[:, -1], lo_row)]
            threshold = mel.voicing_threshold(history[:, -1])
            mean, std = self._stats(mel.voiced(history[:, :-1], history[:, -1], threshold))
            needed = self.rows[r_lo - self.first_row : r_hi - self.first_row]
            parts.append((mel.voiced(needed[:, :-1], needed[:, -1], threshold) - mean) / std)
        if self.phones is not None:
            parts.append(self._classes(r_lo, r_hi, known))
        table = np.concatenate(parts, axis=1).astype(np.float32)  # [r_hi - r_lo, F]
        self._forget(min(lo_row, r_lo))
        return table[rows - r_lo]

    def _talk(self, rms: np.ndarray, first_row: int) -> np.ndarray:
        """[n] bool: the history's rows that its statistics follow: all but the pauses' rows after their first
        `pause_keep_s`. A pause is a row below -50 dBFS or 30 dB under the history's loud rows (95th percentile),
        or one the phone decoder hears as silence. A file is one talk, pauses and all; a live session is talk
        between silences of any length, which would otherwise become the norm and open the mouth in them."""
        quiet = rms <= max(QUIET_RMS, RELATIVE_QUIET * float(np.percentile(rms, 95)) if len(rms) else 0.0)
        if self.phones is not None:
            quiet |= self.phones.labels(first_row, first_row + len(rms)) == SILENCE_LABEL
        index = np.arange(len(rms))
        starts = quiet & ~np.concatenate([[False], quiet[:-1]])
        run_start = np.maximum.accumulate(np.where(starts, index, 0))
        return ~quiet | (index - run_start < self.pause_keep_rows)

    def _stats(self, voiced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the mel columns: the history's talk, and the training clip's weighted as `prior_s`
        of rows (alone while the history holds less than `min_talk_s` of talk)."""
        if len(voiced) < self.min_talk_rows and self.prior_rows > 0:
            return tuple(p[: voiced.shape[1]].astype(np.float32) for p in self.prior)
        mean, std = (s.astype(np.float64) for s in feature_stats(voiced))
        weight = self.prior_rows / (self.prior_rows + len(voiced)) if self.prior_rows > 0 else 0.0
        if weight > 0:
            prior_mean, prior_std = (p[: len(mean)] for p in self.prior)
            second = weight * (prior_std**2 + prior_mean**2) + (1 - weight) * (std**2 + mean**2)
            mean = weight * prior_mean + (1 - weight) * mean
            std = np.sqrt(np.maximum(second - mean**2, 1e-8))
        return mean.astype(np.float32), std.astype(np.float32)

    def _classes(self, r_lo: int, r_hi: int, known: int) -> np.ndarray:
        """[r_hi - r_lo, dim] the phone classes of rows r_lo.., smoothed over their neighbours as a file's are
        (`PhoneticFeatures.from_labels`: the stream's start and, once it ended, its end are padded with their
        edge rows)."""
        phonetic = self.extractor.phonetic
        radius = int(np.ceil(3 * phonetic.sigma_ms / 1000.0 * phonetic.rate_hz)) if phonetic.sigma_ms > 0 else 0
        a = max(0, r_lo - radius)
        b = min(r_hi + radius, known) if self.ended else r_hi + radius
        return phonetic.from_labels(self.phones.labels(a, b))[r_lo - a : r_hi - a]

    def _silent(self, lo_row: int, hi_row: int) -> bool:
        """The history's audio (rows lo_row..hi_row) stays below -50 dBFS (`is_silent`)."""
        first = lo_row * self.hop // SILENCE_BLOCK
        blocks = self.block_silent[first:]
        if blocks:
            return all(blocks)
        return is_silent(self.partial) if len(self.partial) else True

    def _forget(self, row: int) -> None:
        """Drop the rows before `row`: no later stack reads them."""
        drop = min(max(row - self.first_row, 0), len(self.rows))
        if self.mel_rows is not None and drop > 4 * SAMPLE_RATE // self.hop:  # in blocks, not every frame
            self.rows, self.first_row = self.rows[drop:], self.first_row + drop
        if self.phones is not None:
            self.phones.forget_before(row - 100)
