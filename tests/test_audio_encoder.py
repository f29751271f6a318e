"""Audio -> expression encoder: shapes, the target round trip, learning a synthetic lip signal, silence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.audio.features import MelFeatures, context_windows, feature_stats, frame_windows, normalize_features
from avatar.audio.io import SAMPLE_RATE, save_wav
from avatar.contracts.dataset import Dataset
from avatar.contracts.face_mesh import EYE_OUTER_CORNERS, INNER_LIP_LOWER, INNER_LIP_UPPER, NOSE_TIP
from avatar.model.audio_encoder import (
    FIXED_QUIET,
    FIXED_RAMP,
    AudioEncoder,
    AudioEncoderConfig,
    ClipLevels,
    ExampleMemory,
)
from avatar.train.audio_fit import _augment, fit_audio_encoder, gain_share, predict_expression
from avatar.train.expression import ExpressionSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS = 25.0
SMALL = AudioEncoderConfig(context=2, channels=16, embed_dim=32, heads=2, members=1, batch_size=32, eval_every=40)


def synthetic_speech(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A buzzy 'voice' switched on and off in syllables of 80-300 ms, and its envelope per video frame."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    envelope = np.zeros(n, np.float32)
    t = 0
    while t < n:
        length = int(rng.uniform(0.08, 0.3) * SAMPLE_RATE)
        envelope[t : t + length] = rng.uniform(0.4, 1.0) if rng.random() < 0.6 else 0.0
        t += length
    time = np.arange(n) / SAMPLE_RATE
    voice = sum(np.sin(2 * np.pi * 130 * k * time) / k for k in range(1, 12)) + 0.3 * rng.standard_normal(n)
    wave = (0.2 * envelope * voice + 1e-4 * rng.standard_normal(n)).astype(np.float32)
    frames = int(seconds * FPS)
    centres = ((np.arange(frames) + 0.5) / FPS * SAMPLE_RATE).astype(int)
    return wave, envelope[centres]


def write_dataset(root: Path, wave: np.ndarray, opening: np.ndarray, seed: int = 0) -> Dataset:
    """A dataset directory with tracking and audio only: expression component 0 opens the mouth by
    `opening`, component 1 is unrelated motion of the upper face (like brows) that audio cannot predict."""
    rng = np.random.default_rng(seed)
    n = len(opening)
    canonical = rng.uniform(-0.07, 0.07, (478, 3)).astype(np.float32)
    canonical[NOSE_TIP] = [0, 0, -0.05]
    canonical[INNER_LIP_UPPER], canonical[INNER_LIP_LOWER] = [0, 0.03, -0.04], [0, 0.031, -0.04]
    canonical[EYE_OUTER_CORNERS[0]], canonical[EYE_OUTER_CORNERS[1]] = [-0.045, 0.01, 0], [0.045, 0.01, 0]
    lower = canonical[:, 1] > 0
    basis = np.zeros((2, 478, 3), np.float32)
    basis[0, lower, 1] = 0.3 * (canonical[lower, 1] > 0.031)  # jaw and lower lip move down
    basis[0, INNER_LIP_LOWER, 1] = 1.0
    basis[1, ~lower] = rng.standard_normal((int((~lower).sum()), 3)) * 0.1
    code = np.stack([0.01 * opening, rng.standard_normal(n)], 1).astype(np.float32)
    (root / "tracking").mkdir(parents=True)
    arrays = {
        "expression_pca": code,
        "expression_basis": basis,
        "canonical_face": canonical,
        "blendshapes": opening[:, None].astype(np.float32),
    }
    for name, value in arrays.items():
        np.save(root / "tracking" / f"{name}.npy", value)
    save_wav(root / "audio.wav", wave)
    feats = MelFeatures()(wave)
    np.save(root / "audio_features.npy", feats)
    mean, std = feature_stats(feats)
    train_end = int(round(n * 0.8))
    manifest = {
        "format_version": 1,
        "source": {},
        "fps": FPS,
        "num_frames": n,
        "resolution": 64,
        "crop": {"x0": 0, "y0": 0, "size": 64, "source_width": 64, "source_height": 64, "resolution": 64},
        "intrinsics": {"fx": 64, "fy": 64, "cx": 32, "cy": 32, "width": 64, "height": 64},
        "split": {"train": [0, train_end], "val": [train_end, n]},
        "audio": {"file": "audio.wav", "sample_rate": SAMPLE_RATE, "num_samples": int(wave.size)},
        "features": {
            "file": "audio_features.npy",
            "extractor": "mel80-energy-pitch",
            "rate_hz": 100.0,
            "dim": int(feats.shape[1]),
            "window": 16,
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        "blendshape_names": ["jawOpen"],
        "versions": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return Dataset(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    wave, opening = synthetic_speech(16.0, seed=1)
    return write_dataset(tmp_path_factory.mktemp("audio_ds"), wave, opening)


def test_encoder_shapes_and_ensemble_embedding():
    cfg = AudioEncoderConfig(context=3, channels=8, embed_dim=16, heads=2, members=2)
    torch.manual_seed(0)
    enc = AudioEncoder(cfg, feature_dim=82, window=16, expression_dim=5)
    embedding, expression = enc(torch.randn(4, 7, 16, 82, generator=torch.Generator().manual_seed(1)))
    assert enc.context == 3 and enc.embed_dim == 32
    assert embedding.shape == (4, 32) and expression.shape == (4, 5)
    expression.sum().backward()  # differentiable end to end (the trainer may fine-tune it)
    assert all(p.grad is not None for p in enc.parameters())


def test_example_memory_recalls_neighbours_but_never_a_frame_itself():
    gen = torch.Generator().manual_seed(0)
    n, context = 40, 2
    windows = 5 + torch.randn(n, 4, 3, generator=gen)  # [N, W, F], far apart and far from silence
    targets = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)  # [N, E]: target = frame id
    rest = torch.tensor([-1.0, -1.0])
    memory = ExampleMemory(AudioEncoderConfig(memory_sigma=1e-3))  # no smoothing: the centre window only
    memory.fill(windows, targets, torch.arange(n), rest, k=1, span=2)
    stacks = windows[(torch.arange(n)[:, None] + torch.arange(-context, context + 1)).clamp(0, n - 1)]
    assert torch.equal(memory(stacks), targets)  # unheard audio: the nearest window is its own copy
    recalled = memory(stacks, frames=torch.arange(n))  # training frames: their neighbourhood is skipped
    assert ((recalled[:, 0] - torch.arange(n)).abs() >= 2).all()
    silent = memory(torch.zeros(3, 2 * context + 1, 4, 3))
    assert torch.equal(silent, rest.expand(3, -1))  # silence is stored as the closed mouth
    # Sized by the data: a fresh memory takes the sizes of a saved one.
    copy = ExampleMemory(AudioEncoderConfig())
    copy.load_state_dict(memory.state_dict())
    assert torch.equal(copy.keys, memory.keys) and int(copy.k) == 1
    # Filled again (the keys' norms are kept between frames): it recalls the new examples, not the old.
    memory.fill(windows.flip(0), targets, torch.arange(n), rest, k=1, span=2)
    assert torch.equal(memory(stacks), targets.flip(0))


def test_the_memory_finds_what_was_said_more_than_how_it_sounded():
    """Two voice columns, then two phone columns: the query sounds like B and says what A said."""
    said_a, said_b = torch.tensor([4.0, 3.0]), torch.tensor([3.0, 4.0])
    a, b = torch.cat([torch.zeros(2), said_a]), torch.cat([torch.full((2,), 2.0), said_b])
    query = torch.cat([torch.full((2,), 2.0), said_a])
    windows, targets, rest = torch.stack([a, b])[:, None], torch.tensor([[1.0], [2.0]]), torch.tensor([0.0])
    recalled = {}
    for weight in (1.0, 0.25):
        memory = ExampleMemory(AudioEncoderConfig(memory_sigma=1e-3, memory_voice_weight=weight))
        memory.fill(windows, targets, torch.arange(2), rest, k=1, span=1, voice_columns=2)
        recalled[weight] = float(memory(query[None, None, None])[0, 0])
    assert recalled == {1.0: 2.0, 0.25: 1.0}
    # an avatar saved before the voice was weighted keeps its lookup: every column alike
    older = {k: v for k, v in memory.state_dict().items() if k not in ("voice_columns", "voice_weight")}
    older["keys"] = torch.cat([windows[:, 0], torch.zeros(1, 4)])
    loaded = ExampleMemory(AudioEncoderConfig(memory_sigma=1e-3))
    loaded.load_state_dict(older)
    assert float(loaded.voice_weight) == 1.0 and float(loaded(query[None, None, None])[0, 0]) == 2.0


def test_targets_are_low_dimensional_and_decode_to_the_tracked_mouth(dataset):
    space = ExpressionSpace.fit(dataset)
    targets = space.targets
    train = dataset.indices("train")
    assert targets.shape == (dataset.num_frames, 1)  # only the mouth component is audio-related
    assert targets[train].std(0)[0] == pytest.approx(1.0, rel=1e-3)
    code = space.to_codes(targets)
    tracked = np.asarray(dataset.tracking("expression_pca"))
    np.testing.assert_allclose(space.opening_of_codes(code), space.opening_of_codes(tracked), atol=1e-5)
    assert code[:, 1].std() < 0.2 * tracked[:, 1].std()  # the unrelated motion is (almost) not predicted
    opening = space.opening_of_codes(tracked)
    assert np.corrcoef(targets @ space.opening, opening)[0, 1] > 0.99  # the linearised inner-lip opening
    assert np.std(targets[train] @ space.opening) == pytest.approx(1.0, rel=1e-3)
    # The rest (silence) target is the closed mouth: below the 20th percentile of the training openings.
    rest_open = space.opening_of_codes(space.to_codes(space.rest[None]))[0]
    assert rest_open <= np.quantile(space.opening_of_codes(tracked[train]), 0.2)


def silent_windows(context: int) -> np.ndarray:
    """[N, 2K+1, W, F] windows of a silent wave, through the same feature code as real audio."""
    feats = normalize_features(MelFeatures()(np.zeros(SAMPLE_RATE, np.float32)))
    assert np.abs(feats).max() < 0.05  # a silent clip normalises to (almost) all-zero features
    return context_windows(frame_windows(feats, 100.0, FPS, 25), context)


def test_training_learns_the_lip_signal_and_silence_closes_the_mouth(dataset):
    space = ExpressionSpace.fit(dataset)
    encoder, metrics = fit_audio_encoder(dataset, space, SMALL, steps=120, seed=0)
    assert metrics["val_lip_corr"] > 0.7, metrics
    tracked_open = space.opening_of_codes(np.asarray(dataset.tracking("expression_pca")))
    for windows in (silent_windows(SMALL.context), np.zeros((10, 2 * SMALL.context + 1, 16, 82), np.float32)):
        silent_open = space.opening_of_codes(space.to_codes(predict_expression(encoder, windows)))
        assert np.ptp(silent_open) < 1e-6  # still
        closed, wide = tracked_open.min(), np.quantile(tracked_open, 0.95)
        assert silent_open[0] < closed + 0.1 * (wide - closed)  # closed


def test_training_is_reproducible_with_a_seed(dataset):
    cfg = AudioEncoderConfig(context=1, channels=8, embed_dim=16, heads=2, members=2, batch_size=16, eval_every=4)
    space = ExpressionSpace.fit(dataset)
    a, ma = fit_audio_encoder(dataset, space, cfg, steps=8, seed=3)
    b, mb = fit_audio_encoder(dataset, space, cfg, steps=8, seed=3)
    assert ma["val_mse"] == mb["val_mse"]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # resumable by member: an interruption during the second member, then a resume with the first one kept
    saved = []
    with pytest.raises(KeyboardInterrupt):
        fit_audio_encoder(
            dataset,
            space,
            cfg,
            steps=8,
            seed=3,
            on_member=lambda members: saved.append(list(members)),
            should_stop=lambda: len(saved) > 0,
        )
    c, mc = fit_audio_encoder(dataset, space, cfg, steps=8, seed=3, finished=saved[-1])
    assert mc["val_mse"] == ma["val_mse"]
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)


def test_memory_of_a_long_video_is_capped_evenly(dataset):
    cfg = AudioEncoderConfig(
        context=1, channels=8, embed_dim=16, heads=2, members=1, batch_size=16, eval_every=4, memory_max=10
    )
    encoder, _ = fit_audio_encoder(dataset, ExpressionSpace.fit(dataset), cfg, steps=4, seed=0)
    frames = encoder.memory.frames[encoder.memory.frames >= 0]  # the silence entries have no frame
    train = dataset.indices("train")
    assert len(frames) == 10 and frames[0] == train[0] and frames[-1] == train[-1]
    assert set(frames.tolist()) <= set(train.tolist())


def test_a_quiet_decoded_pause_closes_the_mouth_and_speech_is_left_alone():
    torch.manual_seed(0)
    cfg = AudioEncoderConfig(context=1, channels=8, embed_dim=8, heads=2, members=1, dropout=0.0)
    feature_dim, silence, energy = 6, 5, 0  # column 0: normalised log energy, column 5: the pause class
    enc = AudioEncoder(cfg, feature_dim=feature_dim, window=16, expression_dim=3).eval()
    enc.closed = torch.tensor([-1.0, 0.5, 2.0])
    audio = torch.randn(4, 3, 16, feature_dim)
    audio[:, :, :, silence] = 0.0
    audio[0, 1, :, silence], audio[0, 1, :, energy] = 1.0, -3.0  # a sure pause, quiet: closed
    audio[1, 1, :, silence], audio[1, 1, :, energy] = 1.0, 0.5  # "silence" heard in loud audio: speech
    audio[2, 1, :, energy] = -3.0  # quiet but the decoder hears a phone: speech
    audio[3, 1, :, silence], audio[3, 1, :, energy] = 0.7, -FIXED_QUIET - FIXED_RAMP / 2  # unsure, half quiet: half-way
    _, free = enc(audio)
    enc.silence_column, enc.energy_column = torch.tensor(silence), torch.tensor(energy)
    _, gated = enc(audio)
    torch.testing.assert_close(gated[0], enc.closed)
    torch.testing.assert_close(gated[1:3], free[1:3])
    torch.testing.assert_close(gated[3], enc.closed + (1 - 0.5 * 0.5) * (free[3] - enc.closed))
    enc.cfg.pause_closes = False
    torch.testing.assert_close(enc(audio)[1], free)


def test_the_mouth_closes_as_a_pause_begins_and_opens_before_the_speech_after_it():
    """The decoder starts a pause late (a word's fading end is still the word to it): a fading frame with a
    decoded pause just ahead closes; a frame whose speech starts just ahead stays free (speakers open early)."""
    cfg = AudioEncoderConfig(context=1, channels=8, embed_dim=8, heads=2, members=1, dropout=0.0)
    silence, energy = 5, 0
    enc = AudioEncoder(cfg, feature_dim=6, window=16, expression_dim=3).eval()
    enc.silence_column, enc.energy_column = torch.tensor(silence), torch.tensor(energy)
    rows = torch.arange(16)
    fading = torch.zeros(2, 3, 16, 6)  # rows are 10 ms apart; the frame's centre is row 8
    fading[0, 1, :, silence] = (rows >= 10).float()  # the decoder's pause starts 20 ms after the centre
    fading[0, 1, :, energy] = torch.where(rows >= 10, -4.0, -1.0)  # the word has faded to the clip's quiet side
    fading[1, 1, :, silence] = (rows < 7).float()  # the mirror image: a pause ending, speech from row 7 on
    fading[1, 1, :, energy] = torch.where(rows < 7, -4.0, -1.0)
    gate = enc.pause(fading)
    assert float(gate[0]) > 0.9
    assert float(gate[1]) == 0.0
    speech_ahead = fading[:1].clone()  # the same fading frame, but the decoder hears a phone all along
    speech_ahead[..., silence] = 0.0
    assert float(enc.pause(speech_ahead)[0]) == 0.0
    short = fading[:, :, 6:10]  # the shortest feature window preprocess allows (4 rows) still works
    assert enc.pause(short).shape == (2,)


def test_after_a_long_pause_the_mouth_opens_before_the_speech_and_a_short_gap_is_left_alone():
    """Speech, a 3-frame gap, speech, a 12-frame pause, speech (feature rows at 100 Hz, 25 fps, 4 context
    frames): with `pause_lead` 4 the pause's last 4 frames open step by step towards the speech, the frames
    before them stay closed, and the short gap (and the speech) are gated exactly as without a lead."""
    silence, energy, fps = 5, 0, 25.0
    frames = np.r_[np.zeros(10), np.ones(3), np.zeros(10), np.ones(12), np.zeros(10)].astype(bool)
    rows = np.repeat(frames, 4)  # 4 feature rows a frame
    features = np.zeros((len(rows), 6), np.float32)
    features[:, silence] = rows
    features[:, energy] = np.where(rows, -4.0, 1.0)
    stacks = torch.from_numpy(context_windows(frame_windows(features, 100.0, fps, len(frames), 16), 4))

    def gate(lead: int) -> np.ndarray:
        cfg = AudioEncoderConfig(context=4, channels=8, embed_dim=8, heads=2, members=1, pause_lead=lead)
        enc = AudioEncoder(cfg, feature_dim=6, window=16, expression_dim=3).eval()
        enc.silence_column, enc.energy_column = torch.tensor(silence), torch.tensor(energy)
        return enc.pause(stacks).numpy()

    led, plain = gate(4), gate(0)
    np.testing.assert_allclose(led[:23], plain[:23])  # speech, the short gap, speech: as before
    assert plain[23:34].min() > 0.99 and led[23:30].min() > 0.99  # the long pause closes ...
    np.testing.assert_allclose(led[29:35], [1.0, 0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-6)  # ... and opens over 4 frames
    np.testing.assert_allclose(led[34:], plain[34:])
    assert gate(9).shape == led.shape  # a lead longer than the context is cut to it


def test_voice_dropout_hides_the_voice_columns_of_some_samples_and_keeps_the_phones():
    cfg = AudioEncoderConfig(feature_noise=0.0, freq_mask=0, voice_dropout=0.5)
    audio = torch.randn(400, 3, 16, 10, generator=torch.Generator().manual_seed(1)) + 5.0  # no column is zero
    out = _augment(audio.clone(), cfg, torch.Generator().manual_seed(0), voice_columns=6)
    dropped = (out[..., :6] == 0).flatten(1).all(1)
    kept = (out[..., :6] == audio[..., :6]).flatten(1).all(1)
    assert bool((dropped ^ kept).all())  # a sample hears the whole voice or none of it
    assert 0.4 < float(dropped.float().mean()) < 0.6
    torch.testing.assert_close(out[..., 6:], audio[..., 6:])  # the phonetic columns are always there
    # mel-only features have nothing to fall back on: no dropout
    torch.testing.assert_close(_augment(audio.clone(), cfg, torch.Generator().manual_seed(0), voice_columns=0), audio)


class _ScaledEncoder(AudioEncoder):
    """An encoder whose blend is the closed mouth plus the audio's first feature on the opening direction."""

    def _blend(self, audio, frames):
        expression = self.closed + audio[:, audio.shape[1] // 2, 8, :1] * self.opening
        return torch.zeros(len(audio), self.embed_dim), expression


def _clip(amplitude: float, frames: int = 200, paused: int = 0, seed: int = 0) -> torch.Tensor:
    audio = torch.zeros(frames, 3, 16, 4)
    audio[:, :, :, 0] = amplitude * torch.randn(frames, generator=torch.Generator().manual_seed(seed))[:, None, None]
    audio[:paused, :, :, 3] = 1.0  # the decoder's pause class ...
    audio[:paused, :, :, 1] = -3.0  # ... in quiet audio: a pause
    return audio


def test_a_clip_that_moves_the_mouth_less_than_the_persons_voice_is_amplified_up_to_the_limit():
    cfg = AudioEncoderConfig(context=1, channels=8, embed_dim=8, heads=2, members=1, max_clip_gain=1.3)
    enc = _ScaledEncoder(cfg, feature_dim=4, window=16, expression_dim=3).eval()
    enc.closed, enc.opening, enc.gain = torch.tensor([0.5, 0.0, -1.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor(1.2)
    assert enc.levels([_clip(1.0)]).gain == 1.0  # no reference recorded (an older avatar): off
    own = enc.frame_measures(_clip(1.0, seed=1))
    enc.speech_spread = torch.tensor(enc.speaking_spread(own, enc.noise_floor(own)))
    assert enc.speech_spread == pytest.approx(1.2, rel=0.15)  # the gained opening's spread
    assert enc.levels([_clip(1.0, seed=2)]).gain == pytest.approx(1.0, abs=0.15)  # like the person's voice
    assert enc.levels([_clip(0.9, seed=3)[:100], _clip(0.9, seed=3)[100:]]).gain == pytest.approx(1 / 0.9, rel=0.15)
    assert enc.levels([_clip(0.3)]).gain == 1.3  # a lazy clip: at most max_clip_gain
    assert enc.levels([_clip(3.0)]).gain == 1.0  # more motion than the person's: left as it is
    assert enc.levels([_clip(0.3, frames=20)]).gain == 1.0  # under a second of speech: not measured
    enc.gain_share = torch.tensor(0.5)  # half the gains earned: half the ceiling
    assert enc.levels([_clip(0.3)]).gain == pytest.approx(1.15)
    assert enc.levels([_clip(0.9, seed=3)]).gain == pytest.approx(1 / 0.9, rel=0.15)  # under it: as before
    enc.gain_share = torch.tensor(1.0)
    enc.silence_column, enc.energy_column = torch.tensor(3), torch.tensor(1)
    lazy_with_pauses = _clip(0.9, frames=400, paused=200, seed=3)
    lazy_with_pauses[:200, :, :, 0] *= 10  # loud motion inside pauses does not count: they are closed anyway
    assert enc.levels([lazy_with_pauses]).gain == pytest.approx(1 / 0.9, rel=0.15)
    audio = _clip(0.5, frames=8)  # the gain scales the departure from the closed mouth
    _, once = enc(audio)
    _, amplified = enc(audio, clip=ClipLevels(gain=1.3))
    torch.testing.assert_close(amplified - enc.closed, 1.3 * (once - enc.closed))


def test_training_records_the_persons_speaking_spread_and_older_avatars_load_without_it(dataset):
    space = ExpressionSpace.fit(dataset)
    encoder, metrics = fit_audio_encoder(
        dataset, space, replace(SMALL, gain_min_corr=-1, gain_full_corr=-0.99), steps=40, seed=0
    )
    assert metrics["reliable"]
    torch.testing.assert_close(encoder.opening, torch.from_numpy(space.opening))
    assert float(encoder.speech_spread) > 0
    windows = torch.from_numpy(dataset.audio_windows(context=SMALL.context)[dataset.indices("train")])
    assert encoder.levels([windows]).gain == pytest.approx(1.0, abs=0.1)  # its own voice is not amplified
    state = {k: v for k, v in encoder.state_dict().items() if k not in ("opening", "speech_spread", "gain_share")}
    old = AudioEncoder(SMALL, encoder.members[0].window_encoder.convs[0].in_channels, 16, space.dim)
    old.gain_share = torch.tensor(0.0)
    old.load_state_dict(state)
    assert float(old.speech_spread) == 0 and old.levels([windows]).gain == 1.0
    assert float(old.gain_share) == 1.0  # made before the share: its gains were all or nothing, kept as they were


def test_the_motion_gains_grow_with_the_held_out_correlation():
    """No gain below `gain_min_corr`, all of it from `gain_full_corr`, in proportion between: no cliff where two
    trainings of one video land either side of one threshold."""
    cfg = AudioEncoderConfig(gain_min_corr=0.4, gain_full_corr=0.55)
    shares = [gain_share(c, cfg) for c in (0.2, 0.4, 0.475, 0.496, 0.55, 0.9, float("nan"))]
    assert shares == pytest.approx([0.0, 0.0, 0.5, 0.64, 1.0, 1.0, 0.0])


def test_an_unreliable_encoder_amplifies_no_clip(dataset):
    """Below `gain_min_corr` on the held-out slices the prediction is mostly noise: no gain of either kind."""
    space = ExpressionSpace.fit(dataset)
    lines = []
    encoder, metrics = fit_audio_encoder(
        dataset, space, replace(SMALL, gain_min_corr=0.99, gain_full_corr=1.0), steps=40, seed=0, log=lines.append
    )
    assert not metrics["reliable"] and metrics["gain"] == 1.0 and metrics["gain_share"] == 0.0
    assert any("follow new audio weakly" in line and "1-3 minutes" in line for line in lines)  # the user is told
    assert float(encoder.speech_spread) == 0
    quiet = torch.from_numpy(dataset.audio_windows(context=SMALL.context)[dataset.indices("train")]) * 0.5
    assert encoder.levels([quiet]).gain == 1.0


def test_a_noisy_recordings_pauses_close_at_its_noise_floor():
    """Room noise holds a recording's pauses about 1.5 clip standard deviations below its mean, where the fixed
    rule (from FIXED_QUIET below) counts them half as voice; the clip's own noise floor closes them and leaves
    its speech, even speech the decoder cannot parse, alone."""
    cfg = AudioEncoderConfig(context=1, channels=8, embed_dim=8, heads=2, members=1, dropout=0.0)
    silence, energy = 5, 0
    enc = AudioEncoder(cfg, feature_dim=6, window=16, expression_dim=3).eval()
    enc.silence_column, enc.energy_column = torch.tensor(silence), torch.tensor(energy)
    frames = 200
    clip = torch.zeros(frames, 3, 16, 6)
    level = torch.linspace(-0.6, 1.5, frames)  # speech at many loudnesses
    paused, unparsed = torch.arange(frames) % 10 == 0, torch.arange(frames) % 10 == 5
    level[paused] = -1.5 + 0.05 * torch.randn(int(paused.sum()), generator=torch.Generator().manual_seed(0))
    clip[..., energy] = level[:, None, None]
    clip[paused | unparsed, :, :, silence] = 1.0  # the decoder hears silence in the pauses and in unparsed speech
    levels = enc.levels([clip])
    assert levels.noise_floor == pytest.approx(-1.5, abs=0.1)
    fixed, floored = enc.pause(clip), enc.pause(clip, levels.noise_floor)
    assert float(fixed[paused].max()) < 0.6  # the fixed rule: half open at best
    assert float(floored[paused].min()) > 0.95
    assert float(floored[~paused].max()) == 0.0  # speech, heard as a phone or not, is left alone
    clean = clip.clone()
    clean[paused, :, :, energy] = -3.0  # a clean recording's pauses close by the fixed rule alone
    torch.testing.assert_close(enc.pause(clean), enc.pause(clean, enc.levels([clean]).noise_floor))
