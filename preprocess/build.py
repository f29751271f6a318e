"""`avatar preprocess`: video -> dataset directory (format: avatar.contracts.dataset), step by step.

Steps, each cached and atomic (preprocess.steps): audio -> crop -> frames -> landmarks -> track -> masks
(and the background plate) -> preview -> body motion -> features; manifest.json is written last, so a
directory without it is never mistaken for a finished dataset. Frames stream from disk through every step:
memory stays bounded by a few frames plus the per-frame tracking arrays.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from avatar.audio.features import feature_stats, frame_log_energy, speech_features
from avatar.audio.io import SAMPLE_RATE, num_frames_for, save_wav
from avatar.audio.phonetic import PhoneticFeatures
from avatar.config_io import check_values
from avatar.contracts.atomic import atomic_dir, atomic_path, exclusive, jsonable, save_npy, sha256_of, write_json
from avatar.contracts.camera import Intrinsics
from avatar.contracts.dataset import (
    FORMAT_VERSION,
    MASK_BITS,
    TRACKING_ARRAYS,
    Crop,
    DatasetLayout,
    FeatureInfo,
    Manifest,
    Split,
    heard_frames,
    read_mask_bits,
    read_rgb,
)
from avatar.contracts.face_mesh import EYE_OUTER_CORNERS, mouth_opening
from avatar.contracts.video import frames_at_times, probe_video, resampled_frames
from avatar.errors import UserError
from avatar.metrics.lip_sync import lagged_pearson
from avatar.preprocess.audio import clip_audio, require_audio, time_origin
from avatar.preprocess.av_offset import estimate_offset, shift_audio
from avatar.preprocess.background import BackgroundAccumulator
from avatar.preprocess.body_motion import BodyMotionConfig, track_body
from avatar.preprocess.config import PreprocessConfig
from avatar.preprocess.crop import apply_crop, choose_crop, main_faces
from avatar.preprocess.frame_io import ThreadedImageWriter, progress, stored_frames
from avatar.preprocess.masks import MaskMaker
from avatar.preprocess.preview import write_contact_sheet, write_preview
from avatar.preprocess.steps import MARKER_DIR, StepRunner
from avatar.preprocess.track import LandmarkDetections, LandmarkFaceModel, detect_landmarks, find_faces_for_crop

LIBRARIES = ["avatar", "numpy", "opencv-python-headless", "av", "mediapipe", "librosa", "scipy", "soundfile"]


def dataset_intrinsics(cfg: PreprocessConfig, crop: Crop) -> Intrinsics:
    """The pinhole camera of the dataset image: from --focal-px (source pixels, principal point at the
    source image centre, carried through the crop) or else the vertical field of view --fov-deg."""
    if cfg.focal_px is None:
        return Intrinsics.from_fov(cfg.fov_deg, crop.resolution, crop.resolution)
    s = crop.resolution / crop.size
    cx, cy = crop.to_dataset([crop.source_width / 2, crop.source_height / 2])
    return Intrinsics(cfg.focal_px * s, cfg.focal_px * s, float(cx), float(cy), crop.resolution, crop.resolution)


STILL_IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _check_config(cfg: PreprocessConfig) -> None:
    """The command line's checks, also for callers that make the config themselves (`avatar demo`), and the
    inputs a user mixes up."""
    check_values(cfg)
    if cfg.audio is not None and not Path(cfg.audio).is_file():
        what = "is a directory" if Path(cfg.audio).is_dir() else "no such file"
        raise UserError(f"{cfg.audio}: {what} (given with --audio). Give the path of an audio file.")
    if Path(cfg.video).suffix.lower() in STILL_IMAGES:
        raise UserError(
            f"{cfg.video}: is a still image. Give a video of the person talking (at least {cfg.min_duration_s:g} s)."
        )


SIDEWAYS_DEG = 60.0  # a median face roll beyond this means a sideways video


def face_roll_deg(landmarks: np.ndarray) -> float:
    """Median in-picture roll of the face over [N, 478, 2] landmarks: the angle of the line from the right to
    the left outer eye corner (0 upright, +-90 sideways, 180 upside down)."""

    right, left = landmarks[:, EYE_OUTER_CORNERS[0]], landmarks[:, EYE_OUTER_CORNERS[1]]
    d = left - right
    return float(np.degrees(np.arctan2(np.median(d[:, 1]), np.median(d[:, 0]))))


def sideways_warning(video: Path, roll_deg: float) -> str | None:
    """A warning with the ffmpeg command that turns the video upright, when its faces are rolled by more than
    SIDEWAYS_DEG: +90 is a picture turned clockwise, so it is turned back counter-clockwise (transpose=2)."""
    if abs(roll_deg) <= SIDEWAYS_DEG:
        return None
    upside_down = abs(roll_deg) > 180 - SIDEWAYS_DEG
    turn = "hflip,vflip" if upside_down else "transpose=2" if roll_deg > 0 else "transpose=1"
    return (
        f"{video}: the face is rolled by {roll_deg:.0f} degrees in the picture: the video is probably "
        f"{'upside down' if upside_down else 'sideways'} (its pixels turned without a rotation flag). Turn it "
        f"upright, `ffmpeg -i {video} -vf {turn} -c:a copy upright.mp4`, and preprocess upright.mp4 instead."
    )


def _check_output_dir(out: Path) -> bool:
    """True when `out` is new or empty. Refuses to write into a non-empty directory that is not a dataset."""
    if not out.exists():
        return True
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory. Choose another --out.")
    empty = not any(out.iterdir())
    if not empty and not (out / MARKER_DIR).is_dir() and not DatasetLayout(out).manifest.is_file():
        raise UserError(f"{out}: a non-empty directory that is not a dataset. Choose an empty or new --out.")
    return empty


class Builder:
    """The steps of one build. Each `step_*` writes its outputs atomically and returns its measurements."""

    def __init__(self, cfg: PreprocessConfig):

        self.cfg = cfg
        self.root = Path(cfg.out)
        self.layout = DatasetLayout(self.root)
        self.info = probe_video(cfg.video)
        require_audio(self.info, cfg.audio)
        if self.info.duration_s == self.info.duration_s and self.info.duration_s < cfg.min_duration_s:
            raise UserError(self._too_short_message(self.info.duration_s))
        self.origin_s = time_origin(self.info, cfg.audio)
        self.source_sha = sha256_of(Path(cfg.video))
        self.audio_sha = sha256_of(Path(cfg.audio)) if cfg.audio is not None else None
        self.steps = StepRunner(self.root, cfg.force)
        self.extractor = speech_features(cfg.features, cfg.speech_model, cfg.speech_model_layer)

    def _stated_duration(self) -> float:
        """Seconds from the time origin to the end of the video, as the container states it (NaN: unknown)."""
        return self.info.duration_s - (self.origin_s - self.info.start_s)

    def _too_short_message(self, seconds: float) -> str:
        return (
            f"{self.cfg.video}: only {seconds:.1f} s long; at least {self.cfg.min_duration_s:.0f} s of the person "
            "talking are needed (a few minutes give a much better avatar). Give a longer video."
        )

    # ------------------------------------------------------------------ steps
    def step_audio(self) -> dict:

        wave, warnings = clip_audio(self.info, self.cfg.audio, self.origin_s)
        stated = self._stated_duration()
        if self.cfg.audio is None and stated == stated and wave.size / SAMPLE_RATE < 0.9 * stated - 0.5:
            raise UserError(
                f"{self.cfg.video}: the audio track ends after {wave.size / SAMPLE_RATE:.1f} s although the file "
                f"says {stated:.1f} s: the file is truncated or corrupt. Re-download or re-encode it."
            )
        if self.cfg.audio is not None and wave.size / SAMPLE_RATE < self.cfg.min_duration_s:
            raise UserError(
                f"{self.cfg.audio}: only {wave.size / SAMPLE_RATE:.1f} s of audio; at least "
                f"{self.cfg.min_duration_s:.0f} s are needed. Give the whole speech recorded with the video."
            )
        if self.cfg.audio is not None and stated == stated and abs(wave.size / SAMPLE_RATE - stated) > 1.0:
            warnings.append(
                f"{self.cfg.audio}: {wave.size / SAMPLE_RATE:.1f} s of audio for {stated:.1f} s of video; the dataset "
                "keeps the part both cover. Is it the sound recorded with this video?"
            )
        save_wav(self._source_audio, wave)
        return {"num_samples": int(wave.size), "duration_s": wave.size / SAMPLE_RATE, "warnings": warnings}

    @property
    def _source_audio(self) -> Path:
        """The sound as cut from the source, before the sync step moves it into audio.wav."""
        return self.root / MARKER_DIR / "source_audio.wav"

    def step_sync(self, num_frames: int) -> dict:
        """Estimate the source's A/V offset and write audio.wav with it removed (when confident, or as given),
        cut to the frames' span: the part the sound and the picture both cover (an --audio file may be longer)."""
        wave, _ = sf.read(str(self._source_audio), dtype="float32")
        opening = mouth_opening(np.load(self.layout.tracking("landmarks_mp3d"), mmap_mode="r"))
        found = estimate_offset(PhoneticFeatures(classes="visemes")(wave), 100.0, opening, self.cfg.fps)
        given = self.cfg.av_offset
        offset = found.decided(given)
        synced = shift_audio(wave, offset.ms, SAMPLE_RATE) if offset.applied else wave
        synced = synced[: int(round(num_frames / self.cfg.fps * SAMPLE_RATE))]
        save_wav(self.layout.audio, synced)
        warnings = []
        if given == 0 and found.confident and abs(found.ms) * self.cfg.fps / 1000 >= 1:
            warnings.append(
                f"{self.cfg.video}: its sound is {found.ms:+.0f} ms off its lips, kept as given (--av-offset 0); "
                "the avatar will learn that offset."
            )
        return {"av_offset": offset.to_manifest(), "num_samples": int(synced.size), "warnings": warnings}

    def step_crop(self) -> dict:

        span = self._stated_duration()
        span = span if span == span else self.cfg.min_duration_s
        n = self.cfg.crop_samples
        times = [self.origin_s + span * (k + 0.5) / n for k in range(n)]
        scan = progress(frames_at_times(self.cfg.video, times), "crop scan", n)
        faces = [find_faces_for_crop(rgb) for _, rgb in scan]
        scanned = len(faces)
        chosen, crowded = main_faces(faces, str(self.cfg.video))
        missing = 1 - len(chosen) / max(scanned, 1)
        if missing > max(self.cfg.max_missing_face, 0.25):
            raise UserError(
                f"{self.cfg.video}: no face found in {missing:.0%} of {scanned} frames sampled over the clip. "
                "Use a video where one person's face is visible throughout, or cut the clip to those parts."
            )
        crop = choose_crop(
            chosen, self.info.width, self.info.height, self.cfg.resolution, self.cfg.crop_scale, self.cfg.crop_face_y
        )
        warnings = []
        if crowded >= max(2, 0.1 * scanned):
            warnings.append(
                f"{self.cfg.video}: a second face appears in {crowded} of {scanned} sampled frames. The main "
                "speaker (the biggest, most central face) is kept; for a clean avatar use a clip of one person."
            )
        return {
            "crop": crop.__dict__,
            "scanned_frames": scanned,
            "frames_with_face": len(chosen),
            "frames_with_several_faces": crowded,
            "warnings": warnings,
        }

    def step_frames(self, crop: Crop, max_frames: int) -> dict:

        params = [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality]
        count = 0
        with atomic_dir(self.layout.frames_dir) as tmp:
            with ThreadedImageWriter() as writer:
                source = resampled_frames(self.cfg.video, self.cfg.fps, self.origin_s, max_frames)
                for i, rgb in enumerate(progress(source, "frames", max_frames)):
                    image = np.ascontiguousarray(apply_crop(rgb, crop)[:, :, ::-1])
                    writer.write(self.layout.frame(i, tmp), image, params)
                    count = i + 1
            seconds = count / self.cfg.fps
            stated = self._stated_duration()
            if stated == stated and count < max_frames and seconds < 0.9 * stated - 0.5:
                raise UserError(
                    f"{self.cfg.video}: the video stream ends after {seconds:.1f} s although the file says "
                    f"{stated:.1f} s: it is truncated or corrupt. Re-download or re-encode the file."
                )
            if seconds < self.cfg.min_duration_s:
                raise UserError(self._too_short_message(seconds))
        return {"frames": count}

    def step_landmarks(self, num_frames: int) -> dict:

        det = detect_landmarks(
            stored_frames(self.root, num_frames),
            max_missing_fraction=self.cfg.max_missing_face,
            source=str(self.cfg.video),
            total=num_frames,
            show_progress=sys.stderr.isatty(),
        )
        np.savez(self._detections_tmp(), landmarks_mp3d=det.landmarks_mp3d, valid=det.valid, num_faces=det.num_faces)
        self._detections_tmp().rename(self.root / MARKER_DIR / "detections.npz")
        gaps = det.gap_stats()
        warnings = []
        if gaps["missing_frames"]:
            warnings.append(
                f"{self.cfg.video}: no face in {gaps['missing_frames']} of {num_frames} frames "
                f"({gaps['gaps']} gaps, the longest {gaps['longest_gap']} frames); they were interpolated."
            )
        several = gaps["frames_with_several_faces"]
        if several > 0.05 * num_frames:
            warnings.append(
                f"{self.cfg.video}: a second face is in the picture in {several} of {num_frames} frames. "
                "The main speaker is tracked; for a clean avatar use a clip of one person."
            )
        return {"frames": num_frames, "face_found_fraction": float(det.valid.mean()), **gaps, "warnings": warnings}

    def _detections_tmp(self) -> Path:
        return self.root / MARKER_DIR / "detections.tmp.npz"

    def step_track(self, intrinsics: Intrinsics) -> dict:

        with np.load(self.root / MARKER_DIR / "detections.npz") as d:
            det = LandmarkDetections(d["landmarks_mp3d"], d["valid"], d["num_faces"])
        result = LandmarkFaceModel().fit(det, intrinsics, self.cfg.fps)
        missing = set(TRACKING_ARRAYS) - set(result.arrays)
        if missing:
            raise RuntimeError(f"the tracker did not return the tracking arrays {sorted(missing)}")
        with atomic_dir(self.layout.tracking_dir) as tmp:
            for name in TRACKING_ARRAYS:
                np.save(self.layout.tracking(name, tmp), np.asarray(result.arrays[name]))
        roll = face_roll_deg(np.asarray(result.arrays["landmarks"]))
        warning = sideways_warning(self.cfg.video, roll)
        return {
            "frames": det.num_frames,
            "blendshape_names": list(result.blendshape_names),
            "stats": {**jsonable(result.stats), "median_roll_deg": round(roll, 1)},
            "warnings": [warning] if warning else [],
        }

    def step_masks(self, num_frames: int) -> dict:
        """Masks of every frame and, in the same pass over the frames, the background plate."""

        landmarks = np.load(self.layout.tracking("landmarks"), mmap_mode="r")
        make_mask = MaskMaker()
        plate = BackgroundAccumulator(self.cfg.resolution, self.cfg.resolution)
        pixels_per_value = np.zeros(256, np.int64)  # histogram of the mask bytes over all frames
        with atomic_dir(self.layout.masks_dir) as tmp, ThreadedImageWriter(threads=1) as writer:
            for i, rgb in enumerate(stored_frames(self.root, num_frames, "masks")):
                bits = make_mask(rgb, np.asarray(landmarks[i]))
                writer.write(self.layout.mask(i, tmp), bits)
                plate.add(rgb, bits)
                pixels_per_value += np.bincount(bits.ravel(), minlength=256)
            make_mask.close()
            with atomic_path(self.layout.background) as png:
                cv2.imwrite(str(png), np.ascontiguousarray(plate.result()[:, :, ::-1]))
        values, total = np.arange(256), pixels_per_value.sum()
        area = {
            name: round(float(pixels_per_value[(values >> bit & 1) == 1].sum() / total), 4)
            for name, bit in MASK_BITS.items()
        }
        return {"frames": num_frames, "mean_area": area}

    def step_features(self) -> dict:

        wave, _ = sf.read(str(self.layout.audio), dtype="float32")
        extractor = self.extractor
        feats = extractor(wave)
        save_npy(self.layout.features, feats)
        mean, std = feature_stats(feats, extractor.normalized)
        info = FeatureInfo(
            file=self.layout.features.name,
            extractor=extractor.name,
            rate_hz=extractor.rate_hz,
            dim=extractor.dim,
            window=self.cfg.feature_window,
            mean=[float(x) for x in mean],
            std=[float(x) for x in std],
            speech_model=extractor.learned.path if extractor.learned is not None else "",
        )
        return {"features": info.__dict__, "rows": int(feats.shape[0])}

    def step_body(self, num_frames: int, split: Split) -> dict:

        read_frame = lambda i: read_rgb(self.layout.frame(i))  # noqa: E731
        read_mask = lambda i: read_mask_bits(self.layout.mask(i))  # noqa: E731
        motion, record = track_body(
            read_frame,
            read_mask,
            stored_frames(self.root, num_frames, "body motion"),
            num_frames,
            split.train[1],
            self.cfg.fps,
            BodyMotionConfig(),
        )
        with atomic_path(self.layout.body_motion) as tmp:
            motion.save(tmp)
        return {"frames": num_frames, "stats": record}

    def step_preview(self, num_frames: int, intrinsics: Intrinsics, caption: str) -> dict:

        count = min(num_frames, int(round(self.cfg.preview_seconds * self.cfg.fps)))
        write_preview(self.root, count, self.cfg.fps, intrinsics, self.layout.preview, caption)
        sheet = self.cfg.contact_sheet_frames
        write_contact_sheet(self.root, num_frames, intrinsics, sheet, self.layout.contact_sheet, caption=caption)
        return {"frames": count}

    # ------------------------------------------------------------------ the whole build
    def build(self) -> Manifest:
        cfg, run = self.cfg, self.steps.run
        source = {"sha256": self.source_sha, "audio_sha256": self.audio_sha, "origin_s": self.origin_s}
        layout = self.layout
        audio = run("audio", source, self.step_audio, (f"{MARKER_DIR}/source_audio.wav",))
        crop_rec = run(
            "crop",
            {
                "resolution": cfg.resolution,
                "scale": cfg.crop_scale,
                "face_y": cfg.crop_face_y,
                "samples": cfg.crop_samples,
            },
            self.step_crop,
        )
        crop = Crop(**crop_rec["crop"])
        max_frames = num_frames_for(audio["num_samples"], SAMPLE_RATE, cfg.fps)
        frames = run(
            "frames",
            {"fps": cfg.fps, "jpeg": cfg.jpeg_quality, "min_s": cfg.min_duration_s},
            lambda: self.step_frames(crop, max_frames),
            (layout.frames_dir.name,),
        )
        n = frames["frames"]
        intrinsics = dataset_intrinsics(cfg, crop)
        lm = run(
            "landmarks",
            {"max_missing": cfg.max_missing_face},
            lambda: self.step_landmarks(n),
            (f"{MARKER_DIR}/detections.npz",),
        )
        track = run(
            "track",
            {"intrinsics": intrinsics.__dict__},
            lambda: self.step_track(intrinsics),
            (layout.tracking_dir.name,),
        )
        sync = run("sync", {"av_offset": cfg.av_offset}, lambda: self.step_sync(n), (layout.audio.name,))
        masks = run("masks", {}, lambda: self.step_masks(n), (layout.masks_dir.name, layout.background.name))
        run(
            "preview",
            {"seconds": cfg.preview_seconds, "sheet": cfg.contact_sheet_frames},
            lambda: self.step_preview(n, intrinsics, offset_caption(sync["av_offset"])),
            (layout.preview.name, layout.contact_sheet.name),
        )
        split = Split.of(n, cfg.val_fraction, heard_frames(sync["av_offset"], n, cfg.fps))
        body = run(
            "body",
            {"split": split.train, **dataclasses.asdict(BodyMotionConfig())},
            lambda: self.step_body(n, split),
            (layout.body_motion.name,),
        )
        # last: changing the feature set of a built dataset recomputes only this step
        learned = self.extractor.learned
        speech_model = {} if learned is None else {"speech_model": learned.path, "speech_part": learned.name}
        feats = run(
            "features",
            {"window": cfg.feature_window, "features": cfg.features, **speech_model},
            self.step_features,
            (layout.features.name,),
        )

        manifest = Manifest(
            format_version=FORMAT_VERSION,
            source={
                "path": str(Path(cfg.video).resolve()),
                "sha256": self.source_sha,
                "duration_s": self.info.duration_s,
                "fps": self.info.fps,
                "width": self.info.width,
                "height": self.info.height,
                "has_audio": self.info.has_audio,
                "audio_path": str(Path(cfg.audio).resolve()) if cfg.audio else None,
                "audio_sha256": self.audio_sha,
                "time_origin_s": self.origin_s,
            },
            fps=cfg.fps,
            num_frames=n,
            resolution=cfg.resolution,
            crop=crop,
            intrinsics=intrinsics,
            split=split,
            audio={
                "file": layout.audio.name,
                "sample_rate": SAMPLE_RATE,
                # a sync step recorded before audio.wav was cut to the frames kept the source's length
                "num_samples": sync.get("num_samples", audio["num_samples"]),
            },
            features=FeatureInfo(**feats["features"]),
            blendshape_names=track["blendshape_names"],
            versions=library_versions(),
            stats=self._stats(n, audio, lm, track, masks, body),
            av_offset=sync["av_offset"],
        )
        write_json(layout.manifest, manifest.to_json())
        return manifest

    def _stats(self, n: int, audio: dict, lm: dict, track: dict, masks: dict, body: dict) -> dict:
        records = self.steps.records
        video_s, audio_s = n / self.cfg.fps, audio["num_samples"] / SAMPLE_RATE
        return {
            "tracking": track["stats"],
            "faces": {
                k: lm[k]
                for k in ("face_found_fraction", "missing_frames", "gaps", "longest_gap", "frames_with_several_faces")
            },
            "sync": {
                "video_s": video_s,
                "audio_s": audio_s,
                "time_origin_s": self.origin_s,
                "audio_minus_video_frames": (audio_s - video_s) * self.cfg.fps,
            },
            **speech_motion(self.root, n, self.cfg.fps, track["blendshape_names"]),
            "mask_mean_area": masks["mean_area"],
            "body_motion": body["stats"],
            "steps": {
                name: {k: r[k] for k in ("seconds", "cpu_seconds", "frames_per_s", "frames_per_cpu_s") if k in r}
                for name, r in records.items()
            },
            "warnings": [w for r in records.values() for w in r.get("warnings", [])],
        }


def offset_caption(offset: dict) -> str:
    """What the preview says of the source's A/V offset."""
    if offset["applied"]:
        return f"A/V offset {offset['ms']:+.0f} ms, removed"
    if offset["confident"]:
        return f"A/V offset {offset['ms']:+.0f} ms, kept"
    return "A/V offset: none found"


def speech_motion(root: Path, num_frames: int, fps: float, names: list[str], max_lag: int = 8) -> dict:
    """How the mouth moves with the sound's energy (log energy at each frame's centre): the correlation of
    jawOpen with it, and the lag at which the mouth opening correlates best. The mouth opens slightly before
    the sound, so the best lag is normally 0..2 frames; a much larger one hints that the source is out of sync."""

    layout = DatasetLayout(root)
    wave, _ = sf.read(str(layout.audio), dtype="float32")
    energy = frame_log_energy(wave, fps, num_frames)
    opening = mouth_opening(np.load(layout.tracking("landmarks_mp3d"), mmap_mode="r"))
    by_lag = {lag: lagged_pearson(opening, energy, lag) for lag in range(-max_lag, max_lag + 1)}
    best = max(by_lag, key=lambda k: -np.inf if np.isnan(by_lag[k]) else by_lag[k])
    jaw = None
    if "jawOpen" in names:
        jaw = lagged_pearson(np.load(layout.tracking("blendshapes"))[:, names.index("jawOpen")], energy, 0)
    return {
        "jaw_open_energy_correlation": None if jaw is None or np.isnan(jaw) else round(jaw, 3),
        "lip_gap_energy_correlation": round(by_lag[0], 3),
        "lip_gap_energy_best_lag_frames": int(best),
        "lip_gap_energy_best_correlation": round(by_lag[best], 3),
    }


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    return versions


def run(cfg: PreprocessConfig) -> Manifest:
    """Build (or resume, or refresh) the dataset `cfg.out` from `cfg.video`."""
    _check_config(cfg)
    out = Path(cfg.out)
    fresh = _check_output_dir(out)
    existed = out.exists()
    builder = Builder(cfg)  # probes the input: bad input fails here, before anything is written
    start = time.perf_counter()
    try:
        (out / MARKER_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"--out {out}: cannot create the dataset directory there ({exc.strerror or exc}). "
            "Choose a writable --out path."
        ) from exc
    with build_lock(out):
        return _build(cfg, builder, out, fresh, existed, start)


def build_lock(out: Path):
    """One build of a dataset directory at a time (a second one would sweep the first one's temporaries)."""
    return exclusive(
        out / MARKER_DIR,
        f"{out}: another `avatar preprocess` is building this dataset right now. Wait "
        "for it to finish (then rerun to check it is complete), or choose another --out.",
    )


def _build(cfg: PreprocessConfig, builder: Builder, out: Path, fresh: bool, existed: bool, start: float) -> Manifest:
    DatasetLayout(out).manifest.unlink(missing_ok=True)  # the dataset is incomplete until the last step
    for stale in out.glob(".*.*"):  # temporaries of a run that was killed
        if stale.name != MARKER_DIR:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    (out / MARKER_DIR / "detections.tmp.npz").unlink(missing_ok=True)
    try:
        manifest = builder.build()
    except UserError:
        if fresh:  # bad input found mid-way: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
            if existed:
                out.mkdir()
        raise
    took = time.perf_counter() - start
    st = manifest.stats
    print(
        f"dataset ready: {out} ({manifest.num_frames} frames at {manifest.fps:g} fps, {manifest.resolution} px, "
        f"face found in {st['faces']['face_found_fraction']:.1%} of frames) in {took:.1f} s",
        file=sys.stderr,
    )
    return manifest
