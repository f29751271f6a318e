"""The body's tracked motion (preprocess.body_motion): a known body movement comes back out of the codes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatar.contracts.dataset import MASK_BITS
from avatar.preprocess.body_motion import BodyMotionConfig, track_body

SIZE = 128
FRAMES = 60


def _moving_body() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Frames of a textured body (bottom half) swaying sideways by a known number of pixels, a still
    background above it; their mask bits; the sway in pixels at SIZE."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE, SIZE + 40, 3)).astype(np.float32), (0, 0), 2.0)
    background = np.full((SIZE, SIZE, 3), 90, np.float32)
    sway = 3.0 * np.sin(np.arange(FRAMES) / FRAMES * 4 * np.pi)
    frames = []
    for dx in sway:
        shifted = cv2.warpAffine(
            texture,
            np.float32([[1, 0, dx - 20], [0, 1, 0]]),
            (SIZE, SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        frame = background.copy()
        frame[SIZE // 2 :] = shifted[SIZE // 2 :]
        frames.append(frame.clip(0, 255).astype(np.uint8))
    bits = np.zeros((SIZE, SIZE), np.uint8)
    bits[SIZE // 2 :] = 1 << MASK_BITS["torso"] | 1 << MASK_BITS["person"]
    bits[: SIZE // 4, SIZE // 3 : 2 * SIZE // 3] = 1 << MASK_BITS["head"] | 1 << MASK_BITS["person"]
    return frames, bits, sway


def test_the_codes_rebuild_a_known_sway_of_the_body():
    frames, bits, sway = _moving_body()
    fit = 48  # the last 12 frames are held out, as the validation split is
    cfg = BodyMotionConfig(modes=4, template_frames=24)
    motion, record = track_body(lambda i: frames[i], lambda i: bits, iter(frames), FRAMES, fit, 25.0, cfg)
    assert motion.codes.shape == (FRAMES, 4) and motion.basis.shape == (4, 2, cfg.grid, cfg.grid)
    assert motion.mean.shape == (2, cfg.grid, cfg.grid) and record["modes"] == 4
    assert record["explained_variance"] > 0.9
    flow = motion.mean + np.einsum("nk,kcij->ncij", motion.codes, motion.basis)  # [N, 2, G, G] grid units
    g = cfg.grid
    body = flow[:, 0, g // 2 + 4 : g - 4, 4 : g - 4].mean((1, 2)) * SIZE / 2  # pixels at SIZE
    # frame(x) ~ template(x + flow): a body moved right by dx has flow -dx (up to the template's own place)
    assert np.corrcoef(body, -sway)[0, 1] > 0.99
    assert np.ptp(body) == pytest.approx(np.ptp(sway), rel=0.15)
    above = flow[:, :, : g // 4].reshape(FRAMES, -1)  # the background and the head: no body flow there
    assert np.abs(above).max() < 1e-6


def test_a_still_body_has_no_motion():
    frames, bits, _ = _moving_body()
    still = [frames[0]] * 20
    cfg = BodyMotionConfig(modes=3)
    motion, record = track_body(lambda i: still[i], lambda i: bits, iter(still), 20, 16, 25.0, cfg)
    flow = motion.mean + np.einsum("nk,kcij->ncij", motion.codes, motion.basis)
    assert np.abs(flow).max() * SIZE / 2 < 0.05 and record["largest_motion_px_at_256"] < 0.1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing a part"])
def test_a_damaged_body_motion_file_is_a_clear_error(damage, tmp_path):
    from avatar.contracts.dataset import BodyMotion, Dataset
    from avatar.errors import UserError
    from tests.export_fixtures import make_dataset

    root = make_dataset(tmp_path / "ds")
    path = root / "body_motion.npz"
    if damage == "garbage":
        path.write_bytes(b"not an array file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        np.savez(path, codes=BodyMotion.load(path).codes)
    with pytest.raises(UserError, match=f"body_motion.npz is unreadable. Delete {path}, then run `avatar preprocess"):
        Dataset(root).body_motion()  # refused as the dataset opens
