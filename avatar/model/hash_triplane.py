"""Multi-resolution hash tri-plane: the feature field that decorates each Gaussian.

Three axis-aligned planes (xy, xz, yz) span the head's bounding box. Each plane is a multi-resolution 2D grid
(Instant-NGP style): coarse levels are stored densely when the whole grid fits in the level's table, finer levels
are hashed into a fixed-size table. A point reads each level of each plane by bilinear interpolation; the three
planes' features are concatenated. Planes need far fewer entries than a 3D grid for the same resolution, which
is why the published talking-head systems use them.

The grid conventions follow tiny-cuda-nn's `HashGrid` exactly (per-level scale `2^(l log2 b) * base - 1`,
resolution `ceil(scale) + 1`, sample position `u * scale + 0.5`, table of `min(roundup8(res^2), 2^log2_size)`
entries per level, dense index `x + y * res`, hash `x ^ (y * 2654435761)`, both taken modulo the table size,
uniform(-1e-4, 1e-4) initialisation). A plane's table is therefore laid out exactly like the parameters of one
2D `tcnn.Encoding`, so all backends share one state dict:

- `torch`: pure PyTorch, CPU and GPU; the executable specification.
- `cuda`:  our kernel in `cuda/hash_triplane.cu` (JIT-built on first use), forward and backward.
- `tcnn`:  tiny-cuda-nn's 2D hash grid, fed with our tables (only if `tinycudann` is importable; it is not on
           the package registry, so this path has only been written against tcnn's documented layout, and the
           CUDA-marked test compares it with the torch reference wherever tcnn is installed).
- `auto`:  tcnn > cuda > torch for CUDA tensors; torch on CPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from avatar.cuda.hash_triplane import cuda_extension_error, hash_triplane_encode
from avatar.errors import UserError

# (first axis, second axis) of each plane, in the order their features are concatenated.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
HASH_PRIME_Y = 2654435761  # tiny-cuda-nn's prime for the second coordinate (the first one's prime is 1)


@dataclass
class HashTriplaneConfig:
    """Size and backend of the hash tri-plane."""

    num_levels: int = 12  # resolution levels per plane (published hash tri-planes use 12-16)
    features_per_level: int = 2  # features stored per grid vertex and level
    log2_hashmap_size: int = 17  # each level's table holds at most 2^this vertices (per plane)
    base_resolution: int = 16  # grid resolution of the coarsest level
    max_resolution: int = 512  # grid resolution of the finest level (levels grow geometrically)
    implementation: Literal["auto", "tcnn", "cuda", "torch"] = "auto"  # which backend computes the encoding


@dataclass(frozen=True)
class GridLayout:
    """Per-level geometry shared by every backend (host-side numbers, computed once)."""

    per_level_scale: float  # growth factor b between consecutive levels
    scales: tuple[float, ...]  # [L] float32 values of `b^l * base - 1`
    resolutions: tuple[int, ...]  # [L] vertices per side
    table_sizes: tuple[int, ...]  # [L] entries per level in one plane's table
    offsets: tuple[int, ...]  # [L + 1] first entry of each level in one plane's table

    @property
    def entries_per_plane(self) -> int:
        return self.offsets[-1]

    def is_dense(self, level: int) -> bool:
        return self.resolutions[level] ** 2 <= self.table_sizes[level]


def grid_layout(cfg: HashTriplaneConfig) -> GridLayout:
    """Level scales, resolutions and table sizes, computed in float32 as tiny-cuda-nn does."""
    if cfg.num_levels < 1 or cfg.features_per_level < 1 or cfg.base_resolution < 2:
        raise UserError(
            f"hash tri-plane config: num_levels ({cfg.num_levels}), features_per_level "
            f"({cfg.features_per_level}) and base_resolution ({cfg.base_resolution}) are too small. "
            "Use num_levels >= 1, features_per_level >= 1, base_resolution >= 2."
        )
    if cfg.max_resolution < cfg.base_resolution:
        raise UserError(
            f"hash tri-plane config: max_resolution ({cfg.max_resolution}) < base_resolution "
            f"({cfg.base_resolution}). Make max_resolution at least base_resolution."
        )
    if cfg.num_levels > 1:
        per_level_scale = math.exp(math.log(cfg.max_resolution / cfg.base_resolution) / (cfg.num_levels - 1))
    else:
        per_level_scale = 1.0
    log2_scale = np.log2(np.float32(per_level_scale))
    max_entries = 1 << cfg.log2_hashmap_size
    scales, resolutions, table_sizes, offsets = [], [], [], [0]
    for level in range(cfg.num_levels):
        scale = np.float32(np.exp2(np.float32(level) * log2_scale) * np.float32(cfg.base_resolution) - np.float32(1.0))
        resolution = int(math.ceil(float(scale))) + 1
        dense_entries = -(-resolution * resolution // 8) * 8  # rounded up to a multiple of 8 (tcnn aligns so)
        table = min(dense_entries, max_entries)
        scales.append(float(scale))
        resolutions.append(resolution)
        table_sizes.append(table)
        offsets.append(offsets[-1] + table)
    return GridLayout(per_level_scale, tuple(scales), tuple(resolutions), tuple(table_sizes), tuple(offsets))


def encode_planes_torch(coords: Tensor, tables: Tensor, layout: GridLayout) -> Tensor:
    """Reference encoding. coords: [N, 3] in 0..1; tables: [3, E, F] -> [N, 3 * L * F].

    The three planes are stacked into one batch of 2D lookups ([3N, 2]); levels are a Python loop so that each
    level's corner indices use plain integer constants, and the four corners are gathered one at a time
    (index_select, whose backward is a cheap index_add) instead of materialising [3N, L, 4] index tensors.
    """
    num_points = coords.shape[0]
    num_planes, num_entries, num_features = tables.shape
    plane_uv = torch.cat([coords[:, list(axes)] for axes in PLANE_AXES])  # [3N, 2]
    entries = tables.reshape(-1, num_features)  # [3E, F]
    plane_start = torch.arange(num_planes, device=coords.device).repeat_interleave(num_points) * num_entries  # [3N]
    level_features = []
    for level in range(len(layout.scales)):
        resolution, table_size = layout.resolutions[level], layout.table_sizes[level]
        pos = plane_uv * layout.scales[level] + 0.5  # [3N, 2]
        cell = torch.floor(pos)
        frac = pos - cell
        cell = cell.long()
        x0, y0 = cell[:, 0], cell[:, 1]
        x1, y1 = x0 + 1, y0 + 1
        if layout.is_dense(level):
            corners = [x0 + y0 * resolution, x1 + y0 * resolution, x0 + y1 * resolution, x1 + y1 * resolution]
        else:
            hy0 = (y0 * HASH_PRIME_Y) & 0xFFFFFFFF  # uint32 arithmetic, as in the kernels
            hy1 = (y1 * HASH_PRIME_Y) & 0xFFFFFFFF
            corners = [x0 ^ hy0, x1 ^ hy0, x0 ^ hy1, x1 ^ hy1]
        start = plane_start + layout.offsets[level]
        fx, fy = frac[:, 0:1], frac[:, 1:2]
        gx, gy = 1 - fx, 1 - fy
        weights = [gx * gy, fx * gy, gx * fy, fx * fy]  # corners (0,0) (1,0) (0,1) (1,1)
        features = 0
        for corner, weight in zip(corners, weights):
            features = features + entries.index_select(0, corner.remainder_(table_size).add_(start)) * weight
        level_features.append(features)  # [3N, F]
    stacked = torch.stack(level_features, dim=1)  # [3N, L, F]
    return stacked.view(num_planes, num_points, -1).permute(1, 0, 2).reshape(num_points, -1)


class HashTriplane(nn.Module):
    """Hash tri-plane over an axis-aligned box: [N, 3] points -> [N, out_dim] features (differentiable in both)."""

    def __init__(self, cfg: HashTriplaneConfig, bbox_min: Sequence[float], bbox_max: Sequence[float]):
        super().__init__()
        self.cfg = cfg
        self.layout = grid_layout(cfg)
        bbox_min_t = torch.as_tensor(bbox_min, dtype=torch.float32).reshape(3)
        bbox_max_t = torch.as_tensor(bbox_max, dtype=torch.float32).reshape(3)
        if not bool((bbox_max_t > bbox_min_t).all()):
            raise UserError(
                f"hash tri-plane: empty bounding box {bbox_min_t.tolist()} .. {bbox_max_t.tolist()}. "
                "bbox_max must exceed bbox_min on every axis."
            )
        self.register_buffer("bbox_min", bbox_min_t)
        self.register_buffer("bbox_max", bbox_max_t)
        self.tables = nn.Parameter(  # [3, E, F]: one tcnn-compatible table per plane
            torch.empty(3, self.layout.entries_per_plane, cfg.features_per_level).uniform_(-1e-4, 1e-4)
        )
        self.out_dim = 3 * cfg.num_levels * cfg.features_per_level
        self._tcnn_encoders: list | None = None  # built lazily, never registered (they must not own parameters)
        self._warned_fallback = False

    def normalized(self, points: Tensor) -> Tensor:
        """[N, 3] head-frame points -> [N, 3] box coordinates in 0..1 (points outside are clamped to the box)."""
        box_min = self.bbox_min.to(points.dtype)
        box_max = self.bbox_max.to(points.dtype)
        return ((points - box_min) / (box_max - box_min)).clamp(0.0, 1.0)

    def forward(self, points: Tensor) -> Tensor:
        """points: [N, 3] -> [N, out_dim], planes xy | xz | yz, each level-major with F features per level."""
        if points.dim() != 2 or points.shape[1] != 3:
            raise ValueError(f"HashTriplane expects [N, 3] points, got {tuple(points.shape)}")
        coords = self.normalized(points)
        backend = self.backend_for(points)
        if backend == "tcnn":
            return self._encode_tcnn(coords)
        if backend == "cuda":
            return hash_triplane_encode(coords, self.tables, self.layout)
        return encode_planes_torch(coords, self.tables, self.layout)

    def backend_for(self, points: Tensor) -> str:
        """The backend that will encode these points (auto: tcnn > cuda > torch on a GPU, torch on CPU)."""
        impl = self.cfg.implementation
        if impl == "torch":
            return "torch"
        if impl not in ("auto", "cuda", "tcnn"):
            raise UserError(f"hash tri-plane: unknown implementation {impl!r}. Choose auto, tcnn, cuda or torch.")
        if not points.is_cuda:
            if impl == "auto":
                return "torch"
            raise UserError(
                f"hash tri-plane: implementation={impl!r} needs CUDA tensors but the points are on "
                f"{points.device}. Use implementation='auto' or 'torch' on CPU."
            )
        if impl in ("auto", "tcnn") and tcnn_available():
            return "tcnn"
        if impl == "tcnn":
            raise UserError(
                "hash tri-plane: implementation='tcnn' but tinycudann is not importable. Build "
                "tiny-cuda-nn's torch bindings on this GPU machine, or use implementation='cuda' / 'auto'."
            )
        unsupported = kernel_limits_error(self.cfg)
        if impl == "cuda":
            if unsupported:
                raise UserError(f"hash tri-plane: implementation='cuda': {unsupported}. Use implementation='torch'.")
            return "cuda"

        error = unsupported or cuda_extension_error()
        if error is None:
            return "cuda"
        if not self._warned_fallback:
            warnings.warn(
                f"hash tri-plane: our CUDA kernel is unavailable ({error}); using the torch backend.", stacklevel=2
            )
            self._warned_fallback = True
        return "torch"

    def _encode_tcnn(self, coords: Tensor) -> Tensor:
        import tinycudann as tcnn  # noqa: PLC0415 - optional CUDA backend

        if self._tcnn_encoders is None:
            config = {
                "otype": "HashGrid",
                "n_levels": self.cfg.num_levels,
                "n_features_per_level": self.cfg.features_per_level,
                "log2_hashmap_size": self.cfg.log2_hashmap_size,
                "base_resolution": self.cfg.base_resolution,
                "per_level_scale": self.layout.per_level_scale,
                "interpolation": "Linear",
            }
            try:  # fp32 parameters where the bindings allow choosing (newer tcnn); fp16 copies otherwise
                encoders = [tcnn.Encoding(2, config, dtype=torch.float32) for _ in PLANE_AXES]
            except TypeError:
                encoders = [tcnn.Encoding(2, config) for _ in PLANE_AXES]
            for encoder in encoders:
                if encoder.params.numel() != self.tables[0].numel():
                    raise UserError(
                        f"tinycudann: its 2D hash grid has {encoder.params.numel()} parameters per plane, "
                        f"ours {self.tables[0].numel()}; this tiny-cuda-nn version lays the grid out "
                        "differently. Use implementation='cuda'."
                    )
                del encoder._parameters["params"]  # our tables are the parameters; tcnn only computes
            self._tcnn_encoders = encoders
        outputs = []
        for plane, (encoder, axes) in enumerate(zip(self._tcnn_encoders, PLANE_AXES)):
            encoder.params = self.tables[plane].reshape(-1)
            outputs.append(encoder(coords[:, list(axes)].contiguous()).to(self.tables.dtype))
        return torch.cat(outputs, dim=1)


def kernel_limits_error(cfg: HashTriplaneConfig) -> str | None:
    """Why our CUDA kernel cannot run this config (its sizes are compile-time constants), or None."""
    if cfg.features_per_level not in (1, 2, 4, 8):
        return f"the kernel supports features_per_level 1, 2, 4 or 8, not {cfg.features_per_level}"
    if cfg.num_levels > 32:
        return f"the kernel supports at most 32 levels, not {cfg.num_levels}"
    return None


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401, PLC0415 - optional CUDA backend
    except Exception:  # ImportError, or its CUDA runtime failing to load
        return False
    return True
