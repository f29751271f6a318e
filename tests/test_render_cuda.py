"""gsplat's CUDA kernels and the torch reference agree (skipped without a GPU), the way gsplat's own tests
compare its torch and CUDA paths."""

from __future__ import annotations

import pytest
import torch
from test_render import make_camera, random_gaussians

from avatar.rasterizer.rasterize import rasterize
from avatar.rasterizer.types import Gaussians, RasterSettings

pytestmark = pytest.mark.cuda
NAMES = ("means", "quats", "scales", "opacities", "colors")


def render_and_grads(g: Gaussians, camera, settings, backend, weights):
    params = {k: getattr(g, k).detach().clone().requires_grad_(True) for k in NAMES}
    out = rasterize(
        Gaussians(**params, sh_degree=g.sh_degree),
        camera,
        torch.tensor([0.2, 0.3, 0.4], device="cuda"),
        backend=backend,
        settings=settings,
    )
    loss = sum((w * o).sum() for w, o in zip(weights, (out.rgb, out.alpha, out.depth)))
    loss.backward()
    return out, {k: p.grad for k, p in params.items()}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("sh_degree", [None, 3])
@pytest.mark.parametrize("antialiased", [False, True])
def test_backends_agree_on_images_and_gradients(seed, sh_degree, antialiased):
    g = random_gaussians(2000, seed=seed, spread=1.0, scale=(0.005, 0.05), opacity=(0.05, 0.95), sh_degree=sh_degree)
    g = Gaussians(*(getattr(g, k).cuda() for k in NAMES), sh_degree=sh_degree)
    camera = make_camera(width=96, height=80, f=80.0)
    camera = type(camera)(camera.world_to_cam.cuda(), camera.K.cuda(), camera.width, camera.height)
    settings = RasterSettings(antialiased=antialiased)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    weights = [torch.rand(80, 96, c, generator=gen, device="cuda") for c in (3, 1, 1)]
    weights[2] = weights[2] * 0.1  # depth is in metres, a larger scale than colour

    cuda_out, cuda_grads = render_and_grads(g, camera, settings, "cuda", weights)
    torch_out, torch_grads = render_and_grads(g, camera, settings, "torch", weights)
    assert cuda_out.alpha.max() > 0.5
    for name in ("rgb", "alpha", "depth"):
        diff = (getattr(cuda_out, name) - getattr(torch_out, name)).abs().max()
        assert diff <= 1e-3, (name, float(diff))
    for name in NAMES:
        relative = (cuda_grads[name] - torch_grads[name]).norm() / cuda_grads[name].norm().clamp(min=1e-12)
        assert relative <= 1e-2, (name, float(relative))


def test_auto_picks_cuda_for_cuda_tensors():
    g = random_gaussians(100, seed=3)
    g = Gaussians(*(getattr(g, k).cuda() for k in NAMES))
    camera = make_camera()
    camera = type(camera)(camera.world_to_cam.cuda(), camera.K.cuda(), camera.width, camera.height)
    auto = rasterize(g, camera, backend="auto")
    forced = rasterize(g, camera, backend="cuda")
    assert torch.equal(auto.rgb, forced.rgb)
    assert auto.info["means2d"].shape == (1, 100, 2)
