"""The evaluation metrics on inputs whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar.contracts.face_mesh import lip_contour_ids, mouth_opening
from avatar.eval.landmarks import LANDMARK_SCALE, FaceLandmarker
from avatar.eval.scorer import FrameRegions, SequenceScorer, mouth_boxes
from avatar.metrics.image import psnr, ssim
from avatar.metrics.lip_sync import landmark_distance, motion_ratio, pearson

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(seed: int = 0, b: int = 2, h: int = 48, w: int = 40) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_psnr_identical_is_inf_and_known_value():
    img = _images()
    assert torch.isinf(psnr(img, img)).all()
    # a uniform error of 0.1 -> MSE 0.01 -> 20 dB
    a = torch.full((1, 3, 8, 8), 0.5)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_mask_only_counts_masked_pixels():
    gt = torch.zeros(1, 3, 8, 8)
    pred = gt.clone()
    pred[..., :, 4:] = 1.0  # wrong only on the right half
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :, :4] = True
    assert torch.isinf(psnr(pred, gt, mask)).all()
    assert psnr(pred, gt).item() == pytest.approx(-10 * math.log10(0.5), abs=1e-4)


def test_ssim_identical_is_one_and_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from avatar.metrics.image import ssim_map

    a, b = _images(0), _images(1)
    b = 0.7 * a + 0.3 * b  # correlated, so SSIM is neither 0 nor 1
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    # torchmetrics pads by reflection and averages the whole map; windows fully inside the image agree
    _, full = tm_ssim(a, b, data_range=1.0, return_full_image=True)
    assert torch.allclose(ssim_map(a, b), full[..., 5:-5, 5:-5], atol=1e-4)
    assert (ssim(a, b) > ssim(a, _images(2))).all()  # more similar -> higher


def test_ssim_mask_ignores_outside():
    a = _images(0, b=1, h=40, w=40)
    b = a.clone()
    b[..., 25:, :] = 0.0  # damage the bottom rows
    mask = torch.zeros(1, 1, 40, 40, dtype=torch.bool)
    mask[..., :12, :] = True  # windows centred here never reach row 25
    assert ssim(a, b, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(a, b).item() < 0.9


def test_mouth_boxes_one_side_centred_on_the_lips_and_inside():
    lips = np.zeros((3, 4, 2))
    lips[0] = [[30, 40], [50, 40], [40, 36], [40, 46]]  # 20 wide: the widest mouth of the sequence
    lips[1] = lips[0] * 0.5 + [20, 20]  # 10 wide, elsewhere
    lips[2] = lips[0] + [50, 50]  # near the corner of a 96-pixel image
    boxes = mouth_boxes(lips, 96)
    sides = boxes[:, 1] - boxes[:, 0]
    assert (sides == 30).all() and (boxes[:, 3] - boxes[:, 2] == 30).all()
    assert abs((boxes[0, 0] + boxes[0, 1]) / 2 - 41) <= 1 and abs((boxes[0, 2] + boxes[0, 3]) / 2 - 40) <= 1
    assert boxes.min() >= 0 and boxes[:, [1, 3]].max() <= 96


def _regions(head: torch.Tensor, b: int = 1) -> FrameRegions:
    """The head mask as given, everything else torso, no background; a mouth box in the head's middle."""
    return FrameRegions(
        {"head": head, "torso": ~head, "background": torch.zeros_like(head)}, np.array([[40, 56, 40, 56]] * b)
    )


def test_lmd_of_a_shifted_landmark_set():
    rng = np.random.default_rng(0)
    gt = rng.uniform(100, 400, size=(5, 40, 2))
    pred = gt + np.array([3.0, 4.0])  # every point moved by 5 pixels
    assert landmark_distance(pred, gt) == pytest.approx(np.full(5, 5.0))
    assert landmark_distance(pred, gt, centred=True) == pytest.approx(np.zeros(5), abs=1e-9)
    # one point moved by 40 px among 40 points: mean distance 1 px
    moved = gt.copy()
    moved[:, 7] += [0.0, 40.0]
    assert landmark_distance(moved, gt) == pytest.approx(np.ones(5))


def test_mouth_opening_and_correlation_of_known_signals():
    t = np.linspace(0, 4 * np.pi, 100)
    lm = np.zeros((100, 478, 2))
    lm[:, 33] = [200, 200]
    lm[:, 263] = [300, 200]  # eye corners 100 px apart
    lm[:, 13] = [250, 350]
    lm[:, 14, 0] = 250
    lm[:, 14, 1] = 350 + 10 * (1 + np.sin(t))  # gap 0..20 px
    assert mouth_opening(lm) == pytest.approx((10 * (1 + np.sin(t))) / 100)
    sig = np.sin(t)
    assert pearson(sig, 3 * sig + 1) == pytest.approx(1.0)
    assert pearson(sig, -sig) == pytest.approx(-1.0)
    assert pearson(sig, np.cos(t)) == pytest.approx(0.0, abs=0.05)
    assert math.isnan(pearson(sig, np.ones_like(sig)))
    assert motion_ratio(0.5 * sig + 3, sig) == pytest.approx(0.5)  # half the motion, whatever the offset
    assert math.isnan(motion_ratio(sig, np.ones_like(sig)))
    assert math.isnan(pearson(sig, np.full_like(sig, 0.1)))  # equal values whose mean is not exactly them


def test_the_mouth_opening_in_3d_does_not_change_when_the_head_nods(real_frame):
    """Why the lip-sync metrics take the detector's 3D landmarks: a nod shrinks the 2D gap, not the 3D one."""
    with FaceLandmarker() as detect:
        points = detect(real_frame)
    centre = points.mean(0)
    a = np.deg2rad(20)
    pitch = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    nodded = (points - centre) @ pitch.T + centre
    assert mouth_opening(nodded) == pytest.approx(mouth_opening(points), rel=1e-6)
    assert abs(mouth_opening(nodded[:, :2]) / mouth_opening(points[:, :2]) - 1) > 0.03


def test_lpips_identical_is_zero():
    from avatar.metrics.lpips import LPIPS

    img = _images(h=64, w=64)
    lp = LPIPS("alex")
    assert torch.allclose(lp(img, img), torch.zeros(2), atol=1e-6)
    slightly = (img + 0.02 * torch.randn(img.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (lp(img, slightly) > 0).all() and (lp(img, slightly) < lp(img, _images(5, h=64, w=64))).all()


@pytest.fixture(scope="module")
def real_frame(shared_data) -> np.ndarray:
    """[512, 512, 3] uint8 RGB: a frame of the Macron address (a frontal face)."""
    import av

    with av.open(str(shared_data / "dfrf_macron_address_50s.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 30:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError("video too short")


def test_mediapipe_landmarks_on_a_real_frame_and_a_downscaled_copy(real_frame):
    import cv2

    with FaceLandmarker() as detect:
        full = detect(real_frame)
        small = detect(cv2.resize(real_frame, (128, 128), interpolation=cv2.INTER_AREA))  # upscaled to 512 inside
        assert detect(np.zeros((128, 128, 3), np.uint8)) is None
    assert full is not None and full.shape == (478, 3) and small is not None
    mouth = lip_contour_ids()
    assert len(mouth) == 40
    centre = full[mouth].mean(0)
    assert 0.3 * LANDMARK_SCALE < centre[0] < 0.7 * LANDMARK_SCALE  # mouth near the middle, lower half
    assert centre[1] > full[[33, 263]].mean(0)[1]  # below the eyes
    # the 128-px copy costs some accuracy, but the mouth stays within a few pixels at 512 scale
    assert landmark_distance(small[mouth, :2], full[mouth, :2]) < 8.0


def test_sequence_scorer_perfect_prediction(real_frame):
    import cv2

    from avatar.metrics.lpips import LPIPS

    gt_np = cv2.resize(real_frame, (128, 128), interpolation=cv2.INTER_AREA)
    gt = torch.from_numpy(gt_np).permute(2, 0, 1)[None].float() / 255
    mask = torch.zeros(1, 1, 128, 128, dtype=torch.bool)
    mask[..., 20:100, 30:98] = True
    with FaceLandmarker() as detect:
        gt_lm = detect(gt_np)
        scorer = SequenceScorer(LPIPS("alex"), detect)
        for _ in range(3):
            scorer.add(gt, gt, _regions(mask), [gt_lm])
        s = scorer.summary()
    assert s["frames"] == 3 and s["face_detected"] == 1.0 and s["lip_frames"] == 3
    for region in ("", "_head", "_torso", "_mouth"):
        assert math.isinf(s[f"psnr{region}"]) and s[f"ssim{region}"] == pytest.approx(1.0, abs=1e-5)
        assert s[f"lpips{region}"] == pytest.approx(0.0, abs=1e-6)
    assert s["psnr_background"] is None and s["lpips_background"] is None  # no background in these frames
    assert s["lmd"] == pytest.approx(0.0, abs=1e-4)
    assert math.isnan(s["mouth_corr"]) and math.isnan(s["mouth_motion"])  # a constant mouth: no correlation


def test_region_metrics_see_only_their_region():
    gt = _images(3, b=1, h=96, w=96)
    pred = gt.clone()
    pred[..., :, 80:] = 0.0  # damage a band right of the head only (torso here)
    mask = torch.zeros(1, 1, 96, 96, dtype=torch.bool)
    mask[..., 20:70, 20:70] = True
    from avatar.metrics.lpips import LPIPS

    with FaceLandmarker() as detect:
        scorer = SequenceScorer(LPIPS("alex"), detect)
        scorer.add(pred, gt, _regions(mask), [None])
    s = scorer.summary()
    assert math.isinf(s["psnr_head"]) and s["ssim_head"] == pytest.approx(1.0, abs=1e-5)
    assert math.isinf(s["psnr_mouth"]) and s["lpips_mouth"] == pytest.approx(0.0, abs=1e-6)
    # the head's LPIPS sees some of the band through the deep layers' receptive field, far less than the torso's
    assert s["lpips_head"] < 0.5 * s["lpips_torso"] and s["lpips"] > 0.01
    assert s["psnr_torso"] < s["psnr"] < 20 and s["lip_frames"] == 0 and s["lmd"] is None


def test_lpips_of_tiny_images_works():
    from avatar.metrics.lpips import LPIPS

    gt = _images(4, b=1, h=32, w=32)
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., 8:20, 10:22] = True
    with FaceLandmarker() as detect:
        scorer = SequenceScorer(LPIPS("alex"), detect)
        regions = FrameRegions(
            {"head": mask, "torso": ~mask, "background": torch.zeros_like(mask)}, np.array([[8, 24, 8, 24]])
        )
        scorer.add(gt.flip(-1), gt, regions, [None])
    s = scorer.summary()
    assert s["lpips"] > 0 and s["lpips_head"] > 0 and s["lpips_mouth"] > 0
