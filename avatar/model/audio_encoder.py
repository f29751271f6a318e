"""Audio -> expression: the part of the avatar that decides lip sync.

A person's video gives under a minute of speech, far too little to learn audio -> pixels directly. So the
avatar first learns audio -> the tracked facial expression (a few numbers per frame that say how the lower
face is deformed), and the Gaussians follow that geometry. This module holds:

- `expression_targets`: the low-dimensional target. The lower face (landmarks below the nose) is what speech
  moves; its displacement under the tracked expression PCA code is compressed by PCA to a few components,
  scaled by one common factor so that the loss stays proportional to landmark motion in metres.
  `expression_to_code` maps a prediction back to the dataset's full expression PCA code.
- `AudioEncoder`: per frame, a small 1D convolution over the audio-feature window; then self-attention over the
  2K+1 neighbouring frames (about +-250 ms in all), so lips anticipate and follow the sound.
- `train_audio_encoder`: a fit that works with ~45 s of speech in about a minute on CPU: heavy regularisation,
  sub-frame time-shift augmentation, an extra loss on the inner-lip opening, early stopping on a held-out slice
  of the TRAINING frames, and a few members trained on different held-out slices whose predictions are
  averaged. benchmarks/bench_lipsync.py measures the result against a ridge baseline.

Silence: an all-zero input (a silent clip after clip-level normalisation) is trained to give the person's
closed-mouth expression (`info["rest"]`), and is constant over time, so the mouth is closed and still.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.contracts.dataset import Dataset

# mediapipe FaceMesh landmark ids: inner lips (upper, lower), face width (cheek to cheek), nose tip.
INNER_LIP_UPPER, INNER_LIP_LOWER = 13, 14
FACE_LEFT, FACE_RIGHT = 234, 454
NOSE_TIP = 1
# Targets: at most MAX_COMPONENTS lower-face PCA components, fewer when they explain EXPLAINED_VARIANCE of its motion.
MAX_COMPONENTS = 12
EXPLAINED_VARIANCE = 0.98


@dataclass
class AudioEncoderConfig:
    """Sizes and training settings of the audio -> expression encoder."""

    context: int = 4  # K: neighbouring frames on each side that the temporal attention sees
    channels: int = 32  # width of the per-frame convolution over the feature window
    embed_dim: int = 64  # size of the per-frame audio embedding (the condition token of the deformation)
    heads: int = 4  # attention heads of the temporal self-attention
    layers: int = 1  # temporal self-attention layers
    dropout: float = 0.2  # dropout in the window encoder and the attention
    members: int = 3  # encoders trained on different held-out slices, predictions averaged (1 = no ensemble)
    lr: float = 2e-3  # AdamW learning rate (cosine decay)
    weight_decay: float = 0.05  # AdamW weight decay
    batch_size: int = 64  # frames per step
    feature_noise: float = 0.15  # std of Gaussian noise added to the normalised features while training
    freq_mask: int = 12  # SpecAugment: up to this many adjacent feature bins zeroed per sample while training
    time_shift: int = 2  # sub-frame augmentation: audio shifted by up to this many feature rows (10 ms each)
    silence_fraction: float = 0.05  # share of each batch replaced by all-zero audio with the closed-mouth target
    opening_weight: float = 1.0  # extra loss weight of the inner-lip opening (relative to all targets together)
    holdout_fraction: float = 0.12  # share of the training frames held out for early stopping, per member
    eval_every: int = 50  # steps between early-stopping checks
    patience: int = 6  # checks without improvement before a member stops
    memory_k: tuple[int, ...] = (3, 5, 8)  # neighbour counts the example memory may use (chosen on held-out slices)
    memory_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # memory shares it may use (0: network only)
    memory_sigma: float = 1.0  # frames: the memory's predictions are smoothed over neighbours with this Gaussian
    # At most this many training frames in the memory (evenly spaced), so long videos keep it cheap: 7500 entries
    # (5 min) cost ~8 ms a frame on a 2-core CPU and 39 MB.
    memory_max: int = 7500
    max_gain: float = 2.0  # at most this amplification of the predicted motion (see AudioEncoder.gain)
    # Amplify only a prediction this well correlated on the held-out slices: below it the prediction is mostly
    # noise, and amplifying it makes the lips chatter (Obama, held-out 0.42: gain 1.47 raised LMD 3.4 -> 4.1 px).
    gain_min_corr: float = 0.5


# ----------------------------------------------------------------------------------------------- targets
def lower_face_ids(canonical_face: np.ndarray) -> np.ndarray:
    """Landmarks below the nose tip in the canonical face (y points down): lips, jaw, chin, lower cheeks."""
    return np.flatnonzero(canonical_face[:, 1] > canonical_face[NOSE_TIP, 1])


def expression_targets(dataset: Dataset) -> tuple[np.ndarray, dict]:
    """[N, E] normalised audio-predictable targets of every frame, and `info` to undo them.

    The targets are the top PCA components (fitted on the training frames) of the lower-face landmark
    displacement, divided by the std of the first component. `info` holds numpy arrays:
    "mean" [D] and "components" [E, D] of that PCA (D = 3 * lower-face landmarks), "scale" (a float),
    "to_code" [E, P] and "code_mean" [P] (the least-squares map back to the full expression code),
    "rest" [E] (the closed-mouth target used for silence), "lower_face" [M] landmark ids, "opening" [E] (the
    inner-lip opening is, to first order, targets @ opening plus a constant; unit std on the training frames)."""
    code = np.asarray(dataset.tracking("expression_pca"), np.float64)  # [N, P]
    basis = np.asarray(dataset.tracking("expression_basis"), np.float64)  # [P, 478, 3]
    canonical = np.asarray(dataset.tracking("canonical_face"), np.float64)
    train = dataset.indices("train")
    ids = lower_face_ids(canonical)
    motion = code @ basis[:, ids].reshape(basis.shape[0], -1)  # [N, D] lower-face displacement
    mean = motion[train].mean(0)
    _, sing, vt = np.linalg.svd(motion[train] - mean, full_matrices=False)
    share = np.cumsum(sing**2) / max(np.sum(sing**2), 1e-20)
    num = int(min(np.searchsorted(share, EXPLAINED_VARIANCE) + 1, MAX_COMPONENTS))
    components = vt[:num]  # [E, D]
    scale = float(sing[0] / np.sqrt(len(train))) or 1.0
    targets = (motion - mean) @ components.T / scale  # [N, E]

    code_mean = code[train].mean(0)
    to_code, *_ = np.linalg.lstsq(targets[train], code[train] - code_mean, rcond=None)  # [E, P]
    opening = lip_opening(code, dataset)
    closed = train[opening[train] <= np.quantile(opening[train], 0.1)]
    # The inner-lip gap, linearised at the mean shape: opening ~ targets @ direction (unit std on training frames).
    upper, lower = (int(np.flatnonzero(ids == i)[0]) for i in (INNER_LIP_UPPER, INNER_LIP_LOWER))
    mean_shape = canonical[ids] + mean.reshape(-1, 3)
    axis = (mean_shape[lower] - mean_shape[upper]) / max(np.linalg.norm(mean_shape[lower] - mean_shape[upper]), 1e-9)
    comp = components.reshape(num, -1, 3)
    direction = (comp[:, lower] - comp[:, upper]) @ axis  # [E]
    direction /= max(float(np.std(targets[train] @ direction)), 1e-12)
    info = {
        "mean": mean.astype(np.float32), "components": components.astype(np.float32), "scale": scale,
        "to_code": to_code.astype(np.float32), "code_mean": code_mean.astype(np.float32),
        "rest": targets[closed].mean(0).astype(np.float32), "lower_face": ids,
        "opening": direction.astype(np.float32),
    }
    return targets.astype(np.float32), info


def expression_to_code(expression: Tensor, info: dict) -> Tensor:
    """[..., E] predicted (normalised) targets -> [..., P] expression PCA code of the dataset; differentiable.
    The landmarks follow as canonical_face + code @ expression_basis."""
    to_code = torch.as_tensor(info["to_code"], dtype=expression.dtype, device=expression.device)
    code_mean = torch.as_tensor(info["code_mean"], dtype=expression.dtype, device=expression.device)
    return code_mean + expression @ to_code


def lip_opening(code: np.ndarray, dataset: Dataset) -> np.ndarray:
    """[N, P] expression codes -> [N] inner-lip opening (landmark 13 to 14) over the face width, measured
    on the reconstructed canonical-frame landmarks."""
    basis = np.asarray(dataset.tracking("expression_basis"), np.float64)
    canonical = np.asarray(dataset.tracking("canonical_face"), np.float64)
    ids = [INNER_LIP_UPPER, INNER_LIP_LOWER, FACE_LEFT, FACE_RIGHT]
    pts = canonical[ids] + np.einsum("np,pkc->nkc", np.asarray(code, np.float64), basis[:, ids])  # [N, 4, 3]
    return np.linalg.norm(pts[:, 0] - pts[:, 1], axis=-1) / np.linalg.norm(pts[:, 2] - pts[:, 3], axis=-1)


# ------------------------------------------------------------------------------------------------- model
class WindowEncoder(nn.Module):
    """[B, W, F] one frame's feature window -> [B, embed_dim]: per-row projection of the features, then 1D
    convolutions over time that halve it twice."""

    def __init__(self, feature_dim: int, window: int, channels: int, embed_dim: int, dropout: float):
        super().__init__()
        self.convs = nn.Sequential(  # a pointwise projection first: the full-width convolutions are costly on CPU
            nn.Conv1d(feature_dim, channels, 1), nn.GELU(), nn.Dropout(dropout),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
        )
        reduced = (window + 3) // 4
        self.out = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * reduced, embed_dim))

    def forward(self, windows: Tensor) -> Tensor:
        return self.out(self.convs(windows.transpose(1, 2)))


class _Member(nn.Module):
    """One encoder: window encoder per frame, temporal self-attention, the centre frame's token."""

    def __init__(self, cfg: AudioEncoderConfig, feature_dim: int, window: int, expression_dim: int):
        super().__init__()
        frames = 2 * cfg.context + 1
        self.window_encoder = WindowEncoder(feature_dim, window, cfg.channels, cfg.embed_dim, cfg.dropout)
        self.position = nn.Parameter(torch.zeros(frames, cfg.embed_dim))
        layer = nn.TransformerEncoderLayer(cfg.embed_dim, cfg.heads, 2 * cfg.embed_dim, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, expression_dim)

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        b, c, w, f = audio.shape
        tokens = self.window_encoder(audio.reshape(b * c, w, f)).reshape(b, c, -1) + self.position
        centre = self.norm(self.temporal(tokens)[:, c // 2])  # [B, embed_dim]
        return centre, self.head(centre)


class ExampleMemory(nn.Module):
    """Nearest-neighbour regression over the training frames: audio window -> the mean tracked expression of
    the k training frames whose windows are closest (Euclidean, normalised features).

    Why next to the network: with under a minute of speech, a lookup of how this person's mouth moved for
    the most similar sounds is a strong predictor of its own (on the 50 s Macron clip it follows the
    validation lip opening better than the network), and the two err differently, so their blend beats
    both. The share of each is chosen on held-out slices of the training frames (`choose_memory_blend`), so a
    dataset where the lookup does not help gets the network alone. Predictions are smoothed over the
    neighbouring frames of the window stack. Silence (the all-zero window) is stored as k entries with the
    closed-mouth expression, so a silent clip still gives a still, closed mouth.
    """

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.sigma = cfg.memory_sigma
        # Sized by the dataset, hence empty until `fill` or a checkpoint's state (see _load_from_state_dict).
        self.register_buffer("keys", torch.zeros(0, 0))  # [M, W*F] flattened windows
        self.register_buffer("values", torch.zeros(0, 0))  # [M, E] tracked expression targets
        self.register_buffer("frames", torch.zeros(0, dtype=torch.long))  # [M] dataset frame id (-1: silence)
        self.register_buffer("k", torch.tensor(5))
        self.register_buffer("span", torch.tensor(0))  # frames apart before two windows share no audio
        self.register_buffer("weight", torch.tensor(0.0))  # share of the memory in the blend with the network

    def fill(self, windows: Tensor, targets: Tensor, frames: Tensor, rest: Tensor, k: int, span: int) -> None:
        """[M, W, F] windows, [M, E] targets and [M] frame ids of the training frames; [E] closed mouth;
        `span`: frames apart before two windows share no audio sample."""
        silence = torch.zeros(k, *windows.shape[1:], dtype=windows.dtype)
        self.keys = torch.cat([windows, silence]).flatten(1).float().contiguous()
        self.values = torch.cat([targets, rest.expand(k, -1)]).float()
        self.frames = torch.cat([frames.long(), torch.full((k,), -1, dtype=torch.long)])
        self.k = torch.tensor(k)
        self.span = torch.tensor(span)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("keys", "values", "frames"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def active(self) -> bool:
        return len(self.frames) > 0 and float(self.weight) > 0

    def forward(self, audio: Tensor, frames: Tensor | None = None, k: int | None = None) -> Tensor:
        """[B, 2K+1, W, F] window stacks -> [B, E]. `frames` [B]: the dataset frames the stacks belong to;
        memory entries whose windows overlap any window of the stack are then skipped (a training frame
        must not find itself)."""
        b, c = audio.shape[:2]
        k = int(self.k) if k is None else k
        offsets = torch.arange(c, device=audio.device) - c // 2
        weights = torch.exp(-0.5 * (offsets / max(self.sigma, 1e-6)) ** 2)
        use = weights > 0.05  # context frames that matter for the smoothing
        queries = audio[:, use].flatten(2)  # [B, C', W*F]
        flat = queries.reshape(-1, queries.shape[-1])
        dist = torch.cdist(flat, self.keys.to(audio.dtype)).reshape(b, -1, len(self.keys))  # [B, C', M]
        if frames is not None:
            reach = int(offsets[use].abs().max()) + int(self.span)  # entries this close share audio with a window
            near = (self.frames[None, :] - frames[:, None].to(self.frames.device)).abs() < reach  # [B, M]
            near &= self.frames[None, :] >= 0
            dist = dist.masked_fill(near[:, None, :], float("inf"))
        idx = dist.topk(k, dim=-1, largest=False).indices  # [B, C', k]
        per_window = self.values.to(audio.dtype)[idx].mean(-2)  # [B, C', E]
        w = weights[use] / weights[use].sum()
        return torch.einsum("bce,c->be", per_window, w)


class AudioEncoder(nn.Module):
    """[B, 2K+1, W, F] normalised audio windows of a frame and its neighbours -> (embedding [B, embed_dim],
    expression [B, E]). With several members (an ensemble trained on different held-out slices) the
    expression is their mean and the embedding their concatenation; the example memory, when it has a
    share, is blended into the expression."""

    def __init__(self, cfg: AudioEncoderConfig, feature_dim: int, window: int, expression_dim: int):
        super().__init__()
        self.cfg = cfg
        self.context = cfg.context
        self.embed_dim = cfg.embed_dim * cfg.members
        self.members = nn.ModuleList(_Member(cfg, feature_dim, window, expression_dim) for _ in range(cfg.members))
        self.memory = ExampleMemory(cfg)
        # A regressor trained for the least squared error predicts less motion than there is (it hedges
        # towards the mean), and the mouth looks lazy. The prediction's departure from the closed mouth is
        # amplified by the gain that gives the held-out lip opening the tracked one's spread (around the
        # closed mouth, not the mean: a closed mouth must stay closed, not be pushed through itself), then
        # clamped to the range the person's face showed in the training frames.
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("closed", torch.zeros(expression_dim))
        self.register_buffer("target_min", torch.full((expression_dim,), -float("inf")))
        self.register_buffer("target_max", torch.full((expression_dim,), float("inf")))

    def forward(self, audio: Tensor, frames: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`frames` [B]: dataset frame ids of training-set stacks, so the memory skips their own neighbourhood."""
        outputs = [m(audio) for m in self.members]
        embedding = torch.cat([e for e, _ in outputs], dim=-1)
        expression = torch.stack([x for _, x in outputs]).mean(0)
        if self.memory.active:
            w = self.memory.weight.to(expression.dtype)
            expression = (1 - w) * expression + w * self.memory(audio, frames)
        expression = self.closed + self.gain * (expression - self.closed)
        expression = torch.minimum(torch.maximum(expression, self.target_min), self.target_max)
        return embedding, expression


# ---------------------------------------------------------------------------------------------- training
def _shifted_windows(dataset: Dataset, max_shift: int) -> np.ndarray:
    """[2S+1, N, W, F] normalised windows of every frame with the audio moved by -S..S feature rows."""
    from avatar.contracts.audio import frame_windows, normalize_features

    f = dataset.manifest.features
    feats = normalize_features(np.asarray(dataset.audio_features), dataset.feature_stats())
    rows = np.arange(feats.shape[0])
    return np.stack([
        frame_windows(feats[np.clip(rows + s, 0, len(rows) - 1)], f.rate_hz, dataset.fps, dataset.num_frames, f.window)
        for s in range(-max_shift, max_shift + 1)
    ])


def _context_index(frames: Tensor, context: int, limit: int) -> Tensor:
    """[B] frame ids -> [B, 2K+1] ids of their neighbours, edges repeated (as avatar.contracts.audio does)."""
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


def _fit_member(member: _Member, windows: Tensor, rows_per_frame: float, targets: Tensor, opening: Tensor,
                rest: Tensor, fit_ids: np.ndarray, held_ids: np.ndarray, steps: int, cfg: AudioEncoderConfig,
                gen: torch.Generator, log: Callable | None, tag: str) -> dict:
    """Train one member on `fit_ids`, keep the state with the lowest loss on `held_ids`."""
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


def train_audio_encoder(dataset: Dataset, cfg: AudioEncoderConfig, steps: int, seed: int,
                        log: Callable[[str], None] | None = None) -> tuple[AudioEncoder, dict]:
    """Fit an encoder to `expression_targets(dataset)` on the training frames only.

    Each of the `cfg.members` members holds out a different contiguous slice of the training frames for
    early stopping (at most `steps` steps each). Returns the encoder (eval mode) and metrics: the held-out
    loss, and on the validation frames the MSE of the targets and the correlation over time of the
    predicted inner-lip opening with the tracked one ("val_lip_corr")."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    targets_np, info = expression_targets(dataset)
    windows = torch.from_numpy(_shifted_windows(dataset, cfg.time_shift))  # [S, N, W, F]
    targets = torch.from_numpy(targets_np)
    opening = torch.from_numpy(info["opening"])
    rest = torch.from_numpy(info["rest"])
    rows_per_frame = dataset.manifest.features.rate_hz / dataset.fps  # feature rows between video frames
    train = dataset.indices("train")
    encoder = AudioEncoder(cfg, windows.shape[-1], windows.shape[-2], targets.shape[1])
    held_len = max(1, int(round(len(train) * cfg.holdout_fraction)))
    member_logs, splits = [], []
    for k, member in enumerate(encoder.members):
        # Members hold out slices spread over the clip: the last, the middle, ... of the training frames.
        end = len(train) - int(round(k * (len(train) - held_len) / max(cfg.members, 1)))
        held = train[end - held_len:end]
        margin = cfg.context + 1  # frames whose context windows overlap the held-out slice are not fitted
        fit = train[(train < held[0] - margin) | (train > held[-1] + margin)]
        splits.append((fit, held))
        member_logs.append(_fit_member(member, windows, rows_per_frame, targets, opening, rest, fit, held, steps,
                                       cfg, gen, log, f"{k + 1}/{cfg.members}"))
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
        "held_out_loss": float(np.mean([m["held_out_loss"] for m in member_logs])),
        "best_steps": [m["best_step"] for m in member_logs],
        **blend,
        **evaluate_encoder(encoder, dataset, info, targets_np),
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


def evaluate_encoder(encoder: AudioEncoder, dataset: Dataset, info: dict, targets: np.ndarray) -> dict:
    """Validation-frame MSE of the targets and correlation over time of the inner-lip opening."""
    val = dataset.indices("val")
    pred = predict_expression(encoder, dataset.audio_windows(context=encoder.context)[val])
    code_pred = expression_to_code(torch.from_numpy(pred), info).numpy()
    tracked = lip_opening(np.asarray(dataset.tracking("expression_pca"))[val], dataset)
    predicted = lip_opening(code_pred, dataset)
    corr = float(np.corrcoef(tracked, predicted)[0, 1]) if len(val) > 2 and predicted.std() > 0 else float("nan")
    return {"val_mse": float(np.mean((pred - targets[val]) ** 2)), "val_lip_corr": corr}
