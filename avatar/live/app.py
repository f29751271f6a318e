"""`avatar live RUN`: the avatar speaks as you speak (the browser's microphone, or `--audio-in` from stdin or a
file), in real time; see docs/live.md.

Everything a user can get wrong is checked before the avatar loads: the host and TLS files, a busy port, the
input file, the outputs. The phone decoder's process starts first (it takes seconds to load) and the avatar
renders one frame of silence before the URL is printed, so the first session starts warm.
"""

from __future__ import annotations

import queue
import secrets
import ssl
import sys
import threading
from pathlib import Path

import numpy as np

from avatar.audio.io import SAMPLE_RATE, audio_channels
from avatar.device import resolve_device, set_threads
from avatar.errors import UserError
from avatar.hosts import is_local, listening_port, url
from avatar.live.config import LiveConfig
from avatar.live.features import LiveFeatures
from avatar.live.outputs import LatencyLog, Recorder, check_log, numbered
from avatar.live.phones import PhoneStream
from avatar.live.server import LiveServer, PageSink, SessionRequest
from avatar.live.session import LiveAvatar, Session
from avatar.live.timeline import AudioTimeline, play_file, read_stdin
from avatar.model.audio_encoder import NO_LEVELS
from avatar.model.driving import feature_extractor
from avatar.model.talking_head import TalkingHead
from avatar.render.video import check_output

CERT_HINT = (
    "a self-signed pair: `openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 365 "
    "-subj /CN=$(hostname)`"
)


def tls_context(cfg: LiveConfig) -> ssl.SSLContext | None:
    """The https context, or None on this machine only. Another machine's browser gives the page the microphone
    only over https, and the access token must not cross the network in clear: a non-local --host needs both
    files."""
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together: give both (the certificate and its private key).")
    if cfg.tls_cert is None:
        if not is_local(cfg.host):
            raise UserError(
                f"--host {cfg.host!r}: serves other machines, whose browsers give a page the microphone only over "
                f"https (and the access token must not cross the network in clear). Give --tls-cert CERT.pem "
                f"--tls-key KEY.pem ({CERT_HINT}), or leave --host out to serve this machine only."
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(
            f"--tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: cannot be loaded as a PEM certificate and its "
            f"key ({exc}). Give the pair ({CERT_HINT})."
        ) from exc
    return context


def check_input(audio_in: str | None) -> None:
    """A UserError for an --audio-in file that is missing, unreadable or has no sound, or for stdin that is a
    terminal (nothing pipes audio into it)."""
    if audio_in == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError(
                "--audio-in -: stdin is a terminal, not audio. Pipe raw 16 kHz mono s16le PCM into it, e.g. "
                "`my-tts | avatar live RUN --audio-in -`, or give an audio file instead of -."
            )
    elif audio_in is not None:
        audio_channels(Path(audio_in))


def run(cfg: LiveConfig) -> None:
    context = tls_context(cfg)
    listening_port(cfg.host, cfg.port)  # a bad --host or a busy --port is said before the avatar loads
    check_input(cfg.audio_in)
    if cfg.record is not None:
        check_output(cfg.record)
    if cfg.latency_log is not None:
        check_log(cfg.latency_log)
    set_threads(cfg.threads)
    head = TalkingHead.load(cfg.run, resolve_device(cfg.device))
    head.spec.backend = cfg.backend
    extractor = feature_extractor(head.driving.features)
    if extractor.learned is not None:
        raise UserError(
            f"{cfg.run}: the avatar hears audio through a speech model, which needs whole windows of audio; "
            "`avatar live` takes avatars trained on mel and phone features (the default)."
        )
    phones = PhoneStream() if extractor.phonetic is not None else None
    live = None
    try:
        live = Live(cfg, head, extractor, phones)
        address = live.start(context)
        if cfg.audio_in is None:
            print(f"avatar live: open {address} in a browser and press Start (Ctrl-C to stop)", flush=True)
            live.serve_microphone()
        else:
            print(f"avatar live: watch at {address} (the session ends with its input)", flush=True)
            live.run_input()
    finally:
        if live is not None:
            live.close()
        if phones is not None:
            phones.close()


class Live:
    """The loaded avatar, the server and the sessions of one `avatar live`."""

    def __init__(self, cfg: LiveConfig, head, extractor, phones: PhoneStream | None):
        self.cfg, self.head, self.extractor, self.phones = cfg, head, extractor, phones
        self.avatar = LiveAvatar(head, cfg.pose, cfg.seed, cfg.resolution)
        self.sessions = 0
        self.stop = threading.Event()
        self.requests: queue.Queue[SessionRequest] = queue.Queue()
        self.server: LiveServer | None = None
        self.watch: PageSink | None = None
        self._warm_up()

    def _warm_up(self) -> None:
        """A frame of silence through the mel analysis and the render: a session's first frame is not slower."""
        if self.extractor.mel is not None:
            self.extractor.mel.rows_and_rms(np.zeros(SAMPLE_RATE // 2, np.float32))
        f = self.head.driving.features
        silence = np.zeros((2 * self.head.audio_context + 1, f.window, f.dim), np.float32)
        self.avatar.render(self.avatar.conditions(silence, 0, NO_LEVELS), self.avatar.output)

    def _features(self, phones=None) -> LiveFeatures:
        if phones is not None:
            phones.start()
        return LiveFeatures(
            self.extractor,
            self.head.driving.features,
            self.avatar.fps,
            self.head.audio_context,
            self.cfg.lookahead_ms / 1000,
            self.cfg.history_s,
            phones=phones,
        )

    def _outputs(self) -> list:
        """The recording and the log of the next session."""
        self.sessions += 1
        sinks = []
        if self.cfg.record is not None:
            sinks.append(Recorder(numbered(self.cfg.record, self.sessions), self.avatar.output, self.avatar.fps))
        if self.cfg.latency_log is not None:
            sinks.append(LatencyLog(numbered(self.cfg.latency_log, self.sessions)))
        return sinks

    def _session(self, timeline: AudioTimeline, sinks: list) -> dict:
        session = Session(
            self.avatar, self._features(self.phones), timeline, sinks, self.cfg.min_resolution, self.cfg.history_s,
            say=lambda text: print(f"avatar live: {text}", file=sys.stderr, flush=True),
        )  # fmt: skip
        try:
            return session.run(self.stop)
        finally:
            summary = session.summary
            if summary is not None:  # ended, by its input or by Ctrl-C
                paths = [str(s.path) for s in sinks if isinstance(s, (Recorder, LatencyLog)) and s.path.exists()]
                print(
                    f"session {self.sessions}: {summary['frames']} frames at {summary['fps']:.1f} FPS, "
                    f"{summary['dropped']} dropped, latency p50 {summary['latency_ms_p50']:.0f} ms, p95 "
                    f"{summary['latency_ms_p95']:.0f} ms, max {summary['latency_ms_max']:.0f} ms"
                    + (f"; wrote {', '.join(paths)}" if paths else ""),
                    flush=True,
                )

    def start(self, context: ssl.SSLContext | None) -> str:
        """Start the server; returns the page's address (with its access token)."""
        cfg, token = self.cfg, secrets.token_urlsafe(16)
        self.watch = PageSink(self.avatar.fps) if cfg.audio_in is not None else None
        self.server = LiveServer(cfg.host, cfg.port, token, self.avatar.fps, context, self.requests.put, self.watch)
        port = self.server.start()
        return url(cfg.host, port, "https" if context is not None else "http", f"/?token={token}")

    def serve_microphone(self) -> None:
        """Run the browsers' sessions one after the other until `stop` is set."""
        while not self.stop.is_set():
            try:
                request = self.requests.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._session(request.timeline, [request.sink, *self._outputs()])
            finally:
                request.done()

    def run_input(self) -> dict:
        """The one session of --audio-in (stdin or a file), watched by the page."""
        source = self.cfg.audio_in
        timeline = AudioTimeline(self_clocked=source != "-")
        if source == "-":
            reader = threading.Thread(
                target=read_stdin, args=(timeline, self.stop), kwargs={"warn": _warn}, daemon=True, name="stdin"
            )
        else:
            reader = threading.Thread(target=play_file, args=(timeline, Path(source), self.stop), daemon=True)
        reader.start()
        return self._session(timeline, [self.watch, *self._outputs()])

    def close(self) -> None:
        self.stop.set()
        if self.server is not None:
            self.server.stop()


def _warn(text: str) -> None:
    print(f"avatar live: {text}", file=sys.stderr, flush=True)
