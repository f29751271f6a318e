"""`avatar live`'s web side: the page, the signalling and the WebRTC peers, on one asyncio loop in its own thread.

    browser ──GET /?token=T──▶ the page      ──WebSocket /ws?token=T──▶ offer / answer, status messages
    microphone ──Opus──▶ aiortc ──16 kHz──▶ AudioTimeline ──▶ Session ──▶ PageSink ──VP8 / H.264 + Opus──▶ <video>

Every request without the printed access token is refused (403) before anything else happens: the page, the
signalling socket, and so the media, which are only set up through the signalling (the peers' ICE credentials
and DTLS fingerprints travel there). With the microphone, one browser at a time drives the avatar
(`MAX_SESSIONS`: a 2-core CPU renders one stream in real time); another is told so and refused. With
`--audio-in`, the page only watches: up to `MAX_WATCHERS` browsers see the one session. The tracks the session
feeds never hold more than `VIDEO_QUEUE` pictures: a browser whose encoder falls behind misses pictures, it
does not fall behind.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import numpy as np

from avatar.audio.io import SAMPLE_RATE
from avatar.live.timeline import AudioTimeline

MAX_SESSIONS = 1  # browsers driving the avatar with their microphone at once
MAX_WATCHERS = 4  # browsers watching an --audio-in session
VIDEO_QUEUE = 2  # pictures waiting for a browser's encoder
VIDEO_CLOCK = 90000  # RTP video clock
BUSY = (
    "Another browser is speaking through the avatar now: one live session at a time on this machine. Try "
    "again when it ends."
)


def page(mode: str) -> str:
    """The page, set up for "microphone" or "watch"."""
    html = resources.files("avatar.live").joinpath("page.html").read_text()
    start, end = html.index("/*LIVE_SETTINGS*/"), html.index("/*END*/") + len("/*END*/")
    return html[:start] + json.dumps({"mode": mode}) + html[end:]


def token_ok(path: str, token: str) -> bool:
    """The request's `token` query parameter is the server's (compared in constant time)."""
    given = parse_qs(urlsplit(path).query).get("token", [""])[0]
    return hmac.compare_digest(given.encode(), token.encode())


def _tracks():
    """Outgoing audio and video tracks that send what is put in their queues (aiortc loads here)."""
    from aiortc import MediaStreamTrack  # noqa: PLC0415 - the WebRTC stack loads only for `avatar live`
    from aiortc.mediastreams import MediaStreamError  # noqa: PLC0415

    class Outgoing(MediaStreamTrack):
        def __init__(self, kind: str):
            super().__init__()
            self.kind = kind
            self.queue: asyncio.Queue = asyncio.Queue()

        async def recv(self):
            item = await self.queue.get()
            if item is None:
                self.stop()
                raise MediaStreamError
            return item

    return Outgoing("audio"), Outgoing("video")


class Peer:
    """One browser's peer connection: its outgoing tracks, and the socket its status messages go to."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pc, socket):
        self.loop, self.pc, self.socket = loop, pc, socket
        self.audio, self.video = _tracks()
        pc.addTrack(self.audio)
        pc.addTrack(self.video)

    def put(self, video, audio) -> None:
        """Queue a picture (None: none this time) and its sound; called from the session's thread."""
        self.loop.call_soon_threadsafe(self._put, video, audio)

    def _put(self, video, audio) -> None:
        if audio is not None:
            self.audio.queue.put_nowait(audio)
        if video is not None:
            while self.video.queue.qsize() >= VIDEO_QUEUE:  # this browser's encoder is behind: drop the oldest
                self.video.queue.get_nowait()
            self.video.queue.put_nowait(video)

    def tell(self, message: dict) -> None:
        """Send a message to the page (from any thread)."""
        asyncio.run_coroutine_threadsafe(self._send(message), self.loop)

    async def _send(self, message: dict) -> None:
        try:
            await self.socket.send(json.dumps(message))
        except Exception:  # a page that has gone: nothing to tell
            pass

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.audio.queue.put_nowait, None)
        self.loop.call_soon_threadsafe(self.video.queue.put_nowait, None)


class PageSink:
    """A session's frames to the browsers attached to it (a `avatar.live.session.Sink`)."""

    def __init__(self, fps: float):
        self.fps = fps
        self.peers: set[Peer] = set()
        self._lock = threading.Lock()
        self._audio_pts = 0

    def attach(self, peer: Peer) -> None:
        with self._lock:
            self.peers.add(peer)

    def detach(self, peer: Peer) -> None:
        with self._lock:
            self.peers.discard(peer)

    def frame(self, k: int, image: np.ndarray | None, audio: np.ndarray, info: dict | None) -> None:
        import av  # noqa: PLC0415 - media libraries load when used

        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
        with self._lock:
            peers = list(self.peers)
        for peer in peers:
            sound = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            sound.sample_rate, sound.pts, sound.time_base = SAMPLE_RATE, self._audio_pts, Fraction(1, SAMPLE_RATE)
            picture = None
            if image is not None:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                picture.pts, picture.time_base = int(round(k * VIDEO_CLOCK / self.fps)), Fraction(1, VIDEO_CLOCK)
            peer.put(picture, sound)
        self._audio_pts += len(audio)

    def status(self, text: str) -> None:
        with self._lock:
            for peer in self.peers:
                peer.tell({"type": "status", "text": text})

    def close(self, summary: dict) -> None:
        text = (
            f"The session has ended: {summary['frames']} frames, {summary['dropped']} dropped, latency "
            f"{summary['latency_ms_p50']:.0f} ms (p50) / {summary['latency_ms_p95']:.0f} ms (p95)."
        )
        with self._lock:
            for peer in self.peers:
                peer.tell({"type": "ended", "text": text})
                peer.end()

    def abort(self) -> None:
        with self._lock:
            for peer in self.peers:
                peer.tell({"type": "error", "text": "The session failed on the server; see its terminal."})
                peer.end()


@dataclass
class SessionRequest:
    """A browser asks to speak through the avatar: its audio timeline and where its frames go."""

    timeline: AudioTimeline
    sink: PageSink
    done: Callable[[], None]  # call when the session has ended: the next browser may start one


async def pump_microphone(track, timeline: AudioTimeline) -> None:
    """The browser's microphone (any rate and layout) onto the timeline as 16 kHz mono, until it ends."""
    import av  # noqa: PLC0415 - media libraries load when used
    from aiortc.mediastreams import MediaStreamError  # noqa: PLC0415

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    try:
        while True:
            frame = await track.recv()
            for out in resampler.resample(frame):
                timeline.put(out.to_ndarray().reshape(-1))
    except MediaStreamError:
        pass
    finally:
        timeline.close()


class LiveServer:
    """The page and the signalling at `host`:`port`, on an asyncio loop in a thread. `on_session` receives each
    microphone session (mode "microphone"); `watch` is the sink of the one --audio-in session (mode "watch")."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        fps: float,
        ssl_context=None,
        on_session: Callable[[SessionRequest], None] | None = None,
        watch: PageSink | None = None,
    ):
        self.host, self.port, self.token, self.fps, self.ssl = host, port, token, fps, ssl_context
        self.on_session, self.watch = on_session, watch
        self.mode = "watch" if watch is not None else "microphone"
        self._page = page(self.mode)
        self._busy = 0
        self._watchers = 0
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="avatar-live-server")
        self._server = None
        self._pcs: set = set()
        for name in ("aiortc", "aioice", "websockets"):
            logging.getLogger(name).setLevel(logging.ERROR)

    def start(self) -> int:
        """Start listening; returns the port."""
        from websockets.asyncio.server import serve  # noqa: PLC0415 - the web stack loads only for `avatar live`

        self._thread.start()

        async def listen():
            return await serve(
                self._socket, self.host, self.port, ssl=self.ssl, process_request=self._request, max_size=2**20
            )

        self._server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(timeout=30)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self.port

    def stop(self) -> None:
        async def shutdown():
            for pc in list(self._pcs):
                await pc.close()
            self._server.close()
            try:  # a connection still closing its TLS need not hold the shutdown
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except TimeoutError:
                pass
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._server is not None:
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
            except Exception:  # shutting down anyway
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    # ----- HTTP: the page, or a refusal
    def _request(self, connection, request):
        path = urlsplit(request.path).path
        if path not in ("/", "/index.html", "/ws"):
            return connection.respond(404, "Not found.\n")
        if not token_ok(request.path, self.token):
            return connection.respond(
                403, "Forbidden: this address needs the access token that `avatar live` printed (?token=...).\n"
            )
        if path == "/ws":
            return None  # the WebSocket handshake goes on
        response = connection.respond(200, self._page)
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        return response

    # ----- signalling
    async def _socket(self, socket) -> None:
        peer, release = None, None
        try:
            async for text in socket:
                message = json.loads(text)
                if message.get("type") == "offer" and peer is None:
                    peer, release = await self._answer(socket, message["sdp"])
        except Exception:  # a page that closes or sends garbage ends its own connection only
            pass
        finally:
            if peer is not None:
                await peer.pc.close()
                self._pcs.discard(peer.pc)
            if release is not None:
                release()

    async def _answer(self, socket, sdp: str):
        """The peer for an offer (None when refused), and what to call when it goes."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: PLC0415

        with self._lock:
            if self.mode == "microphone" and self._busy >= MAX_SESSIONS:
                refused = BUSY
            elif self.mode == "watch" and self._watchers >= MAX_WATCHERS:
                refused = f"{MAX_WATCHERS} browsers are watching already; this machine serves no more."
            else:
                refused = None
                if self.mode == "microphone":
                    self._busy += 1
                else:
                    self._watchers += 1
        if refused:
            await socket.send(json.dumps({"type": "busy", "text": refused}))
            return None, None
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing outside this network is asked
        self._pcs.add(pc)
        timeline = AudioTimeline(self_clocked=True)

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio" and self.mode == "microphone":
                asyncio.ensure_future(pump_microphone(track, timeline))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                timeline.close()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        peer = Peer(self.loop, pc, socket)
        await pc.setLocalDescription(await pc.createAnswer())
        await socket.send(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp}))
        if self.mode == "watch":
            self.watch.attach(peer)

            def release():
                self.watch.detach(peer)
                with self._lock:
                    self._watchers -= 1

            return peer, release
        sink = PageSink(self.fps)
        sink.attach(peer)

        def done():
            with self._lock:
                self._busy -= 1

        self.on_session(SessionRequest(timeline, sink, done))
        return peer, timeline.close  # the page going ends the session's audio; the session then calls done()
