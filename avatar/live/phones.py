"""The phonetic stream of a live session: pocketsphinx follows the audio as it arrives, in a process of its own.

Offline, phones are decoded on a fixed grid of 20 s windows, each one utterance normalised by its own
cepstral mean (`avatar.audio.phonetic`): a row there depends on up to 20 s of audio around it, which no live
stream has. Live, one decoder takes the audio as it comes as one long utterance, normalised by a running
cepstral mean (the decoder's live CMN, refreshed every `CMN_STEP` samples on a grid fixed to the utterance's
start, so the rows do not depend on how the audio was chunked), and after each piece its best path so far
gives the rows up to the newest sample. A row may still change while later audio sharpens the path; a frame
reads the rows as they stand when it is made (the look-ahead decides how settled they are). The utterance
restarts at a pause once it is `RESTART_S` long (and at `MAX_UTTERANCE_S` in any case), which bounds the path
the decoder traces back after every piece; the running mean carries over.

pocketsphinx holds the GIL while it decodes (a Python thread beside it ran 10x slower), so the decoder runs
in a child process and the session reads its rows without waiting on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection

import numpy as np

from avatar.audio.grid import HOP
from avatar.audio.phonetic import PHONES, SILENCE, decoded_segments, decoder_pcm, new_decoder

CMN_STEP = 3200  # samples (200 ms) between refreshes of the running cepstral mean
RESTART_S = 10.0  # an utterance this long restarts at the next pause ...
PAUSE_ROWS = 30  # ... of at least 300 ms of decoded silence
MAX_UTTERANCE_S = 30.0  # and restarts here whatever is said
KEEP_ROWS = 300  # rows before the last answer's end sent again with the next (older rows rarely change)
_SILENCE = PHONES.index(SILENCE)


def live_decoder():
    """The allphone decoder of `avatar.audio.phonetic` with a running cepstral mean."""
    return new_decoder(cmn="live")


class LiveDecoder:
    """One stream's decoding (in the child process): samples in, the recent best path out."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.initial_cmn = decoder.get_cmn()
        self.answered = 0  # the newest row of the last answer
        self.start(0)

    def start(self, first_sample: int, keep_mean: bool = False) -> None:
        """A new utterance at `first_sample` (a multiple of the row hop); a new stream resets the mean."""
        if not keep_mean:  # a new stream: as a fresh decoder (the feature state, noise estimate included)
            self.decoder.reinit_feat()
            self.decoder.set_cmn(self.initial_cmn)
            self.answered = 0
        self.utterance_start = first_sample
        self.fed = 0  # samples of this utterance decoded so far
        self.decoder.start_utt()
        self.open = True

    @property
    def decoded(self) -> int:
        """Samples of the stream decoded so far."""
        return self.utterance_start + self.fed

    def feed(self, pcm: np.ndarray) -> list[tuple[int, int, int]]:
        """Decode int16 samples that follow the decoded ones; returns the segments (phone index, start row,
        end row) of the recent path, the final path of any utterance that ended on the way included."""
        sent: dict[int, tuple[int, int, int]] = {}
        if not self.open:  # audio after the stream's end: a new utterance
            self.start(self.decoded, keep_mean=True)
        while len(pcm):
            piece = CMN_STEP - self.fed % CMN_STEP
            self.decoder.process_raw(pcm[:piece].tobytes(), full_utt=False)
            self.fed += min(piece, len(pcm))
            pcm = pcm[piece:]
            if self.fed % CMN_STEP == 0:
                self.decoder.get_cmn(True)  # the running mean over the audio so far
                if self._restart_due():
                    for segment in self.finish():
                        sent[segment[1]] = segment
                    self.start(self.decoded, keep_mean=True)
        for segment in self.segments():
            sent[segment[1]] = segment
        self.answered = self.decoded // HOP
        return sorted(sent.values(), key=lambda s: s[1])

    def finish(self) -> list[tuple[int, int, int]]:
        """End the utterance: its whole final path (nothing when it has ended already)."""
        if not self.open:
            return []
        self.decoder.end_utt()
        self.open = False
        return self.segments(self.utterance_start // HOP)

    def segments(self, floor: int | None = None) -> list[tuple[int, int, int]]:
        """The path's segments that end after row `floor` (default KEEP_ROWS rows before the last answer's end)."""
        floor = self.answered - KEEP_ROWS if floor is None else floor
        path = decoded_segments(self.decoder, self.utterance_start // HOP)
        return [(PHONES.index(p), a, b) for p, a, b in path if b > floor]

    def _restart_due(self) -> bool:
        seconds = self.fed / 16000
        if seconds >= MAX_UTTERANCE_S:
            return True
        if seconds < RESTART_S:
            return False
        path = decoded_segments(self.decoder, self.utterance_start // HOP)
        return bool(path) and path[-1][0] == SILENCE and path[-1][2] - path[-1][1] >= PAUSE_ROWS


def _serve(inbox: Connection, outbox: Connection) -> None:
    """The child process: ("start",) a new stream, ("audio", int16 bytes), ("end",) its end, ("stop",).
    Answers ("rows", stream, decoded samples, segments, ended) after each batch of messages, the stream counted
    by its starts as the session side counts them; stops when the session's end of the pipe closes."""
    live = LiveDecoder(live_decoder())
    stream = 0
    outbox.send(("ready",))
    while True:
        try:
            messages = [inbox.recv()]
            while inbox.poll():  # decode what queued up in one go
                messages.append(inbox.recv())
        except EOFError:
            return
        segments, ended = [], False
        for message in messages:
            if message[0] == "stop":
                return
            if message[0] == "start":
                live.finish()
                live.start(0)
                stream += 1
                segments, ended = [], False
            elif message[0] == "audio":
                segments = _merge(segments, live.feed(np.frombuffer(message[1], np.int16)))
            elif message[0] == "end":
                segments, ended = _merge(segments, live.finish()), True
        outbox.send(("rows", stream, live.decoded, segments, ended))


def _merge(old: list, new: list) -> list:
    """Segments of two answers: the newer path wins from its first row on."""
    if not new:
        return old
    return [s for s in old if s[2] <= new[0][1]] + new


class PhoneStream:
    """The session side: audio out to the decoding process, phone labels per row back.

    Rows beyond the decoded ones repeat the last decoded phone (as `avatar.audio.phonetic.row_labels` repeats
    the edge segment); before any, silence."""

    def __init__(self, start_timeout_s: float = 60.0):
        # a fresh interpreter (not a fork of a process running torch threads, nor multiprocessing's spawn,
        # which re-imports the caller's main script)
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "avatar.live.phones", str(to_child), str(from_child)],
            pass_fds=(to_child, from_child),
        )
        os.close(to_child)
        os.close(from_child)
        self._send = Connection(from_parent, readable=False)
        self._conn = Connection(to_parent, writable=False)
        self._start_timeout_s = start_timeout_s
        self._ready = False
        self.stream = 0  # streams started (the decoding process counts them too)
        self._reset()

    def _wait_ready(self) -> None:
        """The process loads the acoustic model first (seconds): the first stream waits for it."""
        if self._ready:
            return
        if not self._conn.poll(self._start_timeout_s):
            raise RuntimeError("the phone decoder process did not start")
        self._conn.recv()
        self._ready = True

    def _reset(self) -> None:
        self.labels_store = np.zeros(0, np.int8)
        self.first_row = 0  # absolute row of labels_store[0]
        self.decoded = 0  # samples decoded
        self.ended = False
        self.sent = 0  # samples sent
        self.last = _SILENCE

    def start(self) -> None:
        """A new stream from sample 0 (answers about the one before, still on their way, are dropped)."""
        self._tell(("start",))
        self.stream += 1
        self._reset()

    def push(self, wave: np.ndarray) -> None:
        """The next float32 samples of the stream."""
        self._tell(("audio", decoder_pcm(wave, self.sent).tobytes()))
        self.sent += len(wave)

    def _tell(self, message: tuple) -> None:
        self._wait_ready()
        try:
            self._send.send(message)
        except OSError:
            raise RuntimeError(f"the phone decoder process has stopped (exit code {self._process.poll()})") from None

    def end(self) -> None:
        """The stream has ended: the decoder finishes its last utterance."""
        self._tell(("end",))

    def sync(self, samples: int, timeout_s: float) -> bool:
        """Take the decoder's answers; wait up to `timeout_s` for it to have decoded `samples` (or the
        stream's end). True when it has."""
        self._wait_ready()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                while self._conn.poll():
                    _, stream, decoded, segments, ended = self._conn.recv()
                    if stream == self.stream:
                        self._apply(decoded, segments, ended)
            except (EOFError, OSError):
                raise RuntimeError(
                    f"the phone decoder process has stopped (exit code {self._process.poll()})"
                ) from None
            if self.decoded >= samples or self.ended:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._conn.poll(remaining):
                return False

    def _apply(self, decoded: int, segments: list, ended: bool) -> None:
        rows = decoded // HOP + 1
        if rows > self.first_row + len(self.labels_store):
            grow = rows - self.first_row - len(self.labels_store)
            self.labels_store = np.concatenate([self.labels_store, np.full(grow, self.last, np.int8)])
        previous_end = None
        for phone, start, end in segments:
            a, b = max(start - self.first_row, 0), max(min(end, rows) - self.first_row, 0)
            if previous_end is not None and a > previous_end:  # a gap between segments is silence (row_labels)
                self.labels_store[previous_end:a] = _SILENCE
            self.labels_store[a:b] = phone
            previous_end = b
        if segments:
            self.last = segments[-1][0]
            tail = max(segments[-1][2] - self.first_row, 0)
            self.labels_store[tail:] = self.last  # after the path's end: its last phone
        self.decoded, self.ended = decoded, self.ended or ended

    def labels(self, lo: int, hi: int) -> np.ndarray:
        """[hi - lo] phone indices of rows lo..hi-1."""
        known = self.first_row + len(self.labels_store)
        out = np.full(hi - lo, self.last, np.int64)
        a, b = max(lo, self.first_row), min(hi, known)
        if b > a:
            out[a - lo : b - lo] = self.labels_store[a - self.first_row : b - self.first_row]
        if lo < self.first_row:  # forgotten rows (older than any window needs): the oldest kept
            out[: self.first_row - lo] = self.labels_store[0] if len(self.labels_store) else _SILENCE
        return out

    def forget_before(self, row: int) -> None:
        """Drop the labels of rows before `row` (the session no longer reads them)."""
        drop = min(max(row - self.first_row, 0), len(self.labels_store))
        self.labels_store, self.first_row = self.labels_store[drop:], self.first_row + drop

    def close(self) -> None:
        try:
            self._send.send(("stop",))
        except OSError:
            pass
        self._send.close()
        self._conn.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


if __name__ == "__main__":  # the decoding process (PhoneStream starts it)
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
