"""How the audio encoder (avatar.model.audio_encoder) is fitted: in about a minute on CPU from ~45 s of speech.

Heavy regularisation, sub-frame time-shift augmentation, an extra loss on the inner-lip opening, early
stopping on a held-out slice of the TRAINING frames, and a few members trained on different held-out slices
whose predictions are averaged; then the example memory's share and the motion gain are chosen on those
held-out slices. benchmarks/bench_lipsync.py measures the result against a ridge baseline.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from avatar.contracts.dataset import Dataset
from avatar.model.audio_encoder import AudioEncoder, AudioEncoderConfig, ExampleMemory, EncoderMember
from avatar.train.context import StopRequested
from avatar.train.expression import ExpressionSpace


def _shifted_windows(dataset: Dataset, max_shift: int) -> np.ndarray:
    """[2S+1, N, W, F] normalised windows of every frame with the audio moved by -S..S feature rows."""
    from avatar.audio.features import frame_windows, normalize_features

    f = dataset.manifest.features
    feats = normalize_features(np.asarray(dataset.audio_features), dataset.feature_stats())
    rows = np.arange(feats.shape[0])
    return np.stack([
        frame_windows(feats[np.clip(rows + s, 0, len(rows) - 1)], f.rate_hz, dataset.fps, dataset.num_frames, f.window)
        for s in range(-max_shift, max_shift + 1)
    ])


def _context_index(frames: Tensor, context: int, limit: int) -> Tensor:
    """[B] frame ids -> [B, 2K+1] ids of their neighbours, edges repeated (as avatar.audio.features does)."""
    return (frames[:, None] + torch.arange(-context, context + 1)).clamp(0, limit - 1)


def _augment(audio: Tensor, cfg: AudioEncoderConfig, gen: torch.Generator) -> Tensor:
    """Feature noise and one SpecAugment-style band of zeroed feature bins per sample."""
    b, _, _, f = audio.shape
    audio = audio + cfg.feature_noise * torch.randn(audio.shape, generator=gen)
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


def _fit_member(member: EncoderMember, windows: Tensor, rows_per_frame: float, targets: Tensor, opening: Tensor,
                rest: Tensor, fit_ids: np.ndarray, held_ids: np.ndarray, steps: int, cfg: AudioEncoderConfig,
                gen: torch.Generator, log: Callable | None, tag: str, should_stop: Callable[[], bool]) -> dict:
    """Train one member on `fit_ids`, keep the state with the lowest loss on `held_ids`. Raises
    StopRequested between two steps once `should_stop()` says so (the member is then refitted on resume)."""
    shifts, n = windows.shape[0], windows.shape[1]
    max_shift = shifts // 2
    opt = torch.optim.AdamW(member.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    fit_t = torch.as_tensor(fit_ids)
    held_t = torch.as_tensor(held_ids)
    held_audio = windows[max_shift][_context_index(held_t, cfg.context, n)]
    best = (float("inf"), copy.deepcopy(member.state_dict()), 0)
    bad = 0
    for step in range(1, steps + 1):
        if should_stop():
            raise StopRequested
        member.train()
        frames = fit_t[torch.randint(len(fit_t), (cfg.batch_size,), generator=gen)]
        shift = torch.randint(-max_shift, max_shift + 1, (cfg.batch_size,), generator=gen)
        ctx = _context_index(frames, cfg.context, n)
        audio = windows[(shift + max_shift)[:, None], ctx]  # [B, C, W, F]
        # The target at the shifted time: linear interpolation between neighbouring frames.
        frac = shift.float() / rows_per_frame
        nxt = (frames + torch.sign(shift)).clamp(0, n - 1)
        a = frac.abs()[:, None]
        target = (1 - a) * targets[frames] + a * targets[nxt]
        audio = _augment(audio, cfg, gen)
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
def choose_memory_blend(encoder: AudioEncoder, windows: Tensor, targets: Tensor, opening: Tensor, rest: Tensor,
                        splits: list[tuple[np.ndarray, np.ndarray]], span: int, cfg: AudioEncoderConfig) -> dict:
    """The example memory's k and share that best follow the lip opening on the members' held-out slices.

    For each member, its held-out slice is predicted by that member (which never saw it) and by a memory of
    the frames the member was fitted on, so both are judged on audio they did not hold. Returns
    "memory_k", "memory_weight", the mean held-out correlations of the chosen blend and of the network, and
    "gain": how much the blend's lip opening must be amplified to move as much as the tracked one there (1
    when the blend's correlation there is below `cfg.gain_min_corr`).
    """
    n = windows.shape[0]
    scores: dict[tuple[int, float], list[tuple[float, float, float]]] = {}  # (k, share) -> (corr, spreads)
    for member, (fit, held) in zip(encoder.members, splits):
        held_t = torch.as_tensor(held)
        stacks = windows[_context_index(held_t, cfg.context, n)]  # [H, 2K+1, W, F]
        net = member(stacks)[1]
        memory = ExampleMemory(cfg)
        fit_t = torch.as_tensor(fit)
        memory.fill(windows[fit_t], targets[fit_t], fit_t, rest, max(cfg.memory_k), span)
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
    reliable = mean[(k, w)] >= cfg.gain_min_corr
    gain = float(np.clip(truth_std / max(predicted_std, 1e-9), 1.0, cfg.max_gain)) if reliable else 1.0
    return {"memory_k": int(k), "memory_weight": float(w), "memory_held_out_corr": mean[(k, w)],
            "network_held_out_corr": mean[(cfg.memory_k[0], 0.0)], "gain": gain}


def fit_audio_encoder(dataset: Dataset, space: ExpressionSpace, cfg: AudioEncoderConfig, steps: int, seed: int,
                      log: Callable[[str], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
                      finished: list[dict] | None = None,
                      on_member: Callable[[list[dict]], None] | None = None) -> tuple[AudioEncoder, dict]:
    """Fit an encoder to `space.targets` on the training frames only.

    Each of the `cfg.members` members holds out a different contiguous slice of the training frames for
    early stopping (at most `steps` steps each) and draws from its own seeded generators, so members are
    independent: `finished` (states and logs of members fitted before an interruption) are reused as they
    are, and `on_member(finished)` is called after each member so its caller can checkpoint. Returns the
    encoder (eval mode) and metrics: the held-out loss, and on the validation frames the MSE of the targets
    and the correlation over time of the predicted inner-lip opening with the tracked one ("val_lip_corr")."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    windows = torch.from_numpy(_shifted_windows(dataset, cfg.time_shift))  # [S, N, W, F]
    targets = torch.from_numpy(space.targets)
    opening = torch.from_numpy(space.opening)
    rest = torch.from_numpy(space.rest)
    rows_per_frame = dataset.manifest.features.rate_hz / dataset.fps  # feature rows between video frames
    train = dataset.indices("train")
    encoder = AudioEncoder(cfg, windows.shape[-1], windows.shape[-2], targets.shape[1])
    held_len = max(1, int(round(len(train) * cfg.holdout_fraction)))
    finished = list(finished or [])
    splits = []
    for k, member in enumerate(encoder.members):
        # Members hold out slices spread over the clip: the last, the middle, ... of the training frames.
        end = len(train) - int(round(k * (len(train) - held_len) / max(cfg.members, 1)))
        held = train[end - held_len:end]
        margin = cfg.context + 1  # frames whose context windows overlap the held-out slice are not fitted
        fit = train[(train < held[0] - margin) | (train > held[-1] + margin)]
        splits.append((fit, held))
        if k < len(finished):
            member.load_state_dict(finished[k]["state"])
            member.eval()
            continue
        torch.manual_seed(seed * 1000 + k)  # dropout draws from the global generator
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        fitted = _fit_member(member, windows, rows_per_frame, targets, opening, rest, fit, held, steps, cfg, gen, log,
                             f"{k + 1}/{cfg.members}", should_stop)
        finished.append({"state": member.state_dict(), **fitted})
        if on_member is not None:
            on_member(finished)
    encoder.eval()
    span = dataset.window_span_frames()
    plain = windows[windows.shape[0] // 2]  # [N, W, F] the unshifted windows
    blend = choose_memory_blend(encoder, plain, targets, opening, rest, splits, span, cfg)
    kept = train[np.linspace(0, len(train) - 1, min(len(train), cfg.memory_max)).round().astype(int)]
    kept_t = torch.as_tensor(kept)
    encoder.memory.fill(plain[kept_t], targets[kept_t], kept_t, rest, blend["memory_k"], span)
    encoder.memory.weight = torch.tensor(blend["memory_weight"])
    encoder.gain, encoder.closed = torch.tensor(blend["gain"]), rest.clone()
    train_t = torch.as_tensor(train)
    encoder.target_min, encoder.target_max = targets[train_t].min(0).values, targets[train_t].max(0).values
    if log is not None:
        log(f"audio encoder: example memory share {blend['memory_weight']:.2f} with k={blend['memory_k']} "
            f"(held-out lip-opening correlation {blend['memory_held_out_corr']:.3f}, network alone "
            f"{blend['network_held_out_corr']:.3f}); motion gain {blend['gain']:.2f}")
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
    return np.concatenate([
        encoder(torch.from_numpy(np.ascontiguousarray(audio_windows[i:i + batch])))[1].numpy()
        for i in range(0, len(audio_windows), batch)
    ])


def evaluate_encoder(encoder: AudioEncoder, dataset: Dataset, space: ExpressionSpace) -> dict:
    """Validation-frame MSE of the targets and correlation over time of the inner-lip opening."""
    val = dataset.indices("val")
    pred = predict_expression(encoder, dataset.audio_windows(context=encoder.context)[val])
    tracked = space.opening_of_codes(np.asarray(dataset.tracking("expression_pca"))[val])
    predicted = space.opening_of_codes(space.to_codes(pred))
    corr = float(np.corrcoef(tracked, predicted)[0, 1]) if len(val) > 2 and predicted.std() > 0 else float("nan")
    return {"val_mse": float(np.mean((pred - space.targets[val]) ** 2)), "val_lip_corr": corr}
