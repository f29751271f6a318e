"""The torso and neck: a camera-space RGBA layer, warped by a small function of the head pose only.

Published systems paste the head onto torsos of training frames, and the neck flickers under new audio
because consecutive frames come from unrelated moments. Here the torso is one learned image (colour and
coverage), moved by a 2D affine warp computed from the (smoothed) head pose alone: it knows nothing of
audio, so new speech cannot make it flicker, and the same pose always gives the same pixels. The warp
starts as the identity (zero-initialised) and learns how the shoulders and neck follow the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TorsoConfig:
    """Size of the pose-to-warp function."""

    warp_hidden: int = 16  # hidden units of the nonlinear part of the warp


def torso_pose_features(rotation: Tensor, translation: Tensor, reference_rotation: Tensor,
                        reference_translation: Tensor, K: Tensor, size: int) -> Tensor:
    """[B, 3, 3], [B, 3] -> [B, 6]: head rotation relative to the reference (small-angle vector, radians)
    and the image shift (normalised -1..1 units) and relative depth change of the head centre."""
    rel = reference_rotation.T @ rotation  # [B, 3, 3]
    angles = 0.5 * torch.stack([rel[:, 2, 1] - rel[:, 1, 2], rel[:, 0, 2] - rel[:, 2, 0], rel[:, 1, 0] - rel[:, 0, 1]], -1)
    def project(t: Tensor) -> Tensor:
        uv = t @ K.T
        return uv[..., :2] / uv[..., 2:] / size * 2
    shift = project(translation) - project(reference_translation[None])
    depth = (translation[:, 2:] - reference_translation[2]) / reference_translation[2]
    return torch.cat([angles, shift, depth], -1)


class TorsoLayer(nn.Module):
    """Pose [B] -> torso RGBA image [B, H, W, 4] in the training camera."""

    def __init__(self, cfg: TorsoConfig, size: int, reference_rotation: Tensor, reference_translation: Tensor, K: Tensor):
        super().__init__()
        self.size = size
        self.rgb_logits = nn.Parameter(torch.zeros(1, 3, size, size))
        self.alpha_logits = nn.Parameter(torch.full((1, 1, size, size), -4.0))
        self.linear = nn.Linear(6, 6)
        self.nonlinear = nn.Sequential(nn.Linear(6, cfg.warp_hidden), nn.Tanh(), nn.Linear(cfg.warp_hidden, 6))
        for layer in (self.linear, self.nonlinear[2]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("reference_rotation", reference_rotation.float())
        self.register_buffer("reference_translation", reference_translation.float())
        self.register_buffer("K", K.float())

    def warp_parameters(self) -> list[nn.Parameter]:
        """The pose-to-warp function's weights (trained like the other networks)."""
        return [*self.linear.parameters(), *self.nonlinear.parameters()]

    def image_parameters(self) -> list[nn.Parameter]:
        """The torso image: colour and coverage logits (trained at their own rate)."""
        return [self.rgb_logits, self.alpha_logits]

    @torch.no_grad()
    def init_from_frames(self, frames: Tensor, torso_masks: Tensor, plate: Tensor) -> None:
        """Start from the mean torso of some frames [F, H, W, 3] with masks [F, H, W] (0..1) over plate [H, W, 3]."""
        weight = torso_masks[..., None]
        rgb = (frames * weight).sum(0) / weight.sum(0).clamp_min(1e-6)
        covered = weight.mean(0)
        rgb = torch.where(weight.sum(0) > 0, rgb, plate)
        self.rgb_logits.copy_(torch.logit(rgb.clamp(0.01, 0.99)).permute(2, 0, 1)[None])
        self.alpha_logits.copy_(torch.logit(covered.clamp(0.02, 0.98)).permute(2, 0, 1)[None])

    def forward(self, rotation: Tensor, translation: Tensor) -> tuple[Tensor, Tensor]:
        """-> rgb [B, H, W, 3], alpha [B, H, W, 1]; a deterministic function of the pose."""
        f = torso_pose_features(rotation, translation, self.reference_rotation, self.reference_translation, self.K, self.size)
        identity = torch.tensor([1.0, 0, 0, 0, 1, 0], device=f.device)
        theta = (identity + self.linear(f) + self.nonlinear(f)).reshape(-1, 2, 3)
        grid = F.affine_grid(theta, [f.shape[0], 4, self.size, self.size], align_corners=False)
        rgba = torch.cat([self.rgb_logits, self.alpha_logits], 1).expand(f.shape[0], -1, -1, -1)
        warped = F.grid_sample(torch.sigmoid(rgba), grid, align_corners=False, padding_mode="border")
        warped = warped.permute(0, 2, 3, 1)
        return warped[..., :3], warped[..., 3:]
