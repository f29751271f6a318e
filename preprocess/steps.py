"""Cached, atomic build steps: a step whose done-marker matches its inputs is skipped on a rerun.

Each step writes its outputs atomically (a temporary name renamed into place), then a done-marker
`.steps/<name>.json` holding a fingerprint of everything it depends on (its settings and the
fingerprints of the steps before it) and its measurements. An interrupted step leaves no marker, so it
runs again; a changed setting changes the fingerprint, so that step and every later one run again.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avatar.contracts.atomic import write_json

MARKER_DIR = ".steps"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class StepRunner:
    """Runs named steps in order over one output directory, skipping those already done."""

    def __init__(self, root: Path, force: bool):
        self.root = root
        self.force = force
        self.fingerprint = ""  # fingerprint of the last step run or skipped: the next step depends on it
        self.records: dict[str, dict] = {}  # step name -> its marker's measurements

    def marker(self, name: str) -> Path:
        return self.root / MARKER_DIR / f"{name}.json"

    def _fingerprint(self, name: str, inputs: dict) -> str:
        text = json.dumps({"step": name, "inputs": inputs, "after": self.fingerprint}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def is_done(self, name: str, inputs: dict, outputs: tuple[str, ...] = ()) -> bool:
        path = self.marker(name)
        if self.force or not path.is_file() or not all((self.root / o).exists() for o in outputs):
            return False
        try:
            return json.loads(path.read_text()).get("fingerprint") == self._fingerprint(name, inputs)
        except json.JSONDecodeError:
            return False

    def run(self, name: str, inputs: dict, fn: Callable[[], dict[str, Any]], outputs: tuple[str, ...] = ()) -> dict:
        """Run `fn` (which returns its measurements, JSON-able) unless its marker matches `inputs` and its
        `outputs` (paths relative to the root) are all there. Returns the measurements, fresh or cached."""
        fingerprint = self._fingerprint(name, inputs)
        path = self.marker(name)
        if self.is_done(name, inputs, outputs):
            record = json.loads(path.read_text())["record"]
            print(f"[{name}] up to date, skipped", file=sys.stderr)
        else:
            path.unlink(missing_ok=True)
            start, cpu_start = time.perf_counter(), time.process_time()
            record = fn()
            record["seconds"] = round(time.perf_counter() - start, 3)
            record["cpu_seconds"] = round(time.process_time() - cpu_start, 3)  # the machine may be shared
            if record.get("frames"):
                record["frames_per_s"] = round(record["frames"] / max(record["seconds"], 1e-6), 1)
                record["frames_per_cpu_s"] = round(record["frames"] / max(record["cpu_seconds"], 1e-6), 1)
            write_json(path, {"fingerprint": fingerprint, "record": record})
            print(f"[{name}] done in {record['seconds']:.1f} s (CPU {record['cpu_seconds']:.1f} s)", file=sys.stderr)
        for message in record.get("warnings", []):
            warn(message)
        self.fingerprint = fingerprint
        self.records[name] = record
        return record
