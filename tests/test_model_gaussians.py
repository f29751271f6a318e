"""The Gaussian head: initialisation from a face, landmark skinning, densification, save/load, PLY export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.model.gaussians import (
    GaussianSet,
    HeadConfig,
    face_triangles,
    head_gaussians,
    landmark_skinning,
    skinned_displacement,
)
from avatar.model.mouth import LOWER_INNER_LIP, UPPER_INNER_LIP, MouthConfig, mouth_gaussians
from avatar.train.densify import Densifier, DensifyConfig


def synthetic_face(seed: int = 0) -> np.ndarray:
    """478 points on the front of an ellipsoid the size of a face (metres, camera-aligned, facing -z)."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(-1.1, 1.1, 478), rng.uniform(-1.2, 1.2, 478)
    x, y = 0.07 * np.sin(u), 0.09 * np.sin(v)
    z = -0.08 * np.sqrt(np.clip(1 - (x / 0.08) ** 2 - (y / 0.11) ** 2, 0.05, 1))
    face = np.stack([x, y, z], 1)
    for ring, y in ((UPPER_INNER_LIP, 0.04), (LOWER_INNER_LIP, 0.044)):  # a closed mouth 5 cm wide
        face[list(ring)] = np.stack(
            [np.linspace(-0.025, 0.025, len(ring)), np.full(len(ring), y), np.full(len(ring), -0.075)], 1
        )
    return face


def test_face_triangles_cover_the_mesh():
    tris = face_triangles()
    assert tris.shape[1] == 3 and 850 <= len(tris) <= 1000  # mediapipe's canonical mesh has 898 triangles
    assert tris.min() == 0 and tris.max() == 467  # the 10 iris landmarks are not in the tessellation


def test_head_init_counts_and_extent():
    face = synthetic_face()
    head = head_gaussians(face, HeadConfig(num_face=300, num_shell=200), seed=1)
    assert 400 < len(head) <= 500
    means = head.means.detach().numpy()
    assert means[:300].min(0) == pytest.approx(face.min(0), abs=0.02)
    assert means[:, 1].min() < face[:, 1].min()  # the shell covers the top of the head above the face
    assert head.sh.shape == (len(head), 1, 3) and torch.all(head.opacities > 0)


def test_landmark_prior_reproduces_the_landmark_motion():
    face = torch.from_numpy(synthetic_face()).float()
    ids = [i for i in range(478) if i not in UPPER_INNER_LIP + LOWER_INNER_LIP][:50]
    points = torch.cat([face[ids], face[ids] + 0.003])  # on landmarks and a little off them
    index, weight = landmark_skinning(points, face, k=4, falloff=0.02)
    # [B, L, 3] expression @ basis for three frames
    motion = torch.randn(3, 478, 3, generator=torch.Generator().manual_seed(0)) * 0.01
    moved = skinned_displacement(motion, index, weight)
    assert torch.allclose(moved[:, :50], motion[:, ids], atol=1e-6)
    far = torch.tensor([[0.0, -0.3, 0.2]])
    far_index, far_weight = landmark_skinning(far, face, k=4, falloff=0.02)
    assert skinned_displacement(motion, far_index, far_weight).abs().max() < 1e-6  # the prior fades out


def test_mouth_interior_stretches_between_the_lips():
    face = synthetic_face()
    mouth = mouth_gaussians(face, MouthConfig(num_gaussians=100), sh_degree=0)
    assert len(mouth) == 100
    motion = torch.zeros(1, 478, 3)
    motion[0, list(LOWER_INNER_LIP[1:-1]), 1] = 0.01  # the lower lip drops by 1 cm, the upper lip stays
    moved = skinned_displacement(motion, mouth.skin_index, mouth.skin_weight)[0, :, 1]
    y = mouth.means[:, 1].detach()
    assert moved.min() >= -1e-6 and moved.max() <= 0.01 + 1e-6
    assert torch.corrcoef(torch.stack([y, moved]))[0, 1] > 0.8  # lower interior moves with the lower lip
    assert set(UPPER_INNER_LIP) & set(mouth.skin_index.flatten().tolist())


def test_densify_grows_prunes_and_keeps_the_optimizer_consistent():
    face = synthetic_face()
    head = head_gaussians(face, HeadConfig(num_face=200, num_shell=50), seed=0)
    opt = torch.optim.Adam([{"params": [getattr(head, n)]} for n in GaussianSet.PARAMETERS])
    densifier = Densifier(DensifyConfig(grow_fraction=0.2, split_scale_m=0.002, prune_opacity=0.1), max_gaussians=280)
    with torch.no_grad():
        head.opacity_logits[:10] = -5  # ten nearly transparent Gaussians
    sum(getattr(head, name).square().sum() for name in GaussianSet.PARAMETERS).backward()
    densifier.accumulate(head)
    opt.step()
    n = len(head)
    counts = densifier.step(head, opt, torch.Generator().manual_seed(0))
    assert counts["pruned"] == 10 and counts["cloned"] + counts["split"] > 0
    assert len(head) == counts["total"] <= 280
    assert len(head) == n - 10 + counts["cloned"] + counts["split"]
    assert head.skin_index.shape[0] == len(head)
    for group, name in zip(opt.param_groups, GaussianSet.PARAMETERS):
        p = group["params"][0]
        assert p is getattr(head, name) and opt.state[p]["exp_avg"].shape == p.shape


def test_save_load_round_trip_across_sizes(tmp_path):
    head = head_gaussians(synthetic_face(), HeadConfig(num_face=100, num_shell=50), seed=0)
    torch.save(head.state_dict(), tmp_path / "head.pt")
    other = head_gaussians(synthetic_face(1), HeadConfig(num_face=30, num_shell=10), seed=3)
    other.load_state_dict(torch.load(tmp_path / "head.pt"))
    for name in (*GaussianSet.PARAMETERS, "skin_index", "skin_weight"):
        assert torch.equal(getattr(other, name), getattr(head, name))


def test_ply_export_is_a_standard_3dgs_file(tmp_path):
    head = head_gaussians(synthetic_face(), HeadConfig(num_face=100, num_shell=40, sh_degree=1), seed=0)
    head.export_ply(tmp_path / "head.ply")
    data = (tmp_path / "head.ply").read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert f"element vertex {len(head)}" in header
    props = [line.split()[-1] for line in header if line.startswith("property")]
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert len([p for p in props if p.startswith("f_rest_")]) == 9  # degree 1: 3 more coefficients x RGB
    rows = np.frombuffer(data[end:], "<f4").reshape(len(head), len(props))
    assert np.allclose(rows[:, :3], head.means.detach().numpy())
    assert np.allclose(rows[:, -4:], head.quats.detach().numpy())
