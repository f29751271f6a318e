"""The live viewer: its clock and camera maths, and the real thing in headless Chromium on a tiny run."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from avatar.viewer.app import Layers, ViewerApp, render_view, training_fov_y, view_camera
from avatar.viewer.config import ViewerConfig
from avatar.viewer.playback import Playback
from tests.train_fixtures import tiny_config, tiny_dataset  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory):
    """A real run trained for a few steps on 4 s of a shared video (see tests/train_fixtures.py)."""
    from avatar.train.runner import run

    out = tmp_path_factory.mktemp("viewer") / "run"
    run(tiny_config(tiny_dataset.root, out))
    return out


@pytest.fixture(scope="module")
def head(tiny_run):
    from avatar.model.talking_head import TalkingHead

    return TalkingHead.load(tiny_run)


@pytest.fixture(scope="module")
def playback(head, tiny_run):
    return Playback(head, tiny_run / "audio.wav")


def test_clock_plays_pauses_seeks_and_loops(playback):
    fps, n = playback.fps, playback.num_frames
    playback.seek(3, now=100.0)
    assert playback.frame(now=200.0) == 3  # paused: the clock does not move
    playback.play(now=100.0)
    assert playback.frame(now=100.0 + 10 / fps + 1e-6) == 13
    assert playback.frame(now=100.0 + (n + 2) / fps + 1e-6) == (3 + n + 2) % n  # loops at the end
    playback.pause(now=100.0 + 4 / fps + 1e-6)
    assert playback.frame(now=999.0) == 7
    playback.seek(10**9)
    assert playback.frame() == n - 1


def test_conditions_shapes_and_blink_override(playback, head):
    cond = playback.conditions(0, "track", blink=0.7)
    c = 2 * head.audio_context + 1
    assert cond.audio.shape[:2] == (1, c) and cond.audio.shape[2] == head.feature_window
    assert cond.rotation.shape == (1, 3, 3) and cond.translation.shape == (1, 3)
    assert torch.allclose(cond.blink, torch.full((1, 2), 0.7))
    still_a, still_b = playback.pose(0, "still"), playback.pose(playback.num_frames - 1, "still")
    assert np.allclose(still_a[0], still_b[0]) and np.allclose(still_a[1], still_b[1])


def test_browser_camera_at_reset_is_the_training_camera(playback, head):
    cond = playback.conditions(5)
    res = head.resolution
    cam = view_camera(
        head, cond.rotation[0].numpy(), cond.translation[0].numpy(), np.eye(4), training_fov_y(head), res, res
    )
    expected = torch.eye(4)
    expected[:3, :3], expected[:3, 3] = cond.rotation[0], cond.translation[0]
    assert torch.allclose(cam.world_to_cam, expected, atol=1e-5)
    assert torch.allclose(cam.K, head.K, atol=1e-3)
    # ...so the viewer's first picture is the exporter's picture
    viewer_rgb = render_view(head, cond, Layers(), np.eye(4), training_fov_y(head), res, res)
    exported = (head.render(cond)["rgb"][0] * 255).round().byte().numpy()
    assert np.abs(viewer_rgb.astype(int) - exported.astype(int)).mean() < 1.0


def test_wide_browser_window_keeps_the_head_undistorted(playback, head):
    cond = playback.conditions(5)
    res = head.resolution
    square = render_view(head, cond, Layers(background=False, torso=False), np.eye(4), training_fov_y(head), res, res)
    wide = render_view(head, cond, Layers(background=False, torso=False), np.eye(4), training_fov_y(head), 2 * res, res)
    assert wide.shape == (res, 2 * res, 3)
    centre = wide[:, res // 2 : res // 2 + res]
    assert np.abs(centre.astype(int) - square.astype(int)).mean() < 2.0


def _screenshot(driver) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="Debian's chromium + chromium-driver are not installed (scripts/setup_test_tools.sh)",
)
def test_viewer_in_headless_chromium(tiny_run, tmp_path):
    """Start `avatar view` on a tiny run, open it in Chromium: the avatar is on the canvas, and turning
    the background off changes the picture."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from avatar.model.talking_head import TalkingHead

    head = TalkingHead.load(tiny_run)
    app = ViewerApp(ViewerConfig(run=tiny_run, resolution=128), head, tiny_run / "audio.wav")
    app.start()
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--enable-unsafe-swiftshader",
        "--window-size=900,600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(app.url)
        # the canvas centre (the GUI panel sits top right): wait for the first rendered picture
        deadline, shot = time.time() + 90, None
        while time.time() < deadline:
            time.sleep(1.0)
            shot = _screenshot(driver)
            h, w = shot.shape[:2]
            centre = shot[h // 4 : 3 * h // 4, w // 4 : w // 2]
            if centre.std() > 15 and app.fps_shown > 0:
                break
        assert shot is not None and centre.std() > 15, "the canvas stayed blank: no avatar picture arrived"
        import cv2

        cv2.imwrite(str(tmp_path / "viewer.png"), shot[:, :, ::-1])
        # the picture is the avatar: the canvas shows the app's own render of this view (stretched to the
        # canvas), away from the notification (top left), the GUI panel (top right) and the axes (bottom left)
        client = next(iter(app.server.get_clients().values()))
        expected = cv2.resize(app.render_client(client), (w, h), interpolation=cv2.INTER_AREA)
        region = (slice(h // 2, int(0.9 * h)), slice(w // 10, int(0.6 * w)))
        error = np.abs(shot[region].astype(np.float32) - expected[region]).mean()
        assert error < 20, f"the canvas does not show the avatar render (mean abs diff {error:.1f})"
        before = shot.astype(np.float32)
        label = driver.find_element("xpath", "//label[contains(normalize-space(.), 'Background')]")
        label.click()
        deadline, diff = time.time() + 60, 0.0
        while time.time() < deadline and diff < 8.0:
            time.sleep(1.0)
            after = _screenshot(driver).astype(np.float32)
            diff = float(np.abs(after - before)[: h // 2, : w // 2].mean())
        assert not app.background_box.value, "the click did not reach the viewer's control"
        assert diff >= 8.0, f"turning the background off did not change the picture (mean diff {diff:.1f})"
        assert "FPS" in driver.page_source
    finally:
        driver.quit()
        app.stop()
