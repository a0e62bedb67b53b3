"""A multi-process Airflow for tests: scheduler, dag-processor, API server and Celery workers,
each a separate process in its own process group with its own log file, all sharing one
environment (CeleryExecutor, PostgreSQL metadata, Redis broker, a fresh AIRFLOW_HOME).

`Cluster.stop()` ends every group (SIGTERM, then SIGKILL after a grace) and `leftovers()`
names any process of those groups or sessions still alive, so a test can assert none is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@dataclass
class Cluster:
    env: dict[str, str]
    logs: Path  # one `<name>.log` per process
    processes: list[Process] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # names that needed SIGKILL at stop

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`airflow ARGS` to completion, with the cluster's env; output kept in the logs."""
        return self.run([sys.executable, "-m", "airflow", *args], timeout=timeout)

    def run(self, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """A one-off command with the cluster's env; fails with its output if it fails. Its
        output is also appended to `commands.log` (greped for leaks like the daemons' logs)."""
        done = subprocess.run(
            argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        with (self.logs / "commands.log").open("a") as log:
            log.write(f"$ {' '.join(argv[1:])}\n{done.stdout}{done.stderr}\n")
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def start(self, name: str, *args: str) -> Process:
        """`airflow ARGS` in the background, in a new session (its own process group)."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args],
                env=self.env,
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def assert_running(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            assert code is None, f"{process.name} exited ({code}):\n{process.tail()}"

    def wait_for(self, what: str, check, timeout: float, every: float = 0.5) -> None:
        """Poll `check()` every `every` seconds until true, failing early when a process has
        died."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_running()
            with contextlib.suppress(OSError):  # requests' errors are OSErrors
                if check():
                    return
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(every)

    def stop(self, grace: float = 30) -> None:
        """SIGTERM every group at once (workers finish their tasks warmly), SIGKILL after
        `grace` seconds whatever group is still there."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(max(0.1, deadline - time.monotonic()))
        deadline = time.monotonic() + grace / 3
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)  # the leaders are gone; their children may still be exiting
        for process in self.processes:
            if process.popen.poll() is None or _members(process.popen.pid):
                self.killed.append(process.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.popen.wait(10)

    def leftovers(self) -> list[str]:
        """`name: pid command` of every live process in a launched group or session."""
        found = []
        for process in self.processes:
            for pid, command in _members(process.popen.pid):
                found.append(f"{process.name}: {pid} {command}")
        return found


def _members(leader: int) -> list[tuple[int, str]]:
    """Live (not zombie) processes whose process group or session is `leader`'s."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        state, _ppid, pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if state != "Z" and leader in (int(pgrp), int(session)):
            members.append((int(entry.name), command))
    return members


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
