"""The CPU rasterizer against the 3D Gaussian splatting equations, evaluated by brute force.

The reference below shares no code with the renderer or with gsplat: its own world-to-camera transform,
quaternion rotation, EWA projection (Jacobian of the pinhole map), the eps2d low-pass dilation, the antialiasing
compensation, real spherical harmonics from their closed-form constants and front-to-back compositing of every
Gaussian at every pixel in depth order, all in float64 numpy. The conventions are those RasterSettings claims
(gsplat 1.5.3): alpha clamped at 0.999 (the original 3DGS code uses 0.99), contributions below 1/255 skipped, a
pixel stops before the Gaussian that would take its transmittance to 1e-4 or below, colour = max(SH + 0.5, 0),
pixel (i, j) centred at (i + 0.5, j + 0.5).

`test_the_comparison_can_fail` perturbs one convention of the reference at a time and checks that the
comparison then fails, so a renderer that got any of them wrong would be caught.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from avatar.rasterizer.rasterize import rasterize
from avatar.rasterizer.types import Camera, Gaussians, RasterSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH, HEIGHT = 26, 22
ATOL64 = 1e-10  # float64 renderer vs float64 reference: only rounding separates them (they agree to ~1e-14)
WRONG = 1e-5  # what a deliberately wrong convention must move some output by, at least


@dataclass(frozen=True)
class Conventions:
    """What the reference implements; the defaults are the equations, the variants are deliberate errors."""

    eps2d: float = 0.3
    alpha_max: float = 0.999
    alpha_min: float = 1.0 / 255.0
    t_min: float = 1e-4
    antialias_factor: bool = True  # apply sqrt(det(S) / det(S + eps2d I)) when the settings ask for it
    sh_sign: float = -1.0  # Condon-Shortley phase of the degree-1 band (the 3DGS / gsplat convention)
    sh_bands: int | None = None  # evaluate only this many SH degrees (None: all)
    jacobian_shear: bool = True  # the -f x / z^2 column of the projection's Jacobian
    jacobian_limit: bool = True  # x / z, y / z limited to 1.3 half fields of view in the Jacobian
    sh_from_camera: bool = True  # SH view direction from the camera centre (False: from the world origin)
    sort_by_depth: bool = True
    pixel_offset: float = 0.5


# Real spherical harmonics constants from their closed forms (not copied from any renderer).
C0 = 0.5 * math.sqrt(1 / math.pi)
C1 = math.sqrt(3 / (4 * math.pi))
C2 = [
    0.5 * math.sqrt(15 / math.pi),  # xy
    -0.5 * math.sqrt(15 / math.pi),  # yz
    0.25 * math.sqrt(5 / math.pi),  # 2z^2 - x^2 - y^2
    -0.5 * math.sqrt(15 / math.pi),  # xz
    0.25 * math.sqrt(15 / math.pi),  # x^2 - y^2
]
C3 = [
    -0.25 * math.sqrt(35 / (2 * math.pi)),  # y (3x^2 - y^2)
    0.5 * math.sqrt(105 / math.pi),  # xyz
    -0.25 * math.sqrt(21 / (2 * math.pi)),  # y (4z^2 - x^2 - y^2)
    0.25 * math.sqrt(7 / math.pi),  # z (2z^2 - 3x^2 - 3y^2)
    -0.25 * math.sqrt(21 / (2 * math.pi)),  # x (4z^2 - x^2 - y^2)
    0.25 * math.sqrt(105 / math.pi),  # z (x^2 - y^2)
    -0.25 * math.sqrt(35 / (2 * math.pi)),  # x (x^2 - 3y^2)
]


def sh_basis(dirs: np.ndarray, degree: int, sign: float = -1.0) -> np.ndarray:
    """[N, (degree + 1)^2] real SH basis at unit directions, in the (l, m = -l..l) order of 3DGS."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    cols = [np.full_like(x, C0)]
    if degree >= 1:
        cols += [sign * C1 * y, -sign * C1 * z, sign * C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z, C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * x * y * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return np.stack(cols, axis=-1)


def quat_to_rotation(q: np.ndarray) -> np.ndarray:
    """[N, 3, 3] from [N, 4] wxyz quaternions (normalised here)."""
    w, x, y, z = (q / np.linalg.norm(q, axis=-1, keepdims=True)).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def reference(
    g: Gaussians,
    camera: Camera,
    settings: RasterSettings,
    conv: Conventions = Conventions(),
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Premultiplied rgb [H, W, 3], alpha [H, W, 1], expected depth [H, W, 1] (0 where empty). `stats` receives
    how many (pixel, Gaussian) pairs were clamped and how many pixels stopped early."""
    means, quats, scales = (np.asarray(t.detach().double()) for t in (g.means, g.quats, g.scales))
    opac, colors = np.asarray(g.opacities.detach().double()), np.asarray(g.colors.detach().double())
    w2c, K = np.asarray(camera.world_to_cam.double()), np.asarray(camera.K.double())
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    R_wc, t_wc = w2c[:3, :3], w2c[:3, 3]

    # 3D covariance R S S^T R^T, carried into the camera frame.
    M = quat_to_rotation(quats) * scales[:, None, :]
    cov3 = R_wc @ (M @ M.transpose(0, 2, 1)) @ R_wc.T  # [N, 3, 3]
    p = means @ R_wc.T + t_wc  # [N, 3] camera coordinates
    x, y, z = p.T
    u, v = fx * x / z + cx, fy * y / z + cy  # the centre's pixel position

    # EWA: the Jacobian of (x, y, z) -> (fx x / z + cx, fy y / z + cy), evaluated with x / z and y / z limited
    # to 1.3 times the half field of view (off-centre by cx, cy), as the 3DGS and gsplat projections do.
    lim_x = (WIDTH - cx) / fx + 0.3 * 0.5 * WIDTH / fx, cx / fx + 0.3 * 0.5 * WIDTH / fx
    lim_y = (HEIGHT - cy) / fy + 0.3 * 0.5 * HEIGHT / fy, cy / fy + 0.3 * 0.5 * HEIGHT / fy
    xz, yz = x / z, y / z
    if conv.jacobian_limit:
        xz, yz = np.clip(xz, -lim_x[1], lim_x[0]), np.clip(yz, -lim_y[1], lim_y[0])
    shear = 1.0 if conv.jacobian_shear else 0.0
    J = np.zeros((len(z), 2, 3))
    J[:, 0, 0], J[:, 0, 2] = fx / z, -shear * fx * xz / z
    J[:, 1, 1], J[:, 1, 2] = fy / z, -shear * fy * yz / z
    cov2 = J @ cov3 @ J.transpose(0, 2, 1)  # [N, 2, 2]
    det_raw = np.linalg.det(cov2)
    cov2 = cov2 + conv.eps2d * np.eye(2)
    det = np.linalg.det(cov2)
    inv = np.linalg.inv(cov2)
    if settings.antialiased and conv.antialias_factor:
        opac = opac * np.sqrt(np.clip(det_raw / det, 0.0, None))

    if g.sh_degree is None:
        rgb = colors
    else:
        cam_centre = -R_wc.T @ t_wc if conv.sh_from_camera else np.zeros(3)
        dirs = means - cam_centre
        dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
        degree = g.sh_degree if conv.sh_bands is None else min(conv.sh_bands, g.sh_degree)
        basis = sh_basis(dirs, degree, conv.sh_sign)  # [N, B]
        rgb = np.maximum(np.einsum("nb,nbc->nc", basis, colors[:, : basis.shape[1]]) + 0.5, 0.0)

    keep = (z >= settings.near) & (z <= settings.far) & (det > 0)
    order = [i for i in (np.argsort(z, kind="stable") if conv.sort_by_depth else range(len(z))) if keep[i]]

    px, py = np.meshgrid(np.arange(WIDTH) + conv.pixel_offset, np.arange(HEIGHT) + conv.pixel_offset)
    T = np.ones((HEIGHT, WIDTH))
    done = np.zeros((HEIGHT, WIDTH), dtype=bool)
    out_rgb, out_depth = np.zeros((HEIGHT, WIDTH, 3)), np.zeros((HEIGHT, WIDTH))
    clamped = 0
    for i in order:
        dx, dy = px - u[i], py - v[i]
        power = 0.5 * (inv[i, 0, 0] * dx * dx + inv[i, 1, 1] * dy * dy) + inv[i, 0, 1] * dx * dy
        alpha = np.minimum(conv.alpha_max, opac[i] * np.exp(-power))
        use = ~done & (alpha >= conv.alpha_min)
        stop = use & (T * (1 - alpha) <= conv.t_min)
        done |= stop
        use &= ~stop
        clamped += int((use & (alpha == conv.alpha_max)).sum())
        weight = np.where(use, alpha * T, 0.0)
        out_rgb += weight[..., None] * rgb[i]
        out_depth += weight * z[i]
        T = np.where(use, T * (1 - alpha), T)
    alpha_img = 1 - T
    if stats is not None:
        stats.update(clamped=clamped, stopped=int(done.sum()))
    depth = np.where(alpha_img > 0, out_depth / np.maximum(alpha_img, 1e-10), 0.0)
    return out_rgb, alpha_img[..., None], depth[..., None]


def look_at_camera(dtype=torch.float64) -> Camera:
    """A rotated, translated camera with unequal focal lengths and an off-centre principal point."""
    a, b = 0.25, -0.15
    Ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    w2c = np.eye(4)
    w2c[:3, :3] = Rx @ Ry
    w2c[:3, 3] = [0.1, -0.05, 2.0]
    K = np.array([[28.0, 0.0, WIDTH / 2 + 0.8], [0.0, 31.0, HEIGHT / 2 - 0.6], [0.0, 0.0, 1.0]])
    return Camera(torch.tensor(w2c, dtype=dtype), torch.tensor(K, dtype=dtype), WIDTH, HEIGHT)


def random_scene(n: int, seed: int, sh_degree: int | None, camera: Camera, dtype=torch.float64) -> Gaussians:
    """Anisotropic, overlapping Gaussians in front of the camera, some near the image edges, some just beyond
    them; a third nearly opaque, and at the back three larger fully opaque ones centred on one pixel centre (so the
    0.999 clamp acts, without antialiasing, and pixels stop early at transmittance 1e-4)."""
    rng = np.random.default_rng(seed)
    c2w = np.linalg.inv(camera.world_to_cam.double().numpy())
    K = camera.K.double().numpy()
    # Sample in the camera frame (pixel position, partly beyond the image, and depth), then go to world.
    px = rng.uniform(-0.4 * WIDTH, 1.4 * WIDTH, n)
    py = rng.uniform(-0.4 * HEIGHT, 1.4 * HEIGHT, n)
    depth = rng.uniform(1.2, 2.6, n)
    scales = np.exp(rng.uniform(np.log(0.01), np.log(0.25), (n, 3)))
    opac = rng.uniform(0.05, 1.0, n)
    opac[: n // 3] = rng.uniform(0.99, 1.0, n // 3)
    big = slice(n - 3, n)
    px[big], py[big] = rng.integers(4, WIDTH - 4) + 0.5, rng.integers(4, HEIGHT - 4) + 0.5
    depth[big], scales[big], opac[big] = [2.4, 2.6, 2.8], rng.uniform(0.2, 0.3, (3, 3)), 1.0
    cam = np.stack([(px - K[0, 2]) / K[0, 0] * depth, (py - K[1, 2]) / K[1, 1] * depth, depth], -1)
    means = cam @ c2w[:3, :3].T + c2w[:3, 3]
    quats = rng.normal(size=(n, 4))
    if sh_degree is None:
        colors = rng.uniform(0, 1, (n, 3))
    else:
        colors = rng.normal(0, 0.4, (n, (sh_degree + 1) ** 2, 3))
        colors[:, 0] += 0.5
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    return Gaussians(t(means), t(quats), t(scales), t(opac), t(colors), sh_degree)


def renderer_output(g: Gaussians, camera: Camera, settings: RasterSettings, differentiable: bool = False):
    """The torch backend's image; `differentiable`: through its autograd steps (training), else through its
    compiled per-pixel loop (rendering a trained avatar)."""
    if differentiable:
        g = Gaussians(*(t.clone().requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.colors)),
                      g.sh_degree)  # fmt: skip
    out = rasterize(g, camera, None, backend="torch", settings=settings)
    return tuple(x.detach().double().numpy() for x in (out.rgb, out.alpha, out.depth))


def max_differences(ours, ref) -> dict[str, float]:
    return {name: float(np.abs(a - b).max()) for name, a, b in zip(("rgb", "alpha", "depth"), ours, ref)}


CASES = [(sh, aa) for sh in (None, 0, 1, 2, 3) for aa in (False, True)]


@pytest.mark.parametrize("differentiable", [False, True], ids=["compiled", "autograd"])
@pytest.mark.parametrize("sh_degree, antialiased", CASES)
def test_renderer_matches_the_equations(sh_degree, antialiased, differentiable):
    camera = look_at_camera()
    g = random_scene(64, seed=CASES.index((sh_degree, antialiased)), sh_degree=sh_degree, camera=camera)
    settings = RasterSettings(antialiased=antialiased)
    stats = {}
    ref = reference(g, camera, settings, stats=stats)
    # The scene is not trivial: empty and partly covered pixels, clamped alphas, pixels that stop early.
    alpha = ref[1][..., 0]
    assert (alpha < 0.02).any() and ((alpha > 0.2) & (alpha < 0.8)).any(), "the scene should leave gaps"
    assert stats["stopped"] > 0 and (stats["clamped"] > 0 or antialiased), stats
    diffs = max_differences(renderer_output(g, camera, settings, differentiable), ref)
    assert max(diffs.values()) < ATOL64, diffs


@pytest.mark.parametrize("differentiable", [False, True], ids=["compiled", "autograd"])
def test_float32_renderer_matches_the_equations(differentiable):
    camera = look_at_camera()
    g = random_scene(64, seed=3, sh_degree=3, camera=camera)
    settings = RasterSettings(antialiased=True)
    ref = reference(g, camera, settings)
    g32 = Gaussians(*(t.float() for t in (g.means, g.quats, g.scales, g.opacities, g.colors)), g.sh_degree)
    cam32 = Camera(camera.world_to_cam.float(), camera.K.float(), WIDTH, HEIGHT)
    diffs = max_differences(renderer_output(g32, cam32, settings, differentiable), ref)
    assert diffs["rgb"] < 1e-4 and diffs["alpha"] < 1e-4 and diffs["depth"] < 1e-4, diffs


VARIANTS = {
    "eps2d 0.29": (Conventions(eps2d=0.29), None, False),
    "alpha clamp 0.99 (original 3DGS)": (Conventions(alpha_max=0.99), None, False),
    "no 1/255 cut-off": (Conventions(alpha_min=0.0), None, False),
    "no early stop": (Conventions(t_min=0.0), None, False),
    "no antialiasing factor": (Conventions(antialias_factor=False), None, True),
    "SH without the Condon-Shortley sign": (Conventions(sh_sign=1.0), 1, False),
    "SH degree 3 band dropped": (Conventions(sh_bands=2), 3, False),
    "Jacobian without the perspective shear": (Conventions(jacobian_shear=False), None, False),
    "Jacobian not limited to the widened frustum": (Conventions(jacobian_limit=False), None, False),
    "SH direction from the world origin": (Conventions(sh_from_camera=False), 2, False),
    "unsorted compositing": (Conventions(sort_by_depth=False), None, False),
    "pixel corners instead of centres": (Conventions(pixel_offset=0.0), None, False),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_comparison_can_fail(name):
    """Each deliberate error in the reference moves some output far beyond the tolerance used above."""
    conv, sh_degree, antialiased = VARIANTS[name]
    camera = look_at_camera()
    g = random_scene(64, seed=21, sh_degree=sh_degree, camera=camera)
    settings = RasterSettings(antialiased=antialiased)
    ours = renderer_output(g, camera, settings)
    assert max(max_differences(ours, reference(g, camera, settings)).values()) < ATOL64
    wrong = max_differences(ours, reference(g, camera, settings, conv))
    assert max(wrong.values()) > WRONG, (name, wrong)


def test_eps2d_setting_is_honoured():
    """The renderer follows its settings, not a hard-coded 0.3: the reference with eps2d = 0.5 agrees with a
    renderer told eps2d = 0.5."""
    camera = look_at_camera()
    g = random_scene(30, seed=5, sh_degree=None, camera=camera)
    settings = replace(RasterSettings(), eps2d=0.5, antialiased=True)
    diffs = max_differences(
        renderer_output(g, camera, settings), reference(g, camera, settings, Conventions(eps2d=0.5))
    )
    assert max(diffs.values()) < ATOL64, diffs
