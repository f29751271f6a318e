"""Decoding, resampling by timestamps, probing bad files, and the fixed crop (no face tracking here)."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.contracts.dataset import Crop
from avatar.contracts.video import frames_at_times, probe_video, resampled_frames
from avatar.errors import UserError
from avatar.preprocess.crop import apply_crop, choose_crop
from tests.conftest import cut_clip

GERMAN = "mimictalk_german_anchor_20s.mp4"
MACRON = "dfrf_macron_address_50s.mp4"


def _decode_all(path) -> tuple[list[float], list[np.ndarray]]:
    import av

    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return [float(f.pts * f.time_base) for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


@pytest.fixture(scope="module")
def vfr_clip(shared_data, clip_dir):
    """6 s of the 25 fps anchor with every third frame dropped (timestamps kept: variable frame rate),
    letterboxed into 640x360 as a landscape video would be."""
    return cut_clip(
        shared_data / GERMAN,
        clip_dir / "vfr_640x360.mp4",
        2.0,
        6.0,
        ["-vf", "select='not(eq(mod(n\\,3)\\,2))',scale=360:360,pad=640:360:200:0", "-fps_mode", "vfr"],
    )


def test_resampling_equal_rate_keeps_every_frame(shared_data, clip_dir):
    clip = cut_clip(shared_data / GERMAN, clip_dir / "german_2s.mp4", 1.0, 2.0, ["-an"])
    _, source = _decode_all(clip)
    out = list(resampled_frames(clip, 25.0, probe_video(clip).start_s))
    assert len(out) == len(source) == 50
    assert all(np.array_equal(a, b) for a, b in zip(out, source))


def test_resampling_variable_frame_rate_follows_timestamps(vfr_clip):
    times, source = _decode_all(vfr_clip)
    assert len(source) == 100  # two of every three frames of 6 s at 25 fps
    out = list(resampled_frames(vfr_clip, 25.0, 0.0))
    assert len(out) == 149  # up to the end of the last kept frame (the 150th source frame was dropped)
    for i, frame in enumerate(out):
        shown = max(j for j, t in enumerate(times) if t <= (i + 0.5) / 25)
        assert np.array_equal(frame, source[shown]), i


def test_resampling_30_to_25_fps(shared_data, clip_dir):
    clip = cut_clip(shared_data / MACRON, clip_dir / "macron_2s.mp4", 3.0, 2.0, ["-an"])
    info = probe_video(clip)
    assert info.fps == pytest.approx(30.0)
    out = list(resampled_frames(clip, 25.0, info.start_s, max_frames=1000))
    assert len(out) == 50
    assert len(list(resampled_frames(clip, 25.0, info.start_s, max_frames=7))) == 7


def test_seeking_scan_matches_sequential_decode(vfr_clip):
    times, source = _decode_all(vfr_clip)
    targets = [0.5, 0.53, 2.02, 4.9]
    for seek_gap_s in (5.0, 0.1):  # decoding forward, and seeking between every target
        got = list(frames_at_times(vfr_clip, targets, seek_gap_s=seek_gap_s))
        assert [t for t, _ in got] == targets
        for target, frame in got:
            shown = max(j for j, t in enumerate(times) if t <= target)
            assert np.array_equal(frame, source[shown]), (seek_gap_s, target)


def test_probe_reports_bad_files(tmp_path, shared_data):
    with pytest.raises(UserError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    with pytest.raises(UserError, match="notes.mp4: cannot be opened as a video"):
        probe_video(text)
    with pytest.raises(UserError, match="has no video stream"):
        probe_video(shared_data / "sadtalker_hdtf_radio31_8s.wav")


def test_corrupt_stream_is_a_user_error(tmp_path, shared_data, clip_dir):
    clip = cut_clip(
        shared_data / GERMAN, clip_dir / "german_3s_corrupt_src.mp4", 0.0, 3.0, ["-an", "-movflags", "+faststart"]
    )
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(0)
    middle = len(data) // 3
    data[middle : middle + 20000] = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt.mp4: the video stream is corrupt"):
        list(resampled_frames(bad, 25.0, 0.0))


def test_crop_is_square_inside_the_image_and_holds_the_faces():
    rng = np.random.default_rng(1)
    base = rng.uniform(-60, 60, (478, 2))
    base[10], base[152] = [0, -80], [0, 80]  # forehead and chin: face height 160
    faces = [base + [900 + dx, 400] for dx in np.linspace(-40, 40, 9)]
    crop = choose_crop(faces, 1920, 1080, 512, scale=2.2, face_y=0.48)
    assert crop.size == pytest.approx(352, abs=1)
    assert 0 <= crop.x0 and crop.x0 + crop.size <= 1920 and 0 <= crop.y0 and crop.y0 + crop.size <= 1080
    uv = crop.to_dataset(np.concatenate(faces))
    assert uv.min() >= 0 and uv.max() <= 512
    # a face at the top edge: the crop is pushed inside the image, not centred on the face
    top = choose_crop([base + [300, 70]], 640, 360, 256, scale=2.2, face_y=0.48)
    assert top.y0 == 0 and top.size <= 360


def test_apply_crop_maps_source_pixels_where_the_crop_says():
    src = np.zeros((360, 640, 3), np.uint8)
    src[100:110, 500:510] = 255  # a white square centred on source (505, 105)
    crop = Crop(x0=400.0, y0=-20.0, size=300.0, source_width=640, source_height=360, resolution=150)
    out = apply_crop(src, crop)
    assert out.shape == (150, 150, 3)
    ys, xs = np.nonzero(out[:, :, 0] > 128)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    assert np.allclose(centre, crop.to_dataset([505, 105]), atol=0.6)
    assert np.array_equal(crop.to_source(crop.to_dataset([505.0, 105.0])), [505.0, 105.0])


def test_phone_rotation_is_applied_like_a_player(vfr_clip, clip_dir):
    import subprocess

    import imageio_ffmpeg

    rotated = clip_dir / "rotated.mp4"  # same stream, with a 90-degree display rotation in the container
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-display_rotation",
            "90",
            "-i",
            str(vfr_clip),
            "-c",
            "copy",
            str(rotated),
        ],
        check=True,
    )
    info = probe_video(rotated)
    assert (info.width, info.height) == (360, 640)
    _, source = _decode_all(vfr_clip)
    first = next(resampled_frames(rotated, 25.0, 0.0))
    assert np.array_equal(first, np.rot90(source[0]))  # counter-clockwise, as ffmpeg's autorotate shows it
    assert next(frames_at_times(rotated, [1.0]))[1].shape == (640, 360, 3)
