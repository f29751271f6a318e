"""Hash tri-plane: layout, indexing, continuity, gradients, a small fit, and backend agreement on a GPU."""

from __future__ import annotations

import pytest
import torch

from avatar.errors import UserError
from avatar.model.hash_triplane import HASH_PRIME_Y, HashTriplane, HashTriplaneConfig, grid_layout, tcnn_available

BOX_MIN, BOX_MAX = (-1.0, -0.5, -2.0), (1.0, 1.5, 0.0)
# 4 levels, the last ones hashed: resolutions 4, 8, 16, 32 -> 16, 64, 256 (dense), 256 < 32^2 (hashed)
SMALL = HashTriplaneConfig(
    num_levels=4,
    features_per_level=2,
    log2_hashmap_size=8,
    base_resolution=4,
    max_resolution=32,
    implementation="torch",
)


def random_points(n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    box_min, box_max = torch.tensor(BOX_MIN, dtype=torch.float64), torch.tensor(BOX_MAX, dtype=torch.float64)
    return (box_min + u * (box_max - box_min)).to(dtype)


def field(cfg: HashTriplaneConfig, seed: int = 0, scale: float = 1.0) -> HashTriplane:
    torch.manual_seed(seed)
    enc = HashTriplane(cfg, BOX_MIN, BOX_MAX)
    with torch.no_grad():
        enc.tables.uniform_(-scale, scale)  # far from the tiny default init, so differences are visible
    return enc


def test_output_shape_dtype_and_layout():
    enc = HashTriplane(HashTriplaneConfig(implementation="torch"), BOX_MIN, BOX_MAX)
    assert enc.out_dim == 3 * 12 * 2
    points = random_points(1000, torch.Generator().manual_seed(0))
    out = enc(points)
    assert out.shape == (1000, enc.out_dim) and out.dtype == torch.float32
    assert enc.double()(points.double()).dtype == torch.float64
    layout = enc.layout
    assert layout.resolutions[0] == 16 and layout.resolutions[-1] == 512
    assert all(layout.is_dense(level) == (res * res <= 2**17) for level, res in enumerate(layout.resolutions))
    assert any(layout.is_dense(lv) for lv in range(12)) and not all(layout.is_dense(lv) for lv in range(12))
    assert enc.tables.shape == (3, layout.offsets[-1], 2)


def test_vertex_lookup_matches_dense_and_hash_indexing(one_torch_thread):
    """At a grid vertex the feature is exactly one table entry, at the index the dense/hash rule predicts."""
    enc = field(SMALL, seed=1)
    layout = enc.layout
    last_dense = max(lv for lv in range(SMALL.num_levels) if layout.is_dense(lv))
    first_hashed = last_dense + 1
    assert not layout.is_dense(first_hashed)
    box_min, box_max = torch.tensor(BOX_MIN), torch.tensor(BOX_MAX)
    F = SMALL.features_per_level
    for level in (last_dense, first_hashed):
        scale, res, size = layout.scales[level], layout.resolutions[level], layout.table_sizes[level]
        for i, j, k in [(1, 1, 1), (1, 2, 3), (res - 2, 1, res - 3), (3, res - 2, 2)]:
            vertex = torch.tensor([i, j, k], dtype=torch.float64)
            u = ((vertex - 0.5) / scale).clamp(0, 1)  # u * scale + 0.5 lands on the vertex
            point = (box_min.double() + u * (box_max - box_min).double())[None]
            out = enc.double()(point)[0]
            for plane, (a, b) in enumerate([(i, j), (i, k), (j, k)]):
                if layout.is_dense(level):
                    index = a + b * res
                else:
                    index = (a ^ ((b * HASH_PRIME_Y) & 0xFFFFFFFF)) % size
                expected = enc.tables[plane, layout.offsets[level] + index]
                start = (plane * SMALL.num_levels + level) * F
                torch.testing.assert_close(out[start : start + F], expected, atol=1e-6, rtol=0)


def test_continuity_nearby_points_give_nearby_features():
    enc = field(HashTriplaneConfig(implementation="torch"), seed=2)
    gen = torch.Generator().manual_seed(3)
    points = random_points(2000, gen, torch.float64)
    enc = enc.double()
    step = 1e-7 * torch.randn(2000, 3, generator=gen, dtype=torch.float64)
    delta = (enc(points + step) - enc(points)).abs().max()
    # bilinear in each cell: Lipschitz with constant ~ max_resolution * |entries| / box size (here <= ~1e3)
    assert delta < 1e-3
    far = (enc(points) - enc(points.roll(1, dims=0))).abs().max()
    assert far > 0.5


def test_gradients_match_finite_differences(one_torch_thread):
    enc = field(SMALL, seed=4, scale=0.5).double()
    points = random_points(16, torch.Generator().manual_seed(5), torch.float64).requires_grad_(True)
    tables = enc.tables
    torch.autograd.gradcheck(enc, (points,), eps=1e-7, atol=1e-5)  # w.r.t. the points
    out_grad = torch.randn(16, enc.out_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    (enc(points) * out_grad).sum().backward()
    analytic = tables.grad.clone()
    # finite differences on a few table entries that the points touch, and on a few they do not
    touched = analytic.abs().flatten().nonzero()[:10, 0].tolist() + [int(analytic.abs().flatten().argmin())]
    flat = tables.data.view(-1)
    for index in touched:
        saved = flat[index].item()
        flat[index] = saved + 1e-6
        plus = (enc(points) * out_grad).sum().item()
        flat[index] = saved - 1e-6
        minus = (enc(points) * out_grad).sum().item()
        flat[index] = saved
        assert abs((plus - minus) / 2e-6 - analytic.view(-1)[index].item()) < 1e-6


def test_tiny_mlp_fits_a_smooth_function(one_torch_thread):
    torch.manual_seed(0)
    cfg = HashTriplaneConfig(
        num_levels=6, log2_hashmap_size=10, base_resolution=4, max_resolution=64, implementation="torch"
    )
    enc = HashTriplane(cfg, BOX_MIN, BOX_MAX)
    mlp = torch.nn.Sequential(torch.nn.Linear(enc.out_dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def target(p):
        return torch.sin(2 * p[:, 0:1]) * torch.cos(3 * p[:, 1:2]) + 0.5 * p[:, 2:3] ** 2

    opt = torch.optim.Adam([*enc.parameters(), *mlp.parameters()], lr=1e-2)
    gen = torch.Generator().manual_seed(6)
    for _ in range(120):
        p = random_points(1024, gen)
        loss = (mlp(enc(p)) - target(p)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = random_points(4096, gen)
    with torch.no_grad():
        mse = (mlp(enc(test)) - target(test)).square().mean().item()
        variance = target(test).var().item()
    assert mse < 0.01 * variance, (mse, variance)


def test_points_outside_the_box_are_clamped_and_backends_are_checked():
    enc = field(SMALL, seed=7)
    inside = torch.tensor([[1.0, 1.5, 0.0]])
    outside = torch.tensor([[5.0, 9.0, 3.0]])
    torch.testing.assert_close(enc(outside), enc(inside))
    assert enc.backend_for(inside) == "torch"
    auto = HashTriplane(HashTriplaneConfig(implementation="auto"), BOX_MIN, BOX_MAX)
    assert auto.backend_for(inside) == "torch"
    if not torch.cuda.is_available():
        from avatar.cuda.hash_triplane import cuda_extension_error

        assert "no CUDA device" in cuda_extension_error()
    with pytest.raises(UserError, match="needs CUDA tensors"):
        HashTriplane(HashTriplaneConfig(implementation="cuda"), BOX_MIN, BOX_MAX)(inside)
    with pytest.raises(UserError):
        grid_layout(HashTriplaneConfig(base_resolution=64, max_resolution=32))
    with pytest.raises(UserError):
        HashTriplane(SMALL, (0, 0, 0), (1, 0, 1))


def _agreement(impl: str, cfg: HashTriplaneConfig, n: int = 20000):
    torch.manual_seed(8)
    ref = HashTriplane(cfg, BOX_MIN, BOX_MAX).cuda()
    with torch.no_grad():
        ref.tables.uniform_(-1, 1)
    other = HashTriplane(HashTriplaneConfig(**{**cfg.__dict__, "implementation": impl}), BOX_MIN, BOX_MAX).cuda()
    other.load_state_dict(ref.state_dict())
    points = random_points(n, torch.Generator().manual_seed(9)).cuda()
    out_grad = torch.randn(n, ref.out_dim, device="cuda")
    results = []
    for enc in (ref, other):
        p = points.clone().requires_grad_(True)
        out = enc(p)
        (out * out_grad).sum().backward()
        results.append((out.detach(), enc.tables.grad.clone(), p.grad.clone()))
    (out_r, gt_r, gp_r), (out_o, gt_o, gp_o) = results
    torch.testing.assert_close(out_o, out_r, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gt_o, gt_r, atol=1e-3, rtol=1e-3)  # atomics sum in another order
    # point gradients jump across cell borders; a last-ulp difference in the cell may flip a few points
    close = torch.isclose(gp_o, gp_r, atol=1e-3, rtol=1e-3).all(dim=1)
    assert close.float().mean() > 0.999


CUDA_CONFIGS = [
    HashTriplaneConfig(implementation="torch"),
    SMALL,
    HashTriplaneConfig(
        num_levels=16,
        features_per_level=4,
        log2_hashmap_size=19,
        base_resolution=16,
        max_resolution=2048,
        implementation="torch",
    ),
]


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", CUDA_CONFIGS, ids=["default", "small", "16x4"])
def test_cuda_kernel_matches_torch(cfg):
    _agreement("cuda", cfg)


@pytest.mark.cuda
@pytest.mark.skipif(not tcnn_available(), reason="tinycudann not importable")
def test_tcnn_matches_torch():
    _agreement("tcnn", HashTriplaneConfig(implementation="torch"))
