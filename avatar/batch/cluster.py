"""`avatar batch`: the driver, the one module of the project that imports Ray (an optional extra, `batch`).

    jobs file ─read, checked─▶ finished jobs skipped ─▶ Ray cluster (local, or --address) ─▶ workers
        avatar job:  a task, preprocess then train                 ─┐ its run made: its renders are released
        render jobs: an actor per run (more while workers are free) ─┘ loads the avatar once, renders clip after clip

At most `workers` workers run at once, each with `threads` CPU threads or `gpus_per_worker` GPUs and
`memory_mb` of memory. A worker of a run is stopped when its run has no clips left, which frees its place for
the next run. A job that fails is tried again once, then reported; the others go on. Ctrl-C stops the workers
and the cluster and removes the stopped renders' temporaries: every finished output stays, and a rerun skips it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from avatar.batch.config import BatchConfig
from avatar.batch.jobs import AvatarJob, Job, RenderJob
from avatar.batch.records import Batch
from avatar.batch.workers import RenderWorker, make_avatar
from avatar.contracts.atomic import exclusive
from avatar.errors import UserError
from avatar.render.video import sweep_stale_temporaries

LOCAL_OBJECT_STORE = 128 * 2**20  # jobs pass configs and small dicts: a local cluster needs no large store


def import_ray():
    """Ray, or a message saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent home
    try:
        import ray  # noqa: PLC0415 - the optional extra, imported by `avatar batch` alone
    except ImportError as exc:
        raise UserError(
            f"`avatar batch` runs on Ray, which is not installed ({exc}). Install the extra: "
            "pip install 'avatar[batch]' (or ray==2.60.0)."
        ) from None
    return ray


QUIET = {"logging_level": logging.WARNING, "log_to_driver": False}  # workers' output goes to Ray's log files


def start_local(ray, cpus: int) -> None:
    """A private local cluster of `cpus` cores: no dashboard, a small object store and no token
    authentication (RAY_AUTH_MODE set in the environment wins)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE, **QUIET)


@dataclass
class Plan:
    """How many workers run at once and what each asks the cluster for."""

    workers: int
    device: str  # "cuda" (the GPU Ray gives the worker) or "cpu"
    threads: int
    options: dict  # Ray resources of one worker: num_cpus, num_gpus, memory
    memory_limit: int | None  # a CPU worker's own cap on its memory (workers.limit_memory)
    where: str  # the cluster, in words

    @classmethod
    def of(cls, ray, cfg: BatchConfig, local: bool) -> Plan:
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        memory = cfg.memory_mb * 2**20
        options = {"num_cpus": cfg.threads, "memory": memory, **({"num_gpus": cfg.gpus_per_worker} if gpus else {})}
        wanted = {"CPU": (cfg.threads, "--threads"), "memory": (memory, "--memory-mb")}
        if gpus:
            wanted["GPU"] = (cfg.gpus_per_worker, "--gpus-per-worker")
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        for name, (amount, flag) in wanted.items():
            largest = max((n.get(name, 0) for n in nodes), default=0)
            if amount > largest:
                shown = f"{largest / 2**20:.0f} MiB" if name == "memory" else f"{largest:g} {name}s"
                raise UserError(
                    f"{flag}: one worker asks for more than the largest machine of the cluster has ({shown}); "
                    f"give {flag} at most that."
                )
        fit = sum(min(int(n.get(name, 0) // amount) for name, (amount, _) in wanted.items()) for n in nodes)
        workers = min(cfg.workers or fit, fit)
        if cfg.workers and workers < cfg.workers:
            print(
                f"note: the cluster holds {fit} worker(s) of {cfg.threads} thread(s) and {cfg.memory_mb} MiB"
                + (f" and {cfg.gpus_per_worker:g} GPU" if gpus else "")
                + f"; running {fit}, not {cfg.workers}.",
                file=sys.stderr,
            )
        where = f"{'a local' if local else 'the'} Ray cluster of {len(nodes)} machine(s), {cpus:g} CPUs, {gpus:g} GPUs"
        return cls(workers, "cuda" if gpus else "cpu", cfg.threads, options, None if gpus else memory, where)


@contextlib.contextmanager
def cluster(ray, cfg: BatchConfig) -> Iterator[Plan]:
    """A Ray connection for the batch: one already made in this process as it is, an existing cluster
    (--address), or a private local cluster of workers x threads cores; stopped (or left) at the end."""
    started = not ray.is_initialized()
    if started and cfg.address:
        try:
            if not answers(cfg.address):  # Ray itself would keep trying for minutes
                raise ConnectionError("nothing answers there")
            ray.init(address=cfg.address, **QUIET)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(
                f"--address {cfg.address}: no Ray cluster reached ({exc}). Start one (`ray start --head`, see "
                "docs/batch.md) or leave --address out for a local cluster."
            ) from None
    elif started:
        start_local(ray, (cfg.workers or max(1, (os.cpu_count() or 1) // cfg.threads)) * cfg.threads)
    try:
        yield Plan.of(ray, cfg, local=started and not cfg.address)
    finally:
        if started:
            ray.shutdown()


def answers(address: str) -> bool:
    """Whether something accepts connections at HOST:PORT ('auto' and ray:// addresses are Ray's to find)."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address:
        return True
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError):
        return False
    return True


class Scheduler:
    """Hands jobs to workers as places free up, in dependency order, and collects their outcomes."""

    def __init__(self, ray, plan: Plan, batch: Batch):
        self.ray, self.plan, self.batch = ray, plan, batch
        todo = [job for job, r in zip(batch.jobs, batch.records) if r["status"] == "to do"]
        self.avatars: deque[AvatarJob] = deque(j for j in todo if isinstance(j, AvatarJob))
        self.making = {job.run: job for job in self.avatars}  # runs this batch makes
        self.waiting: dict[Path, list[RenderJob]] = {}  # renders of a run still being made
        self.queues: dict[Path, deque[RenderJob]] = {}  # renders ready to go, by run
        for job in todo:
            if isinstance(job, RenderJob):
                (self.waiting if job.run in self.making else self.queues).setdefault(job.run, deque()).append(job)
        self.in_flight: dict = {}  # ObjectRef -> (job, the actor running it or None)
        self.actors: dict[Path, int] = {}  # workers alive per run
        self.busy = 0
        # no retries by Ray (a try is counted here); a fresh process per avatar job (training's memory is freed)
        self.render_actor = ray.remote(max_restarts=0, max_task_retries=0, **plan.options)(RenderWorker)
        self.avatar_task = ray.remote(max_retries=0, max_calls=1, **plan.options)(make_avatar)

    def run(self) -> None:
        try:
            self._fill()
            while self.in_flight:
                (ref,), _ = self.ray.wait(list(self.in_flight), num_returns=1)
                job, actor = self.in_flight.pop(ref)
                self._settle(job, actor, self._outcome(ref))
                self._fill()
        except KeyboardInterrupt:
            self.stop()
            raise

    def _outcome(self, ref) -> dict:
        """The worker's outcome dict, or the failure Ray reports when the worker died before answering."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            first = str(cause or exc).strip().splitlines()[0] if str(cause or exc).strip() else type(exc).__name__
            died = isinstance(exc, (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError))
            return {
                "ok": False,
                "lost_worker": died,
                "failed": "the worker died" if died else "worker error",
                "message": f"{type(exc).__name__}: {first}",
            }

    def _settle(self, job: Job, actor, result: dict) -> None:
        finished = self.batch.settle(job, result)
        if isinstance(job, AvatarJob):
            self.busy -= 1
            if not finished:
                self.avatars.appendleft(job)
                return
            dependents = self.waiting.pop(job.run, deque())
            if result["ok"]:
                self.queues.setdefault(job.run, deque()).extend(dependents)
            for render in dependents if not result["ok"] else ():
                self.batch.fail_unmade(render, job)
            return
        queue = self.queues.setdefault(job.run, deque())
        if not finished:
            queue.appendleft(job)
        if result.get("lost_worker"):  # its render was cut off: its temporary goes, no one else writes that file
            sweep_stale_temporaries(job.render.out, older_than_s=0)
            self._retire(job.run, actor, kill=False)
        elif queue:
            self._submit_render(actor, queue.popleft())
        else:
            self._retire(job.run, actor)

    def _retire(self, run: Path, actor, kill: bool = True) -> None:
        if kill:
            self.ray.kill(actor)
        self.actors[run] -= 1
        self.busy -= 1

    def _fill(self) -> None:
        """Start work while places are free: avatar jobs first (their renders wait on them), then a worker
        for the run with queued clips and the fewest workers."""
        while self.busy < self.plan.workers:
            if self.avatars:
                job = self.avatars.popleft()
                preprocess, train = job.configs(self.plan.device == "cuda", self.plan.threads)
                self.in_flight[self.avatar_task.remote(preprocess, train, self.plan.memory_limit)] = (job, None)
                self.busy += 1
                continue
            ready = [run for run, queue in self.queues.items() if queue]
            if not ready:
                return
            run = min(ready, key=lambda r: (self.actors.get(r, 0), -len(self.queues[r])))
            actor = self.render_actor.remote(run, self.plan.device, self.plan.threads, self.plan.memory_limit)
            self.actors[run] = self.actors.get(run, 0) + 1
            self.busy += 1
            self._submit_render(actor, self.queues[run].popleft())

    def _submit_render(self, actor, job: RenderJob) -> None:
        self.in_flight[actor.render.remote(job.render)] = (job, actor)

    def stop(self) -> None:
        """Ctrl-C: stop every worker, wait until they are gone, remove the temporaries of the renders stopped."""
        for ref, (_, actor) in self.in_flight.items():
            if actor is not None:
                self.ray.kill(actor)
            else:
                self.ray.cancel(ref, force=True)
        if self.in_flight:  # a killed worker's call ends at once, with its death
            self.ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=30)
        for job, _ in self.in_flight.values():
            if isinstance(job, RenderJob):
                sweep_stale_temporaries(job.render.out, older_than_s=0)


def run(cfg: BatchConfig) -> list[dict]:
    """`avatar batch JOBS`: returns the record of every job. One batch of a jobs file at a time (two would
    render the same files side by side)."""
    batch = Batch(cfg)
    busy = f"{cfg.jobs}: another `avatar batch` is running these jobs. Wait for it to finish (or stop it), then rerun."
    with exclusive(Path(cfg.jobs), busy):
        return run_batch(cfg, batch)


def run_batch(cfg: BatchConfig, batch: Batch) -> list[dict]:
    started = time.perf_counter()
    skipped = sum(r["status"] == "skipped" for r in batch.records)
    if skipped == len(batch.jobs):
        print(
            f"all {skipped} jobs of {cfg.jobs} are finished already (their outputs are newer than their inputs): "
            "nothing to do. Remove an output to make it again.",
            file=sys.stderr,
        )
        batch.write_report(started)
        return batch.records
    ray = import_ray()
    try:
        with cluster(ray, cfg) as plan:
            batch.where, batch.workers = plan.where, plan.workers
            print(
                f"{len(batch.jobs)} jobs, {skipped} finished already (skipped); {plan.workers} worker(s) of "
                f"{plan.threads} thread(s){' and a GPU share' if plan.device == 'cuda' else ''} on {plan.where}",
                file=sys.stderr,
            )
            with tqdm(
                total=len(batch.jobs),
                initial=skipped,
                unit="job",
                desc="batch",
                disable=not sys.stderr.isatty(),
                file=sys.stderr,
            ) as batch.progress:
                Scheduler(ray, plan, batch).run()
            batch.progress = None
    except KeyboardInterrupt:
        for record in batch.records:
            if record["status"] == "to do":
                record["status"] = "interrupted"
        batch.write_report(started)
        raise
    print(batch.summary())
    batch.write_report(started)
    failed = sum(r["status"] == "failed" for r in batch.records)
    if failed:
        raise UserError(
            f"{failed} of {len(batch.jobs)} jobs failed (the table above"
            + (f", and {cfg.report}" if cfg.report else "")
            + "). Fix them and run the same command again: finished jobs are skipped."
        )
    return batch.records
