"""Spatial-audio attention: per-frame offsets of every Gaussian from what is said and how the head is held.

Each Gaussian asks (its hash tri-plane feature is the query) which of the frame's condition tokens
concern it: the audio embedding, the audio-predicted (or, in training, tracked) expression, the eye blink,
the head pose, and a learned null token that lets a Gaussian attend to "nothing" (hair, back of the head).
The attended value, with the feature, feeds small heads that output offsets of position, rotation, scale,
opacity and colour. The output layer starts at zero, so training starts from the canonical head, and the
big motions come from the landmark prior (gaussians.skinned_displacement); these offsets are residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONDITIONS = ("audio", "expression", "blink", "pose")  # plus the learned null token
POSE_DIM = 9  # the first two rotation columns and the translation offset (see pose_features)


@dataclass
class DeformConfig:
    """Sizes of the spatial-audio attention."""

    token_dim: int = 32  # width of the condition tokens and of the attention
    hidden: int = 64  # width of the offset heads
    position_scale_m: float = 0.01  # a unit of network output moves a Gaussian this far (metres)


@dataclass
class Offsets:
    """Per-frame, per-Gaussian offsets added to the raw canonical parameters ([B, N, ...])."""

    means: Tensor  # [B, N, 3] metres
    quats: Tensor  # [B, N, 4] added to the unnormalised quaternion
    log_scales: Tensor  # [B, N, 3]
    opacity_logits: Tensor  # [B, N]
    colours: Tensor  # [B, N, 3] added to the degree-0 SH coefficient


def pose_features(rotation: Tensor, translation: Tensor, reference_translation: Tensor) -> Tensor:
    """[B, 3, 3], [B, 3] -> [B, 9]: a continuous rotation code and the translation in decimetres from the
    training mean (so the numbers are of order one)."""
    return torch.cat([rotation[..., :, :2].reshape(-1, 6), 10 * (translation - reference_translation)], -1)


class SpatialAudioAttention(nn.Module):
    """Gaussian features [N, F] x condition tokens [B, T, D] -> Offsets, plus the attention weights."""

    def __init__(self, cfg: DeformConfig, feature_dim: int, audio_dim: int, expression_dim: int):
        super().__init__()
        d = cfg.token_dim
        self.position_scale = cfg.position_scale_m
        self.token_proj = nn.ModuleDict(
            {
                "audio": nn.Linear(audio_dim, d),
                "expression": nn.Linear(expression_dim, d),
                "blink": nn.Linear(2, d),
                "pose": nn.Linear(POSE_DIM, d),
            }
        )
        self.null_token = nn.Parameter(torch.randn(d) * 0.1)
        self.query = nn.Linear(feature_dim, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.trunk = nn.Sequential(
            nn.Linear(feature_dim + d, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU()
        )
        self.out = nn.Linear(cfg.hidden, 3 + 4 + 3 + 1 + 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._per_gaussian_cache: tuple[Tensor, Tensor, Tensor] | None = None

    def train(self, mode: bool = True) -> SpatialAudioAttention:
        if mode:
            self._per_gaussian_cache = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._per_gaussian_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def _per_gaussian(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """[N, D] queries and [N, hidden] the features' share of the trunk's first layer (with its bias): they
        depend on the Gaussian alone, so outside training they are kept for as long as the same `features`
        (the head caches its tri-plane features) come back."""
        cache = self._per_gaussian_cache
        if not self.training and cache is not None and cache[0] is features:
            return cache[1], cache[2]
        first = self.trunk[0]
        queries = self.query(features)
        base = F.linear(features, first.weight[:, : features.shape[-1]], first.bias)
        self._per_gaussian_cache = None if self.training else (features, queries, base)
        return queries, base

    def tokens(self, audio: Tensor, expression: Tensor, blink: Tensor, pose: Tensor) -> Tensor:
        """[B, *] condition vectors -> [B, T, D] tokens (T = 5 with the null token)."""
        inputs = {"audio": audio, "expression": expression, "blink": blink, "pose": pose}
        toks = [self.token_proj[name](inputs[name]) for name in CONDITIONS]
        toks.append(self.null_token.expand(audio.shape[0], -1))
        return torch.stack(toks, 1)

    def forward(self, features: Tensor, tokens: Tensor) -> tuple[Offsets, Tensor]:
        """features [N, F] (shared by the frames), tokens [B, T, D] -> (Offsets [B, N, ...], attention [B, N, T])."""
        q, base = self._per_gaussian(features)  # [N, D], [N, hidden]
        k, v = self.key(tokens), self.value(tokens)  # [B, T, D]
        attn = torch.softmax(torch.einsum("nd,btd->bnt", q, k) / q.shape[-1] ** 0.5, -1)
        attended = torch.einsum("bnt,btd->bnd", attn, v)  # [B, N, D]
        # the trunk's first layer on [feature, attended], as the sum of its two parts
        h = torch.relu(base + F.linear(attended, self.trunk[0].weight[:, features.shape[-1] :]))
        o = self.out(self.trunk[2:](h))
        offsets = Offsets(
            means=o[..., 0:3] * self.position_scale,
            quats=o[..., 3:7],
            log_scales=o[..., 7:10],
            opacity_logits=o[..., 10],
            colours=o[..., 11:14],
        )
        return offsets, attn
