"""Small synthetic material for the export tests: a dataset directory, speech-like audio, and a test double
of the trained avatar whose mouth opens with the audio energy (so sync can be read off the output video)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from avatar.audio.features import MelFeatures, feature_stats
from avatar.audio.io import SAMPLE_RATE, load_audio
from avatar.contracts.atomic import write_json
from avatar.contracts.camera import Intrinsics
from avatar.contracts.dataset import FORMAT_VERSION, BodyMotion, Crop, FeatureInfo, Manifest, Split
from avatar.model.audio_encoder import ClipLevels

FPS = 25.0
RES = 64
SOURCE_W, SOURCE_H = 96, 80
CROP = dict(x0=20.0, y0=4.0, size=64.0)
BURSTS_S = [(0.5, 1.0), (1.6, 1.8), (2.4, 3.2)]  # loud stretches of the test speech


def speech_like(duration_s: float, sample_rate: int, channels: int = 1, silent: bool = False) -> np.ndarray:
    """[S] or [S, C] float32: a voiced buzz during BURSTS_S over faint noise (all zeros when silent)."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    if silent:
        wave = np.zeros_like(t)
    else:
        envelope = np.zeros_like(t)
        for a, b in BURSTS_S:
            envelope[(t >= a) & (t < b)] = 1.0
        rng = np.random.default_rng(0)
        buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
        wave = 0.3 * envelope * buzz + 0.003 * rng.standard_normal(t.size)
    wave = wave.astype(np.float32)
    return wave if channels == 1 else np.stack([wave, 0.8 * wave], 1)


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> Path:
    import soundfile as sf

    sf.write(str(path), wave, sample_rate, subtype="PCM_16")
    return path


def write_source_video(path: Path, num_frames: int, fps: float = FPS, with_audio: bool = False) -> Path:
    """A SOURCE_W x SOURCE_H video whose colour encodes the frame number (red = 2 * i), for paste-back."""
    from avatar.render.mux import VideoWriter

    writer = VideoWriter(path, SOURCE_W, SOURCE_H, fps, audio_channels=1)
    for i in range(num_frames):
        frame = np.zeros((1, SOURCE_H, SOURCE_W, 3), np.uint8)
        frame[..., 0], frame[..., 2] = (2 * i) % 256, 90
        writer.write_frames(frame)
        if with_audio:
            end = writer.samples_until(writer.frames_written)
            chunk = speech_like(num_frames / fps, 48000)[writer.samples_written : end]
            writer.write_audio(chunk[:, None])
    writer.close()
    return path


def make_dataset(root: Path, num_frames: int = 100) -> Path:
    """A minimal dataset directory (manifest, tracking, body motion, background, features) of a head that
    turns slowly and blinks three times, and a body that sways at its own pace."""
    import cv2

    (root / "tracking").mkdir(parents=True)
    wave = speech_like(num_frames / FPS, SAMPLE_RATE)
    features = MelFeatures()(wave)
    np.save(root / "audio_features.npy", features)
    mean, std = feature_stats(features)
    i = np.arange(num_frames)
    yaw = 0.15 * np.sin(2 * np.pi * i / 60)
    rotation = np.stack([[[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]] for a in yaw])
    translation = np.stack([0.01 * np.sin(2 * np.pi * i / 45), np.zeros(num_frames), np.full(num_frames, 0.6)], 1)
    blinks = np.full(num_frames, 0.05)
    for start in (20, 55, 80):
        blinks[start : start + 5] = [0.3, 0.8, 0.95, 0.7, 0.25]
    landmarks = np.zeros((num_frames, 478, 3), np.float32)  # only the mouth-opening points matter here
    landmarks[:, 33, :2], landmarks[:, 263, :2] = (40.0, 50.0), (90.0, 50.0)
    landmarks[:, 13, 1], landmarks[:, 14, 1] = 90.0, 90.0 + 5 * (1 + np.sin(i / 3.0))
    np.save(root / "tracking" / "landmarks_mp3d.npy", landmarks)
    np.save(root / "tracking" / "landmarks.npy", landmarks[..., :2])
    np.save(root / "tracking" / "rotation.npy", rotation.astype(np.float32))
    np.save(root / "tracking" / "translation.npy", translation.astype(np.float32))
    np.save(
        root / "tracking" / "blendshapes.npy",
        np.stack([blinks, blinks * 0.9, np.zeros(num_frames)], 1).astype(np.float32),
    )
    sway = (0.02 * np.sin(2 * np.pi * i / 50))[:, None].astype(np.float32)  # the body sways on its own
    BodyMotion(codes=sway, mean=np.zeros((2, 4, 4), np.float32), basis=np.ones((1, 2, 4, 4), np.float32)).save(
        root / "body_motion.npz"
    )
    plate = np.zeros((RES, RES, 3), np.uint8)
    plate[..., 1] = 200
    cv2.imwrite(str(root / "background.png"), plate[..., ::-1])
    source = write_source_video(root / "source.mp4", num_frames)
    n_val = num_frames // 10
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        source={"path": str(source), "width": SOURCE_W, "height": SOURCE_H, "fps": FPS, "time_origin_s": 0.0},
        fps=FPS,
        num_frames=num_frames,
        resolution=RES,
        crop=Crop(CROP["x0"], CROP["y0"], CROP["size"], SOURCE_W, SOURCE_H, RES),
        intrinsics=Intrinsics.from_fov(20.0, RES, RES),
        split=Split(train=(0, num_frames - n_val), val=(num_frames - n_val, num_frames)),
        audio={"file": "audio.wav", "sample_rate": SAMPLE_RATE, "num_samples": len(wave)},
        features=FeatureInfo(
            "audio_features.npy", MelFeatures().name, 100.0, MelFeatures().dim, 16, mean.tolist(), std.tolist()
        ),
        blendshape_names=["eyeBlinkLeft", "eyeBlinkRight", "jawOpen"],
        versions={},
    )
    write_json(root / "manifest.json", manifest.to_json())
    return root


class EnergyMouthHead(torch.nn.Module):
    """Test double of `TalkingHead` (same attributes and render signature): a grey face on the background
    whose dark mouth opens with the log energy of the frame's own audio window (closed for all-zero audio)
    and whose eyes close with the blink value. It lets the export tests read sync and blinks off the output video."""

    fps, resolution, feature_window, audio_context = FPS, RES, 16, 2
    MOUTH = (slice(40, 52), slice(24, 40))  # rows, columns that the mouth can cover

    def __init__(self, dataset_root: Path, fail_at_call: int | None = None):
        from avatar.contracts.dataset import Dataset
        from avatar.model.driving import DrivingData

        super().__init__()
        self.driving = DrivingData.from_dataset(Dataset(dataset_root))
        self.intrinsics = Intrinsics.from_fov(20.0, RES, RES)
        self.spec = SimpleNamespace(backend="auto")
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        # the clip's levels are left alone: the double's mouth follows the energy as it is
        self.audio_encoder = SimpleNamespace(
            levels=lambda chunks: ClipLevels(),
            frame_measures=lambda chunk: np.zeros((len(chunk), 3)),
            levels_of=lambda measures: ClipLevels(),
        )
        self.calls = 0
        self.fail_at_call = fail_at_call

    @torch.no_grad()
    def render(self, cond, background=None, deform=True, camera=None, show_torso=True, expression=None) -> dict:
        self.calls += 1
        if self.fail_at_call is not None and self.calls >= self.fail_at_call:
            raise RuntimeError("the test double fails here on purpose")
        b, k = cond.audio.shape[0], self.audio_context
        energy = cond.audio[:, k, 4:12, MelFeatures().n_mels].mean(1)  # [B] centre frame, central rows
        rest = cond.audio.flatten(1).abs().amax(1) == 0  # all-zero audio: the closed mouth, as TalkingHead learns
        opening = torch.where(rest, 0.0, torch.sigmoid(2.0 * energy))  # 0..1
        plate = torch.zeros(RES, RES, 3)
        plate[..., 1] = 200 / 255
        rgb = (plate if background is None else background).expand(b, RES, RES, 3).clone()
        rows, cols = torch.meshgrid(torch.arange(RES), torch.arange(RES), indexing="ij")
        alpha = torch.zeros(b, RES, RES, 1)
        for i in range(b):
            cx = RES / 2 + 200 * float(cond.translation[i, 0])
            face = ((cols - cx) ** 2 + (rows - 34) ** 2) < 22**2
            rgb[i][face] = 0.7
            alpha[i][face] = 1.0
            height = int(round(1 + 10 * float(opening[i])))
            rgb[i, 41 : 41 + height, 24:40] = 0.05
            eye = 0.7 * (1 - float(cond.blink[i].mean()))
            rgb[i, 26:30, 20:28] = eye
            rgb[i, 26:30, 36:44] = eye
        return {"rgb": rgb, "alpha": alpha}


def mouth_opening(frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 decoded frames -> [N] share of dark pixels in the mouth box of EnergyMouthHead."""
    box = frames[:, EnergyMouthHead.MOUTH[0], EnergyMouthHead.MOUTH[1]].astype(np.float32).mean(-1)
    return (box < 60).mean((1, 2))


def probe(path: Path) -> dict:
    """Streams, frame count, durations and decoded frames of a written video."""
    import av

    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        info = {
            "video_codec": video.codec_context.name,
            "audio_codec": audio.codec_context.name,
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "audio_rate": audio.codec_context.sample_rate,
            "audio_channels": audio.codec_context.channels,
            "video_s": float(video.duration * video.time_base),
            "audio_s": float(audio.duration * audio.time_base),
        }
        info["frames"] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    info["num_frames"] = len(info["frames"])
    return info


def expected_frames(audio_path: Path, fps: float = FPS) -> int:
    from avatar.audio.io import num_frames_for

    return num_frames_for(len(load_audio(audio_path)), SAMPLE_RATE, fps)
