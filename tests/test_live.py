"""`avatar live`: incremental features against the offline ones, the session's clock (latency, no drift, stalls,
rest after speech), the stdin mode end to end, who may connect, the faults, and the real thing in headless
Chromium with a speech file as the microphone."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.audio.clip import AudioClip
from avatar.audio.features import MelFeatures, speech_features
from avatar.audio.io import SAMPLE_RATE, load_audio, save_wav
from avatar.audio.phonetic import PhoneticFeatures
from avatar.audio.streaming import IncrementalRows
from avatar.benchmarks.bench_live import live_command, start_live, write_in_real_time, writer_latency
from avatar.cli import main
from avatar.contracts.dataset import FeatureInfo
from avatar.eval.cross_drive import lagged_correlation
from avatar.hosts import is_local, url
from avatar.live.app import Live
from avatar.live.config import LiveConfig
from avatar.live.features import LiveFeatures
from avatar.live.outputs import read_log
from avatar.live.phones import PhoneStream
from avatar.live.server import LiveServer, PageSink
from avatar.live.session import LEVELS_BLOCK, LiveAvatar, RollingLevels, Session, SizeControl, size_ladder
from avatar.live.timeline import AudioTimeline
from avatar.model.audio_encoder import NO_LEVELS, ClipLevels
from avatar.model.driving import feature_extractor
from tests.export_fixtures import EnergyMouthHead, make_dataset, probe
from tests.train_fixtures import tiny_dataset, tiny_run  # noqa: F401 - the fixtures

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") is not None and shutil.which("chromedriver") is not None


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    """12 s of real speech (espeak, an American male voice) at 16 kHz, as 16-bit PCM would carry it."""
    wave = load_audio(shared_data / "espeak_en_us_male_26s.wav")[: 12 * SAMPLE_RATE]
    return np.round(np.clip(wave, -1, 1) * 32767).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def phones():
    stream = PhoneStream()
    yield stream
    stream.close()


@pytest.fixture(scope="module")
def double(tmp_path_factory) -> EnergyMouthHead:
    """The export tests' avatar double: its dark mouth opens with the energy of the frame's audio window."""
    return EnergyMouthHead(make_dataset(tmp_path_factory.mktemp("live_double") / "dataset"))


def _chunks(wave: np.ndarray, seed: int = 0):
    rng, i = np.random.default_rng(seed), 0
    while i < len(wave):
        n = int(rng.integers(1, 3000))
        yield wave[i : i + n]
        i += n


# ---------------------------------------------------------------- incremental features
def test_incremental_rows_equal_the_whole_clip(speech):
    """Mel rows pushed as the audio comes (any chunking) are the rows of the whole clip, each as soon as the
    32 ms around it are in."""
    mel = MelFeatures()
    rows_of = lambda wave: np.column_stack(mel.rows_and_rms(wave))  # noqa: E731
    wave = speech[: 3 * SAMPLE_RATE]
    live, got = IncrementalRows(rows_of, mel.hop), []
    for chunk in _chunks(wave):
        got += live.push(chunk)
        assert sum(map(len, got)) == max(0, (live.samples - live.margin) // mel.hop)  # every complete row, no more
    got += live.end()
    np.testing.assert_allclose(np.concatenate(got), rows_of(wave), atol=1e-4)


def test_live_features_equal_offline_where_the_lookahead_covers_the_window(speech, phones, tmp_path):
    """With a look-ahead, history and pause allowance covering the whole clip (and no prior), each frame's
    stack equals `avatar render`'s (AudioClip.windows): mel rows, voicing threshold, statistics, windows and
    context; the phone classes are those of the decoder that follows the stream, whatever the chunking."""
    path = tmp_path / "speech.wav"
    save_wav(path, speech[: 4 * SAMPLE_RATE])
    wave = load_audio(path)
    extractor = speech_features("mel+phones+visemes")
    info = FeatureInfo("x", extractor.name, 100.0, extractor.dim, 16, [0.0] * extractor.dim, [1.0] * extractor.dim)
    offline = np.concatenate(list(AudioClip.read(path, extractor).windows(25.0, 16, 4)))
    phones.start()
    live = LiveFeatures(extractor, info, 25.0, 4, 100.0, 100.0, 0.0, phones, pause_keep_s=100.0)
    for chunk in _chunks(wave):
        live.push(chunk)
    live.end()
    assert phones.sync(len(wave), 60)
    stacks = np.stack([live.window_stack(k) for k in range(live.num_frames)])
    assert stacks.shape == offline.shape
    m = extractor.normalized
    np.testing.assert_allclose(stacks[..., :m], offline[..., :m], atol=1e-4)
    labels = phones.labels(0, len(wave) // 160 + 1)
    phones.start()  # the same clip in one piece: the same path
    phones.push(wave)
    phones.end()
    assert phones.sync(len(wave), 60)
    np.testing.assert_array_equal(phones.labels(0, len(wave) // 160 + 1), labels)
    classes = extractor.phonetic.from_labels(labels)
    rows = np.clip(np.round((np.arange(len(stacks)) + 0.5) / 25 * 100).astype(int), 0, len(labels) - 1)
    np.testing.assert_allclose(stacks[:, 4, 8, m:], classes[rows], atol=1e-6)  # each frame's centre row
    # the live decoder hears mostly what the offline grid decoder hears (the figure is in docs/live.md)
    offline_visemes = PhoneticFeatures(sigma_ms=0)(wave).argmax(1)
    live_visemes = PhoneticFeatures(sigma_ms=0).from_labels(labels).argmax(1)
    assert np.mean(live_visemes == offline_visemes) > 0.7


def test_a_new_stream_ignores_the_answers_about_the_one_before(speech, phones):
    """A stream left without waiting for its decoding (a session that ended, a test that moved on): its answers
    still on their way must not land on the next stream's rows, nor end it."""
    from avatar.audio.phonetic import PHONES, SILENCE

    phones.start()
    phones.push(speech[: 3 * SAMPLE_RATE])
    phones.end()
    time.sleep(3.0)  # decoded and answered meanwhile, the answers unread
    phones.start()
    silence = np.zeros(SAMPLE_RATE, np.float32)
    phones.push(silence)
    assert phones.sync(len(silence), 60) and not phones.ended
    assert (phones.labels(0, len(silence) // 160) == PHONES.index(SILENCE)).all()


def test_silence_after_speech_rests_within_the_lookahead_plus_200_ms(tiny_run, speech, phones):
    """Speech, then silence, through the live features at the default look-ahead and the stream's levels as a
    session keeps them: every frame that shows audio from 200 ms after the speech's end on is the closed mouth
    exactly (the pause gate), and stays so through 2 s of silence (long pauses do not become the norm)."""
    from avatar.model.talking_head import TalkingHead

    head = TalkingHead.load(tiny_run)
    speech_end = 3.0
    wave = np.concatenate([speech[: int(speech_end * SAMPLE_RATE)], np.zeros(2 * SAMPLE_RATE, np.float32)])
    assert np.abs(speech[int(2.9 * SAMPLE_RATE) : int(speech_end * SAMPLE_RATE)]).max() > 0.05  # loud to the end
    phones.start()
    cfg = LiveConfig(run=tiny_run)
    live = LiveFeatures(
        feature_extractor(head.driving.features), head.driving.features, 25.0, head.audio_context,
        cfg.lookahead_ms / 1000, cfg.history_s, phones=phones,
    )  # fmt: skip
    stacks = []
    for i in range(0, len(wave), 640):  # as a microphone sends it, each frame made when its look-ahead is in
        live.push(wave[i : i + 640])
        phones.sync(live.samples, 30)
        while len(stacks) < live.num_frames:
            stacks.append(live.window_stack(len(stacks)))
    levels, expressions = RollingLevels(head.audio_encoder, int(cfg.history_s * 25)), []
    for stack in stacks:  # each frame driven with the levels measured before it, as `Session` does
        with torch.no_grad():
            expressions.append(head.audio_encoder(torch.from_numpy(stack[None]), clip=levels.value)[1][0])
        levels.add(stack)
    away = (torch.stack(expressions) - head.audio_encoder.closed).abs().amax(1).numpy()
    ends = (np.arange(len(stacks)) + 1) / 25
    assert away[(ends > 1.0) & (ends < speech_end - 0.2)].max() > 0.1  # the mouth moved while speaking
    assert away[ends >= speech_end + 0.2].max() < 1e-5


def test_silence_keeps_the_head_moving_and_blinking(double):
    """Silence drives the person's own head motion and blinks (the double's training track has both)."""
    avatar = LiveAvatar(double, "track", seed=0)
    f = double.driving.features
    silent = np.zeros((2 * double.audio_context + 1, f.window, f.dim), np.float32)
    conds = [avatar.conditions(silent, k, 1.0) for k in range(750)]  # 30 s of silence
    rotations = np.stack([c.rotation[0].numpy() for c in conds])
    blinks = np.stack([c.blink[0].numpy() for c in conds])
    assert np.abs(rotations - rotations[0]).max() > 1e-3  # the head moves
    assert blinks.max() > blinks.min() + 0.5  # and the eyes close now and then


class FloorEncoder:
    """Stands in for the audio encoder in `RollingLevels`: each frame's measure is its noise floor, and a clip's
    floor is the mean of its frames'."""

    def frame_measures(self, stacks):
        return stacks[:, :1]

    def levels_of(self, measures):
        return ClipLevels(1.0 + len(measures), float(measures.mean()))


def test_a_streams_noise_floor_is_the_lowest_it_has_measured():
    """The last seconds of a stream may be all speech (the start always is): a floor measured on them alone
    would close the mouth on soft words, so the stream keeps the lowest it measured; the gain follows the
    history as it is."""
    levels = RollingLevels(FloorEncoder(), frames=2 * LEVELS_BLOCK)
    assert levels.value is NO_LEVELS
    seen = []
    for block_floor in (-1.0, -3.0, 1.0, 1.0, -5.0):
        for _ in range(LEVELS_BLOCK):
            levels.add(np.full(1, block_floor))
        seen.append((levels.value.gain, levels.value.noise_floor))
    # rolling means over the last two blocks: -1, -2, -1, 1, -2; the lowest so far: -1, -2, -2, -2, -2
    assert [floor for _, floor in seen] == [-1.0, -2.0, -2.0, -2.0, -2.0]
    assert [gain for gain, _ in seen] == [1 + LEVELS_BLOCK] + [1 + 2 * LEVELS_BLOCK] * 4


# ---------------------------------------------------------------- the session's clock
class Collect:
    """A sink that keeps what it is given."""

    def __init__(self):
        self.frames, self.images, self.audio, self.infos, self.said, self.summary = [], [], [], [], [], None

    def frame(self, k, image, audio, info):
        self.frames.append(k)
        self.images.append(image)
        self.audio.append(audio)
        self.infos.append(info)

    def status(self, text):
        self.said.append(text)

    def close(self, summary):
        self.summary = summary

    def abort(self):
        self.summary = "aborted"


def _double_session(double, sinks, lookahead_s=0.16):
    avatar = LiveAvatar(double, "track", seed=0)
    features = LiveFeatures(
        feature_extractor(double.driving.features), double.driving.features, avatar.fps, double.audio_context,
        lookahead_s,
    )  # fmt: skip
    timeline = AudioTimeline(self_clocked=False)
    return Session(avatar, features, timeline, sinks, min_size=double.resolution, say=lambda text: None), timeline


def test_a_stalled_input_rests_and_the_delay_does_not_grow(double, speech):
    """A writer that stops for 0.8 s mid-stream: the session says so once, puts silence in the gap (frames keep
    coming), and the frames after it are as prompt as before it; every frame's sound is its own 40 ms."""
    sink = Collect()
    session, timeline = _double_session(double, [sink])
    stop = threading.Event()
    runner = threading.Thread(target=lambda: session.run(stop))
    runner.start()
    start = time.monotonic()
    pieces = [speech[: 2 * SAMPLE_RATE], speech[2 * SAMPLE_RATE : 4 * SAMPLE_RATE]]
    written = 0
    for n, piece in enumerate(pieces):
        if n:  # the stall
            while time.monotonic() < start + written / SAMPLE_RATE + 0.8:
                time.sleep(0.01)
            start += 0.8
        for i in range(0, len(piece), 640):  # real time, as a TTS that streams
            while time.monotonic() < start + (written + 640) / SAMPLE_RATE:
                time.sleep(0.002)
            timeline.put(piece[i : i + 640])
            written += len(piece[i : i + 640])
    timeline.close()
    runner.join(60)
    summary = sink.summary
    assert summary["stalls"] == 1 and sum("stalled" in s for s in sink.said) == 1
    assert 0.3 < summary["silence_inserted_s"] < 0.8  # the gap less the wait for late audio (JITTER_S)
    assert sink.frames == list(range(len(sink.frames)))  # every frame, in order (dropped ones as None)
    assert all(len(a) == SAMPLE_RATE // 25 for a in sink.audio)
    shown = len(sink.frames) / 25
    assert abs(shown - (4.0 + summary["silence_inserted_s"])) < 0.1
    made = [i for i in sink.infos if i is not None]
    before = [i["latency_s"] for i in made if i["audio_s"] < 1.9]
    after = [i["latency_s"] for i in made if i["audio_s"] > 3.0]
    assert np.median(after) < np.median(before) + 0.1
    assert max(i["latency_s"] for i in made) < 1.0


def test_frames_rendered_at_once_go_out_in_order_and_a_render_error_fails_the_session(double, speech):
    """Two render threads: the frames reach the sinks in order however the renders finish; an error in a render
    thread ends the session with that error, and the sinks are aborted (no half-written recording)."""
    sink = Collect()
    session, timeline = _double_session(double, [sink])
    render, rendered, finished = session.avatar.render, [], []

    def uneven(cond, size):  # every other frame longer than a frame interval, so the next one finishes first
        k = len(rendered)
        rendered.append(k)
        time.sleep(0.07 if k % 2 == 0 else 0.0)
        if k == 30:
            raise RuntimeError("render failed")
        image = render(cond, size)
        finished.append(k)
        return image

    session.avatar.render = uneven
    timeline.put(speech[: 2 * SAMPLE_RATE])
    timeline.close()
    with pytest.raises(RuntimeError, match="render failed"):
        session.run(threading.Event())
    assert finished != sorted(finished)  # some frames did finish before the ones in front of them
    assert sink.summary == "aborted"
    assert 20 <= len(sink.frames) <= 30 and sink.frames == list(range(len(sink.frames)))
    sent = np.concatenate(sink.audio)  # every sample once, in order, whichever thread sent its frame
    assert np.array_equal(sent, speech[: len(sent)].astype(np.float32))


def test_the_render_size_follows_what_the_machine_can_do():
    """Slow frames step the size down, but not below a size that was no faster; frames that fit with room
    bring it back up; drops that no size can help are said."""
    assert size_ladder(256, 64) == [256, 224, 196, 170, 148, 128, 112, 98, 84, 72, 64]
    assert size_ladder(64, 64) == [64]
    control, said = SizeControl(size_ladder(256, 64), 0.04), []

    def frames(n, cost, dropped=0):
        for i in range(n):
            message = control.update(cost(control.size), dropped if i % 5 == 0 else 0)
            if message:
                said.append(message)

    frames(50, lambda size: 0.03 + 0.04 * (size / 256) ** 2)  # 256: 70 ms, 224: 61 ms: too slow for 40 ms
    assert control.size == 196 and "rendering at 196 px" in said[-1]
    frames(200, lambda size: 0.045, dropped=1)  # a fixed cost, whatever the size: smaller does not help
    assert control.size == 196 and any("no faster at a smaller size" in m for m in said)
    assert "dropping frames" in said[-1]
    frames(300, lambda size: 0.01 * (size / 256) ** 2)  # the machine is free again
    assert control.size == 256 and said[-1].startswith("back to 256 px")


# ---------------------------------------------------------------- stdin mode, end to end
def test_stdin_session_latency_log_no_drift_and_recording(tiny_run, speech, tmp_path):
    """`avatar live RUN --audio-in -` fed 4 s of speech in real time (and an odd byte at the end): it ends
    with the input and exits 0, says the odd byte, writes one log line per frame made (frame k ends at audio
    time (k + 1) / 25) and a summary; the latency measured on the writer's own clock never grows, and the
    recording holds every frame with the sound that drove it."""
    record, log = tmp_path / "live.mp4", tmp_path / "latency.jsonl"
    child, _ = start_live(
        live_command(tiny_run, "--audio-in", "-", "--record", str(record), "--latency-log", str(log)), subprocess.PIPE
    )  # returns once the avatar is loaded and warm
    written = write_in_real_time(child.stdin, (speech[: 4 * SAMPLE_RATE] * 32768).astype("<i2").tobytes() + b"\x01")
    out, err = (text.decode() for text in child.communicate(timeout=120))  # closes stdin: the input ends
    assert child.returncode == 0, err
    assert "odd number of bytes" in err
    assert record.is_file() and not list(tmp_path.glob(".live.*"))
    frames, summary = read_log(log)
    assert {"frames", "dropped", "fps", "latency_ms_p50", "latency_ms_p95", "latency_ms_max"} <= set(summary)
    assert summary["frames"] == len(frames) and summary["frames"] + summary["dropped"] == 100
    for line in frames:
        assert {"frame", "audio_s", "wall_s"} <= set(line)
        assert abs(line["audio_s"] - (line["frame"] + 1) / 25) < 1e-9  # frame k shows audio up to (k + 1) / 25
    latency = writer_latency(frames, written)  # on the writer's clock: last sample written -> frame ready
    audio_s = np.array([f["audio_s"] for f in frames])
    assert latency[audio_s < 3.8].min() > 0.1  # the look-ahead is heard first (at the end there is none to hear)
    slope = np.polyfit(audio_s, latency, 1)[0]
    assert abs(slope) < 0.05, f"the delay grows by {slope * 1000:.0f} ms per second of audio"
    info = probe(record)
    assert info["num_frames"] == 100 and abs(info["audio_s"] - 4.0) < 0.05
    assert "session 1: " in out


# ---------------------------------------------------------------- who may connect
def test_is_local_and_url_hosts():
    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost") and is_local("[::1]")
    assert not is_local("0.0.0.0") and not is_local("") and not is_local("192.168.1.4") and not is_local("::")
    assert url("::1", 8000, "https", "/?token=t") == "https://[::1]:8000/?token=t"
    assert url("0.0.0.0", 8000) == "http://127.0.0.1:8000"  # a wildcard is opened here at the loopback


def _get(address: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_page_and_signalling_need_the_access_token(tmp_path):
    """Without the printed token (or with another) the page and the signalling socket are refused, and with
    them the media, which are only set up through the signalling."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    server = LiveServer("127.0.0.1", 0, "s3cret-token", 25.0, watch=PageSink(25.0))
    port = server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/")[0] == 403
        assert _get(f"{base}/?token=wrong")[0] == 403
        status, body = _get(f"{base}/?token=s3cret-token")
        assert status == 200 and "<video" in body and '"mode": "watch"' in body
        for bad in ("/ws", "/ws?token=wrong"):
            with pytest.raises(InvalidStatus) as refused:
                connect(f"ws://127.0.0.1:{port}{bad}", open_timeout=10)
            assert refused.value.response.status_code == 403
        with connect(f"ws://127.0.0.1:{port}/ws?token=s3cret-token", open_timeout=10):
            pass
    finally:
        server.stop()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM), made with `cryptography` (aiortc's)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


def test_https_with_the_given_certificate(tmp_path):
    """--tls-cert / --tls-key serve the page over https (and still only with the token)."""
    import ssl

    from avatar.live.app import tls_context

    cert, key = _self_signed(tmp_path)
    context = tls_context(LiveConfig(run=tmp_path, host="0.0.0.0", tls_cert=cert, tls_key=key))
    server = LiveServer("127.0.0.1", 0, "t0ken", 25.0, context, watch=PageSink(25.0))
    port = server.start()
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/?token=t0ken", context=trust, timeout=10) as page:
            assert page.status == 200 and "<video" in page.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=trust, timeout=10)
        assert refused.value.code == 403
    finally:
        server.stop()


async def _client(port: int, token: str):
    """An aiortc browser stand-in: a silent microphone, the avatar's video and sound back. Returns its peer
    connection, socket and first message."""
    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from websockets.asyncio.client import connect

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())  # aiortc's silent microphone
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    socket_ = await connect(f"ws://127.0.0.1:{port}/ws?token={token}")
    await socket_.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
    message = json.loads(await asyncio.wait_for(socket_.recv(), 30))
    if message["type"] == "answer":
        await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
    return pc, socket_, message


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_one_browser_at_a_time_and_a_closed_browser_ends_its_session(double, tmp_path):
    """A second browser is refused with a clear message while one speaks; the first closing ends its session
    cleanly (its recording complete), and the server goes on serving the next browser."""
    cfg = LiveConfig(run=tmp_path, min_resolution=64, record=tmp_path / "s.mp4", latency_log=tmp_path / "s.jsonl")
    live = Live(cfg, double, feature_extractor(double.driving.features), None)
    address = live.start(None)
    port, token = int(address.split(":")[2].split("/")[0]), address.split("token=")[1]
    serving = threading.Thread(target=live.serve_microphone)
    serving.start()
    loop = asyncio.new_event_loop()  # the browsers' side, running beside the server as browsers do
    browsers = threading.Thread(target=loop.run_forever, daemon=True)
    browsers.start()
    run = lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)  # noqa: E731

    async def leave(pc, socket_):
        await pc.close()
        await socket_.close()

    try:
        first, first_socket, answer = run(_client(port, token))
        assert answer["type"] == "answer"
        _wait(lambda: live.sessions == 1, 30, "the first session")
        second, second_socket, refusal = run(_client(port, token))
        assert refusal["type"] == "busy" and "one live session at a time" in refusal["text"]
        run(leave(second, second_socket))
        log = tmp_path / "s.jsonl"
        _wait(lambda: log.is_file() and log.stat().st_size > 0, 60, "the first session's frames")
        run(leave(first, first_socket))
        _wait(lambda: (tmp_path / "s.mp4").is_file(), 60, "the first session's recording")
        summary = json.loads(log.read_text().splitlines()[-1])
        assert summary["summary"] and summary["frames"] > 0
        third, third_socket, answer = run(_client(port, token))
        assert answer["type"] == "answer"  # still serving, and free again
        log = tmp_path / "s-2.jsonl"
        _wait(lambda: log.is_file() and log.stat().st_size > 0, 60, "the next session's frames")
        run(leave(third, third_socket))
        _wait(lambda: (tmp_path / "s-2.mp4").is_file(), 60, "the next session's recording")
    finally:
        live.close()
        serving.join(30)
        loop.call_soon_threadsafe(loop.stop)
        browsers.join(10)


# ---------------------------------------------------------------- faults said before any work
def _fails(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_faults_are_said_before_the_avatar_loads(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    err = _fails(["live", str(run), "--host", "0.0.0.0"], capsys)
    assert "--tls-cert" in err and "https" in err
    assert "go together" in _fails(["live", str(run), "--tls-cert", str(tmp_path / "c.pem")], capsys)
    (tmp_path / "c.pem").write_text("not a certificate")
    err = _fails(
        ["live", str(run), "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "c.pem")], capsys
    )
    assert "cannot be loaded" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"--port {port}: in use" in _fails(["live", str(run), "--port", str(port)], capsys)
    assert "no such file" in _fails(["live", str(run), "--audio-in", str(tmp_path / "none.wav")], capsys)
    (tmp_path / "notes.txt").write_text("words")
    assert "cannot be decoded" in _fails(["live", str(run), "--audio-in", str(tmp_path / "notes.txt")], capsys)
    assert "training has not finished" in _fails(["live", str(run)], capsys)


def test_a_terminal_is_not_taken_for_audio(tmp_path, capsys, monkeypatch):
    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert "stdin is a terminal" in _fails(["live", str(tmp_path), "--audio-in", "-"], capsys)


def test_a_damaged_run_is_refused(tiny_run, tmp_path, capsys):
    damaged = tmp_path / "run"
    shutil.copytree(tiny_run, damaged)
    data = bytearray((damaged / "avatar.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "avatar.pt").write_bytes(bytes(data))
    err = _fails(["live", str(damaged), "--audio-in", "-"], capsys)
    assert "avatar.pt" in err and ("damaged" in err or "not a readable" in err)


# ---------------------------------------------------------------- the real thing in a browser
def _chromium(tmp_path: Path, microphone: Path | None, deny: bool = False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    flags = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--autoplay-policy=no-user-gesture-required", "--window-size=800,900",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream" + ("=deny" if deny else ""),
    ]  # fmt: skip
    if microphone is not None:
        flags.append(f"--use-file-for-fake-audio-capture={microphone}")
    for flag in flags:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


# Runs in the page: for `count` video frames as the browser presents them, when (ms), the avatar double's mouth
# opening (dark share of its mouth box) read off the <video> element, and the level of the sound being played
# (the audio receiver's playout level: what the <video> element sends to the speakers, without the extra buffer a
# Web Audio tap of the stream would add).
CAPTURE = """
const count = arguments[0], done = arguments[arguments.length - 1];
const video = document.getElementById("avatar");
const sound = window.liveState.pc.getReceivers().find((r) => r.track.kind === "audio");
const canvas = document.createElement("canvas");
canvas.width = video.videoWidth; canvas.height = video.videoHeight;
const g = canvas.getContext("2d", {willReadFrequently: true});
const out = {time: [], mouth: [], level: [], first: null};
function onFrame(now) {
  g.drawImage(video, 0, 0, canvas.width, canvas.height);
  const box = g.getImageData(24, 40, 16, 12).data;
  let dark = 0;
  for (let i = 0; i < box.length; i += 4) if ((box[i] + box[i + 1] + box[i + 2]) / 3 < 60) dark++;
  const playing = sound.getSynchronizationSources();
  out.time.push(now);
  out.mouth.push(dark / (box.length / 4));
  out.level.push(playing.length ? playing[0].audioLevel : 0);
  if (!out.first) out.first = Array.from(g.getImageData(0, 0, canvas.width, canvas.height).data);
  if (out.mouth.length >= count) done(out); else video.requestVideoFrameCallback(onFrame);
}
video.requestVideoFrameCallback(onFrame);
"""
SYNC_STEP_MS = 10  # the grid the browser's irregular frame callbacks are put on
SYNC_SEARCH_MS = 300  # the offsets searched either way
# ITU-R BT.1359's acceptability limits for broadcast: the sound at most 90 ms before or 185 ms after the picture
SOUND_EARLY_MS, SOUND_LATE_MS = 90, 185


def browser_sync(seen: dict) -> tuple[float, int]:
    """The page's mouth against the loudness it played, on a regular time grid: the best correlation within
    +-SYNC_SEARCH_MS, and at which offset (ms; > 0: the sound came after the picture)."""
    time = np.asarray(seen["time"])
    grid = np.arange(time[0], time[-1], SYNC_STEP_MS)
    mouth = np.interp(grid, time, seen["mouth"])
    loudness = np.interp(grid, time, np.log(np.asarray(seen["level"]) + 1e-4))
    _, corr, lag = lagged_correlation(loudness, mouth, SYNC_SEARCH_MS // SYNC_STEP_MS)
    return corr, lag * SYNC_STEP_MS


@pytest.mark.skipif(
    not CHROMIUM, reason="Debian's chromium + chromium-driver are not installed (scripts/setup_test_tools.sh)"
)
def test_the_microphone_drives_the_avatar_in_headless_chromium(double, speech, tmp_path):
    """Chromium with a speech file as its microphone opens the page and presses Start: the avatar appears in
    the <video> element, its mouth opens and closes with the speech the page plays back, and in step with it."""
    microphone = tmp_path / "microphone.wav"
    save_wav(microphone, speech[: 10 * SAMPLE_RATE])
    cfg = LiveConfig(run=tmp_path, min_resolution=64, latency_log=tmp_path / "latency.jsonl")
    live = Live(cfg, double, feature_extractor(double.driving.features), None)
    address = live.start(None)
    serving = threading.Thread(target=live.serve_microphone)
    serving.start()
    driver = _chromium(tmp_path, microphone)
    try:
        driver.get(address)
        driver.find_element("id", "start").click()
        _wait(lambda: driver.execute_script("return document.getElementById('avatar').readyState") >= 2, 60, "video")
        driver.set_script_timeout(90)
        seen = driver.execute_async_script(CAPTURE, 150)
    finally:
        driver.quit()
        live.close()
        serving.join(30)
    first = np.asarray(seen["first"], np.uint8).reshape(64, 64, 4)[..., :3]
    assert first[34, 32].mean() == pytest.approx(0.7 * 255, abs=12)  # the double's grey face ...
    assert first[5, 5, 1] > 150 and first[5, 5, 0] < 40  # ... on its green plate
    assert np.ptp(seen["mouth"]) > 0.3  # the mouth moves
    corr, sound_late_ms = browser_sync(seen)
    assert corr > 0.6, f"the mouth does not follow the speech played back (best correlation {corr:.2f})"
    assert -SOUND_EARLY_MS <= sound_late_ms <= SOUND_LATE_MS, f"the sound plays {sound_late_ms} ms after the lips"


@pytest.mark.skipif(
    not CHROMIUM, reason="Debian's chromium + chromium-driver are not installed (scripts/setup_test_tools.sh)"
)
def test_a_denied_microphone_is_said_on_the_page(double, tmp_path):
    cfg = LiveConfig(run=tmp_path, min_resolution=64)
    live = Live(cfg, double, feature_extractor(double.driving.features), None)
    address = live.start(None)
    driver = _chromium(tmp_path, None, deny=True)
    try:
        driver.get(address)
        driver.find_element("id", "start").click()
        _wait(lambda: driver.execute_script("return window.liveState.phase") == "refused", 30, "the refusal")
        assert "Microphone permission denied" in driver.find_element("id", "status").text
        assert live.sessions == 0
    finally:
        driver.quit()
        live.close()
