"""`avatar preprocess` end to end on short clips cut from the shared videos: the dataset it writes, audio/frame
sync, resuming after an interrupted step, and every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avatar.audio.io import SAMPLE_RATE
from avatar.contracts.atomic import sha256_of
from avatar.contracts.dataset import FORMAT_VERSION, MASK_BITS, TRACKING_ARRAYS, Dataset
from avatar.errors import UserError
from avatar.preprocess.build import Builder, run
from avatar.preprocess.config import PreprocessConfig
from tests.conftest import cut_clip

GERMAN = "mimictalk_german_anchor_20s.mp4"
OBAMA = "edtalk_obama_20s.mp4"
FLASH_S = 2.2  # presentation time of the white flash in the picture and of the beep in the sound
VIDEO_START_S = 0.52  # the picture of the sync clip starts this late; its sound starts at 0


def _config(video: Path, out: Path, **kw) -> PreprocessConfig:
    small = dict(resolution=128, crop_samples=12, preview_seconds=2.0, contact_sheet_frames=7)
    return PreprocessConfig(video=video, out=out, **{**small, **kw})


@pytest.fixture(scope="module")
def sync_clip(shared_data, clip_dir) -> Path:
    """3.5 s of the anchor whose picture starts 0.52 s after its sound, with a white flash in the corner and a
    beep at the same presentation time (2.2 s), and the face blacked out for 0.12 s (a short gap)."""
    video = (
        f"[0:v]trim=start={VIDEO_START_S},"
        f"drawbox=x=0:y=0:w=48:h=48:color=white:t=fill:enable='between(t,{FLASH_S},{FLASH_S + 0.039})',"
        "drawbox=x=110:y=70:w=300:h=380:color=black:t=fill:enable='between(t,1.0,1.119)'[v]"
    )
    audio = (
        f"[0:a]volume=0.05[a0];sine=f=1000:d=0.08:sample_rate=44100,adelay={int(FLASH_S * 1000)}|"
        f"{int(FLASH_S * 1000)},volume=4[b];[a0][b]amix=inputs=2:duration=first:normalize=0[a]"
    )
    return cut_clip(
        shared_data / GERMAN,
        clip_dir / "sync.mp4",
        3.0,
        3.5,
        ["-filter_complex", f"{video};{audio}", "-map", "[v]", "-map", "[a]"],
    )


@pytest.fixture(scope="module")
def dataset(sync_clip, tmp_path_factory) -> Dataset:
    out = tmp_path_factory.mktemp("ds") / "sync"
    run(_config(sync_clip, out, min_duration_s=2.0))  # a short clip keeps the test fast
    return Dataset(out)


def test_manifest_describes_the_dataset(dataset, sync_clip):
    m = dataset.manifest
    assert m.format_version == FORMAT_VERSION and m.resolution == 128 and m.fps == 25.0
    assert m.source["sha256"] == sha256_of(sync_clip) and m.source["width"] == 512
    assert m.source["time_origin_s"] == pytest.approx(VIDEO_START_S)
    assert m.num_frames == 75  # 3.0 s of picture at 25 fps
    assert m.split.train == (0, 67) and m.split.val == (67, 75)
    assert m.intrinsics.width == m.intrinsics.height == 128 and m.intrinsics.cx == 64
    assert m.crop.size == 512 and m.crop.x0 == 0 and m.crop.y0 == 0  # already a head-and-shoulders crop
    assert m.audio == {"file": "audio.wav", "sample_rate": SAMPLE_RATE, "num_samples": m.audio["num_samples"]}
    assert set(m.blendshape_names) >= {"jawOpen", "mouthClose", "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp"}
    classes = 40 + 11  # phones (with silence) and visemes beside the 82 mel columns
    assert m.features.dim == 82 + classes and len(m.features.mean) == len(m.features.std) == 82 + classes
    assert m.features.mean[82:] == [0.0] * classes and m.features.std[82:] == [1.0] * classes  # left as they are
    assert {"numpy", "av", "mediapipe", "librosa", "python"} <= set(m.versions)
    steps = m.stats["steps"]
    assert set(steps) == {
        "audio",
        "crop",
        "frames",
        "landmarks",
        "track",
        "sync",
        "masks",
        "features",
        "preview",
        "body",
    }
    # 3 s of picture: too short for an A/V offset estimate, so none is claimed and the sound is kept
    assert m.av_offset == {
        "ms": 0.0,
        "confidence": 0.0,
        "peak_correlation": 0.0,
        "correlation_at_zero": 0.0,
        "applied": False,
        "given": False,
        "confident": False,
    }
    assert steps["landmarks"]["frames_per_s"] > 0
    assert m.stats["tracking"]["reprojection_error_px_at_512"] < 1.0
    assert np.isfinite([m.stats["lip_gap_energy_best_lag_frames"], m.stats["jaw_open_energy_correlation"]]).all()
    json.dumps(m.to_json())  # plain JSON all the way down


def test_files_and_arrays_match_the_manifest(dataset):
    n, root = dataset.num_frames, dataset.root
    assert len(list((root / "frames").glob("*.jpg"))) == n and len(list((root / "masks").glob("*.png"))) == n
    assert dataset.frame(n - 1).shape == (128, 128, 3) and dataset.background.shape == (128, 128, 3)
    bits = dataset.mask_bits(n // 2)
    face, head, person = (dataset.mask(n // 2, k) for k in ("face", "head", "person"))
    assert bits.dtype == np.uint8 and bits.max() < 1 << len(MASK_BITS)
    assert face.sum() > 0 and (face & ~head).sum() <= 0.02 * face.sum() and (head & ~person).sum() <= 0.05 * head.sum()
    for name, (shape, _) in TRACKING_ARRAYS.items():
        array = dataset.tracking(name)
        if shape.startswith("[N"):
            assert array.shape[0] == n, name
    assert dataset.tracking("landmarks").shape == (n, 478, 2)
    windows = dataset.audio_windows()
    assert windows.shape == (n, 16, 133) and np.isfinite(windows).all()
    assert (root / "preview.mp4").stat().st_size > 0 and (root / "contact_sheet.png").stat().st_size > 0
    body = dataset.body_motion()
    k, g = body.basis.shape[0], body.basis.shape[-1]
    assert body.codes.shape == (n, k) and body.mean.shape == (2, g, g) and body.basis.shape == (k, 2, g, g)
    assert np.isfinite(body.codes).all() and np.abs(body.codes[: dataset.indices("train")[-1] + 1].mean(0)).max() < 1e-3
    assert 0.5 < dataset.manifest.stats["body_motion"]["explained_variance"] <= 1.0


def test_short_face_gap_is_interpolated_and_reported(dataset):
    valid = np.asarray(dataset.tracking("valid"))
    missing = np.flatnonzero(~valid)
    assert 2 <= len(missing) <= 4 and np.ptp(missing) == len(missing) - 1  # one gap around 0.5 s of dataset time
    assert np.isfinite(dataset.tracking("landmarks")).all()
    assert dataset.manifest.stats["faces"]["gaps"] == 1
    assert any("interpolated" in w for w in dataset.manifest.stats["warnings"])


def test_audio_and_frames_stay_in_sync(dataset):
    m = dataset.manifest
    wave, sr = sf.read(str(dataset.root / "audio.wav"), dtype="float32")
    assert sr == SAMPLE_RATE and wave.size == m.audio["num_samples"]
    assert abs(m.stats["sync"]["audio_minus_video_frames"]) < 1.5
    corner = np.array([dataset.frame(i)[:6, :6].mean() for i in range(m.num_frames)])
    flash_frame = int(np.argmax(corner))
    energy = np.convolve(wave**2, np.ones(80) / 80, "same")
    beep_s = np.flatnonzero(energy > 0.5 * energy.max())[0] / sr
    expected_s = FLASH_S - VIDEO_START_S
    assert abs(beep_s - expected_s) < 0.5 / m.fps
    assert abs((flash_frame + 0.5) / m.fps - expected_s) <= 1.0 / m.fps
    # the feature window of the flash frame sees the beep's energy
    rows = dataset.audio_features[:, 80]  # the log energy
    centre_row = int(round((flash_frame + 0.5) / m.fps * m.features.rate_hz))
    assert rows[centre_row - 2 : centre_row + 6].max() > np.percentile(rows, 99)


def test_resume_after_an_interrupted_step(dataset, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    shutil.copytree(dataset.root, out)
    (out / ".steps" / "masks.json").unlink()  # as if the masks step had never finished
    cfg = _config(Path(dataset.manifest.source["path"]), out, min_duration_s=2.0)

    def interrupted(self, num_frames):
        (self.root / "masks").mkdir(exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(Builder, "step_masks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert not (out / "manifest.json").exists()  # never looks complete
    with pytest.raises(UserError, match="not a complete dataset"):
        Dataset(out)
    frames_marker = (out / ".steps" / "frames.json").stat().st_mtime_ns
    monkeypatch.undo()
    manifest = run(cfg)
    assert (out / ".steps" / "frames.json").stat().st_mtime_ns == frames_marker  # skipped, not redone
    assert manifest.num_frames == dataset.num_frames
    assert Dataset(out).mask_bits(0).shape == (128, 128)


def test_a_dataset_without_the_body_motion_gets_it_from_a_rerun(dataset, tmp_path):
    """A dataset made before the body's motion was tracked: reading it says what to do, and the rerun it
    advises tracks the body and leaves the other steps as they were."""
    out = tmp_path / "older"
    shutil.copytree(dataset.root, out)
    (out / "body_motion.npz").unlink()
    (out / ".steps" / "body.json").unlink()
    with pytest.raises(UserError, match="no body_motion.npz.*avatar preprocess"):
        Dataset(out).body_motion()
    markers = {p.name: p.stat().st_mtime_ns for p in (out / ".steps").glob("*.json")}
    run(_config(Path(dataset.manifest.source["path"]), out, min_duration_s=2.0))
    changed = {
        p.name
        for p in (out / ".steps").glob("*.json")
        if p.name not in markers or p.stat().st_mtime_ns != markers[p.name]
    }
    assert changed == {"body.json"}
    assert np.array_equal(Dataset(out).body_motion().codes, dataset.body_motion().codes)


def test_another_feature_set_recomputes_only_the_features(dataset, tmp_path):
    out = tmp_path / "refeatured"
    shutil.copytree(dataset.root, out)
    markers = {p.name: p.stat().st_mtime_ns for p in (out / ".steps").glob("*.json")}
    manifest = run(_config(Path(dataset.manifest.source["path"]), out, min_duration_s=2.0, features="mel"))
    changed = {p.name for p in (out / ".steps").glob("*.json") if p.stat().st_mtime_ns != markers[p.name]}
    assert changed == {"features.json"}
    assert manifest.features.extractor == "mel80-energy-pitch" and manifest.features.dim == 82
    assert np.load(out / "audio_features.npy").shape == (dataset.audio_features.shape[0], 82)


def test_variable_frame_rate_landscape_clip_with_separate_silent_audio(shared_data, clip_dir, tmp_path, capsys):
    clip = cut_clip(
        shared_data / GERMAN,
        clip_dir / "vfr_640x360_noaudio.mp4",
        2.0,
        3.0,
        ["-an", "-vf", "select='not(eq(mod(n\\,3)\\,2))',scale=360:360,pad=640:360:200:0", "-fps_mode", "vfr"],
    )
    with pytest.raises(UserError, match="has no audio track.*--audio"):
        run(_config(clip, tmp_path / "no_audio"))
    assert not (tmp_path / "no_audio").exists()

    silence = tmp_path / "silence.wav"
    sf.write(str(silence), np.zeros(3 * 16000, np.float32), 16000)
    manifest = run(_config(clip, tmp_path / "vfr", audio=silence, min_duration_s=2.0))
    assert manifest.num_frames == 74 and manifest.source["width"] == 640 and manifest.source["height"] == 360
    crop = manifest.crop
    assert crop.size <= 360 and 0 <= crop.x0 and crop.x0 + crop.size <= 640 and crop.y0 == 0
    assert 200 - 40 <= crop.x0 <= 200 + 40  # centred on the face in the letterboxed middle
    assert manifest.stats["faces"]["face_found_fraction"] == 1.0
    assert any("silent" in w for w in manifest.stats["warnings"])
    assert "silent" in capsys.readouterr().err


def test_second_person_warns_and_keeps_the_main_speaker(shared_data, clip_dir, tmp_path):
    clip = cut_clip(
        shared_data / GERMAN,
        clip_dir / "two_people.mp4",
        0.0,
        2.0,
        [
            "-i",
            str(shared_data / OBAMA),
            "-filter_complex",
            "[1:v]scale=320:320,pad=320:512:0:96[b];[0:v][b]hstack=inputs=2[v]",
            "-map",
            "[v]",
            "-map",
            "0:a",
            "-t",
            "2",
        ],
    )
    manifest = run(_config(clip, tmp_path / "two", min_duration_s=1.5))
    assert any("second face" in w for w in manifest.stats["warnings"])
    assert manifest.crop.x0 + manifest.crop.size <= 512 + 16  # the crop holds the bigger, left person


@pytest.mark.parametrize("kind", ["missing", "text", "short", "truncated", "no_face", "face_often_missing"])
def test_bad_input_is_a_clear_error_and_leaves_nothing(kind, shared_data, clip_dir, tmp_path):
    import subprocess

    import imageio_ffmpeg

    src = shared_data / GERMAN
    short_clips: dict = {}
    if kind == "missing":
        video, expect = tmp_path / "nothing_here.mp4", "nothing_here.mp4: no such file"
    elif kind == "text":
        video, expect = tmp_path / "notes.mov", "notes.mov: cannot be opened as a video"
        video.write_text("not a video\n" * 200)
    elif kind == "short":
        video, expect = cut_clip(src, clip_dir / "short.mp4", 0.0, 3.0), r"short.mp4: only 3.0 s long.*at least 5"
    elif kind == "truncated":
        whole = cut_clip(src, clip_dir / "whole.mp4", 0.0, 8.0, ["-movflags", "+faststart"])
        video, expect = tmp_path / "truncated.mp4", "truncated.mp4: .*truncated or corrupt"
        video.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    elif kind == "no_face":
        video, expect = tmp_path / "no_face.mp4", "no_face.mp4: no face found"
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-y",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=256x256:rate=25:duration=6",
                "-f",
                "lavfi",
                "-i",
                "sine=f=300:duration=6",
                "-shortest",
                str(video),
            ],
            check=True,
        )
    else:  # the face is hidden for a fifth of a short clip: too much to interpolate
        video, expect = (
            cut_clip(
                src,
                clip_dir / "face_hidden.mp4",
                0.0,
                3.0,
                ["-vf", "drawbox=x=110:y=70:w=300:h=380:color=black:t=fill:enable='between(t,1,1.6)'"],
            ),
            r"face_hidden.mp4: no face found in 2\d% of the frames",
        )
        short_clips["min_duration_s"] = 2.0
    out = tmp_path / "dataset"
    with pytest.raises(UserError, match=expect):
        run(_config(video, out, **short_clips))
    assert not out.exists()
    if kind == "no_face":  # failing after the audio step, in an empty directory the user made: it stays empty
        out.mkdir()
        with pytest.raises(UserError, match=expect):
            run(_config(video, out))
        assert out.is_dir() and not any(out.iterdir())


def test_audio_file_too_short(shared_data, clip_dir, tmp_path):
    clip = cut_clip(shared_data / GERMAN, clip_dir / "german_6s_noaudio.mp4", 0.0, 6.0, ["-an"])
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(3 * 16000, np.float32), 16000)
    with pytest.raises(UserError, match="short.wav: only 3.0 s of audio"):
        run(_config(clip, tmp_path / "ds", audio=short))
    assert not (tmp_path / "ds").exists()


def test_cli_prints_the_error_without_traceback(tmp_path, capsys):
    from avatar.cli import main

    assert main(["preprocess", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.mp4: no such file" in err and "Traceback" not in err


def test_intrinsics_default_fov_and_given_focal_follow_the_crop():
    from avatar.contracts.dataset import Crop
    from avatar.preprocess.build import dataset_intrinsics

    crop = Crop(x0=600.0, y0=100.0, size=800.0, source_width=1920, source_height=1080, resolution=512)
    default = dataset_intrinsics(PreprocessConfig(video=Path("v.mp4"), fov_deg=20.0), crop)
    assert default.fy == pytest.approx(256 / np.tan(np.deg2rad(10))) and (default.cx, default.cy) == (256, 256)
    given = dataset_intrinsics(PreprocessConfig(video=Path("v.mp4"), focal_px=1600.0), crop)
    assert given.fx == pytest.approx(1600 * 512 / 800)
    # the source image centre (960, 540) lands where the crop maps it
    assert (given.cx, given.cy) == pytest.approx(((960 - 600) * 0.64, (540 - 100) * 0.64))


def test_a_longer_audio_file_is_cut_to_the_part_the_picture_covers(shared_data, clip_dir, tmp_path, capsys):
    """--audio with 2 s more sound than picture: the warning says the dataset keeps the part both cover, and
    audio.wav, the manifest and the feature rows hold just that (the sound from time 0 to the last frame's end)."""
    from avatar.audio.io import load_audio
    from avatar.preprocess.av_offset import shift_audio

    clip = cut_clip(shared_data / GERMAN, clip_dir / "german_2_5s_noaudio.mp4", 4.0, 2.5, ["-an"])
    longer = tmp_path / "longer.wav"
    sf.write(str(longer), load_audio(shared_data / GERMAN)[4 * SAMPLE_RATE : int(8.5 * SAMPLE_RATE)], SAMPLE_RATE)
    small = dict(resolution=64, crop_samples=4, preview_seconds=0.5, contact_sheet_frames=2, min_duration_s=2.0)
    m = run(_config(clip, tmp_path / "ds", audio=longer, **small))
    assert "4.5 s of audio for 2.5 s of video; the dataset keeps the part both cover" in capsys.readouterr().err
    wave = load_audio(tmp_path / "ds" / "audio.wav")
    frames_s = m.num_frames / m.fps
    assert abs(frames_s - 2.5) <= 1 / m.fps and len(wave) == m.audio["num_samples"] == round(frames_s * SAMPLE_RATE)
    rows = np.load(tmp_path / "ds" / "audio_features.npy").shape[0]
    assert abs(rows - frames_s * m.features.rate_hz) <= 1
    source = load_audio(longer)
    if m.av_offset["applied"]:
        source = shift_audio(source, m.av_offset["ms"], SAMPLE_RATE)
    np.testing.assert_allclose(wave, source[: len(wave)], atol=1e-4)  # the start of the sound, not its end
