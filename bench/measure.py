"""Run one benchmark task in a fresh child process, so that its wall time and peak RSS are its
own: `python -m bench.measure TASK JSON_KWARGS` prints one JSON line.

The child imports the task's module (and with it the libraries the task uses) before the clock
starts: the figures are the work, not Python's start-up. Peak RSS is the child's high-water mark
(VmHWM); the database server's memory is not in it. With a `timeout` a child still running then
is killed and its measurement is marked `cut` (at least that long; no result, no RSS).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STARTED = "bench.measure: clock started"  # the child's first line on stdout
TASKS = {
    "engine.floor": ("bench.engine", "floor"),
    "engine.ours": ("bench.engine", "ours"),
    "engine.pandas": ("bench.engine", "pandas_merge"),
    "database.path_a": ("bench.database", "path_a"),
    "database.path_b": ("bench.database", "path_b"),
    "database.pandas": ("bench.database", "pandas_read_sql"),
    "dags.parse": ("bench.dags", "parse"),
    "dags.parse_file": ("bench.dags", "parse_file"),
    "sqlite.run": ("bench.sqlite", "run"),
    "publish.floor": ("bench.publish", "floor"),
    "publish.publish": ("bench.publish", "publish"),
    "refresh.run": ("bench.refresh", "run"),
    "fleet.floor": ("bench.fleet", "floor_refreshes"),
    "incremental.refresh": ("bench.incremental", "refresh"),
    "incremental.floor": ("bench.incremental", "floor"),
}


@dataclass(frozen=True)
class Measurement:
    task: str
    seconds: float
    peak_rss: int  # bytes
    result: dict[str, Any]
    cut: bool = False  # killed at the timeout: `seconds` is that limit, a lower bound


def measure(
    task: str, env: dict[str, str] | None = None, timeout: float | None = None, **kwargs: Any
) -> Measurement:
    """Run `task` with `kwargs` in a child process; raise with its stderr if it fails. Past
    `timeout` seconds of the task's work (counted from when the child starts its clock) the
    child is killed and the measurement says so (`cut`)."""
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.measure", task, json.dumps(kwargs)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        while (line := child.stdout.readline()) and line.strip() != STARTED:
            pass  # the task's imports: not timed, not limited
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return Measurement(task, float(timeout or 0), 0, {}, cut=True)
        if child.returncode:
            errors.seek(0)
            raise RuntimeError(f"{task} failed:\n{errors.read()[-4000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    return Measurement(task, report["seconds"], report["peak_rss"], report["result"])


def _child(task: str, kwargs: dict[str, Any]) -> None:
    module, name = TASKS[task]
    work = getattr(importlib.import_module(module), name)
    print(STARTED, flush=True)
    started = time.perf_counter()
    result = work(**kwargs)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss": _peak_rss(), "result": result}))


def _peak_rss() -> int:
    """This process's high-water RSS since it started Python. Not ru_maxrss: that one keeps
    the parent's size at fork across exec."""
    status = Path("/proc/self/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kib * 1024


if __name__ == "__main__":
    _child(sys.argv[1], json.loads(sys.argv[2]))
