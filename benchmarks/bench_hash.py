"""Hash tri-plane encode speed: forward and forward+backward for 100k points, per backend present.

`run(quick)` returns the rows for `avatar bench`; `python benchmarks/bench_hash.py [--quick]` prints them.
On CPU only the torch backend runs; on a GPU, torch, our CUDA kernel and tiny-cuda-nn (when importable).
The default config (12 levels x 2 features, 2^17 entries per level and plane, 16..512) is the one timed.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from avatar.model.hash_triplane import HashTriplane, HashTriplaneConfig, tcnn_available
from avatar.tables import format_table

NUM_POINTS = 100_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, warmup: int, reps: int) -> tuple[float, float]:
    """Median wall-clock ms, and median process CPU ms (all threads; on a shared CPU less load-dependent)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu))
    return statistics.median(wall), statistics.median(cpu)


def time_backend(backend: str, device: torch.device, num_points: int, warmup: int, reps: int) -> dict:
    torch.manual_seed(0)
    enc = HashTriplane(HashTriplaneConfig(implementation=backend), (-1, -1, -1), (1, 1, 1)).to(device)
    points = (torch.rand(num_points, 3, device=device) * 2 - 1).requires_grad_(True)
    grad_out = torch.randn(num_points, enc.out_dim, device=device)

    def forward():
        with torch.no_grad():
            enc(points)

    def forward_backward():
        enc.tables.grad = None
        points.grad = None
        enc(points).backward(grad_out)

    fwd_ms, fwd_cpu_ms = _median_ms(forward, device, warmup, reps)
    fwd_bwd_ms, fwd_bwd_cpu_ms = _median_ms(forward_backward, device, warmup, reps)
    row = {
        "name": "hash tri-plane encode",
        "backend": backend,
        "device": device.type,
        "points": num_points,
        "fwd_ms": fwd_ms,
        "fwd_bwd_ms": fwd_bwd_ms,
    }
    if device.type == "cpu":
        row.update(fwd_cpu_ms=fwd_cpu_ms, fwd_bwd_cpu_ms=fwd_bwd_cpu_ms, threads=torch.get_num_threads())
    return row


def run(quick: bool) -> list[dict]:
    warmup, reps = (1, 2) if quick else (3, 10)
    rows = []
    if torch.cuda.is_available():
        device = torch.device("cuda")
        backends = ["torch", "cuda"] + (["tcnn"] if tcnn_available() else [])
        for backend in backends:
            rows.append(time_backend(backend, device, NUM_POINTS, warmup, reps))
        reference = rows[0]
        for row in rows[1:]:
            row["fwd_speedup_vs_torch"] = reference["fwd_ms"] / row["fwd_ms"]
            row["fwd_bwd_speedup_vs_torch"] = reference["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    cpu_reps = (0, 1) if quick else (1, 3)
    rows.append(time_backend("torch", torch.device("cpu"), NUM_POINTS, *cpu_reps))
    return rows


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv[1:])))
