"""`avatar view RUN`: the avatar live in the browser (viser), driven by audio, seen from any viewpoint.

The viser world frame is the training camera's frame (OpenCV axes): the browser's camera starts exactly
at the training camera, so the first picture is what `avatar render` makes, and orbiting moves away from it.
Render threads draw the current audio frame for every connected browser, two frames at once; the sound plays
in the page through an HTML <audio> element, loaded when the page opens and started at the timeline position on
Play (the click on Play is the user gesture browsers require before they play sound).
"""

from __future__ import annotations

import base64
import io
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatar.audio.io import SAMPLE_RATE, load_audio
from avatar.device import FRAMES_IN_FLIGHT, resolve_device, set_threads
from avatar.errors import UserError
from avatar.hosts import exposure_warning, listening_port, url
from avatar.model.talking_head import TalkingHead
from avatar.rasterizer.compose import Layer
from avatar.rasterizer.types import Camera
from avatar.viewer.config import ViewerConfig
from avatar.viewer.playback import Playback

AUDIO_ELEMENT = "avatar-sound"  # the id of the page's <audio> element


@dataclass
class Layers:
    """What the picture shows (the viewer's toggles)."""

    deform: bool = True  # audio-driven deformation; off: the static canonical head
    background: bool = True  # the training background plate; off: flat grey
    torso: bool = True  # the pose-driven torso layer


def training_fov_y(head) -> float:
    """Vertical field of view (radians) of the training camera."""
    return float(2 * np.arctan(0.5 * head.intrinsics.height / head.intrinsics.fy))


def view_camera(
    head, rotation: np.ndarray, translation: np.ndarray, cam_to_world: np.ndarray, fov_y: float, width: int, height: int
) -> Camera:
    """The browser camera (cam_to_world [4, 4] in the training camera's frame) as a Camera whose world is the
    canonical head frame, as TalkingHead.render expects; at the training camera it equals the training view."""
    head_to_world = np.eye(4)
    head_to_world[:3, :3], head_to_world[:3, 3] = rotation, translation
    world_to_cam = np.linalg.inv(cam_to_world) @ head_to_world
    f = 0.5 * height / np.tan(0.5 * fov_y)
    scale = height / head.intrinsics.height  # keep the training principal-point offset
    cx = 0.5 * width + (head.intrinsics.cx - 0.5 * head.intrinsics.width) * scale
    cy = 0.5 * height + (head.intrinsics.cy - 0.5 * head.intrinsics.height) * scale
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    device = head.K.device
    return Camera(
        torch.as_tensor(world_to_cam, dtype=torch.float32, device=device),
        torch.as_tensor(K, dtype=torch.float32, device=device),
        width,
        height,
    )


def backdrop(head, cond, layers: Layers, width: int, height: int) -> torch.Tensor:
    """[height, width, 3] what lies behind the head: plate and/or torso of the training camera, scaled to the
    picture height and centred (edges extended sideways), or flat grey."""
    res = head.resolution
    square = head.plate if layers.background else torch.full((res, res, 3), 0.5, device=head.K.device)
    if layers.torso:
        torso_rgb, torso_alpha = head.torso(cond.body)
        square = Layer.from_image(torso_rgb[0], torso_alpha[0]).onto(square)
    image = F.interpolate(square.permute(2, 0, 1)[None], size=(height, height), mode="bilinear", align_corners=False)
    pad = width - height
    if pad > 0:
        image = F.pad(image, (pad // 2, pad - pad // 2, 0, 0), mode="replicate")
    elif pad < 0:
        image = image[..., -pad // 2 : -pad // 2 + width]
    return image[0].permute(1, 2, 0)


@torch.no_grad()
def render_view(
    head, cond, layers: Layers, cam_to_world: np.ndarray, fov_y: float, width: int, height: int
) -> np.ndarray:
    """One frame as the browser sees it: [height, width, 3] uint8."""
    camera = view_camera(
        head, cond.rotation[0].cpu().numpy(), cond.translation[0].cpu().numpy(), cam_to_world, fov_y, width, height
    )
    out = head.render(
        cond,
        background=backdrop(head, cond, layers, width, height),
        deform=layers.deform,
        camera=camera,
        show_torso=False,
    )
    return (out["rgb"][0].clamp(0, 1) * 255).round().byte().cpu().numpy()


def wav_data_uri(path: Path) -> str:
    """The clip's 16 kHz mono audio as a WAV data URI for the page's <audio> element."""
    import soundfile as sf  # noqa: PLC0415 - media libraries (absent from the GPU image) load when a file is read

    buf = io.BytesIO()
    sf.write(buf, load_audio(path), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


class ViewerApp:
    """The GUI, the playback clock and the render loop of one viewer."""

    def __init__(self, cfg: ViewerConfig, head, default_audio: Path):
        import viser  # noqa: PLC0415 - the viewer's server loads only for `avatar view`

        self.cfg, self.head = cfg, head
        self.playback = Playback(head, cfg.audio or default_audio)
        self.layers = Layers()
        self.height = cfg.resolution or head.resolution
        self.fps_shown = 0.0
        self._centres = None  # point-cloud handle while "Gaussian centres" is on
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._taken = 0  # views taken by the render loop so far
        self._commands = 0  # play / pause commands sent to the page's sound
        self._shown: dict[int, int] = {}  # browser -> the newest view number it shows
        self._shown_lock = threading.Lock()
        self._last_done: float | None = None  # when the last views were done (the FPS shown) ...
        self._seconds = 0.0  # ... and the average time per view between them
        listening_port(cfg.host, cfg.port)  # a bad --host or a busy --port is said clearly
        # viser binds the port once and keeps it; with 0 the system picks a free one as it binds (a port found
        # free here and bound again later could be taken in between)
        self.server = viser.ViserServer(host=cfg.host, port=cfg.port, verbose=False)
        if cfg.port and self.server.get_port() != cfg.port:  # taken since the check: viser went on to the next one
            self.server.stop()
            raise UserError(
                f"--port {cfg.port}: taken by another program while the viewer started. Give another --port, "
                "or leave it out for a free one."
            )
        self.url = url(cfg.host, self.server.get_port())
        self._set_initial_camera()
        self._build_gui()
        self.server.on_client_connect(self._on_connect)
        self._thread = threading.Thread(target=self._render_loop, daemon=True)

    # ----- GUI
    def _build_gui(self) -> None:
        gui, pb = self.server.gui, self.playback
        with gui.add_folder("Playback"):
            self.play_button = gui.add_button("Play")
            self.timeline = gui.add_slider(
                "Time (s)", 0.0, max(pb.duration_s - 1 / pb.fps, 1 / pb.fps), 1 / pb.fps, 0.0
            )
            self.upload = gui.add_upload_button("Load audio...", mime_type="audio/*,video/*")
            self.audio_html = gui.add_html("")  # the clip's <audio> element, loaded once
            self.audio_command = gui.add_html("")  # plays or pauses it (see _update_audio_element)
            self.status = gui.add_markdown("")
        with gui.add_folder("Avatar"):
            self.deform_box = gui.add_checkbox("Deformation", True)
            self.auto_blink = gui.add_checkbox("Own blinks", True)
            self.blink_slider = gui.add_slider("Eye closure", 0.0, 1.0, 0.05, 0.0)
            self.pose_dropdown = gui.add_dropdown("Head pose", ("track", "smooth", "still"), initial_value="track")
            self.background_box = gui.add_checkbox("Background", True)
            self.torso_box = gui.add_checkbox("Torso", True)
            self.centres_box = gui.add_checkbox("Gaussian centres", False)
            # the run's own resolution (16 px and up) or --resolution is always on the scale
            self.resolution_slider = gui.add_slider(
                "Resolution", min(64, self.height), max(1024, self.height), 32, self.height
            )
        self.reset_button = gui.add_button("Reset camera")
        self.fps_text = gui.add_markdown("Render: -")

        self.play_button.on_click(lambda event: self.toggle_play())
        self.reset_button.on_click(lambda event: self.reset_camera(event.client))
        self.upload.on_upload(self._on_upload)

        @self.timeline.on_update
        def _(event) -> None:
            if event.client is not None:  # a person dragged it (the render loop also moves it)
                self.playback.seek(int(round(self.timeline.value * self.playback.fps)))
                self._update_audio_element()
                self._dirty.set()

        for control in (
            self.deform_box,
            self.auto_blink,
            self.blink_slider,
            self.pose_dropdown,
            self.background_box,
            self.torso_box,
            self.resolution_slider,
            self.centres_box,
        ):
            control.on_update(lambda event: self._controls_changed())
        self._controls_changed()

    def _controls_changed(self) -> None:
        self.layers = Layers(self.deform_box.value, self.background_box.value, self.torso_box.value)
        self.height = int(self.resolution_slider.value)
        self._update_centres()
        self._dirty.set()

    def _update_centres(self) -> None:
        """The canonical Gaussian centres placed by the current frame's pose, as a point cloud."""
        if self._centres is not None:
            self._centres.remove()
            self._centres = None
        if self.centres_box.value:
            rotation, translation = self.playback.pose(self.playback.frame(), self.pose_dropdown.value)
            means = self.head.head.means.detach().cpu().numpy() @ rotation.T + translation
            self._centres = self.server.scene.add_point_cloud(
                "/centres", means.astype(np.float32), colors=(255, 80, 40), point_size=0.002
            )

    def toggle_play(self) -> None:
        if self.playback.playing:
            self.playback.pause()
        else:
            self.playback.play()
        self.play_button.label = "Pause" if self.playback.playing else "Play"
        self._update_audio_element()
        self._dirty.set()

    def _load_audio_element(self) -> None:
        """The clip's sound in the page: an <audio> element the browser loads and decodes as soon as it has it,
        so that Play starts the sound at once, with the picture (made at Play, it started late by the time
        the browser took to read the whole file)."""
        self.audio_html.content = f'<audio id="{AUDIO_ELEMENT}" preload="auto" src="{self._audio_uri}"></audio>'
        self._update_audio_element()

    def _update_audio_element(self) -> None:
        """Play the page's sound from the timeline position, or pause it. The page runs no script of ours, so
        the command is an image that cannot load: its error handler runs it (numbered, so each one is new)."""
        self._commands += 1
        if self.playback.playing:
            start = self.playback.frame() / self.playback.fps
            action = f"a.currentTime={start:.3f};a.play();"
        else:
            action = "a.pause();"
        self.audio_command.content = (
            f'<img alt="" style="display:none" data-n="{self._commands}" src="data:," '
            f"onerror=\"var a=document.getElementById('{AUDIO_ELEMENT}');if(a){{{action}}}\">"
        )

    def _on_upload(self, event) -> None:

        upload = self.upload.value
        suffix = Path(upload.name).suffix or ".wav"
        with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
            f.write(upload.content)
        try:
            playback = Playback(self.head, Path(f.name))
        except UserError as exc:
            self.status.content = f"**Cannot use {upload.name}:** {exc}"
            return
        self.playback = playback
        self._audio_uri = wav_data_uri(playback.audio_path)
        self._load_audio_element()
        self.timeline.max = max(playback.duration_s - 1 / playback.fps, 1 / playback.fps)
        self.timeline.value = 0.0
        self.status.content = f"Audio: {upload.name} ({playback.duration_s:.1f} s)"
        self.play_button.label = "Play"
        self._update_audio_element()
        self._dirty.set()

    # ----- camera
    def reset_camera(self, client) -> None:
        """Put a browser's camera back at the training camera."""
        clients = [client] if client is not None else list(self.server.get_clients().values())
        for c in clients:
            with c.atomic():
                c.camera.fov = training_fov_y(self.head)
                c.camera.wxyz = (1.0, 0.0, 0.0, 0.0)
                c.camera.position = (0.0, 0.0, 0.0)
            self._dirty.set()

    def _set_initial_camera(self) -> None:
        """A browser's own camera starts at the training camera and its "Reset View" returns there (viser's
        default view otherwise, until the reset on connecting moved it)."""
        camera = self.server.initial_camera
        camera.up = (0.0, -1.0, 0.0)
        camera.position = (0.0, 0.0, 0.0)
        camera.look_at = (0.0, 0.0, self._head_distance())
        camera.fov = training_fov_y(self.head)

    def _head_distance(self) -> float:
        """The head's median distance from the training camera: where the browser's camera orbits."""
        return float(np.median(self.head.driving.translations[:, 2]))

    def _on_connect(self, client) -> None:
        client.camera.up_direction = (0.0, -1.0, 0.0)
        client.camera.look_at = (0.0, 0.0, self._head_distance())
        self.reset_camera(client)
        client.camera.on_update(lambda camera: self._dirty.set())

    # ----- rendering
    def blink(self) -> float | None:
        return None if self.auto_blink.value else float(self.blink_slider.value)

    def render_client(self, client) -> np.ndarray:
        return self._render(self._view(client))

    def _view(self, client) -> tuple:
        """What a browser is to see now: the current frame's conditions and the browser's camera."""
        frame = self.playback.frame()
        cond = self.playback.conditions(frame, self.pose_dropdown.value, self.blink())
        cam = client.camera
        cam_to_world = np.eye(4)
        cam_to_world[:3, :3] = _quat_to_matrix(np.asarray(cam.wxyz, np.float64))
        cam_to_world[:3, 3] = cam.position
        height = self.height
        width = max(16, int(round(height * cam.aspect)))
        return cond, self.layers, cam_to_world, cam.fov, width, height

    def _render(self, view: tuple) -> np.ndarray:
        return render_view(self.head, *view)

    def _render_loop(self) -> None:
        """Views are taken here, FRAMES_IN_FLIGHT at a time rendered by a pool (`_show`); a render that
        finishes after a newer one of the same browser is not shown."""
        in_flight: deque[Future] = deque()
        with ThreadPoolExecutor(FRAMES_IN_FLIGHT, thread_name_prefix="view-render") as pool:
            while not self._stop.is_set():
                if not (self.playback.playing or self._dirty.is_set()):
                    self._dirty.wait(0.05)
                    continue
                self._dirty.clear()
                self._taken += 1
                views = []
                for client in list(self.server.get_clients().values()):
                    try:
                        views.append((client, self._view(client)))
                    except Exception as exc:  # a client that disconnects meanwhile, say: keep serving the others
                        self.status.content = f"render error: {exc}"
                in_flight.append(pool.submit(self._show, self._taken, views))
                while len(in_flight) >= FRAMES_IN_FLIGHT or (in_flight and in_flight[0].done()):
                    in_flight.popleft().result()
                if views and self.playback.playing:
                    self.timeline.value = round(self.playback.frame() / self.playback.fps, 4)
                    if self.centres_box.value:
                        self._update_centres()
            for future in in_flight:
                future.result()

    def _show(self, taken: int, views: list) -> None:
        """Render the views taken as number `taken` and put them in their browsers, unless newer ones are
        there already; the FPS shown is the rate at which the views are done (after a pause: this render's own)."""
        started = time.perf_counter()
        for client, view in views:
            try:
                image = self._render(view)
                with self._shown_lock:
                    if self._shown.get(client.client_id, 0) > taken:
                        continue
                    self._shown[client.client_id] = taken
                client.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
            except Exception as exc:  # a client that disconnects mid-frame, say: keep serving the others
                self.status.content = f"render error: {exc}"
        if not views:
            return
        with self._shown_lock:
            now = time.perf_counter()
            seconds = (now - max(self._last_done or started, started)) / len(views)  # per view
            self._seconds = 0.8 * self._seconds + 0.2 * seconds if self._seconds else seconds
            self.fps_shown = 1 / max(self._seconds, 1e-6)
            self._last_done = now
        self.fps_text.content = (
            f"Render: **{self.fps_shown:.1f} FPS** at height {self.height}, "
            f"{self.head.spec.backend} backend on {self.head.K.device.type}"
        )

    def start(self) -> None:
        self._audio_uri = wav_data_uri(self.playback.audio_path)
        self._load_audio_element()
        self.status.content = f"Audio: {self.playback.audio_path.name} ({self.playback.duration_s:.1f} s)"
        self._thread.start()
        if self.cfg.autoplay:
            self.toggle_play()

    def stop(self) -> None:
        """Stop rendering and serving; also before `start` (a viewer that failed while starting)."""
        self._stop.set()
        self._dirty.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        self.server.stop()


def _quat_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    w, x, y, z = wxyz / np.linalg.norm(wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def run(cfg: ViewerConfig) -> None:

    listening_port(cfg.host, cfg.port)  # a bad --host or a busy --port is said before the avatar loads
    set_threads(cfg.threads)
    head = TalkingHead.load(cfg.run, resolve_device(cfg.device))
    head.spec.backend = cfg.backend
    default_audio = Path(cfg.run) / "audio.wav"  # the training clip's sound, kept in the run
    if cfg.audio is None and not default_audio.is_file():
        raise UserError(
            f"{default_audio}: missing, so there is no training sound to play. Give speech with --audio FILE."
        )
    app = ViewerApp(cfg, head, default_audio)
    app.start()
    print(f"avatar viewer: open {app.url} in a browser (Ctrl-C to stop)", flush=True)
    warning = exposure_warning(cfg.host, app.server.get_port())
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the viewer", flush=True)
    finally:
        app.stop()
