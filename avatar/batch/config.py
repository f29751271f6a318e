"""Settings of `avatar batch JOBS.csv|.jsonl` (the jobs file's own format: avatar/batch/jobs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

import tyro


@dataclass
class BatchConfig:
    """Run many jobs on Ray: render jobs (columns run,audio,out and any `avatar render` option) and avatar jobs
    (columns video,run and optionally preset, dataset, preprocess.OPTION, train.OPTION: preprocess, then train).
    A render waits for the avatar job that makes its run; finished jobs are skipped on a rerun; a failing job
    is tried once more, then reported, and the others go on."""

    LIMITS: ClassVar[dict] = {
        "workers": (1, None),
        "threads": (1, None),
        "gpus_per_worker": (0.01, 64),
        "memory_mb": (256, None),
    }  # checked by config_io.check_values

    jobs: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="JOBS")] = tyro.MISSING  # type: ignore[assignment]
    """the jobs file: .csv (a header row of column names) or .jsonl (one JSON object per line); relative paths
    in it are relative to the file"""
    report: Path | None = None
    """also write what happened to every job (status, attempts, seconds, what failed and its message) as JSON"""
    workers: int | None = None
    """workers at once; each holds one avatar and renders its clips one after another. Default: as many as the
    cluster holds (by its GPUs, or its cores, and its memory); a local cluster gets one per --threads cores"""
    address: str | None = None
    """an existing Ray cluster: 'auto' (the one `ray start` made on this machine) or HOST:PORT of its head;
    default: a private local cluster started for this batch with workers x threads cores"""
    threads: int = 1
    """CPU threads (torch's) of each worker"""
    gpus_per_worker: float = 1.0
    """GPUs each worker asks for when the cluster has GPUs (0.5: two workers share a GPU)"""
    memory_mb: int = 4096
    """memory each worker reserves: Ray places no more workers on a machine than its memory holds, and a CPU
    worker's allocations beyond it fail (the job is reported) instead of the machine running out (GPU workers:
    the placement only)"""
