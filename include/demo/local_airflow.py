"""`make ui`'s Airflow: what `airflow standalone` runs, with every task-log server on 127.0.0.1.

    python -m include.demo.local_airflow           # run until Ctrl-C, SIGINT, SIGTERM or SIGHUP
    python -m include.demo.local_airflow --check   # check the settings only (make ui's first step)

`airflow standalone` (3.3.2) starts the scheduler and the triggerer with their task-log servers,
and those listen on every interface: `airflow/utils/serve_logs/core.py` binds host "" and no
setting changes it. So this runs the same parts itself: the scheduler and the triggerer with
`--skip-serve-logs`, the DAG processor and the API server as standalone does, and Airflow's own
log-server app (`airflow.utils.serve_logs.log_server:get_app`, the same JWT check) under uvicorn
on 127.0.0.1 at `[logging] worker_log_server_port` and `trigger_log_server_port`. Tasks record
127.0.0.1 as their hostname, so the API server fetches a running task's log there. As
standalone does, it forces the LocalExecutor and SimpleAuthManager. The execution API URL and
the ports come from `ui_settings.resolve()`, checked before anything starts.

Each part's output is printed with its name in front. A part that ends by itself stops the
others (exit 1, naming it). On SIGINT, SIGTERM or SIGHUP each part gets SIGTERM, as standalone
does on Ctrl-C (the scheduler then stops its workers); what is left after STOP_TIMEOUT is
killed. Each part runs in a process group of its own, so a terminal's Ctrl-C reaches only this
launcher, which stops the parts in that order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from include.demo.ui_settings import LOOPBACK, LocalAirflow, SettingsError, check_free, resolve

STOP_TIMEOUT = 30.0  # seconds the parts get to stop
LOG_SERVER_APP = "airflow.utils.serve_logs.log_server:get_app"
# What `airflow standalone` forces (its StandaloneCommand.calculate_env).
FORCED = {
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__AUTH_MANAGER": (
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    ),
}


@dataclass(frozen=True)
class Part:
    name: str
    command: list[str]


def parts(settings: LocalAirflow) -> list[Part]:
    airflow = [sys.executable, "-m", "airflow"]
    log_server = [
        *(sys.executable, "-m", "uvicorn", "--factory", LOG_SERVER_APP),
        *("--host", LOOPBACK, "--no-access-log", "--log-level", "warning", "--port"),
    ]
    return [
        Part("scheduler", [*airflow, "scheduler", "--skip-serve-logs"]),
        Part("dag-processor", [*airflow, "dag-processor"]),
        Part("triggerer", [*airflow, "triggerer", "--skip-serve-logs"]),
        Part("api-server", [*airflow, "api-server"]),
        Part("task-logs", [*log_server, str(settings.worker_log_port)]),
        Part("trigger-logs", [*log_server, str(settings.trigger_log_port)]),
    ]


class Launcher:
    def __init__(self, settings: LocalAirflow) -> None:
        self.settings = settings
        self.env = {**os.environ, **FORCED, **settings.env()}
        self.running: dict[str, subprocess.Popen] = {}
        self.stop_asked = False
        self.print_lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self.print_lock:
            print(f"{name:<13} | {line}", flush=True)

    def start(self, part: Part) -> None:
        process = subprocess.Popen(
            part.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,  # see the module docstring
        )
        self.running[part.name] = process
        threading.Thread(target=self.relay, args=(part.name, process), daemon=True).start()

    def relay(self, name: str, process: subprocess.Popen) -> None:
        for raw in process.stdout:
            self.say(name, raw.decode("utf-8", "replace").rstrip())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.settings.health_url, timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False

    def run(self) -> int:
        def asked_to_stop(_signum: int, _frame: Any) -> None:
            self.stop_asked = True

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, asked_to_stop)
        code, shown_ready = 0, False
        try:
            for part in parts(self.settings):
                self.start(part)
            while not self.stop_asked:
                ended = [name for name, p in self.running.items() if p.poll() is not None]
                if ended:
                    self.say("local-airflow", f"{ended[0]} ended; stopping the others")
                    code = 1
                    break
                if not shown_ready and self.ready():
                    shown_ready = True
                    self.announce()
                time.sleep(0.5)
        finally:
            self.stop()
        return code

    def announce(self) -> None:
        settings = self.settings
        for line in (
            f"Airflow is ready: {settings.ui_url} (Ctrl-C stops it)",
            f"tasks call the execution API at {settings.execution_api_url}",
            f"task logs served on {LOOPBACK}:{settings.worker_log_port} and "
            f"{LOOPBACK}:{settings.trigger_log_port}",
        ):
            self.say("local-airflow", line)

    def stop(self) -> None:
        import psutil

        # Taken before SIGTERM: a part that exits cleanly orphans what left its group (a
        # LocalExecutor's task runners start groups of their own), and orphans have no parent
        # to find them by.
        below = self.descendants()
        for process in self.running.values():
            with suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.running.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        below |= self.descendants()
        for name, process in self.running.items():
            if process.poll() is None:
                self.say("local-airflow", f"{name} did not stop in {STOP_TIMEOUT:.0f} s; killed")
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for orphan in below:
            with suppress(psutil.NoSuchProcess):  # psutil never signals a reused pid
                orphan.kill()
        for process in self.running.values():
            process.wait()
        # Until init has reaped them: whoever stopped `make ui` may start it again at once.
        psutil.wait_procs(below, timeout=STOP_TIMEOUT)

    def descendants(self) -> set:
        import psutil

        found = set()
        for process in self.running.values():
            with suppress(psutil.NoSuchProcess):
                found.update(psutil.Process(process.pid).children(recursive=True))
        return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--check"]):
        print(__doc__)
        return 2
    try:
        settings = resolve()
        check_free(settings)
    except SettingsError as exc:
        print(f"make ui: {exc}", file=sys.stderr)
        return 2
    if args:
        return 0
    return Launcher(settings).run()


if __name__ == "__main__":
    sys.exit(main())
