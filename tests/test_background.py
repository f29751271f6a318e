"""Background plate: exact where the background shows, filled where the person always stands, bounded memory."""

from __future__ import annotations

import numpy as np

from avatar.contracts.dataset import MASK_BITS
from avatar.preprocess.background import BackgroundAccumulator
from avatar.preprocess.masks import MaskMaker
from tests.track_fixtures import real_detections, real_frames


def test_synthetic_plate_recovers_the_background_and_fills_the_body():
    rng = np.random.default_rng(0)
    H = W = 96
    yy, xx = np.mgrid[0:H, 0:W]
    background = np.stack([xx * 2, yy * 2, 255 - xx - yy], -1).clip(0, 255).astype(np.uint8)
    acc = BackgroundAccumulator(H, W, capacity=8)
    for i in range(200):
        cx = 48 + 20 * np.sin(i / 10)  # a person swaying left and right, always covering the middle
        person = (np.abs(xx - cx) < 20) & (yy > 20)
        frame = np.where(person[..., None], 200, background).astype(np.int16)
        frame = (frame + rng.normal(0, 3, frame.shape)).clip(0, 255).astype(np.uint8)  # sensor noise
        acc.add(frame, (person.astype(np.uint8) << MASK_BITS["person"]))
        assert acc._kept <= 8  # bounded memory: never more than `capacity` frames held
    plate = acc.result().astype(np.float32)
    error = np.abs(plate - background).mean(-1)
    seen = (xx < 15) | (xx > 82) | (yy < 15)
    assert error[seen].mean() < 2.0  # noise averaged away where the background shows
    always_covered = (np.abs(xx - 48) < 1) & (yy > 30)
    assert error[always_covered].mean() < 40  # the body area is filled from its surroundings, not left at 200 or 0


def test_real_plate_matches_the_visible_background(shared_data):
    frames, det = real_frames(), real_detections()
    maker = MaskMaker()
    acc = BackgroundAccumulator(*frames.shape[1:3])
    bits = [maker(f, det.landmarks_mp3d[i]) for i, f in enumerate(frames)]
    for f, b in zip(frames, bits):
        acc.add(f, b)
    plate = acc.result()
    assert plate.shape == frames.shape[1:] and plate.dtype == np.uint8
    # compare where the person is far away in the last frame
    import cv2

    person = (bits[-1] >> MASK_BITS["person"]) & 1
    far = cv2.dilate(person, np.ones((31, 31), np.uint8)) == 0
    assert far.mean() > 0.2
    assert np.abs(plate[far].astype(np.float32) - frames[-1][far]).mean() < 4.0
    maker.close()
