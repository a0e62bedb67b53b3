"""`make ui` on ports other than the defaults: AIRFLOW__API__PORT alone is enough (the tasks
find the execution API on it, and read a Mixpanel cohort from the Mixpanel sandbox), every port
the UI's Airflow and the sandboxes open is on 127.0.0.1 (the task-log servers too), Ctrl-C
leaves nothing behind, and settings that cannot work stop `make ui` at once, naming the
variable to set.

The real `make ui` runs, on a scratch `.local` (`LOCAL=`), with this interpreter's venv (`VENV=`)
and a fresh install stamp (`STAMP=`), so that it installs nothing. A Netmera user table is put
there first, so that it skips seeding the 100,000 demo users.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from include.demo.samples import DATA_DIR, MIXPANEL_FILE
from include.demo.sandbox import DEMO_API_KEY
from include.demo.vendor_sandboxes import CART_ABANDONERS, mixpanel_members
from tests.conftest import ROOT, free_port, write_users

pytestmark = pytest.mark.dagrun

SEGMENT = "moved_ports"
COHORT = mixpanel_members(DATA_DIR / MIXPANEL_FILE)  # what the Mixpanel sandbox serves
DAG_ID = f"connector_segment_{SEGMENT}"
# Settings a developer's shell may hold: the test gives make only its own.
UNSET = (
    "AIRFLOW__API__",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__WORKERS__EXECUTION_API_SERVER_URL",
    "AIRFLOW__LOGGING__",
    "AIRFLOW_CONN_NETMERA_DEFAULT",
    "AIRFLOW_CONN_MIXPANEL_DEFAULT",
    "AIRFLOW_CONN_AMPLITUDE_DEFAULT",
    "CONNECTOR_SEGMENTS_SANDBOX_",
)


def make_ui(local: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    stamp = local.parent / "installed.stamp"
    stamp.touch()  # newer than the requirements: nothing to install
    clean = {k: v for k, v in os.environ.items() if not k.startswith(UNSET)}
    return subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "ui",
            f"LOCAL={local}",
            f"VENV={sys.prefix}",
            f"STAMP={stamp}",
        ],
        cwd=ROOT,
        env={**clean, **env},
        text=True,
        **popen,
    )


def wait_for(check, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{tail(log)}"
        time.sleep(1)


def tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:]


def logged_errors(log: Path) -> list[str]:
    """The log's error lines (the API server logs a 500's cause there, by an id)."""
    lines = log.read_text(errors="replace").splitlines()
    return [line[:600] for line in lines if "error" in line.lower() and "api-server" in line][-12:]


def trigger(admin: requests.Session, url: str, tries: int = 3) -> requests.Response:
    """A manual run. `make ui` keeps Airflow's metadata in SQLite (as `airflow standalone`
    does): a write racing the DAG processor's first pass can fail once with a database error
    (seen once in CI on a loaded machine), which is SQLite's, not what this test is about; a
    later try succeeds. Any other answer is returned at once."""
    for _ in range(tries - 1):
        answer = admin.post(url, json={"logical_date": None}, timeout=30)
        if answer.status_code != 500 or "Database error" not in answer.text:
            return answer
        time.sleep(2)
    return admin.post(url, json={"logical_date": None}, timeout=30)


# -- settings that cannot work ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (
            {"AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://localhost:8080/execution/"},
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        ),
        ({"AIRFLOW__API__BASE_URL": "http://localhost:8080/airflow"}, "AIRFLOW__API__BASE_URL"),
        ({"AIRFLOW__API__PORT": "80a"}, "AIRFLOW__API__PORT"),
        ({"AIRFLOW__API__PORT": "{sandbox}"}, "CONNECTOR_SEGMENTS_SANDBOX_PORT"),
        ({"AIRFLOW__API__PORT": "{busy}"}, "AIRFLOW__API__PORT"),
        ({"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "{busy}"}, "WORKER_LOG_SERVER_PORT"),
        ({"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "{busy}"}, "TRIGGER_LOG_SERVER_PORT"),
    ],
    ids=[
        "execution-url-on-8080",
        "base-url-on-8080",
        "port-not-a-number",
        "port-of-the-sandbox",
        "api-port-taken",
        "task-log-port-taken",
        "trigger-log-port-taken",
    ],
)
def test_settings_that_cannot_work_stop_make_ui_at_once_naming_the_variable(
    tmp_path: Path, given: dict[str, str], named: str
):
    with socket.socket() as holder:  # another program on a port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports = {"busy": holder.getsockname()[1], "sandbox": free_port()}
        env = {
            "AIRFLOW__API__PORT": str(free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "CONNECTOR_SEGMENTS_SANDBOX_PORT": str(ports["sandbox"]),
        }
        env.update({k: v.format(**ports) for k, v in given.items()})
        local = tmp_path / "local"
        make = make_ui(local, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = make.communicate(timeout=120)
    assert make.returncode != 0, out
    (message,) = [line for line in err.splitlines() if line.startswith("make ui: ")]
    assert named in message, err
    assert not (local / "airflow-db-migrate.log").exists(), "it went on to migrate"


# -- make ui on moved ports ---------------------------------------------------------------------


def listening_sockets(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of each TCP socket the processes `pids` listen on."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                found.add((decode_address(address), int(port, 16)))
    return found


def decode_address(hex_address: str) -> str:
    """/proc/net/tcp's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def session_pids(session: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[3]) == session:  # field 6: session
                    pids.add(int(entry))
    return pids


@pytest.fixture
def scratch_local(tmp_path: Path) -> Path:
    """A `.local` with a small Netmera user table (20 users of the Mixpanel sandbox's cohort)
    and a folder holding one segment: that cohort."""
    local = tmp_path / "local"
    local.mkdir()
    known = [m["$distinct_id"] for m in COHORT if m["$distinct_id"].startswith("ext-")][:20]
    write_users(local / "netmera.db", [(f"nm-{ext}", ext, None, None, None, True) for ext in known])
    segments = tmp_path / "segments"
    segments.mkdir()
    config = {
        "id": SEGMENT,
        "name": "Moved ports",
        "source": {"type": "mixpanel", "cohort_id": CART_ABANDONERS},
        "user_key": "$distinct_id",
        "identifiers": [{"field": "$distinct_id", "kind": "external_id"}],
        "schedule": None,
    }
    (segments / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    return local


@contextlib.contextmanager
def running(local: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`make ui` in a session of its own; Ctrl-C at the end (SIGINT to its process group, as a
    terminal sends), which must leave no process of the session and end make."""
    with log.open("w") as out:
        make = make_ui(local, env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield make
    finally:
        os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(120)
        finally:
            left = session_pids(make.pid)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left after Ctrl-C: {left}\n{tail(log)}"


def test_make_ui_on_moved_ports_runs_tasks_and_listens_on_127_0_0_1_only(
    tmp_path: Path, scratch_local: Path
):
    port, worker_logs, trigger_logs, sandbox = (free_port() for _ in range(4))
    env = {
        "AIRFLOW__API__PORT": str(port),  # alone: no base URL, no execution API URL
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_logs),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_logs),
        "CONNECTOR_SEGMENTS_SANDBOX_PORT": str(sandbox),
        "CONNECTOR_SEGMENTS_DIR": str(tmp_path / "segments"),
        "AIRFLOW__CORE__PARALLELISM": "4",  # fewer idle workers on a busy machine
    }
    log = tmp_path / "make-ui.log"
    api = f"http://127.0.0.1:{port}"

    def get(path: str, session: requests.Session = requests) -> requests.Response | None:
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            return session.get(api + path, timeout=10)
        return None

    with running(scratch_local, env, log) as make:
        wait_for(
            lambda: make.poll() is not None or getattr(get("/api/v2/monitor/health"), "ok", 0),
            300,
            "the API server",
            log,
        )
        assert make.poll() is None, tail(log)
        token = requests.post(
            f"{api}/auth/token", json={"username": "admin", "password": "admin"}, timeout=10
        )
        assert token.status_code == 201, token.text
        admin = requests.Session()
        admin.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        wait_for(
            lambda: getattr(get(f"/api/v2/dags/{DAG_ID}", admin), "ok", 0), 180, "the DAG", log
        )
        run = trigger(admin, f"{api}/api/v2/dags/{DAG_ID}/dagRuns")
        assert run.status_code == 200, (run.text, logged_errors(log))
        run_url = f"/api/v2/dags/{DAG_ID}/dagRuns/{run.json()['dag_run_id']}"

        def finished() -> str | None:
            state = get(run_url, admin).json()["state"]
            return state if state in ("success", "failed") else None

        state = wait_for(finished, 240, "the run", log)
        tasks = get(f"{run_url}/taskInstances", admin).json()["task_instances"]
        assert state == "success", ({t["task_id"]: t["state"] for t in tasks}, tail(log))
        listed = get(f"/connector-segments/api/segments/{SEGMENT}", admin).json()
        assert (listed["connector_users"], listed["netmera_users"]) == (len(COHORT), 20)

        sockets = listening_sockets(session_pids(make.pid))
        assert {p for _, p in sockets} >= {port, worker_logs, trigger_logs}, sockets
        assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets
        # where the API server looks for a running task's log: its log server's address
        assert {t["hostname"] for t in tasks if t["state"] == "success"} == {"127.0.0.1"}
        # the sandboxes, in a session of their own: on 127.0.0.1 only as well
        sandboxes = listening_sockets(sandbox_pids(sandbox))
        assert ("127.0.0.1", sandbox) in sandboxes and len(sandboxes) >= 3, sandboxes
        assert {address for address, _ in sandboxes} == {"127.0.0.1"}, sandboxes
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        pytest.fail(f"port {port} still answers after Ctrl-C")


def sandbox_pids(port: int) -> set[int]:
    answer = requests.get(
        f"http://127.0.0.1:{port}/sandbox/status",
        headers={"X-netmera-api-key": DEMO_API_KEY},
        timeout=10,
    )
    return {answer.json()["pid"]}
