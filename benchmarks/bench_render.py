"""Rasterizer speed: forward and forward+backward per backend, Gaussian count and resolution.

    .venv/bin/python benchmarks/bench_render.py [--quick] [--threads N]

The scene is head-like (an opaque ellipsoidal shell of Gaussians filling about half the frame), so
early termination behaves as it would on a fitted avatar. `run(quick)` is what `avatar bench` calls.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from avatar.rasterizer.rasterize import rasterize
from avatar.rasterizer.types import Camera, Gaussians, RasterSettings
from avatar.tables import format_table

COUNTS = (10_000, 100_000)
RESOLUTIONS = (128, 256, 512)
QUICK_CPU = {(10_000, 128), (10_000, 256), (100_000, 128)}  # what finishes in seconds on a small CPU


def head_scene(n: int, device: str, seed: int = 0) -> Gaussians:
    """n Gaussians on and just inside an ellipsoid of head size (metres) 0.5 m in front of the camera."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    depth_in = 1.0 - 0.15 * torch.rand(n, 1, generator=gen)
    means = direction * depth_in * torch.tensor([0.08, 0.11, 0.09]) + torch.tensor([0.0, 0.0, 0.5])
    spacing = math.sqrt(4 * math.pi * 0.09**2 / n)  # surface area per Gaussian, as a length
    scales = spacing * (0.5 + torch.rand(n, 3, generator=gen))
    g = Gaussians(
        means,
        torch.randn(n, 4, generator=gen),
        scales,
        0.5 + 0.5 * torch.rand(n, generator=gen),
        torch.rand(n, 3, generator=gen),
    )
    return Gaussians(*(getattr(g, k).to(device) for k in ("means", "quats", "scales", "opacities", "colors")))


def head_camera(resolution: int, device: str) -> Camera:
    f = 0.5 * resolution / math.tan(math.radians(12))  # 24 degree field of view
    K = torch.tensor([[f, 0.0, resolution / 2], [0.0, f, resolution / 2], [0.0, 0.0, 1.0]], device=device)
    return Camera(torch.eye(4, device=device), K, resolution, resolution)


def time_render(g: Gaussians, camera: Camera, backend: str, backward: bool, repeats: int) -> tuple[float, float]:
    """Median wall and CPU (this process) seconds of one render (and backward), after one warm-up.

    On a shared CPU the wall time grows with the other load; the CPU time much less."""
    params = [g.means, g.quats, g.scales, g.opacities, g.colors]
    times, cpu_times = [], []
    for i in range(repeats + 1):
        for p in params:
            p.grad = None
            p.requires_grad_(backward)
        sync(camera.K.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = rasterize(g, camera, torch.zeros(3, device=camera.K.device), backend=backend, settings=RasterSettings())
        if backward:
            (out.rgb.sum() + out.depth.sum()).backward()
        sync(camera.K.device)
        if i:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return statistics.median(times), statistics.median(cpu_times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(quick: bool) -> list[dict]:
    """One row per (backend, Gaussians, resolution): forward and forward+backward seconds."""
    backends = [("torch", "cpu")] + ([("cuda", "cuda")] if torch.cuda.is_available() else [])
    rows = []
    for backend, device in backends:
        for n in COUNTS:
            g = head_scene(n, device)
            for res in RESOLUTIONS:
                if quick and device == "cpu" and (n, res) not in QUICK_CPU:
                    continue
                repeats = 10 if device == "cuda" else 3
                camera = head_camera(res, device)
                forward, forward_cpu = time_render(g, camera, backend, False, repeats)
                both, both_cpu = time_render(g, camera, backend, True, repeats)
                rows.append(
                    {
                        "what": "render",
                        "backend": backend,
                        "device": device,
                        "gaussians": n,
                        "resolution": res,
                        "threads": torch.get_num_threads() if device == "cpu" else None,
                        "forward_s": forward,
                        "forward_backward_s": both,
                        "forward_cpu_s": forward_cpu,
                        "forward_backward_cpu_s": both_cpu,
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        format_table(
            [
                {
                    "backend": r["backend"],
                    "device": r["device"],
                    "gaussians": r["gaussians"],
                    "res": r["resolution"],
                    "forward ms": 1000 * r["forward_s"],
                    "fwd+bwd ms": 1000 * r["forward_backward_s"],
                    "fwd cpu ms": 1000 * r["forward_cpu_s"],
                    "f+b cpu ms": 1000 * r["forward_backward_cpu_s"],
                }
                for r in rows
            ]
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="on CPU, only the sizes that finish in seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_table(run(args.quick))
