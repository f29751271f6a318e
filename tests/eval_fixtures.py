"""A minimal real dataset for the evaluation and benchmark tests (only what they read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatar.audio.features import MelFeatures, feature_stats
from avatar.audio.io import load_audio, save_wav
from avatar.contracts.camera import Intrinsics
from avatar.contracts.dataset import (
    FORMAT_VERSION,
    MASK_BITS,
    BodyMotion,
    Crop,
    Dataset,
    FeatureInfo,
    Manifest,
    Split,
    frame_name,
)

SIZE = 128
FPS = 30.0
NUM_FRAMES = 90  # 3 s of the Macron address: 81 training frames, 9 validation frames


def write_eval_dataset(root: Path, video: Path) -> Dataset:
    """A minimal dataset in the contract's format, from the first 3 s of a real video: real frames, real audio
    features, real landmarks, a fixed elliptical head over elliptical shoulders and a still pose (only what
    the evaluation reads)."""
    import av
    import cv2

    from avatar.eval.landmarks import LANDMARK_SCALE, FaceLandmarker

    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    head = ((xx - 64) / 30) ** 2 + ((yy - 56) / 40) ** 2 <= 1
    torso = (((xx - 64) / 60) ** 2 + ((yy - 140) / 50) ** 2 <= 1) & ~head
    bits = (head << MASK_BITS["head"]) | (torso << MASK_BITS["torso"]) | ((head | torso) << MASK_BITS["person"])
    landmarks = []
    with av.open(str(video)) as container, FaceLandmarker() as detect:
        for i, frame in enumerate(container.decode(video=0)):
            if i == NUM_FRAMES:
                break
            rgb = cv2.resize(frame.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(root / "frames" / f"{frame_name(i)}.jpg"), rgb[:, :, ::-1])
            cv2.imwrite(str(root / "masks" / f"{frame_name(i)}.png"), bits.astype(np.uint8))
            landmarks.append(detect(rgb) * (SIZE / LANDMARK_SCALE))
    wave = load_audio(video)[: int(NUM_FRAMES / FPS * 16000)]
    save_wav(root / "audio.wav", wave)
    extractor = MelFeatures()
    feats = extractor(wave)
    np.save(root / "audio_features.npy", feats)
    mean, std = feature_stats(feats)
    (root / "tracking").mkdir()
    np.save(root / "tracking" / "rotation.npy", np.tile(np.eye(3, dtype=np.float32), (NUM_FRAMES, 1, 1)))
    np.save(root / "tracking" / "translation.npy", np.tile(np.float32([0, 0, 1.2]), (NUM_FRAMES, 1)))
    np.save(root / "tracking" / "blendshapes.npy", np.zeros((NUM_FRAMES, 2), np.float32))
    np.save(root / "tracking" / "landmarks_mp3d.npy", np.stack(landmarks).astype(np.float32))
    np.save(root / "tracking" / "landmarks.npy", np.stack(landmarks)[..., :2].astype(np.float32))
    # an expression model of the detected 3D landmarks: their mean face and 4 principal motions
    points = np.stack(landmarks).astype(np.float64)
    canonical = points.mean(0)
    _, _, vt = np.linalg.svd((points - canonical).reshape(NUM_FRAMES, -1), full_matrices=False)
    basis = vt[:4].reshape(4, *canonical.shape)
    np.save(root / "tracking" / "canonical_face.npy", canonical)
    np.save(root / "tracking" / "expression_basis.npy", basis)
    np.save(root / "tracking" / "expression_pca.npy", ((points - canonical).reshape(NUM_FRAMES, -1) @ vt[:4].T))
    still_body(NUM_FRAMES).save(root / "body_motion.npz")
    n_val = NUM_FRAMES // 10
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        source={"path": str(video)},
        fps=FPS,
        num_frames=NUM_FRAMES,
        resolution=SIZE,
        crop=Crop(0, 0, 512, 512, 512, SIZE),
        intrinsics=Intrinsics.from_fov(20, SIZE, SIZE),
        split=Split((0, NUM_FRAMES - n_val), (NUM_FRAMES - n_val, NUM_FRAMES)),
        audio={"file": "audio.wav", "sample_rate": 16000, "num_samples": len(wave)},
        features=FeatureInfo(
            "audio_features.npy", extractor.name, extractor.rate_hz, extractor.dim, 16, mean.tolist(), std.tolist()
        ),
        blendshape_names=["eyeBlinkLeft", "eyeBlinkRight"],
        versions={},
    )
    (root / "manifest.json").write_text(json.dumps(manifest.to_json()))
    return Dataset(root)


def still_body(num_frames: int) -> BodyMotion:
    """The tracked motion of a body that never moves: one mode, no flow."""
    return BodyMotion(
        codes=np.zeros((num_frames, 1), np.float32),
        mean=np.zeros((2, 4, 4), np.float32),
        basis=np.zeros((1, 2, 4, 4), np.float32),
    )


@pytest.fixture(scope="session")
def eval_dataset(shared_data, tmp_path_factory) -> Dataset:
    """Built once per test session (import this fixture into a test module to use it)."""
    return write_eval_dataset(tmp_path_factory.mktemp("eval_dataset"), shared_data / "dfrf_macron_address_50s.mp4")
