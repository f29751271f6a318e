"""How the audio encoder (avatar.model.audio_encoder) is fitted: in about a minute on CPU from ~45 s of speech.

Heavy regularisation, sub-frame time-shift augmentation, an extra loss on the inner-lip opening, early
stopping on a held-out slice of the TRAINING frames, and a few members trained on different held-out slices
whose predictions are averaged; then the example memory's share and the motion gain are chosen on those
held-out slices. The training audio is also heard in re-voiced copies (avatar.audio.revoice), so the
mapping does not lean on the person's voice. benchmarks/bench_lipsync.py measures the result on other voices.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from avatar.audio.features import extractor_named
from avatar.audio.io import load_audio
from avatar.audio.revoice import VoiceAugmentConfig, revoiced_copies
from avatar.contracts.dataset import Dataset
from avatar.errors import UserError
from avatar.model.audio_encoder import AudioEncoder, AudioEncoderConfig, EncoderMember, ExampleMemory
from avatar.train.context import StopRequested
from avatar.train.expression import ExpressionSpace


class AudioRows:
    """Normalised feature rows of the training audio (copy 0) and its re-voiced copies [A, T, F], cut into
    each frame's window on demand: all copies of a long clip fit in memory as rows, not as windows."""

    def __init__(
        self,
        rows: Tensor,
        window_rows: Tensor,
        silence_column: int = -1,
        energy_column: int = -1,
        voice_columns: int = 0,
    ):
        self.rows = rows  # [A, T, F]
        self.voice_columns = voice_columns  # the first columns describe the voice (mel, energy, pitch)
        self.window_rows = window_rows  # [N, W] row indices of each frame's window (avatar.audio.features)
        self.silence_column = silence_column  # feature column of the phonetic pause class, -1: none
        self.energy_column = energy_column  # feature column of the normalised log energy, -1: none

    @property
    def num_frames(self) -> int:
        return self.window_rows.shape[0]

    def windows(self, frames: Tensor, shift: Tensor | None = None, copy: Tensor | None = None) -> Tensor:
        """[B, ...] frame ids -> [B, ..., W, F] windows, moved by `shift` [B] feature rows, from copy `copy` [B]."""
        rows = self.window_rows[frames]  # [B, ..., W]
        lead = (-1,) + (1,) * (rows.dim() - 1)
        if shift is not None:
            rows = (rows + shift.reshape(lead)).clamp(0, self.rows.shape[1] - 1)
        copy = torch.zeros(1, dtype=torch.long) if copy is None else copy
        return self.rows[copy.reshape(lead), rows]

    @staticmethod
    def of(dataset: Dataset, voices: VoiceAugmentConfig, seed: int, log: Callable | None = None) -> AudioRows:

        f = dataset.manifest.features
        clean, window_rows = dataset.audio_rows()
        extractor = extractor_named(f.extractor, f.speech_model)
        if extractor is None and f.speech_model:
            raise UserError(
                f"{dataset.root}: its audio features come from the speech model saved in {f.speech_model}, "
                "which is missing or holds other files now. Put the same model back there, or rebuild "
                "the features with `avatar preprocess VIDEO --out DATASET --speech-model DIR`."
            )
        if extractor is None:
            raise UserError(
                f"{dataset.root}: its audio features {f.extractor!r} are not made by this version. "
                "Rebuild them with `avatar preprocess VIDEO --out DATASET` (only that step runs)."
            )
        if extractor.phonetic is None and log is not None:
            log(
                f"note: {dataset.root} has no phonetic audio features ({f.extractor}); the mouth follows other voices "
                "better with them: rerun `avatar preprocess VIDEO --out DATASET` (only the features step runs)"
            )
        copies = []
        if voices.copies > 0:
            start = time.perf_counter()
            wave = load_audio(dataset.layout.audio)
            copies = [c[: len(clean)] for c in revoiced_copies(wave, extractor, voices, seed)]
            if log is not None:
                log(
                    f"audio encoder: {len(copies)} re-voiced copies of the training audio in "
                    f"{time.perf_counter() - start:.1f} s"
                )
        rows = torch.from_numpy(np.stack([clean] + copies))
        columns = [-1 if c is None else c for c in (extractor.silence_column, extractor.energy_column)]
        voice = extractor.normalized if extractor.phonetic is not None else 0  # without phones nothing would be left
        return AudioRows(rows, torch.from_numpy(window_rows), *columns, voice_columns=voice)


def _context_index(frames: Tensor, context: int, limit: int) -> Tensor:
    """[B] frame ids -> [B, 2K+1] ids of their neighbours, edges repeated (as avatar.audio.features does)."""
    return (frames[:, None] + torch.arange(-context, context + 1)).clamp(0, limit - 1)


def _augment(audio: Tensor, cfg: AudioEncoderConfig, gen: torch.Generator, voice_columns: int = 0) -> Tensor:
    """Feature noise, one SpecAugment-style band of zeroed feature bins per sample, and for a share of the
    samples the first `voice_columns` (the voice's sound) zeroed, their clip mean: the encoder must then read
    what is said from the phonetic columns alone, and leans less on the voice it was trained on."""
    b, _, _, f = audio.shape
    audio = audio + cfg.feature_noise * torch.randn(audio.shape, generator=gen)
    if cfg.voice_dropout > 0 and voice_columns > 0:
        dropped = torch.rand(b, generator=gen) < cfg.voice_dropout
        audio[dropped, ..., :voice_columns] = 0.0
    if cfg.freq_mask > 0:
        width = torch.randint(0, cfg.freq_mask + 1, (b, 1), generator=gen)
        start = (torch.rand(b, 1, generator=gen) * (f - width)).long()
        bins = torch.arange(f)[None]
        keep = ~((bins >= start) & (bins < start + width))  # [B, F]
        audio = audio * keep[:, None, None, :]
    return audio


def _loss(pred: Tensor, target: Tensor, opening: Tensor, cfg: AudioEncoderConfig) -> Tensor:
    """Squared error of the targets (proportional to lower-face landmark error), plus extra weight on the
    inner-lip opening, the motion lip-sync metrics and viewers notice most."""
    err = pred - target
    return (err**2).mean() + cfg.opening_weight * ((err @ opening) ** 2).mean()


def _fit_member(
    member: EncoderMember,
    audio_rows: AudioRows,
    rows_per_frame: float,
    targets: Tensor,
    opening: Tensor,
    rest: Tensor,
    fit_ids: np.ndarray,
    held_ids: np.ndarray,
    steps: int,
    cfg: AudioEncoderConfig,
    gen: torch.Generator,
    log: Callable | None,
    tag: str,
    should_stop: Callable[[], bool],
) -> dict:
    """Train one member on `fit_ids` (each sample from the original audio or a random re-voiced copy), keep
    the state with the lowest loss on `held_ids` of the original audio. Raises StopRequested between two
    steps once `should_stop()` says so (the member is then refitted on resume)."""
    n, max_shift, voices = audio_rows.num_frames, cfg.time_shift, audio_rows.rows.shape[0]
    opt = torch.optim.AdamW(member.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    fit_t = torch.as_tensor(fit_ids)
    held_t = torch.as_tensor(held_ids)
    held_audio = audio_rows.windows(_context_index(held_t, cfg.context, n))
    best = (float("inf"), copy.deepcopy(member.state_dict()), 0)
    bad = 0
    for step in range(1, steps + 1):
        if should_stop():
            raise StopRequested
        member.train()
        frames = fit_t[torch.randint(len(fit_t), (cfg.batch_size,), generator=gen)]
        shift = torch.randint(-max_shift, max_shift + 1, (cfg.batch_size,), generator=gen)
        ctx = _context_index(frames, cfg.context, n)
        clean = cfg.voices.clean_share
        if clean is None:  # the original audio is one voice among the copies
            voice = torch.randint(voices, (cfg.batch_size,), generator=gen)
        else:  # the original with probability `clean`, else a re-voiced copy
            voice = torch.randint(1, max(voices, 2), (cfg.batch_size,), generator=gen)
            voice[(torch.rand(cfg.batch_size, generator=gen) < clean) | (voices == 1)] = 0
        audio = audio_rows.windows(ctx, shift, voice)  # [B, C, W, F]
        # The target at the shifted time: linear interpolation between neighbouring frames.
        frac = shift.float() / rows_per_frame
        nxt = (frames + torch.sign(shift)).clamp(0, n - 1)
        a = frac.abs()[:, None]
        target = (1 - a) * targets[frames] + a * targets[nxt]
        audio = _augment(audio, cfg, gen, audio_rows.voice_columns)
        silent = torch.rand(cfg.batch_size, generator=gen) < cfg.silence_fraction
        audio[silent] = 0.0
        target[silent] = rest
        _, pred = member(audio)
        loss = _loss(pred, target, opening, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == steps:
            member.eval()
            with torch.no_grad():
                held = float(_loss(member(held_audio)[1], targets[held_t], opening, cfg))
            if log is not None:
                log(f"audio encoder {tag} step {step}: train {loss.item():.4f} held-out {held:.4f}")
            if held < best[0]:
                best, bad = (held, copy.deepcopy(member.state_dict()), step), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    member.load_state_dict(best[1])
    member.eval()
    return {"held_out_loss": best[0], "best_step": best[2], "steps_run": step}


@torch.no_grad()
def choose_memory_blend(
    encoder: AudioEncoder,
    windows: Tensor,
    targets: Tensor,
    opening: Tensor,
    rest: Tensor,
    splits: list[tuple[np.ndarray, np.ndarray]],
    span: int,
    voice_columns: int,
    cfg: AudioEncoderConfig,
) -> dict:
    """The example memory's k and share that best follow the lip opening on the members' held-out slices.

    For each member, its held-out slice is predicted by that member (which never saw it) and by a memory of
    the frames the member was fitted on, so both are judged on audio they did not hold. Returns
    "memory_k", "memory_weight", the mean held-out correlations of the chosen blend and of the network, and
    "gain": how much the blend's lip opening is amplified: towards moving as much as the tracked one there by
    "gain_share" (0 to 1, `gain_share`) of the way, and "reliable": whether that share is above 0 (if not,
    neither this gain nor the per-clip gain amplifies anything).
    """
    n = windows.shape[0]
    scores: dict[tuple[int, float], list[tuple[float, float, float]]] = {}  # (k, share) -> (corr, spreads)
    for member, (fit, held) in zip(encoder.members, splits):
        held_t = torch.as_tensor(held)
        stacks = windows[_context_index(held_t, cfg.context, n)]  # [H, 2K+1, W, F]
        net = member(stacks)[1]
        memory = ExampleMemory(cfg)
        fit_t = torch.as_tensor(fit)
        memory.fill(windows[fit_t], targets[fit_t], fit_t, rest, max(cfg.memory_k), span, voice_columns)
        truth = targets[held_t] @ opening
        for k in cfg.memory_k:
            recalled = memory(stacks, held_t, k)
            for w in cfg.memory_weights:
                blend = ((1 - w) * net + w * recalled) @ opening
                corr = float(torch.corrcoef(torch.stack([blend, truth]))[0, 1])
                scores.setdefault((k, w), []).append((corr, float(blend.std()), float(truth.std())))
    mean = {key: float(np.nanmean([c for c, _, _ in v])) for key, v in scores.items()}
    k, w = max(mean, key=lambda key: (mean[key], -key[1]))
    predicted_std, truth_std = (float(np.mean([row[i] for row in scores[(k, w)]])) for i in (1, 2))
    share = gain_share(mean[(k, w)], cfg)
    full = float(np.clip(truth_std / max(predicted_std, 1e-9), 1.0, cfg.max_gain))
    return {
        "memory_k": int(k),
        "memory_weight": float(w),
        "memory_held_out_corr": mean[(k, w)],
        "network_held_out_corr": mean[(cfg.memory_k[0], 0.0)],
        "gain": 1.0 + share * (full - 1.0),
        "gain_share": share,
        "reliable": share > 0,
    }


def gain_share(held_out_corr: float, cfg: AudioEncoderConfig) -> float:
    """0..1: how much of the motion gains a prediction this well correlated on the held-out slices gets (none
    below `cfg.gain_min_corr`, all from `cfg.gain_full_corr`, linear between)."""
    share = (held_out_corr - cfg.gain_min_corr) / (cfg.gain_full_corr - cfg.gain_min_corr)
    return float(np.clip(share, 0.0, 1.0)) if np.isfinite(share) else 0.0


def fit_audio_encoder(
    dataset: Dataset,
    space: ExpressionSpace,
    cfg: AudioEncoderConfig,
    steps: int,
    seed: int,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    finished: list[dict] | None = None,
    on_member: Callable[[list[dict]], None] | None = None,
) -> tuple[AudioEncoder, dict]:
    """Fit an encoder to `space.targets` on the training frames only.

    Each of the `cfg.members` members holds out a different contiguous slice of the training frames for
    early stopping (at most `steps` steps each) and draws from its own seeded generators, so members are
    independent: `finished` (states and logs of members fitted before an interruption) are reused as they
    are, and `on_member(finished)` is called after each member so its caller can checkpoint. Returns the
    encoder (eval mode) and metrics: the held-out loss, and on the validation frames the MSE of the targets
    and the correlation over time of the predicted inner-lip opening with the tracked one ("val_lip_corr")."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    audio_rows = AudioRows.of(dataset, cfg.voices, seed, log)
    targets = torch.from_numpy(space.targets)
    opening = torch.from_numpy(space.opening)
    rest = torch.from_numpy(space.rest)
    rows_per_frame = dataset.manifest.features.rate_hz / dataset.fps  # feature rows between video frames
    train = dataset.indices("train")
    encoder = AudioEncoder(cfg, audio_rows.rows.shape[-1], audio_rows.window_rows.shape[-1], targets.shape[1])
    held_len = max(1, int(round(len(train) * cfg.holdout_fraction)))
    finished = list(finished or [])
    splits = []
    for k, member in enumerate(encoder.members):
        # Members hold out slices spread over the clip: the last, the middle, ... of the training frames.
        end = len(train) - int(round(k * (len(train) - held_len) / max(cfg.members, 1)))
        held = train[end - held_len : end]
        margin = cfg.context + 1  # frames whose context windows overlap the held-out slice are not fitted
        fit = train[(train < held[0] - margin) | (train > held[-1] + margin)]
        splits.append((fit, held))
        if k < len(finished):
            member.load_state_dict(finished[k]["state"])
            member.eval()
            continue
        torch.manual_seed(seed * 1000 + k)  # dropout draws from the global generator
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        fitted = _fit_member(
            member,
            audio_rows,
            rows_per_frame,
            targets,
            opening,
            rest,
            fit,
            held,
            steps,
            cfg,
            gen,
            log,
            f"{k + 1}/{cfg.members}",
            should_stop,
        )
        finished.append({"state": member.state_dict(), **fitted})
        if on_member is not None:
            on_member(finished)
    encoder.eval()
    span = dataset.window_span_frames()
    plain = audio_rows.windows(torch.arange(audio_rows.num_frames))  # [N, W, F] the original audio's windows
    blend = choose_memory_blend(encoder, plain, targets, opening, rest, splits, span, audio_rows.voice_columns, cfg)
    kept = train[np.linspace(0, len(train) - 1, min(len(train), cfg.memory_max)).round().astype(int)]
    kept_t = torch.as_tensor(kept)
    encoder.memory.fill(plain[kept_t], targets[kept_t], kept_t, rest, blend["memory_k"], span, audio_rows.voice_columns)
    encoder.memory.weight = torch.tensor(blend["memory_weight"])
    encoder.gain, encoder.gain_share, encoder.closed = (
        torch.tensor(blend["gain"]),
        torch.tensor(blend["gain_share"]),
        rest.clone(),
    )
    encoder.silence_column = torch.tensor(audio_rows.silence_column)
    encoder.energy_column = torch.tensor(audio_rows.energy_column)
    train_t = torch.as_tensor(train)
    encoder.target_min, encoder.target_max = targets[train_t].min(0).values, targets[train_t].max(0).values
    encoder.opening = opening.clone()
    if cfg.max_clip_gain > 1 and blend["reliable"]:
        parts = torch.split(train_t, 256)
        stacks = (plain[_context_index(part, cfg.context, audio_rows.num_frames)] for part in parts)
        measures = np.concatenate([encoder.frame_measures(stack, part) for stack, part in zip(stacks, parts)])
        encoder.speech_spread = torch.tensor(encoder.speaking_spread(measures, encoder.noise_floor(measures)))
    if log is not None:
        log(
            f"audio encoder: example memory share {blend['memory_weight']:.2f} with k={blend['memory_k']} "
            f"(held-out lip-opening correlation {blend['memory_held_out_corr']:.3f}, network alone "
            f"{blend['network_held_out_corr']:.3f}); motion gain {blend['gain']:.2f}"
            + (
                f" ({blend['gain_share']:.0%} of the way to the tracked motion)"
                if blend["reliable"]
                else " (too unreliable to amplify: no per-clip gain either). Warning: with "
                f"{len(train) / dataset.fps:.0f} s "
                "of training speech the mouth will follow new audio weakly; a video of 1-3 minutes of the person "
                "talking gives the audio encoder enough to learn from"
            )
        )
    metrics = {
        "train_seconds": time.perf_counter() - start,
        "held_out_loss": float(np.mean([m["held_out_loss"] for m in finished])),
        "best_steps": [m["best_step"] for m in finished],
        **blend,
        **evaluate_encoder(encoder, dataset, space),
    }
    return encoder, metrics


@torch.no_grad()
def predict_expression(encoder: AudioEncoder, audio_windows: np.ndarray, batch: int = 256) -> np.ndarray:
    """[N, 2K+1, W, F] windows -> [N, E] predicted targets, in batches."""
    encoder.eval()
    return np.concatenate(
        [
            encoder(torch.from_numpy(np.ascontiguousarray(audio_windows[i : i + batch])))[1].numpy()
            for i in range(0, len(audio_windows), batch)
        ]
    )


def evaluate_encoder(encoder: AudioEncoder, dataset: Dataset, space: ExpressionSpace) -> dict:
    """Validation-frame MSE of the targets and correlation over time of the inner-lip opening."""
    val = dataset.indices("val")
    pred = predict_expression(encoder, dataset.audio_windows(encoder.context, val))
    tracked = space.opening_of_codes(np.asarray(dataset.tracking("expression_pca"))[val])
    predicted = space.opening_of_codes(space.to_codes(pred))
    corr = float(np.corrcoef(tracked, predicted)[0, 1]) if len(val) > 2 and predicted.std() > 0 else float("nan")
    return {"val_mse": float(np.mean((pred - space.targets[val]) ** 2)), "val_lip_corr": corr}
