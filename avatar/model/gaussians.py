"""The canonical Gaussian head: a set of 3D Gaussians in the canonical head frame, initialised from the
person's tracked neutral face, with landmark skinning so tracked or audio-predicted expressions move it.

Why an initialisation from the face mesh: the tracked canonical face already tells where the skin is, so
the fit starts with Gaussians on the surface (and an ellipsoidal shell for hair and the back of the head)
instead of learning geometry from a random cloud, which a few minutes of CPU training could not do.

Colours are stored per Gaussian as spherical-harmonic coefficients (degree `sh_degree`), not decoded from
the hash tri-plane: on CPU at 128 px the stored colours converged in fewer steps for the same cost, and the
tri-plane feature is still used where it matters, as the query of the audio attention (see deform.py).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from avatar.contracts.atomic import atomic_path

SH_C0 = 0.28209479177387814  # the degree-0 spherical-harmonic constant: rgb = SH_C0 * dc + 0.5


@dataclass
class HeadConfig:
    """How many Gaussians the head starts with and may grow to."""

    num_face: int = 3000  # samples on the tracked face-mesh surface
    num_shell: int = 2500  # samples on an ellipsoidal shell for hair, ears and the back/top of the head
    max_gaussians: int = 12000  # densification never grows the head past this count
    sh_degree: int = 0  # view dependence of the stored colours (0: diffuse)
    skin_neighbours: int = 4  # landmarks each Gaussian is skinned to
    skin_falloff_m: float = 0.02  # the prior fades out over this distance from the nearest landmark (metres)


def face_triangles() -> np.ndarray:
    """[T, 3] vertex triangles of mediapipe's face mesh, recovered as the 3-cliques of its tessellation edges.

    The edge list is read from its plain-Python module file, without importing mediapipe (seconds of start-up)."""

    package = Path(importlib.util.find_spec("mediapipe").origin).parent
    spec = importlib.util.spec_from_file_location(
        "face_mesh_connections", package / "python/solutions/face_mesh_connections.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    FACEMESH_TESSELATION = module.FACEMESH_TESSELATION  # noqa: N806 - mediapipe's name

    neighbours: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    tris = {tuple(sorted((a, b, c))) for a, nb in neighbours.items() for b in nb for c in nb & neighbours[b]}
    return np.array(sorted(tris), np.int64)


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[count, 3] points uniformly distributed by area over the triangle mesh."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(triangles), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[tri] + u[:, None] * (b[tri] - a[tri]) + v[:, None] * (c[tri] - a[tri])


def head_shell(face: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[<=count, 3] points on an ellipsoid fitted around the face that stands for the skull and hair.

    The ellipsoid spans the face's width, extends above the forehead for hair and behind the face for the
    back of the head; points whose direction the face already covers (in front, inside the face outline)
    are dropped so the shell never hides the face."""
    lo, hi = face.min(0), face.max(0)
    width, height, depth = hi - lo
    radii = np.array([0.58 * width, 0.62 * height, 0.5 * max(depth, 0.9 * width)])
    centre = np.array([(lo[0] + hi[0]) / 2, lo[1] + 0.42 * height, lo[2] + radii[2] + 0.3 * depth])
    n = 3 * count
    k = np.arange(n) + 0.5  # Fibonacci sphere: even coverage without clumps
    z = 1 - 2 * k / n
    phi = math.pi * (1 + 5**0.5) * k
    unit = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    points = centre + unit * radii * (1 + 0.04 * rng.standard_normal((n, 1)))

    hull = cv2.convexHull(face[:, :2].astype(np.float32))
    inside = np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), False) >= 0 for x, y in points[:, :2]])
    keep = ~(inside & (points[:, 2] < centre[2]))
    points = points[keep]
    return points[rng.choice(len(points), size=min(count, len(points)), replace=False)]


def landmark_skinning(points: Tensor, landmarks: Tensor, k: int, falloff: float | None) -> tuple[Tensor, Tensor]:
    """Fixed skinning of points [N, 3] to their k nearest landmarks [L, 3] -> (index [N, k], weight [N, k]).

    Inverse-distance weights reproduce a landmark's own motion exactly at the landmark; the Gaussian
    falloff (None: none) fades the prior out for points far from every landmark (hair, back of head)."""
    # exact distances (the matrix-product shortcut is off by ~1e-4 m, which would blur the prior at landmarks)
    dist, index = torch.cdist(points, landmarks, compute_mode="donot_use_mm_for_euclid_dist").topk(
        min(k, len(landmarks)), dim=1, largest=False
    )
    inv = 1.0 / (dist**2 + 1e-12)
    weight = inv / inv.sum(1, keepdim=True)
    if falloff is not None:
        weight = weight * torch.exp(-0.5 * (dist[:, :1] / falloff) ** 2)
    return index, weight


def skinned_displacement(landmark_offsets: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """[B, L, 3] landmark displacements -> [B, N, 3] displacement of the skinned points."""
    return (landmark_offsets[:, index] * weight[None, :, :, None]).sum(2)


def nearest_neighbour_distance(points: Tensor, k: int = 3) -> Tensor:
    """[N] mean distance to the k nearest other points, in chunks so memory stays small."""
    out = []
    for chunk in points.split(4096):
        d = torch.cdist(chunk, points).topk(k + 1, dim=1, largest=False).values[:, 1:]
        out.append(d.mean(1))
    return torch.cat(out)


class GaussianSet(nn.Module):
    """Gaussians with raw (pre-activation) parameters and fixed landmark skinning.

    Parameters: means [N, 3], log_scales [N, 3], quats [N, 4] (wxyz, unnormalised), opacity_logits [N],
    sh [N, (sh_degree + 1)^2, 3]. Buffers: skin_index / skin_weight [N, k] to the canonical landmarks."""

    def __init__(
        self,
        means: Tensor,
        sh_degree: int,
        skin_index: Tensor,
        skin_weight: Tensor,
        colours: Tensor | None = None,
        opacity: float = 0.7,
    ):
        super().__init__()
        n = means.shape[0]
        self.sh_degree = sh_degree
        # half the neighbour spacing: neighbours overlap a little, and small Gaussians are cheap to rasterize
        scale = (0.5 * nearest_neighbour_distance(means)).clamp(1e-4, 0.01) if n > 3 else torch.full((n,), 0.003)
        rgb = colours if colours is not None else torch.full((n, 3), 0.5)
        sh = torch.zeros(n, (sh_degree + 1) ** 2, 3)
        sh[:, 0] = (rgb - 0.5) / SH_C0
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        self.means = nn.Parameter(means.float().clone())
        self.log_scales = nn.Parameter(scale.log()[:, None].repeat(1, 3))
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(torch.full((n,), math.log(opacity / (1 - opacity))))
        self.sh = nn.Parameter(sh)
        self.register_buffer("skin_index", skin_index.long())
        self.register_buffer("skin_weight", skin_weight.float())

    PARAMETERS = ("means", "log_scales", "quats", "opacity_logits", "sh")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def rgb(self) -> Tensor:
        """[N, 3] the diffuse colour (the degree-0 term), for previews and initial values."""
        return (self.sh[:, 0] * SH_C0 + 0.5).clamp(0, 1)

    def replace(self, tensors: dict[str, Tensor], skin_index: Tensor, skin_weight: Tensor) -> None:
        """Swap in new parameter values (after densification or when loading a checkpoint of another size)."""
        for name in self.PARAMETERS:
            setattr(self, name, nn.Parameter(tensors[name].detach().clone()))
        self.skin_index = skin_index.long()
        self.skin_weight = skin_weight.float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint may hold another count (densification): resize before torch copies the values."""
        for name in (*self.PARAMETERS, "skin_index", "skin_weight"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                empty = torch.empty_like(saved)
                setattr(self, name, nn.Parameter(empty) if name in self.PARAMETERS else empty)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def export_ply(self, path: Path | str) -> None:
        """Write the standard 3D Gaussian splatting PLY (binary little endian: x y z nx ny nz f_dc_0..2
        f_rest_* opacity scale_0..2 rot_0..3, logit opacity and log scales) that common splat viewers open."""
        n = len(self)
        sh = self.sh.detach().cpu()
        dc = sh[:, 0].numpy()
        rest = sh[:, 1:].transpose(1, 2).reshape(n, -1).numpy()  # viewers expect channel-major rest terms
        cols = [
            self.means.detach().cpu().numpy(),
            np.zeros((n, 3), np.float32),
            dc,
            rest,
            self.opacity_logits.detach().cpu().numpy()[:, None],
            self.log_scales.detach().cpu().numpy(),
            self.quats.detach().cpu().numpy(),
        ]
        names = (
            ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest.shape[1])]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
        )
        data = np.concatenate(cols, 1).astype("<f4")
        header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
        header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(header.encode("ascii"))
                f.write(data.tobytes())


def sample_colours(points: Tensor, frames: Tensor, rotation: Tensor, translation: Tensor, K: Tensor) -> Tensor:
    """[N, 3] mean colour of each head-frame point over frames [F, H, W, 3] (0..1) seen with poses
    (rotation [F, 3, 3], translation [F, 3]) and intrinsics K [3, 3]: a starting colour for new Gaussians."""
    h, w = frames.shape[1:3]
    cam = torch.einsum("fij,nj->fni", rotation, points) + translation[:, None]
    uv = torch.einsum("ij,fnj->fni", K, cam)
    uv = uv[..., :2] / uv[..., 2:].clamp_min(1e-6)
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1)[:, :, None]  # align_corners=False
    rgb = torch.nn.functional.grid_sample(frames.permute(0, 3, 1, 2), grid, align_corners=False, padding_mode="border")
    return rgb[..., 0].mean(0).T.clamp(0, 1)


def head_gaussians(canonical_face: np.ndarray, cfg: HeadConfig, seed: int = 0) -> GaussianSet:
    """The initial head: surface samples over the tracked face mesh plus an ellipsoidal head shell,
    skinned to the canonical landmarks."""
    rng = np.random.default_rng(seed)
    face = np.asarray(canonical_face, np.float64)
    surface = sample_surface(face, face_triangles(), cfg.num_face, rng)
    points = torch.from_numpy(np.concatenate([surface, head_shell(face, cfg.num_shell, rng)])).float()
    index, weight = landmark_skinning(points, torch.from_numpy(face).float(), cfg.skin_neighbours, cfg.skin_falloff_m)
    return GaussianSet(points, cfg.sh_degree, index, weight)
