"""Faults on a real multi-process Airflow (tests/cluster.py: scheduler, dag-processor, API server,
two Celery workers; PostgreSQL metadata and store; a Redis broker of the test's own): each fault
happens at a chosen moment of a real run, and afterwards nothing is lost (the membership is the
one before the fault or the one the run was meant to publish, each version published once) and
nobody is messaged twice (the Netmera test server's own record of deliveries).

A run is frozen at a chosen step without touching product code: a test transaction holds a
lock the step needs (the segment's row for publish, the Netmera user table for match) and the
test waits until PostgreSQL shows the step's backend waiting on it; or the Netmera test server
holds its answer to one request. Retries and Airflow's own detection of dead tasks are set
short (one retry, 12 s later; a task without a heartbeat for 20 s is failed).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
import sqlalchemy as sa
import yaml

from include.store import migrate
from include.store.tables import members, members_at
from tests.cluster import (
    Airflow,
    Cluster,
    airflow_env,
    boot,
    pg_databases,
    port_is_free,
    start_worker,
)
from tests.conftest import free_port, load_pg_users, netmera_conn, redis_or_skip, write_csv
from tests.fakes import FakeNetmera

pytestmark = [pytest.mark.multiprocess, pytest.mark.postgres]

RUN_TIMEOUT = 240
NETMERA_KEY = f"nm-key-{secrets.token_hex(8)}"
DB_PASSWORD = f"db-pass-{secrets.token_hex(8)}"
STAGING_SIZE = "2m"  # the staging tmpfs: every audience here fits, the big one does not
HEARTBEAT_TIMEOUT = 20  # seconds without a task heartbeat before Airflow fails the task
RETRY_DELAY = 12  # seconds to the first retry (Airflow's backoff jitter adds up to as much again)
REDIS_OUTAGE = 4  # seconds
# Holds every match (the database path reads this table); then a segment's publish.
MATCH_LOCK = "LOCK TABLE netmera_users IN ACCESS EXCLUSIVE MODE"
ROW_LOCK = "SELECT id FROM cs_segments WHERE id = :s FOR NO KEY UPDATE"
FAULT_HOLD = 20  # seconds a publish stays open after a broker or scheduler restart: longer
# than the scheduler health check threshold plus the orphaned-tasks check interval

USERS = [(f"nm-{i}", f"ext-{i}", f"p{i}@example.com", None, None, True) for i in range(1, 3601)]


@dataclass(frozen=True)
class Seg:
    id: str
    people: range  # source users s<i> with extIds ext-<i>; Netmera users nm-<i>
    extra: tuple = ()

    @property
    def dag_id(self) -> str:
        return f"connector_segment_{self.id}"

    @property
    def user_ids(self) -> set[str]:
        return {f"nm-{i}" for i in self.people}


CAMPAIGN = {"campaign": {"title": "Fault sale", "text": "Only today"}}
PUBLISH_KILL = Seg("publish_kill", range(1, 61))
DB_DROP = Seg("db_drop", range(61, 121))
TWICE = Seg("twice", range(121, 181))
EDITED = Seg("edited", range(181, 241))
EDITED_TO = Seg("edited", range(241, 271))  # what the edited YAML reads (other columns)
DISK = Seg("disk", range(271, 331))
SEND_KILL = Seg("send_kill", range(1001, 3501), tuple(CAMPAIGN.items()))  # 3 batches of ≤1000
BUSY = [Seg(f"busy{k}", range(400 + k * 100, 460 + k * 100)) for k in range(4)]
SEGMENTS = [PUBLISH_KILL, DB_DROP, TWICE, EDITED, DISK, SEND_KILL, *BUSY]


def write_segment(ws: Path, seg: Seg, columns: tuple[str, str] = ("uid", "ext")) -> None:
    """`seg`'s CSV (columns: the user key, the extId) and its YAML."""
    key, ext = columns
    csv_path = ws / "segments" / f"{seg.id}.{key}.csv"
    write_csv(csv_path, list(columns), [[f"s{i}", f"ext-{i}"] for i in seg.people])
    config = {
        "id": seg.id,
        "name": seg.id.replace("_", " ").capitalize(),
        "schedule": None,
        "source": {"type": "file", "path": csv_path.name},
        "user_key": key,
        "identifiers": [{"field": ext, "kind": "external_id"}],
        "default_region": "TR",
        **dict(seg.extra),
    }
    (ws / "segments" / f"{seg.id}.yaml").write_text(yaml.safe_dump(config))


# -- the cluster ---------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of the test's own on a free port, so that restarting it disturbs nobody
    else; like the machine's, it keeps nothing on disk (queued messages die with it)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.popen = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis.from_url(self.url, socket_connect_timeout=1).ping():
                    return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)  # no shutdown save: a crash, not a stop
            self.popen.wait(10)


@contextlib.contextmanager
def staging_tmpfs(folder: Path) -> Iterator[bool]:
    """`folder` as a small tmpfs (root only); yields whether it is one."""
    folder.mkdir(mode=0o700)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={STAGING_SIZE},mode=0700", "tmpfs", str(folder)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@dataclass
class Faults:
    airflow: Airflow
    netmera: FakeNetmera
    redis: RedisServer
    store: sa.Engine  # the store's database, as its owner (for reading what it holds)
    superuser: sa.Engine  # the same database as the server's superuser (pg_terminate_backend)
    ws: Path
    staging_is_tmpfs: bool

    @property
    def cluster(self) -> Cluster:
        return self.airflow.cluster

    def run(self, seg: Seg, conf: dict | None = None) -> dict:
        """Trigger `seg` and wait for the run to finish; returns the finished run."""
        run_id = self.airflow.trigger(seg.dag_id, conf)
        return self.airflow.wait_runs({seg.id: (seg.dag_id, run_id)}, RUN_TIMEOUT)[seg.id]

    def wait_task(self, seg: Seg, run_id: str, task_id: str, *states: str) -> dict:
        found = {}

        def reached() -> bool:
            found.update(self.airflow.task(seg.dag_id, run_id, task_id))
            return found["state"] in states

        self.cluster.wait_for(f"{seg.id} {task_id} {states}", reached, RUN_TIMEOUT, every=0.5)
        return found

    def members(self, seg: Seg, version: int | None = None) -> set[str]:
        """A version's members (the current one by default)."""
        with self.store.connect() as conn:
            if version is None:
                version = self.segment(seg)["current_version"]
            query = sa.select(members.c.user_id).where(members_at(seg.id, version))
            return set(conn.execute(query).scalars())

    def segment(self, seg: Seg) -> dict:
        with self.store.connect() as conn:
            row = conn.execute(
                sa.text("SELECT * FROM cs_segments WHERE id = :s"), {"s": seg.id}
            ).one()
        return dict(row._mapping)

    def published_versions(self, seg: Seg) -> list[int]:
        """The versions the segment's runs published, in order: each once, no gap."""
        with self.store.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT version FROM cs_runs WHERE segment_id = :s "
                        "AND status = 'published' ORDER BY version"
                    ),
                    {"s": seg.id},
                ).scalars()
            )

    def replace_worker(self, killed: str) -> None:
        """A new worker in place of the killed one, so that the next fault has two again."""
        start_worker(self.cluster, f"{killed}-new")

    @contextlib.contextmanager
    def holding(self, lock_sql: str, params: dict) -> Iterator[sa.Connection]:
        """A transaction holding `lock_sql`'s lock until the block ends (rolled back)."""
        with self.superuser.connect() as conn:
            conn.execute(sa.text(lock_sql), params)
            try:
                yield conn
            finally:
                conn.rollback()

    def blocked_backend(self, query_prefix: str) -> int:
        """The pid of the store backend waiting on a lock while running `query_prefix…`."""
        found: list[int] = []

        def waiting() -> bool:
            with self.superuser.connect() as conn:
                found[:] = conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query ILIKE :q"
                    ),
                    {"q": f"{query_prefix}%"},
                ).scalars()
            return bool(found)

        self.cluster.wait_for(f"a backend blocked in {query_prefix!r}", waiting, RUN_TIMEOUT)
        return found[0]

    def steps_done(self, seg: Seg, run_id: str) -> set[str] | None:
        """The steps the run's record says finished; None while the run has no record."""
        with self.store.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT step_seconds FROM cs_runs WHERE segment_id = :s AND airflow_run_id = :r"
                ),
                {"s": seg.id, "r": run_id},
            ).first()
        return None if row is None else set(row.step_seconds or ())

    @contextlib.contextmanager
    def publish_frozen(self, seg: Seg, trigger: Callable[[], str]) -> Iterator[tuple[str, int]]:
        """Runs `trigger` (which starts `seg`'s run and returns its id) and holds that run's
        publish just before it makes the new version current: its members are inserted, its
        transaction open. Yields the run id and the publish's backend pid.

        A small refresh takes well under a second in one task, so the run is first held at
        match (the Netmera user table locked); once its record shows the extract done (the
        run's first step, which updates the segment's row too, has committed), the segment's
        row is locked and match let go. (NO KEY: blocks the row's update and nothing that only
        takes a KEY SHARE lock on it.)"""
        matching = contextlib.ExitStack()
        with matching:
            matching.enter_context(self.holding(MATCH_LOCK, {}))
            run_id = trigger()
            self.cluster.wait_for(
                "the extract",
                lambda: "extract" in (self.steps_done(seg, run_id) or ()),
                RUN_TIMEOUT,
            )
            with self.holding(ROW_LOCK, {"s": seg.id}):
                matching.close()
                self.wait_task(seg, run_id, "refresh", "running")  # a file segment's one task
                yield run_id, self.blocked_backend("UPDATE cs_segments")


@pytest.fixture(scope="module")
def faults(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    ws = tmp_path_factory.mktemp("faults")
    home, logs = ws / "airflow-home", ws / "logs"
    home.mkdir()
    logs.mkdir()
    (ws / "segments").mkdir()
    for seg in SEGMENTS:
        write_segment(ws, seg)
    broker = RedisServer(ws)
    with (
        pg_databases(pg_server, DB_PASSWORD) as pg,
        FakeNetmera(api_key=NETMERA_KEY) as netmera,
        staging_tmpfs(ws / "staging") as is_tmpfs,
    ):
        broker.start()
        redis_or_skip(broker.url)
        load_pg_users(pg["netmera"], USERS)
        port = free_port()
        env = airflow_env(home, ws, pg, port, broker.url)
        env.update(
            {
                # One retry, RETRY_DELAY later: longer than the broker's outage below, as
                # production's 60 s are (a task sent while Redis is down fails that try).
                "CONNECTOR_SEGMENTS_RETRIES": "1",
                "CONNECTOR_SEGMENTS_RETRY_DELAY": str(RETRY_DELAY),
                # A send's reply may be held for a minute (the send fault): no client timeout.
                "AIRFLOW_CONN_NETMERA_DEFAULT": netmera_conn(netmera, NETMERA_KEY, timeout=120),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
                # Queued tasks whose broker message was lost with Redis are queued again.
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "30",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
                # A dead scheduler's tasks are adopted by the next one soon.
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
                "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
            }
        )
        cluster = Cluster(env, logs)
        store = sa.create_engine(pg["netmera"])
        superuser = sa.create_engine(sa.make_url(pg_server).set(database=pg["netmera"].database))
        try:
            migrate.upgrade(store)  # what the first run would do; any test may come first
            airflow = boot(cluster, {seg.dag_id for seg in SEGMENTS})
            yield Faults(airflow, netmera, broker, store, superuser, ws, is_tmpfs)
        finally:
            cluster.stop()
            broker.stop()
            store.dispose()
            superuser.dispose()
            assert cluster.leftovers() == []
            assert port_is_free(port)


# -- the faults ----------------------------------------------------------------------------------


def test_two_refreshes_at_once_run_one_after_the_other(faults: Faults):
    """Two triggers of one segment at the same instant through Airflow's API: max_active_runs=1
    runs them in turn, each publishes once; on the page, the second Refresh is refused."""
    airflow, seg = faults.airflow, TWICE
    barrier = threading.Barrier(2)
    run_ids: list[str] = []

    def trigger() -> None:
        barrier.wait()
        run_ids.append(airflow.trigger(seg.dag_id))

    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finished = airflow.wait_runs({r: (seg.dag_id, r) for r in run_ids}, RUN_TIMEOUT)
    assert {r["state"] for r in finished.values()} == {"success"}
    first, second = sorted(finished.values(), key=lambda r: r["start_date"])
    assert first["end_date"] <= second["start_date"]  # never both running
    assert faults.published_versions(seg) == [1, 2]
    assert faults.members(seg) == seg.user_ids == faults.members(seg, 1)

    # The page's Refresh, twice at the same instant: one run, one 409.
    barrier = threading.Barrier(2)
    answers: list[requests.Response] = []

    def refresh() -> None:
        barrier.wait()
        answers.append(
            airflow.admin.post(
                f"{airflow.api}/connector-segments/api/segments/{seg.id}/refresh", timeout=30
            )
        )

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    (accepted,) = (a.json() for a in answers if a.status_code == 202)
    done = airflow.wait_runs({seg.id: (seg.dag_id, accepted["dag_run_id"])}, RUN_TIMEOUT)
    assert done[seg.id]["state"] == "success"
    assert faults.published_versions(seg) == [1, 2, 3]


def test_a_dropped_database_connection_mid_publish_is_retried_and_publishes_once(faults: Faults):
    seg = DB_DROP
    trigger = functools.partial(faults.airflow.trigger, seg.dag_id)
    with (
        faults.publish_frozen(seg, trigger) as (run_id, backend),
        faults.superuser.connect() as conn,
    ):
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": backend}).scalar()
    (run,) = faults.airflow.wait_runs({seg.id: (seg.dag_id, run_id)}, RUN_TIMEOUT).values()
    assert run["state"] == "success"
    assert faults.airflow.task(seg.dag_id, run_id, "refresh")["try_number"] == 2
    assert faults.published_versions(seg) == [1]
    assert faults.members(seg) == seg.user_ids
    assert faults.segment(seg)["status"] == "Ready"


def kill_worker_running(faults: Faults, seg: Seg, run_id: str, task_id: str) -> str:
    """SIGKILL every process of the worker running the task (as if its machine died); a new
    worker takes its place. Returns the killed worker's name."""
    pid = faults.airflow.task(seg.dag_id, run_id, task_id)["pid"]
    worker = faults.cluster.owner_of(pid)
    assert worker.name.startswith("worker"), worker.name
    faults.cluster.kill(worker)
    faults.replace_worker(worker.name)
    return worker.name


def test_a_worker_killed_during_publish_is_detected_and_the_retry_publishes_once(faults: Faults):
    seg = PUBLISH_KILL
    assert faults.run(seg)["state"] == "success"  # version 1: what must not be lost
    write_segment(faults.ws, Seg(seg.id, range(31, 91)))  # the audience moves on
    trigger = functools.partial(faults.airflow.trigger, seg.dag_id)
    with faults.publish_frozen(seg, trigger) as (run_id, _):
        killed = kill_worker_running(faults, seg, run_id, "refresh")
        # Until the retry commits, readers see version 1 in full.
        assert faults.segment(seg)["current_version"] == 1
        assert faults.members(seg) == seg.user_ids
    (run,) = faults.airflow.wait_runs({seg.id: (seg.dag_id, run_id)}, RUN_TIMEOUT).values()
    assert run["state"] == "success", killed
    refresh = faults.airflow.task(seg.dag_id, run_id, "refresh")
    assert refresh["try_number"] == 2  # Airflow failed the dead attempt and retried it
    assert faults.published_versions(seg) == [1, 2]
    assert faults.members(seg) == {f"nm-{i}" for i in range(31, 91)}
    assert faults.members(seg, 1) == seg.user_ids


def test_a_worker_killed_during_a_send_messages_nobody_twice(faults: Faults):
    seg, netmera = SEND_KILL, faults.netmera
    assert faults.run(seg)["state"] == "success"
    # Netmera takes the second batch at once but answers a minute late: the worker dies with
    # that request out, not knowing that it went through.
    netmera.fail_next("slow", path=FakeNetmera.SEND, after=1, delay=60)
    run_id = faults.airflow.trigger(seg.dag_id, {"refresh": False, "send_message": True})
    faults.wait_task(seg, run_id, "send_message", "running")
    faults.cluster.wait_for("two batches delivered", lambda: len(netmera.delivered()) >= 2000, 120)
    kill_worker_running(faults, seg, run_id, "send_message")
    (run,) = faults.airflow.wait_runs({seg.id: (seg.dag_id, run_id)}, RUN_TIMEOUT).values()
    assert run["state"] == "success"
    assert faults.airflow.task(seg.dag_id, run_id, "send_message")["try_number"] == 2
    delivered = netmera.delivered()
    assert len(delivered) == len(set(delivered)) == len(seg.people)  # everyone, once
    with faults.store.connect() as conn:
        (send,) = conn.execute(
            sa.text("SELECT status, sent, uncertain FROM cs_sends WHERE segment_id = :s"),
            {"s": seg.id},
        ).all()
    # The batch out when the worker died is never sent again, and is reported as uncertain.
    assert tuple(send) == ("partial", 1500, 1000)
    assert faults.segment(seg)["message_sent"] == 1500


def test_a_yaml_edited_while_its_run_is_in_flight_keeps_the_runs_config(faults: Faults):
    """The YAML is rewritten (another file, user key and identifier column) between extract
    and match: the run finishes with the config it started with; the next run uses the new."""
    seg = EDITED
    with faults.holding(MATCH_LOCK, {}):
        run_id = faults.airflow.trigger(seg.dag_id)
        faults.wait_task(seg, run_id, "refresh", "running")  # extract, then match: blocked
        faults.cluster.wait_for(
            "the extract", lambda: "extract" in (faults.steps_done(seg, run_id) or ()), RUN_TIMEOUT
        )
        write_segment(faults.ws, EDITED_TO, columns=("customer", "external"))
    (run,) = faults.airflow.wait_runs({seg.id: (seg.dag_id, run_id)}, RUN_TIMEOUT).values()
    assert run["state"] == "success"
    assert faults.members(seg) == seg.user_ids
    assert faults.segment(seg)["connector_users"] == len(seg.people)
    assert faults.run(seg)["state"] == "success"
    assert faults.members(seg) == EDITED_TO.user_ids
    assert faults.published_versions(seg) == [1, 2]


def test_a_full_disk_while_staging_fails_the_run_and_keeps_the_membership(faults: Faults):
    if not faults.staging_is_tmpfs:
        pytest.skip("staging is no tmpfs here: mounting one needs root")
    seg = DISK
    assert faults.run(seg)["state"] == "success"
    # The same file, grown to 150,000 random ids: ~10 MB of Parquet for a 2 MB staging disk.
    rows = [[secrets.token_hex(16), secrets.token_hex(16)] for _ in range(150_000)]
    write_csv(faults.ws / "segments" / f"{seg.id}.uid.csv", ["uid", "ext"], rows)
    run = faults.run(seg)
    assert run["state"] == "failed"
    row = faults.segment(seg)
    assert row["status"] == "Failed"
    assert "No space left on device" in row["status_reason"], row["status_reason"]
    assert row["current_version"] == 1
    assert faults.members(seg) == seg.user_ids
    staging = faults.ws / "staging"
    assert list(staging.rglob("*.parquet")) == []  # the partial files went with the run
    write_segment(faults.ws, seg)  # space is free again: the next run publishes
    assert faults.run(seg)["state"] == "success"
    assert faults.published_versions(seg) == [1, 2]


def refresh_busy_segments_through(faults: Faults, fault) -> dict:
    """Trigger the BUSY segments and apply `fault` while the first one's publish is held open
    (so a task is surely running through it) and the others' tasks are queued or running;
    every run must still publish its audience, once. Returns the held publish's task."""
    before = {seg.id: faults.published_versions(seg) for seg in BUSY}
    runs: dict[str, tuple[str, str]] = {}

    def trigger_all() -> str:
        runs.update({seg.id: (seg.dag_id, faults.airflow.trigger(seg.dag_id)) for seg in BUSY})
        return runs[BUSY[0].id][1]

    first = BUSY[0]
    with faults.publish_frozen(first, trigger_all) as (run_id, _):
        fault()
        time.sleep(FAULT_HOLD)  # the fault's aftermath plays out with the publish still open
    finished = faults.airflow.wait_runs(runs, RUN_TIMEOUT)
    assert {k: r["state"] for k, r in finished.items()} == dict.fromkeys(runs, "success")
    for seg in BUSY:
        versions = before[seg.id]
        assert faults.published_versions(seg) == [*versions, len(versions) + 1]
        assert faults.members(seg) == seg.user_ids
    return faults.airflow.task(first.dag_id, run_id, "refresh")


def test_a_redis_broker_restarted_mid_run_loses_no_run(faults: Faults):
    """Redis keeps nothing here: the messages of tasks queued at the restart are lost, and
    Airflow queues those tasks again once `task_queued_timeout` passes. A task the scheduler
    sends while Redis is down fails that try (the CeleryExecutor does not retry a refused
    publish); its retry comes after the outage."""

    def restart_redis() -> None:
        faults.redis.stop()
        time.sleep(REDIS_OUTAGE)
        faults.redis.start()

    publish = refresh_busy_segments_through(faults, restart_redis)
    assert publish["try_number"] == 1  # the running task never needed the broker


def test_a_scheduler_killed_and_restarted_mid_run_loses_no_run(faults: Faults):
    cluster = faults.cluster

    def restart_scheduler() -> None:
        (scheduler,) = (p for p in cluster.processes if p.name.startswith("scheduler"))
        cluster.kill(scheduler)
        time.sleep(3)
        cluster.start("scheduler-new", "scheduler")

    publish = refresh_busy_segments_through(faults, restart_scheduler)
    # The task running while the scheduler died was left to finish, not run again.
    assert publish["try_number"] == 1


def test_no_process_is_left_and_every_log_is_free_of_the_secrets(faults: Faults):
    cluster = faults.cluster
    cluster.assert_running()
    forbidden = [NETMERA_KEY, DB_PASSWORD]
    logs = [p for p in (Path(cluster.env["AIRFLOW_HOME"]) / "logs").rglob("*") if p.is_file()]
    logs += sorted(cluster.logs.iterdir())
    found = {
        str(path): hits
        for path in logs
        if (hits := [v for v in forbidden if v in path.read_text(errors="replace")])
    }
    assert found == {}
    cluster.stop()
    assert cluster.leftovers() == []
    assert [p for p in (faults.ws / "staging").rglob("*") if p.is_file()] == []
