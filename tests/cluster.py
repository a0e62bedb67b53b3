"""A multi-process Airflow for tests: scheduler, dag-processor, API server and Celery workers,
each a separate process in its own session with its own log file, all sharing one environment
(CeleryExecutor, PostgreSQL metadata, Redis broker, a fresh AIRFLOW_HOME).

`boot()` migrates, starts them and waits for the DAGs (`launch()`: without the wait);
`stop()` ends every group (SIGTERM, then SIGKILL after a grace) and `leftovers()` names any
process of those groups or sessions still alive, so a test can assert none is. `kill()` is a
machine dying: SIGKILL to every process of one daemon's session at once. Used by
tests/test_multiprocess.py and tests/test_faults.py, and by `python -m bench.fleet` (a fleet's
CPU on a cluster): nothing here imports pytest (the tests' skips are in tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

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

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """`airflow ARGS` in the background, in a new session (its own process group), with
        the cluster's env and `env` (this process's own settings)."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args],
                env={**self.env, **(env or {})},
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

    def kill(self, process: Process) -> None:
        """SIGKILL every live process of `process`'s session at once (its task processes
        included), as when the machine dies; it is then no longer one of the cluster's."""
        for pid, _ in _members(process.popen.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.popen.wait(10)
        self.processes.remove(process)

    def owner_of(self, pid: int) -> Process:
        """The daemon whose session `pid` (a task's process) belongs to."""
        for process in self.processes:
            if pid in {p for p, _ in _members(process.popen.pid)}:
                return process
        raise AssertionError(f"pid {pid} belongs to no process of the cluster")

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


# -- booting one, and talking to it ----------------------------------------------------------


@contextlib.contextmanager
def pg_databases(pg_server: str, password: str) -> Iterator[dict]:
    """A login role with `password` and two fresh databases it owns: Airflow's metadata and
    `netmera_db` (the Netmera user table and the segment store), dropped afterwards."""
    import sqlalchemy as sa

    tag = uuid.uuid4().hex[:10]
    role, meta, netmera = f"cs_mp_{tag}", f"cs_mp_meta_{tag}", f"cs_mp_netmera_{tag}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        for name in (meta, netmera):
            conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {role}")
    url = sa.make_url(pg_server).set(username=role, password=password)
    try:
        yield {"role": role, "meta": url.set(database=meta), "netmera": url.set(database=netmera)}
    finally:
        with admin.connect() as conn:
            for name in (meta, netmera):
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


def airflow_env(home: Path, ws: Path, pg: dict, port: int, broker: str) -> dict[str, str]:
    """The environment every daemon shares: CeleryExecutor with `broker`, the metadata in
    `pg["meta"]`, the API server on 127.0.0.1:`port`, the segments in `ws/segments`, staging
    in `ws/staging`, and `netmera_db` on `pg["netmera"]`. Tests add their other Connections."""
    meta = pg["meta"].render_as_string(hide_password=False)
    netmera = pg["netmera"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONNECTOR_"))}
    env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "PYTHONPATH": str(ROOT),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta,
            # As compose sets it: workers import what tasks need once, before forking.
            "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": (
                "include.orchestration.celery_worker.CELERY_CONFIG"
            ),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Parsed once: re-parsing every 30 s would take CPU from the tasks.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "CONNECTOR_SEGMENTS_RETRIES": "0",
            "CONNECTOR_SEGMENTS_DIR": str(ws / "segments"),
            "CONNECTOR_SEGMENTS_STAGING_DIR": str(ws / "staging"),
            "AIRFLOW_CONN_NETMERA_DB": json.dumps(
                {
                    "conn_type": "postgres",
                    "host": netmera.host,
                    "port": netmera.port,
                    "login": netmera.username,
                    "password": netmera.password,
                    "schema": netmera.database,
                }
            ),
        }
    )
    return env


def rest(session: requests.Session, method: str, url: str, **kw) -> dict:
    answer = session.request(method, url, timeout=30, **kw)
    assert answer.status_code in (200, 201), f"{method} {url}: {answer.status_code} {answer.text}"
    return answer.json()


@dataclass
class Airflow:
    """A booted cluster and an admin's REST session to its API server."""

    cluster: Cluster
    api: str
    admin: requests.Session

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        body = {"logical_date": None, **({"conf": conf} if conf else {})}
        return rest(self.admin, "POST", f"{self.api}/api/v2/dags/{dag_id}/dagRuns", json=body)[
            "dag_run_id"
        ]

    def task(self, dag_id: str, run_id: str, task_id: str) -> dict:
        return rest(
            self.admin,
            "GET",
            f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}",
        )

    def wait_runs(
        self, runs: dict[str, tuple[str, str]], timeout: float, every: float = 2
    ) -> dict[str, dict]:
        """Poll (one listing of every DAG's runs, every `every` seconds) until each (dag_id,
        run_id) of at most 100 has finished; return the finished runs by the caller's key."""
        done: dict[str, dict] = {}

        def all_finished() -> bool:
            listed = rest(
                self.admin, "GET", f"{self.api}/api/v2/dags/~/dagRuns", params={"limit": 100}
            )
            by_key = {(r["dag_id"], r["dag_run_id"]): r for r in listed["dag_runs"]}
            for key, run in runs.items():
                if run in by_key and by_key[run]["state"] in ("success", "failed"):
                    done[key] = by_key[run]
            return len(done) == len(runs)

        try:
            self.cluster.wait_for("the runs", all_finished, timeout, every=every)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; unfinished: {sorted(set(runs) - set(done))}") from None
        return done

    def cli_list(self) -> dict[str, dict]:
        done = self.cluster.run([sys.executable, "-m", "include.cli", "list", "--json"])
        return {row["id"]: row for row in json.loads(done.stdout)}


def start_worker(
    cluster: Cluster, name: str, concurrency: int = 2, env: dict[str, str] | None = None
) -> Process:
    """A Celery worker named `name`; `env`: its own settings (a TMPDIR of its own, as a worker
    on another host has)."""
    return cluster.start(
        name,
        "celery",
        "worker",
        "--celery-hostname",
        f"{name}@%h",
        "--concurrency",
        str(concurrency),
        "--skip-serve-logs",  # the workers serve no logs: no port of theirs is left behind
        env=env,
    )


def boot(
    cluster: Cluster,
    dag_ids: set[str],
    workers: int = 2,
    worker_env: Callable[[str], dict[str, str]] | None = None,
) -> Airflow:
    """`launch`, then wait until `dag_ids` are parsed."""
    airflow = launch(cluster, workers, worker_env=worker_env)

    def parsed() -> bool:
        dags = rest(airflow.admin, "GET", f"{airflow.api}/api/v2/dags", params={"limit": 100})
        return dag_ids <= {d["dag_id"] for d in dags["dags"]}

    cluster.wait_for(f"the {len(dag_ids)} segment DAGs parsed", parsed, 120)
    return airflow


def launch(
    cluster: Cluster,
    workers: int = 2,
    slots: int = 2,
    worker_env: Callable[[str], dict[str, str]] | None = None,
) -> Airflow:
    """Migrate, create the pools, start the API server, scheduler, dag-processor and `workers`
    Celery workers of `slots` slots each (`worker_env(name)`: a worker's own settings), and wait
    until the API server answers."""
    env = cluster.env
    cluster.airflow("db", "migrate")
    cluster.run([sys.executable, "-m", "include.orchestration.pools"])
    cluster.start("api-server", "api-server", "--port", env["AIRFLOW__API__PORT"], "--workers", "1")
    cluster.start("scheduler", "scheduler")
    cluster.start("dag-processor", "dag-processor")
    for n in range(1, workers + 1):
        name = f"worker{n}"
        start_worker(cluster, name, slots, env=worker_env(name) if worker_env else None)
    api = env["AIRFLOW__API__BASE_URL"]
    cluster.wait_for(
        "api-server health", lambda: requests.get(f"{api}/api/v2/monitor/health", timeout=2).ok, 120
    )
    return Airflow(cluster, api, admin_session(api, Path(env["AIRFLOW_HOME"])))


def admin_session(api: str, home: Path) -> requests.Session:
    passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    token = rest(
        requests.Session(),
        "POST",
        f"{api}/auth/token",
        json={"username": "admin", "password": passwords["admin"]},
    )["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session
