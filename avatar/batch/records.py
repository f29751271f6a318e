"""What became of each job of a batch: its tries counted (a failing job is tried once more, then reported),
a line printed per finished, retried or failed job, the summary table at the end and the JSON report."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from avatar.batch.config import BatchConfig
from avatar.batch.jobs import AvatarJob, Job, RenderJob, read_jobs
from avatar.contracts.atomic import write_json
from avatar.tables import format_table

ATTEMPTS = 2  # a failing job is tried again once, then reported
STATUSES = ("done", "skipped", "failed")  # of a batch that ran to its end


def shown(path: Path, base: Path) -> str:
    """A path as the user wrote it: relative to the jobs file's folder when inside it."""
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


class Batch:
    """The jobs of one jobs file and what became of each: the records the table and the report show."""

    def __init__(self, cfg: BatchConfig):
        self.cfg = cfg
        self.base = Path(cfg.jobs).resolve().parent
        self.jobs = read_jobs(Path(cfg.jobs).resolve())
        self.records = [
            {
                "line": job.line,
                "kind": job.kind,
                **{k: str(v) for k, v in job.describe().items()},
                "status": "skipped" if job.done() else "to do",
                "attempts": 0,
            }
            for job in self.jobs
        ]
        self.index = {id(job): i for i, job in enumerate(self.jobs)}
        self.progress = None  # the progress bar while the jobs run
        self.where: str | None = None  # the cluster, in words, and how many workers it ran
        self.workers: int | None = None

    def record(self, job: Job) -> dict:
        return self.records[self.index[id(job)]]

    def target(self, job: Job) -> str:
        """What the job makes: its video, or its run."""
        return f"{job.kind} {shown(job.render.out if isinstance(job, RenderJob) else job.run, self.base)}"

    def label(self, job: Job) -> str:
        return f"line {job.line} ({self.target(job)})"

    def say(self, text: str) -> None:
        (tqdm.write if self.progress is not None else print)(text, file=sys.stderr)

    def settle(self, job: Job, result: dict) -> bool:
        """Record one try of `job`; True when the job is finished (done, or failed for the last time)."""
        record = self.record(job)
        record["attempts"] += 1
        record["seconds"] = round(record.get("seconds", 0.0) + result.get("seconds", 0.0), 2)
        if result["ok"]:
            record.update(status="done", failed=None, message=None)
            self.say(f"done: {self.label(job)} in {result['seconds']:.1f} s")
        elif record["attempts"] < ATTEMPTS:
            self.say(f"retrying {self.label(job)}: {result['failed']}: {result['message']}")
            return False
        else:
            record.update(status="failed", failed=result["failed"], message=result["message"])
            self.say(f"FAILED: {self.label(job)}: {result['failed']}: {result['message']}")
        if self.progress is not None:
            self.progress.update()
        return True

    def fail_unmade(self, job: RenderJob, avatar: AvatarJob) -> None:
        """A render whose avatar job failed is not tried: reported with the reason."""
        self.record(job).update(
            status="failed",
            failed="waiting for its avatar",
            message=f"its avatar job, line {avatar.line}, failed: {self.record(avatar)['message']}",
        )
        if self.progress is not None:
            self.progress.update()

    def summary(self) -> str:
        counts = [
            {
                "jobs": kind,
                **{s: sum(r["kind"] == kind and r["status"] == s for r in self.records) for s in STATUSES},
            }
            for kind in ("avatar", "render")
            if any(r["kind"] == kind for r in self.records)
        ]
        failed = [
            {
                "line": r["line"],
                "job": self.target(job),
                "failed": r["failed"],
                "attempts": r["attempts"],
                "message": r["message"],
            }
            for job, r in zip(self.jobs, self.records)
            if r["status"] == "failed"
        ]
        return format_table(counts) + ("\n\nfailed jobs:\n" + format_table(failed) if failed else "")

    def write_report(self, started: float) -> None:
        """--report: every job's record, and where and for how long the batch ran."""
        if self.cfg.report is not None:
            write_json(
                self.cfg.report,
                {
                    "jobs_file": str(Path(self.cfg.jobs).resolve()),
                    "cluster": self.where,
                    "workers": self.workers,
                    "seconds": round(time.perf_counter() - started, 2),
                    "jobs": self.records,
                },
            )
