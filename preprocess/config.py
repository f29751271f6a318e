"""Settings of `avatar preprocess VIDEO --out DATASET_DIR` (presets: configs/preprocess/*.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro


@dataclass
class PreprocessConfig:
    """Build a training dataset from one talking video of one person."""

    LIMITS: ClassVar[dict] = {
        "fps": (1, 120),
        "av_offset": (-1000, 1000),
        "resolution": (64, 4096),
        "val_fraction": (0.01, 0.5),
        "fov_deg": (1, 150),
        "focal_px": (1, None),
        "crop_scale": (1, 10),
        "crop_face_y": (0, 1),
        "crop_samples": (1, None),
        "min_duration_s": (0, None),
        "max_missing_face": (0, 1),
        "feature_window": (4, 64),
        "jpeg_quality": (1, 100),
        "preview_seconds": (0, None),
        "contact_sheet_frames": (1, None),
    }  # checked by config_io.check_values

    video: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="VIDEO")] = tyro.MISSING  # type: ignore
    """the input video (mp4, mov, mkv, webm, ...; constant or variable frame rate, any resolution)"""
    out: Path = Path("data/dataset")
    """the dataset directory to write (a rerun resumes it; see --force)"""
    fps: float = 25.0
    """frame rate of the dataset: the video is resampled by timestamps to this rate"""
    resolution: int = 512
    """side of the square dataset images in pixels"""
    audio: Path | None = None
    """audio file to use instead of the video's own soundtrack (needed when the video has none)"""
    av_offset: float | None = None
    """the source's audio-visual offset in ms (positive: the sound comes later than the lips), removed from the
    dataset's sound; default: estimated from the lips and the phones, and removed when the estimate is
    confident; 0 keeps the sound as it is"""
    val_fraction: float = 0.1
    """share of the frames, at the end of the clip, held out as the validation split (training measures itself on it)"""
    fov_deg: float = 20.0
    """vertical field of view of the dataset image, used when --focal-px is not given (20 deg: a
    telephoto-like 1450 px focal at 512 px, close to the 1200 px at 450 px of AD-NeRF/ER-NeRF datasets)"""
    focal_px: float | None = None
    """focal length in pixels of the SOURCE video (e.g. from a calibration); overrides --fov-deg"""
    crop_scale: float = 2.2
    """side of the square crop as a multiple of the face height (forehead to chin): 2.2 frames the head and
    shoulders with the face about 45 % of the image height, as in the usual talking-head datasets"""
    crop_face_y: float = 0.48
    """where the face centre sits vertically in the crop (0 top, 1 bottom); the hair is above the measured
    face, so the middle leaves room for both the hair and the shoulders"""
    crop_samples: int = 32
    """frames sampled evenly over the clip to choose the one fixed crop"""
    min_duration_s: float = 5.0
    """refuse clips shorter than this"""
    max_missing_face: float = 0.05
    """refuse clips where no face is found in more than this share of frames (shorter gaps are interpolated)"""
    feature_window: int = 16
    """audio-feature rows per frame window (see avatar.audio.features)"""
    features: Literal["mel+phones+visemes", "mel+visemes", "mel", "visemes", "mel+phones"] = "mel+phones+visemes"
    """audio features the avatar learns from: log-mel/energy/pitch (the voice's sound) and/or phonetic classes
    decoded by pocketsphinx's speaker-independent acoustic model (what is said: visemes = mouth-shape classes,
    phones = the 39 English phones). Changing it on an existing dataset recomputes only the features"""
    speech_model: Path | None = None
    """optional: a folder holding a pretrained speech encoder (HuBERT, wav2vec2, WavLM saved with Hugging Face
    save_pretrained; needs `pip install transformers`). One hidden layer of it joins the features; rendering
    then needs the same folder. Nothing is downloaded"""
    speech_model_layer: int = -1
    """which hidden layer of --speech-model (0: the convolutional frontend's output, -1: the last)"""
    jpeg_quality: int = 95
    """JPEG quality of the stored frames"""
    preview_seconds: float = 10.0
    """length of preview.mp4 (from the start of the clip)"""
    contact_sheet_frames: int = 15
    """frames on contact_sheet.png (evenly spaced over the clip)"""
    force: bool = False
    """redo every step even when its cached result is up to date"""
