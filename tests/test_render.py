"""The torch rasterizer: gsplat's conventions, gradients, and that it can fit an image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

from avatar.contracts.camera import project as contract_project
from avatar.errors import UserError
from avatar.rasterizer.rasterize import rasterize, resolve_backend
from avatar.rasterizer.types import Camera, Gaussians, RasterSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_camera(width=24, height=20, dtype=torch.float32, f=30.0, R=None, t=(0.0, 0.0, 0.0)) -> Camera:
    w2c = torch.eye(4, dtype=dtype)
    if R is not None:
        w2c[:3, :3] = torch.as_tensor(R, dtype=dtype)
    w2c[:3, 3] = torch.as_tensor(t, dtype=dtype)
    K = torch.tensor([[f, 0.0, width / 2 + 0.7], [0.0, f * 1.1, height / 2 - 0.4], [0.0, 0.0, 1.0]], dtype=dtype)
    return Camera(w2c, K, width, height)


def random_gaussians(
    n, seed=0, dtype=torch.float32, depth=2.0, spread=0.5, scale=(0.02, 0.15), opacity=(0.2, 0.9), sh_degree=None
) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen, dtype=dtype) - 0.5) * spread * torch.tensor([1.0, 1.0, 0.5], dtype=dtype)
    means[:, 2] += depth
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=gen, dtype=dtype)
    opacities = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, generator=gen, dtype=dtype)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=gen, dtype=dtype)
    else:
        colors = 0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=dtype)
    return Gaussians(means, quats, scales, opacities, colors, sh_degree)


def brute_force(g: Gaussians, camera: Camera, background: torch.Tensor, eps2d=0.3) -> tuple[np.ndarray, np.ndarray]:
    """gsplat's per-pixel kernel loop, written out plainly: every Gaussian at every pixel, front to back."""
    covars, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g.means, covars, camera.world_to_cam[None], camera.K[None], camera.width, camera.height, eps2d=eps2d
    )
    means2d, depths, conics, radii = means2d[0], depths[0], conics[0], radii[0]
    order = [i for i in torch.argsort(depths).tolist() if (radii[i] > 0).all()]
    rgb = np.zeros((camera.height, camera.width, 3))
    alpha = np.zeros((camera.height, camera.width, 1))
    for y in range(camera.height):
        for x in range(camera.width):
            T, out = 1.0, np.zeros(3)
            for i in order:
                dx, dy = float(means2d[i, 0]) - (x + 0.5), float(means2d[i, 1]) - (y + 0.5)
                a, b, c = conics[i].tolist()
                power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha_i = min(0.999, float(g.opacities[i]) * math.exp(-power))
                if power < 0 or alpha_i < 1 / 255:
                    continue
                if T * (1 - alpha_i) <= 1e-4:
                    break
                out += g.colors[i].numpy() * alpha_i * T
                T *= 1 - alpha_i
            rgb[y, x] = out + T * background.numpy()
            alpha[y, x] = 1 - T
    return rgb, alpha


def test_matches_gsplats_per_pixel_loop():
    # Opaque, overlapping Gaussians so that the early stop at transmittance 1e-4 is exercised too.
    g = random_gaussians(40, seed=1, opacity=(0.6, 1.0), scale=(0.05, 0.2), spread=0.4)
    camera = make_camera(width=21, height=18)
    bg = torch.tensor([0.2, 0.5, 0.9])
    out = rasterize(g, camera, bg, backend="torch")
    rgb, alpha = brute_force(g, camera, bg)
    assert (alpha > 1 - 1e-3).any(), "the scene should saturate some pixels"
    np.testing.assert_allclose(out.rgb.numpy(), rgb, atol=1e-5)
    np.testing.assert_allclose(out.alpha.numpy(), alpha, atol=1e-5)


def test_tiling_does_not_change_the_image():
    g = random_gaussians(300, seed=2, scale=(0.005, 0.08))
    camera = make_camera(width=53, height=37, f=60.0)
    reference = rasterize(g, camera, backend="torch", settings=RasterSettings(torch_tile_size=16))
    for tiles, block, chunk in [(4, 8, 1 << 22), (8, 16, 8 * 64 * 16), (5, 7, 1 << 22)]:
        s = RasterSettings(torch_tile_size=tiles, torch_depth_block=block, chunk_elements=chunk)
        out = rasterize(g, camera, backend="torch", settings=s)
        for name in ("rgb", "alpha", "depth"):
            # the same sums up to float32 rounding (exponents are evaluated relative to the tile centre)
            torch.testing.assert_close(getattr(out, name), getattr(reference, name), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sh_degree", [None, 3])
@pytest.mark.parametrize("antialiased", [False, True])
def test_gradients_match_finite_differences(sh_degree, antialiased):
    """Directional derivatives of a weighted sum of rgb, alpha and depth, in float64, for every parameter."""
    g = random_gaussians(6, seed=3, dtype=torch.float64, spread=0.3, scale=(0.04, 0.12), sh_degree=sh_degree)
    camera = make_camera(width=12, height=10, dtype=torch.float64, f=20.0)
    settings = RasterSettings(antialiased=antialiased)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(10, 12, c, generator=gen, dtype=torch.float64) for c in (3, 1, 1)]
    names = ["means", "quats", "scales", "opacities", "colors"]

    def loss(**params):
        out = rasterize(
            Gaussians(**params, sh_degree=sh_degree),
            camera,
            torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
            backend="torch",
            settings=settings,
        )
        return sum((w * o).sum() for w, o in zip(weights, (out.rgb, out.alpha, out.depth)))

    params = {name: getattr(g, name).clone().requires_grad_(True) for name in names}
    loss(**params).backward()
    eps = 1e-6
    for name in names:
        for _ in range(2):
            direction = torch.randn(params[name].shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                plus = loss(**{**params, name: params[name] + eps * direction})
                minus = loss(**{**params, name: params[name] - eps * direction})
            numeric = float(plus - minus) / (2 * eps)
            analytic = float((params[name].grad * direction).sum())
            assert abs(numeric - analytic) <= 1e-5 + 1e-4 * abs(numeric), (name, numeric, analytic)


def test_gaussian_centre_lands_where_the_camera_contract_projects():
    angle = 0.3
    R = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    t = np.array([0.05, -0.02, 1.5])
    camera = make_camera(width=64, height=48, f=80.0, R=R, t=t)
    point = np.array([[0.1, 0.05, 0.2]])
    g = Gaussians(
        torch.tensor(point, dtype=torch.float32),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.full((1, 3), 0.01),
        torch.tensor([0.9]),
        torch.ones(1, 3),
    )
    out = rasterize(g, camera, backend="torch")
    expected = contract_project(point, R, t, camera.K.double().numpy())[0]  # [2] pixels
    np.testing.assert_allclose(out.info["means2d"][0, 0].detach().numpy(), expected, atol=1e-4)
    # The splat itself is centred there: pixel (i, j) has its centre at (i + 0.5, j + 0.5).
    weights = out.alpha[..., 0]
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    centroid = np.array([(weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()])
    np.testing.assert_allclose(centroid, expected, atol=0.05)
    depth_at_centre = out.depth[int(expected[1]), int(expected[0]), 0]
    assert abs(float(depth_at_centre) - (R @ point[0] + t)[2]) < 1e-5


def test_background_is_blended_behind_the_gaussians():
    g = random_gaussians(30, seed=4, spread=0.2)
    camera = make_camera(width=32, height=24)
    plate = torch.rand(24, 32, 3, generator=torch.Generator().manual_seed(0))
    over_black = rasterize(g, camera, backend="torch")
    over_plate = rasterize(g, camera, plate, backend="torch")
    over_grey = rasterize(g, camera, torch.tensor([0.5, 0.5, 0.5]), backend="torch")
    torch.testing.assert_close(over_plate.rgb, over_black.rgb + (1 - over_black.alpha) * plate)
    torch.testing.assert_close(over_grey.rgb, over_black.rgb + (1 - over_black.alpha) * 0.5)
    empty = over_black.alpha[..., 0] == 0
    assert empty.any() and (over_black.alpha[..., 0] > 0.5).any()
    torch.testing.assert_close(over_plate.rgb[empty], plate[empty])
    assert (over_black.depth[empty] == 0).all()
    with pytest.raises(ValueError, match="background"):
        rasterize(g, camera, torch.zeros(10, 10, 3), backend="torch")


@pytest.mark.parametrize("where", ["none", "behind", "off_screen"])
def test_empty_scene_renders_the_background_and_still_backpropagates(where):
    camera = make_camera(width=16, height=16)
    n = 0 if where == "none" else 5
    g = random_gaussians(n, seed=5)
    if where == "behind":
        g.means[:, 2] = -1.0
    if where == "off_screen":
        g.means[:, 0] = 50.0
    for p in (g.means, g.quats, g.scales, g.opacities, g.colors):
        p.requires_grad_(True)
    bg = torch.tensor([0.3, 0.6, 0.1])
    out = rasterize(g, camera, bg, backend="torch")
    torch.testing.assert_close(out.rgb, bg.expand(16, 16, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    (out.rgb.sum() + out.alpha.sum()).backward()
    assert g.means.grad is not None and (g.means.grad == 0).all()


def test_near_plane_drops_gaussians_too_close():
    g = random_gaussians(20, seed=6, depth=0.5, spread=0.1)
    camera = make_camera()
    assert rasterize(g, camera, backend="torch").alpha.max() > 0
    assert rasterize(g, camera, backend="torch", settings=RasterSettings(near=1.0)).alpha.max() == 0


def test_densification_info_carries_screen_space_gradients():
    g = random_gaussians(50, seed=7)
    g.means.requires_grad_(True)
    out = rasterize(g, make_camera(), backend="torch")
    out.info["means2d"].retain_grad()
    out.rgb.sum().backward()
    grad = out.info["means2d"].grad  # [1, N, 2]
    visible = (out.info["radii"][0] > 0).all(dim=-1)
    assert grad.shape == (1, 50, 2) and visible.any()
    assert grad[0, visible].abs().sum() > 0 and (grad[0, ~visible] == 0).all()


def test_backend_choice():
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            rasterize(random_gaussians(3), make_camera(), backend="cuda")


def test_fit_random_gaussians_to_an_image():
    """The optimisation the trainer runs, in miniature: 64x64, PSNR >= 30 dB."""
    torch.manual_seed(0)
    size = 64
    camera = make_camera(width=size, height=size, f=64.0)
    camera.K[0, 2] = camera.K[1, 2] = size / 2
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    target = torch.stack([xs, ys, 0.5 + 0.4 * torch.sin(6 * xs) * torch.cos(4 * ys)], dim=-1)
    target[((xs - 0.6) ** 2 + (ys - 0.4) ** 2) < 0.05] = torch.tensor([0.9, 0.2, 0.1])

    n = 400
    means = torch.cat([(torch.rand(n, 2) - 0.5) * 1.1, 1 + 0.1 * torch.rand(n, 1)], dim=-1)
    params = {
        "means": means,
        "quats": torch.randn(n, 4),
        "log_scales": torch.full((n, 3), math.log(0.03)),
        "logit_opacities": torch.full((n,), 1.0),
        "colors": torch.rand(n, 3),
    }
    for p in params.values():
        p.requires_grad_(True)
    lrs = {"means": 2e-3, "quats": 1e-2, "log_scales": 2e-2, "logit_opacities": 5e-2, "colors": 2e-2}
    optim = torch.optim.Adam([{"params": [params[k]], "lr": lr} for k, lr in lrs.items()])
    for _ in range(100):
        g = Gaussians(
            params["means"],
            params["quats"],
            params["log_scales"].exp(),
            torch.sigmoid(params["logit_opacities"]),
            params["colors"],
        )
        out = rasterize(g, camera, torch.zeros(3), backend="torch")
        loss = (out.rgb - target).abs().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        mse = ((out.rgb.clamp(0, 1) - target) ** 2).mean()
    psnr = -10 * math.log10(float(mse))
    assert psnr >= 30.0, psnr


def test_gsplat_default_strategy_densifies_from_our_info():
    from gsplat.strategy import DefaultStrategy

    g = random_gaussians(100, seed=8)
    params = torch.nn.ParameterDict(
        {
            "means": g.means,
            "quats": g.quats,
            "scales": g.scales.log(),
            "opacities": torch.logit(g.opacities),
            "colors": g.colors,
        }
    )
    optimizers = {k: torch.optim.Adam([params[k]], lr=1e-3) for k in params}
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, grow_grad2d=1e-6)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    for step in range(3):
        out = rasterize(
            Gaussians(
                params["means"],
                params["quats"],
                params["scales"].exp(),
                torch.sigmoid(params["opacities"]),
                params["colors"],
            ),
            make_camera(),
            backend="torch",
        )
        strategy.step_pre_backward(params, optimizers, state, step, out.info)
        out.rgb.mean().backward()
        strategy.step_post_backward(params, optimizers, state, step, out.info)
    assert len(params["means"]) > 100
