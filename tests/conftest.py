"""Test set-up: a private Airflow home with a migrated metadata DB, real SQLite (and, where
reachable, PostgreSQL) databases, and helpers to run a segment's DAG through `dag.test()`.

Airflow reads its configuration when first imported, so the environment is set here, before
any test module imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import requests

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
_HOME = Path(tempfile.mkdtemp(prefix="cs-airflow-home-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "CONNECTOR_SEGMENTS_RETRIES": "0",  # a failing step fails the run at once
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
)
for leaked in (
    "AIRFLOW_CONN_NETMERA_DB",
    "CONNECTOR_SEGMENTS_DIR",
    "CONNECTOR_SEGMENTS_STAGING_DIR",
):
    os.environ.pop(leaked, None)

USERS_DDL = """CREATE TABLE netmera_users (user_id TEXT, external_id TEXT, email TEXT,
    msisdn TEXT, installation_id TEXT, push_permitted BOOLEAN)"""
# The same with a change time (incremental matching: the netmera_db extra `changed_at_column`),
# a seventh value of each row.
USERS_CHANGED_DDL = USERS_DDL.removesuffix(")") + ", changed_at TIMESTAMP)"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """`airflow db migrate` once per session into the private AIRFLOW_HOME."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _HOME


def write_users(path: Path, rows: list[tuple], *, changed_at: bool = False) -> Path:
    """A real SQLite Netmera user table (one row per device) at `path`; with `changed_at`,
    each row's seventh value is its change time."""
    with sqlite3.connect(path) as conn:
        conn.execute(USERS_CHANGED_DDL if changed_at else USERS_DDL)
        marks = ", ".join("?" * (7 if changed_at else 6))
        conn.executemany(f"INSERT INTO netmera_users VALUES ({marks})", rows)
    return path


def sqlite_conn(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _wire_workspace(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (path / "segments").mkdir()
    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(path / "segments"))
    monkeypatch.setenv("CONNECTOR_SEGMENTS_STAGING_DIR", str(path / "staging"))
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", sqlite_conn(path / "netmera.db"))
    return path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> Path:
    """Per-test segments folder, staging folder and Netmera DB, wired through env vars."""
    return _wire_workspace(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def module_env() -> Iterator[pytest.MonkeyPatch]:
    """`monkeypatch` for a module's fixtures (one API server, one store for all its tests)."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def module_workspace(
    tmp_path_factory: pytest.TempPathFactory, module_env: pytest.MonkeyPatch, airflow_db: Path
) -> Path:
    """`workspace`, shared by a module's tests."""
    return _wire_workspace(tmp_path_factory.mktemp("workspace"), module_env)


@pytest.fixture(scope="module")
def chromium_installed() -> None:
    """Skip without Chromium (fail instead where CONNECTOR_SEGMENTS_REQUIRE_BROWSER=1: CI)."""
    from tests.browser import browser_missing

    reason = browser_missing()
    if reason and os.environ.get("CONNECTOR_SEGMENTS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (CONNECTOR_SEGMENTS_REQUIRE_BROWSER=1: CI must run these)")
    if reason:
        pytest.skip(reason)


def reserialize_dags(timeout: float = 600) -> None:
    """`airflow dags reserialize`: what the DAG processor writes to the metadata DB, for the
    segments folder the environment names."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"],
        check=True,
        capture_output=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def run_segment(segment_id: str, **conf) -> str:
    """Parse the DAG folder as the scheduler would and run one segment's DAG; return its state."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    dag = bag.get_dag(f"connector_segment_{segment_id}")
    assert dag is not None, f"DAG not loaded; import errors: {bag.import_errors}"
    run = dag.test(run_conf=conf or None)
    return str(run.state)


class LogRecorder(logging.Handler):
    """Every record, formatted with its traceback. Not caplog/capfd: Airflow reconfigures
    logging when first used inside a test, dropping pytest's handlers and leaving its own bound
    to whichever captured stream was current; handlers on these named loggers survive that."""

    LOGGERS = ("", "include", "uvicorn", "uvicorn.error", "uvicorn.access", "airflow")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[LogRecorder]:
    """What the task and server logs say during the test (our loggers at DEBUG)."""
    recorder = LogRecorder()
    include = logging.getLogger("include")
    level = include.level
    include.setLevel(logging.DEBUG)
    for name in LogRecorder.LOGGERS:
        logging.getLogger(name).addHandler(recorder)
    yield recorder
    for name in LogRecorder.LOGGERS:
        logging.getLogger(name).removeHandler(recorder)
    include.setLevel(level)


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run `python -m include.cli ARGS` in process; return (exit code, stdout, stderr)."""
    from include.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_json(capsys: pytest.CaptureFixture, *args: str):
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


# -- the real API server ------------------------------------------------------------------------


def netmera_conn(fake, key: str, **extra) -> str:
    """`AIRFLOW_CONN_NETMERA_DEFAULT` for a FakeNetmera: its REST base, the key, short retries
    (`extra` overrides them)."""
    settings = {"timeout": 2, "backoff_base": 0.01, "max_attempts": 2, **extra}
    return json.dumps(
        {
            "conn_type": "http",
            "host": f"{fake.base_url}/rest/3.0",
            "password": key,
            "extra": settings,
        }
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def airflow_api_server(
    log_path: Path, *, standalone: bool = False, sub_path: str = "", **env: str
) -> Iterator[str]:
    """`airflow api-server` (one worker, this repo's plugins) on a free port of 127.0.0.1, with
    the current environment plus `env`; yields its base URL (with `sub_path`, e.g. "/airflow")
    once healthy, stops it after. `standalone`: `airflow standalone` instead (scheduler, DAG
    processor and triggerer too, LocalExecutor), so that triggered runs really run."""
    import requests

    port = free_port()
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}{sub_path}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        **env,
    }
    command = (
        ["standalone"] if standalone else ["api-server", "--port", str(port), "--workers", "1"]
    )
    with log_path.open("ab") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "airflow", *command],
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = env["AIRFLOW__API__BASE_URL"]
    try:
        deadline = time.monotonic() + 120
        while True:
            log = log_path.read_text(errors="replace")[-3000:]
            assert server.poll() is None, log
            assert time.monotonic() < deadline, "api-server not healthy: " + log
            try:
                if requests.get(f"{base}/api/v2/monitor/health", timeout=10).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up, or busy starting
                pass
            time.sleep(0.5)
        yield base
    finally:  # the whole group: the server and every process it started
        # standalone stops its children cleanly on SIGINT only (SIGTERM leaves workers behind)
        os.killpg(server.pid, signal.SIGINT if standalone else signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # anything of the group still left


@contextlib.contextmanager
def segments_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Connector Segments API's base URL on a real `airflow api-server` that knows the
    users admin and viewer."""
    log_path = tmp_path_factory.mktemp("api-server") / "api-server.log"
    with airflow_api_server(
        log_path, AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer"
    ) as base:
        yield f"{base}/connector-segments"


def token_session(api: str, username: str) -> requests.Session:
    """A session carrying the user's Bearer token from `POST /auth/token` (`api`: the
    plugin's base URL; the password is the one SimpleAuthManager generated)."""
    import requests

    passwords = Path(os.environ["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    password = json.loads(passwords.read_text())[username]
    answer = requests.post(
        f"{core_url(api)}/auth/token",
        json={"username": username, "password": password},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return session


def core_url(api: str) -> str:
    return api.removesuffix("/connector-segments")


# -- PostgreSQL ---------------------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get(
    "CONNECTOR_SEGMENTS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def _pg_unreachable_reason() -> str | None:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # any failure to connect means "not reachable"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}"
    return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    reason = _pg_unreachable_reason()
    if reason:
        if os.environ.get("CONNECTOR_SEGMENTS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (CONNECTOR_SEGMENTS_REQUIRE_POSTGRES=1: CI must run these)")
        pytest.skip(reason)
    return PG_ADMIN_URL


def redis_or_skip(url: str) -> None:
    """Flush the test's own Redis db, or skip (fail under CI) when Redis is unreachable."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).flushdb()
    except redis.RedisError as exc:
        reason = f"Redis not reachable at {url}: {type(exc).__name__}"
        if os.environ.get("CONNECTOR_SEGMENTS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (CI must run the multi-process tests)")
        pytest.skip(reason)


def use_pg_netmera_db(
    monkeypatch: pytest.MonkeyPatch,
    pg: dict,
    users: list[tuple],
    *,
    changed_at: bool = False,
    **extra,
) -> None:
    """Load a Netmera user table into the test's PostgreSQL database and point netmera_db at
    it (the store's tables follow on first use), with the Connection extras `extra`."""
    conn = {k: v for k, v in pg.items() if k != "url"}
    if extra:
        conn["extra"] = extra
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", json.dumps(conn))
    load_pg_users(pg["url"], users, changed_at=changed_at)


def load_pg_users(url, users: list[tuple], *, changed_at: bool = False) -> None:
    """A Netmera user table (USERS_DDL) holding `users`, in the PostgreSQL database `url`;
    with `changed_at`, each row's seventh value is its change time."""
    import sqlalchemy as sa

    names = "uxemipc" if changed_at else "uxemip"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(USERS_CHANGED_DDL if changed_at else USERS_DDL)
        conn.execute(
            sa.text(f"INSERT INTO netmera_users VALUES ({', '.join(':' + n for n in names)})"),
            [dict(zip(names, row, strict=True)) for row in users],
        )
    engine.dispose()


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[dict]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa

    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(pg_server)
    yield {
        "conn_type": "postgres",
        "host": url.host,
        "port": url.port,
        "login": url.username,
        "schema": name,
        "url": url.set(database=name),
    }
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
