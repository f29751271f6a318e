"""The torso and neck: a camera-space RGBA layer, moved by the body's tracked motion.

Published systems paste the head onto torsos of training frames, and the neck flickers under new audio
because consecutive frames come from unrelated moments. Here the torso is one learned image (colour and
coverage), warped by the dense flow that a row of the pose track's body codes rebuilds
(preprocess.body_motion: breathing, posture, the neck following the head). The codes come with the head
pose from the pose track, never from the audio: new speech cannot move the body, and the same row of the
track always gives the same pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TorsoLayer(nn.Module):
    """Body codes [B, K] -> torso RGBA image [B, H, W, 4] in the training camera."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.rgb_logits = nn.Parameter(torch.zeros(1, 3, size, size))
        self.alpha_logits = nn.Parameter(torch.full((1, 1, size, size), -4.0))
        self.register_buffer("body_mean", torch.zeros(2, 0, 0))  # BodyMotion.mean / .basis (set_body_motion)
        self.register_buffer("body_basis", torch.zeros(0, 2, 0, 0))
        self._identity: Tensor | None = None

    def image_parameters(self) -> list[nn.Parameter]:
        """The torso image: colour and coverage logits."""
        return [self.rgb_logits, self.alpha_logits]

    def set_body_motion(self, mean: Tensor, basis: Tensor) -> None:
        """The flow lattice of the dataset's BodyMotion: [2, G, G] mean and [K, 2, G, G] basis."""
        self.body_mean = mean.float().to(self.rgb_logits.device)
        self.body_basis = basis.float().to(self.rgb_logits.device)

    @property
    def body_modes(self) -> int:
        return self.body_basis.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("body_mean", "body_basis"):  # the lattice's size comes with the weights
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _identity_grid(self) -> Tensor:
        """[1, H, W, 2] the identity sampling grid, made once (it is the same every frame)."""
        device = self.rgb_logits.device
        if self._identity is None or self._identity.device != device:
            identity = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]], device=device)
            self._identity = F.affine_grid(identity, [1, 4, self.size, self.size], align_corners=False)
        return self._identity

    def _grid(self, body: Tensor | None, batch: int, sign: float = 1.0) -> Tensor:
        """[B, H, W, 2] sampling grid: the identity plus `sign` times the body flow (none without a lattice)."""
        grid = self._identity_grid().expand(batch, -1, -1, -1)
        if self.body_mean.shape[-1] == 0:
            return grid
        flow = self.body_mean.expand(batch, -1, -1, -1)
        if body is not None and self.body_modes:
            flow = flow + torch.einsum("bk,kcij->bcij", body, self.body_basis)
        flow = F.interpolate(flow, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return grid + sign * flow.permute(0, 2, 3, 1)

    @torch.no_grad()
    def init_from_frames(self, frames: Tensor, torso_masks: Tensor, plate: Tensor, body: Tensor | None) -> None:
        """Start from the mean torso of some frames [F, H, W, 3] with masks [F, H, W] (0..1) over plate
        [H, W, 3], each frame moved back by its body flow (codes `body` [F, K]) into the layer's place:
        frame(x) ~ image(x + flow(x)), so image(y) ~ frame(y - flow(y)) to first order."""
        both = torch.cat([frames.permute(0, 3, 1, 2), torso_masks[:, None]], 1)
        both = F.grid_sample(both, self._grid(body, len(frames), -1.0), align_corners=False, padding_mode="border")
        frames, weight = both[:, :3].permute(0, 2, 3, 1), both[:, 3, ..., None]
        rgb = (frames * weight).sum(0) / weight.sum(0).clamp_min(1e-6)
        covered = weight.mean(0)
        rgb = torch.where(weight.sum(0) > 0, rgb, plate)
        self.rgb_logits.copy_(torch.logit(rgb.clamp(0.01, 0.99)).permute(2, 0, 1)[None])
        self.alpha_logits.copy_(torch.logit(covered.clamp(0.02, 0.98)).permute(2, 0, 1)[None])

    def forward(self, body: Tensor | None) -> tuple[Tensor, Tensor]:
        """Body codes [B, K] (None: one frame in the mean posture) -> rgb [B, H, W, 3], alpha [B, H, W, 1]."""
        batch = 1 if body is None else body.shape[0]
        rgba = torch.sigmoid(torch.cat([self.rgb_logits, self.alpha_logits], 1)).expand(batch, -1, -1, -1)
        warped = F.grid_sample(rgba, self._grid(body, batch), align_corners=False, padding_mode="border")
        warped = warped.permute(0, 2, 3, 1)
        return warped[..., :3], warped[..., 3:]
