"""Adaptive density control: grow Gaussians where the position gradient stays large, prune the useless.

The rule of the original 3DGS (clone small Gaussians, split large ones, drop transparent or huge ones),
with two changes for this project: the gradient is that of the canonical 3D means (our rasterizer does
not expose the 2D means), and growth picks the top `grow_fraction` by accumulated gradient instead of a
fixed threshold, so one setting works at any resolution; the count never exceeds the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avatar.model.gaussians import GaussianSet


@dataclass
class DensifyConfig:
    """When and how strongly the Gaussian count adapts during the canonical fit."""

    start_step: int = 100  # first densification step
    stop_step: int = 1500  # no densification after this step
    every: int = 100  # steps between densifications
    grow_fraction: float = 0.05  # fraction of Gaussians (by accumulated gradient) grown each time
    split_scale_m: float = 0.004  # Gaussians larger than this (metres) are split, smaller ones cloned
    prune_opacity: float = 0.02  # Gaussians less opaque than this are removed
    prune_scale_m: float = 0.05  # Gaussians larger than this are removed


def quat_to_matrix(quats: Tensor) -> Tensor:
    """[N, 4] wxyz quaternions (any norm) -> [N, 3, 3] rotations."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(-1, 3, 3)


class Densifier:
    """Accumulates the per-Gaussian gradient between densifications and applies them to a GaussianSet
    and its optimizer (Adam moments are carried over for kept Gaussians, zero for new ones)."""

    def __init__(self, cfg: DensifyConfig, max_gaussians: int):
        self.cfg = cfg
        self.max_gaussians = max_gaussians
        self.grad_sum: Tensor | None = None
        self.count: Tensor | None = None

    def state_dict(self) -> dict:
        return {"grad_sum": self.grad_sum, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.grad_sum, self.count = state["grad_sum"], state["count"]

    def accumulate(self, gaussians: GaussianSet) -> None:
        """Call after backward()."""
        grad = gaussians.means.grad
        if grad is None:
            return
        if self.grad_sum is None or self.grad_sum.shape[0] != len(gaussians):
            self.grad_sum = torch.zeros(len(gaussians), device=grad.device)
            self.count = torch.zeros(len(gaussians), device=grad.device)
        self.grad_sum, self.count = self.grad_sum.to(grad.device), self.count.to(grad.device)  # after a resume
        norm = grad.detach().norm(dim=-1)
        self.grad_sum += norm
        self.count += (norm > 0).float()

    def due(self, step: int) -> bool:
        c = self.cfg
        return c.start_step <= step <= c.stop_step and step % c.every == 0 and self.grad_sum is not None

    @torch.no_grad()
    def step(self, gaussians: GaussianSet, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
        """Prune, then clone/split; returns counts for logging."""
        c = self.cfg
        n = len(gaussians)
        keep = (gaussians.opacities > c.prune_opacity) & (gaussians.scales.max(-1).values < c.prune_scale_m)
        mean_grad = self.grad_sum / self.count.clamp_min(1)
        mean_grad[~keep] = -1
        room = max(0, self.max_gaussians - int(keep.sum()))
        grow = min(int(c.grow_fraction * n), room // 2)  # a split adds up to two children per parent
        chosen = mean_grad.topk(grow).indices if grow > 0 else torch.zeros(0, dtype=torch.long, device=keep.device)
        chosen = chosen[mean_grad[chosen] > 0]
        large = gaussians.scales[chosen].max(-1).values > c.split_scale_m
        split, clone = chosen[large], chosen[~large]
        keep[split] = False  # split parents are replaced by their two children

        params = {name: getattr(gaussians, name) for name in GaussianSet.PARAMETERS}
        # children of a split: two samples from the parent's Gaussian, each 1/1.6 of its size
        rot = quat_to_matrix(params["quats"][split])
        scale = gaussians.scales[split]
        offsets = torch.randn((2, len(split), 3), generator=generator).to(scale.device) * scale
        child_means = (params["means"][split] + torch.einsum("nij,knj->kni", rot, offsets)).reshape(-1, 3)
        sources = torch.cat([torch.nonzero(keep)[:, 0], clone, split, split])  # the row each new row copies
        new = {name: p[sources].clone() for name, p in params.items()}
        n_keep, n_clone = int(keep.sum()), len(clone)
        new["means"][n_keep + n_clone :] = child_means
        new["log_scales"][n_keep + n_clone :] -= math.log(1.6)
        fresh = torch.zeros(len(sources), dtype=torch.bool, device=keep.device)
        fresh[n_keep:] = True
        old_params = dict(params)
        gaussians.replace(new, gaussians.skin_index[sources], gaussians.skin_weight[sources])
        for name, old in old_params.items():
            _remap_optimizer(optimizer, old, getattr(gaussians, name), sources, fresh)
        self.grad_sum = torch.zeros(len(gaussians), device=keep.device)
        self.count = torch.zeros(len(gaussians), device=keep.device)
        return {
            "pruned": int(n - int(keep.sum()) - len(split)),
            "cloned": n_clone,
            "split": len(split),
            "total": len(gaussians),
        }


def _remap_optimizer(
    optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, sources: Tensor, fresh: Tensor
) -> None:
    """Point the optimizer at `new`, whose rows are copies of `old`'s rows `sources`; rows marked `fresh`
    start with zero moments."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state:
                    for key, value in state.items():
                        if isinstance(value, Tensor) and value.shape[:1] == old.shape[:1] and value.dim() > 0:
                            value = value[sources].clone()
                            value[fresh] = 0
                            state[key] = value
                    optimizer.state[new] = state
                return
