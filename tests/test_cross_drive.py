"""`avatar eval RUN --drive DATASET / --drive-audio FILE`: the avatar driven by audio it was not trained on,
on two short real datasets (Macron trains, the German anchor drives), and the measures on known series; and lip
sync read off the picture of `avatar render` driven by another person's speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar.audio.features import frame_log_energy
from avatar.audio.io import SAMPLE_RATE, load_audio, num_frames_for
from avatar.contracts.dataset import Dataset
from avatar.errors import UserError
from avatar.eval.cross_drive import (
    EDGE_FRAMES,
    PAUSE_S,
    Rendered,
    closed_threshold,
    driver_in_sync,
    lagged_correlation,
    pauses,
    quiet_frames,
    rendered_openings,
    score,
)
from avatar.eval.landmarks import FaceLandmarker
from avatar.metrics.lip_sync import motion_ratio, pearson
from avatar.model.gaussians import HeadConfig
from avatar.model.mouth import MouthConfig
from avatar.model.talking_head import TalkingHead
from avatar.render.config import RenderConfig
from avatar.render.video import run as render
from tests.conftest import cut_clip
from tests.export_fixtures import probe, write_wav
from tests.train_fixtures import tiny_config, tiny_dataset  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lagged_correlation_finds_the_shift():
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.standard_normal(300), np.ones(5) / 5, mode="same")
    late = np.roll(truth, 2)  # the avatar moves 2 frames after the person
    lag0, best, lag = lagged_correlation(late, truth)
    assert lag == 2 and best == pytest.approx(1.0, abs=0.02) and lag0 < best


def test_pauses_and_closed_mouth_measures():
    loud = np.full(60, -2.0)
    loud[10:20] = -12.0  # a 400 ms pause at 25 fps
    loud[40:42] = -12.0  # too short to count
    quiet = quiet_frames(loud)
    assert quiet[10:20].all() and not quiet[:10].any()
    assert pauses(quiet, 5) == [(10, 20)]
    own = np.linspace(0.0, 1.0, 101)
    closed = closed_threshold(own)
    assert closed == pytest.approx(0.1 + 0.25 * 0.8)
    opening = np.full(60, 0.6)
    opening[12:18] = 0.05  # closed inside the pause except its first and last 2 frames
    m = score(Rendered(opening, 1.0), own, loudness=loud, vowels=(np.arange(60) % 3 == 0) & ~quiet)
    assert m["pauses"] == 1 and m["pauses_closed"] == 1.0 and m["vowels_open"] == 1.0
    opening[15] = 0.5
    assert score(Rendered(opening, 1.0), own, loudness=loud)["pauses_closed"] == 0.0


@pytest.fixture(scope="module")
def avatar_and_driver(tiny_dataset, shared_data, clip_dir, tmp_path_factory):
    """A tiny Macron avatar and a 4 s German-anchor dataset to drive it."""
    from avatar.preprocess.build import run as preprocess
    from avatar.preprocess.config import PreprocessConfig
    from avatar.train.runner import run as train

    root = tmp_path_factory.mktemp("cross_drive")
    train(tiny_config(tiny_dataset.root, root / "run", audio_steps=40, resolution=96, canonical_steps=30))
    clip = cut_clip(shared_data / "mimictalk_german_anchor_20s.mp4", clip_dir / "german_4s.mp4", 2.0, 4.0)
    preprocess(
        PreprocessConfig(
            video=clip,
            out=root / "german",
            resolution=128,
            min_duration_s=2.0,
            crop_samples=8,
            preview_seconds=1.0,
            contact_sheet_frames=4,
        )
    )
    return root / "run", root / "german"


def test_eval_driven_by_another_persons_dataset(avatar_and_driver, tiny_dataset, tmp_path):
    from avatar.eval.config import EvalConfig
    from avatar.eval.evaluate import run as evaluate

    run_dir, german = avatar_and_driver
    result = evaluate(EvalConfig(run=run_dir, drive=german, max_frames=40, batch_size=8, out=tmp_path))
    assert (tmp_path / "metrics.json").is_file() and result["drive"] == str(german) and result["pose"] == "track"
    import cv2

    strip = cv2.imread(str(tmp_path / "mouth_strip.png"))
    assert strip.shape == (2 * 64, 25 * 64, 3)  # 40 frames: two rows of mouth crops
    methods = result["methods"]
    assert set(methods) == {"avatar", "static_head", "driver_real", "own_voice"}
    avatar = methods["avatar"]
    assert avatar["frames"] == 40 and avatar["face_detected"] > 0.9
    assert all(np.isfinite(m["motion_ratio"]) and m["frames"] == 40 for m in (avatar, methods["static_head"]))
    # the reference row scores the driver's own tracked mouth (in time with its sound) against the avatar's
    # person's, as the avatar's is
    driver = Dataset(german)
    in_sync = driver_in_sync(driver, load_audio(driver.layout.audio))[0][:40]
    own = TalkingHead.load(run_dir).driving.openings
    assert methods["driver_real"]["motion_ratio"] == pytest.approx(motion_ratio(in_sync, own))
    assert methods["own_voice"]["frames"] == len(tiny_dataset.indices("val"))  # on its own held-out voice


def test_a_drivers_frames_left_silent_by_its_offset_are_not_scored(avatar_and_driver, tmp_path):
    """A driver whose preprocessing removed an offset holds silence where its sound was cut away: those frames
    (3 at the end for +120 ms, the first 3 for -120 ms) are in no row, and the real driver's row scores its
    tracked mouth on the others."""
    import json
    import shutil

    from avatar.eval.cross_drive import cross_driven

    run_dir, german = avatar_and_driver
    head = TalkingHead.load(run_dir)
    openings = Dataset(german).mouth_openings()
    n = len(openings)
    for ms, heard in ((120.0, slice(0, n - 3)), (-120.0, slice(3, n))):
        moved = tmp_path / f"german_{ms:+.0f}"
        shutil.copytree(german, moved)
        manifest = json.loads((moved / "manifest.json").read_text())
        manifest["av_offset"] = {**manifest["av_offset"], "ms": ms, "applied": True}
        (moved / "manifest.json").write_text(json.dumps(manifest))
        methods = cross_driven(head, run_dir, moved, None, None, 16, None, baselines=False)["methods"]
        assert methods["avatar"]["frames"] == n - 3
        real = methods["driver_real"]
        assert real["corr_lag0"] == pytest.approx(1.0)
        assert real["motion_ratio"] == pytest.approx(motion_ratio(openings[heard], head.driving.openings))


def test_eval_driven_by_audio_alone(avatar_and_driver, shared_data, tmp_path):
    from avatar.audio.io import SAMPLE_RATE, load_audio
    from avatar.eval.config import EvalConfig
    from avatar.eval.evaluate import run as evaluate

    run_dir, _ = avatar_and_driver
    tts = load_audio(shared_data / "espeak_en_us_female_12s.wav")[: 3 * SAMPLE_RATE]
    wav = write_wav(tmp_path / "tts.wav", tts, SAMPLE_RATE)
    result = evaluate(EvalConfig(run=run_dir, drive_audio=wav, out=tmp_path / "tts", baselines=False))
    m = result["methods"]["avatar"]
    assert m["frames"] == 75 and m["vowel_frames"] > 0 and np.isfinite(m["loudness_corr"])
    assert 0 <= m["vowels_open"] <= 1 and "pauses_closed" in m and m["motion_ratio"] > 0

    # the static head's mouth never moves: what its detected opening does is the head motion's doing
    track, still = (
        evaluate(EvalConfig(run=run_dir, drive_audio=wav, out=tmp_path / pose, pose=pose, max_frames=50))
        for pose in ("track", "still")
    )
    assert still["pose"] == "still" and track["pose"] == "track"
    print(
        "static head motion, track / still:",
        track["methods"]["static_head"]["motion_ratio"],
        still["methods"]["static_head"]["motion_ratio"],
    )
    assert still["methods"]["static_head"]["motion_ratio"] < track["methods"]["static_head"]["motion_ratio"]

    silent = write_wav(tmp_path / "silence.wav", np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    quiet = evaluate(EvalConfig(run=run_dir, drive_audio=silent, out=tmp_path / "silent"))["methods"]["avatar"]
    assert quiet["vowel_frames"] == 0 and quiet["silent_frames"] == 50 and quiet["motion_ratio"] < 0.2

    with pytest.raises(UserError, match="no such file"):
        evaluate(EvalConfig(run=run_dir, drive_audio=tmp_path / "missing.wav"))
    short = write_wav(tmp_path / "short.wav", tts[: SAMPLE_RATE // 20], SAMPLE_RATE)
    with pytest.raises(UserError, match="shorter than 0.1 s"):
        evaluate(EvalConfig(run=run_dir, drive_audio=short))
    with pytest.raises(UserError, match="one of them"):
        evaluate(EvalConfig(run=run_dir, drive_audio=wav, drive=tmp_path))


def test_an_avatar_without_recorded_openings_takes_them_from_its_dataset(avatar_and_driver, tiny_dataset):
    """Avatars from before the 3D measure recorded 2D openings under another key: not read; the dataset's are."""
    from avatar.eval.cross_drive import person_openings
    from avatar.model.driving import DrivingData
    from avatar.model.talking_head import TalkingHead

    run_dir, _ = avatar_and_driver
    head = TalkingHead.load(run_dir)
    recorded = person_openings(head, run_dir, None)
    assert np.array_equal(recorded, tiny_dataset.mouth_openings(tiny_dataset.indices("train")).astype(np.float32))
    older = head.driving.to_dict()
    older["openings"] = older.pop("mouth_openings")
    head.driving = DrivingData.from_dict(older)
    assert head.driving.openings is None
    assert np.allclose(person_openings(head, run_dir, tiny_dataset), recorded)
    with pytest.raises(UserError, match="does not record its person's mouth openings"):
        person_openings(head, run_dir, None)


def test_the_drivers_own_av_offset_is_taken_out_of_its_mouth():
    """Lag 0 means in time with the driving sound: a driver whose sound was kept 80 ms (2 frames) late has
    its lips compared two frames later; one whose offset was removed, or none was found, as they are."""
    from types import SimpleNamespace

    openings = np.sin(np.arange(50) / 3.0)
    record = {"ms": 80.0, "confidence": 9.0, "peak_correlation": 0.4, "correlation_at_zero": 0.1, "given": False}

    def driver(av_offset):
        return SimpleNamespace(mouth_openings=lambda: openings, fps=25.0, manifest=SimpleNamespace(av_offset=av_offset))

    moved, ms = driver_in_sync(driver({**record, "applied": False, "confident": True}), np.zeros(16000))
    assert ms == 80.0 and np.allclose(moved[2:], openings[:-2])
    for kept in ({**record, "applied": True, "confident": True}, {**record, "applied": False, "confident": False}):
        assert driver_in_sync(driver(kept), np.zeros(16000))[1] == 0.0
    same, ms = driver_in_sync(driver(None), np.zeros(16000))  # made before the estimate: 2 s, too short to tell
    assert ms == 0.0 and np.array_equal(same, openings)


@pytest.fixture(scope="module")
def lip_sync_avatar(tiny_dataset, tmp_path_factory) -> Path:
    """A Macron avatar just big enough for its mouth to show in the picture: at 96 px with about 1200 Gaussians
    a closed mouth reads closed on the rendered frames and an open one open (with the few hundred Gaussians of
    `avatar_and_driver`, the opening detected on its frames does not follow its expression at all)."""
    from avatar.train.runner import run as train

    out = tmp_path_factory.mktemp("lip_sync") / "run"
    train(
        tiny_config(
            tiny_dataset.root,
            out,
            audio_steps=40,
            resolution=96,
            canonical_steps=20,
            lpips_start=10**6,
            head=HeadConfig(num_face=800, num_shell=200, max_gaussians=1200),
            mouth=MouthConfig(num_gaussians=80),
        )
    )
    return out


def syllable_shuffled(wave: np.ndarray, seed: int = 0, chunk_s: float = 0.2) -> np.ndarray:
    """The same samples in chunks of about a syllable put in a seeded random order: the same sounds and loudness
    distribution at other moments."""
    chunk = int(chunk_s * SAMPLE_RATE)
    pieces = [wave[i : i + chunk] for i in range(0, len(wave), chunk)]
    return np.concatenate([pieces[i] for i in np.random.default_rng(seed).permutation(len(pieces))])


def test_real_avatar_lip_syncs_another_persons_speech(lip_sync_avatar, shared_data, tmp_path):
    """`avatar render` of the Macron avatar driven by 6 s of another speaker (English, a 640 ms pause at 1.4 s),
    its mouth opening detected on the video's frames: it follows the speaker's loudness, which the same audio
    shuffled in syllable-sized chunks does not give, and it closes in the pause (over most of the pause, past
    the frames the mouth may take to close and reopen, the opening is in the person's closed-mouth range,
    where the shuffled copy's mouth stays open). The video lasts as long as its sound."""
    run_dir = lip_sync_avatar
    head = TalkingHead.load(run_dir)
    wave = load_audio(shared_data / "musetalk_eng_speech_60s.wav")[10 * SAMPLE_RATE : 16 * SAMPLE_RATE]
    openings = {}
    with FaceLandmarker() as landmarker:
        for name, audio in (("speech", wave), ("shuffled", syllable_shuffled(wave))):
            wav = write_wav(tmp_path / f"{name}.wav", audio, SAMPLE_RATE)
            info = probe(render(RenderConfig(run=run_dir, audio=wav, out=tmp_path / f"{name}.mp4", device="cpu")))
            assert info["num_frames"] == num_frames_for(len(audio), SAMPLE_RATE, head.fps) == 150
            assert abs(info["audio_s"] - info["video_s"]) < 1 / head.fps, (info["audio_s"], info["video_s"])
            found = rendered_openings([info["frames"]], landmarker)
            assert found.detected == 1.0
            openings[name] = found.openings
    loudness = frame_log_energy(wave, head.fps, len(openings["speech"]))
    follows, shuffled = pearson(openings["speech"], loudness), pearson(openings["shuffled"], loudness)
    print(f"opening ~ loudness: {follows:.2f}, of the shuffled copy {shuffled:.2f}")
    assert follows > 0.4 and follows > shuffled + 0.3
    closed = closed_threshold(head.driving.openings)  # the person's own closed-mouth range
    found_pauses = pauses(quiet_frames(loudness), int(np.ceil(PAUSE_S * head.fps)))
    assert len(found_pauses) == 1
    ((start, end),) = found_pauses
    assert end - start >= 15
    inner = slice(start + EDGE_FRAMES, end - EDGE_FRAMES)
    print("opening in the pause:", np.round(openings["speech"][inner], 3), f"closed below {closed:.3f}")
    assert np.median(openings["speech"][inner]) <= closed < np.median(openings["shuffled"][inner])
