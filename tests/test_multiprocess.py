"""A real multi-process Airflow: scheduler, dag-processor, API server and two Celery workers
(CeleryExecutor, Redis broker, PostgreSQL metadata in a fresh database), no `dag.test()`.

Twenty segments (file, SQL, Mixpanel pull and one Mixpanel webhook fed through the API
server) are triggered together through the REST API and must all reach Ready with the counts
their data implies; the `mixpanel_api` pool must hold against the Mixpanel test server's own
record of concurrent requests; a Send Message must reach Netmera once per user; no log may hold
a secret or a user's email or phone; and every process must be gone at the end.

Staging is in S3 (moto in server mode, tests/fakes/s3.py, through the `aws_staging`
Connection), and each worker has a TMPDIR of its own and no staging folder: the workers share
nothing but the bucket, as on two hosts. Every run's files went through the store, none is
left there, and the scratch folders the steps worked in were the service user's only (0700
folders, 0600 files, whatever the umask the workers start with) and are gone.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml

from include.staging import SCRATCH_PREFIX
from tests.cluster import (
    Airflow,
    Cluster,
    airflow_env,
    boot,
    pg_databases,
    port_is_free,
    rest,
)
from tests.conftest import (
    free_port,
    load_pg_users,
    netmera_conn,
    redis_or_skip,
    sqlite_conn,
    write_csv,
)
from tests.fakes import FakeMixpanel, FakeNetmera
from tests.fakes.mixpanel_webhook_sender import MixpanelWebhookSender, members
from tests.fakes.s3 import LOGIN as S3_LOGIN
from tests.fakes.s3 import SECRET as S3_SECRET
from tests.fakes.s3 import S3Store, shared_store

pytestmark = [pytest.mark.multiprocess, pytest.mark.postgres]

REDIS_URL = "redis://127.0.0.1:6379/13"  # a db of its own, flushed at start
POOL_SLOTS = 2  # mixpanel_api; the workers have 2 x 2 slots, so only the pool can hold them
ENGAGE_DELAY = 0.4  # seconds per Mixpanel request: extracts last ~6 s, long enough to overlap
RUN_TIMEOUT = 480  # 20 runs, 1-3 task processes each, on 4 worker slots, on 2 busy cores
STAGING_PREFIX = "staging"
WORKERS = ("worker1", "worker2")

# Secrets set in the Connections (none may reach a log).
MIXPANEL_SECRET = f"mp-secret-{secrets.token_hex(8)}"
NETMERA_KEY = f"nm-key-{secrets.token_hex(8)}"
WEBHOOK_PASSWORD = f"wh-pass-{secrets.token_hex(8)}"
DB_PASSWORD = f"db-pass-{secrets.token_hex(8)}"


def person(i: int) -> tuple[str, str]:
    """Person i's email and phone, as the Netmera table and the sources hold them."""
    return f"person{i}@example.com", f"+90555{i:07d}"


# Netmera users nm-i (extId ext-i), all push-permitted; the sources below name persons 1..400.
USERS = [(f"nm-{i}", f"ext-{i}", *person(i), f"inst-{i}", True) for i in range(1, 401)]


@dataclass
class Segment:
    id: str
    source: dict
    people: list[int]  # persons known to Netmera
    unknown: int = 0  # source users no Netmera user matches
    extra: dict = field(default_factory=dict)

    @property
    def dag_id(self) -> str:
        return f"connector_segment_{self.id}"


def plan() -> list[Segment]:
    """8 file, 5 SQL, 6 Mixpanel (one project) and 1 webhook segment; disjoint persons."""
    segments = [
        Segment(f"file{k}", {"type": "file", "path": f"file{k}.csv"}, _span(k * 20, 10 + k), 2)
        for k in range(8)
    ]
    segments[0].extra["campaign"] = {"title": "Cluster sale", "text": "Only today"}
    segments += [
        Segment(
            f"sql{k}",
            {
                "type": "sql",
                "conn_id": "warehouse",
                "query": f"SELECT uid, ext FROM audience WHERE seg = 'sql{k}'",
            },
            _span(160 + k * 20, 8 + k),
            1,
        )
        for k in range(5)
    ]
    segments += [
        Segment(f"mix{k}", {"type": "mixpanel", "cohort_id": 600 + k}, _span(260 + k * 15, 12), 1)
        for k in range(6)
    ]
    segments.append(
        Segment("push", {"type": "mixpanel_webhook", "conn_id": "mixpanel_push"}, _span(360, 30))
    )
    return segments


def _span(start: int, n: int) -> list[int]:
    return list(range(start + 1, start + 1 + n))


def write_sources(ws: Path, segments: list[Segment], mixpanel: FakeMixpanel) -> None:
    """Each segment's YAML and source data: CSVs, the SQLite warehouse, Mixpanel cohorts (the
    webhook's members are sent later, through the API server)."""
    (ws / "segments").mkdir()
    with sqlite3.connect(ws / "warehouse.db") as warehouse:
        warehouse.execute("CREATE TABLE audience (seg TEXT, uid TEXT, ext TEXT)")
    for seg in segments:
        kind = seg.source["type"]
        config = {
            "id": seg.id,
            "name": seg.id.capitalize(),
            "schedule": None,
            "source": seg.source,
            "user_key": "uid",
            "identifiers": [{"field": "ext", "kind": "external_id"}],
            "default_region": "TR",
            **seg.extra,
        }
        rows = [[f"s{i}", f"ext-{i}", person(i)[0]] for i in seg.people]
        rows += [
            [f"x{seg.id}-{j}", f"nobody-{j}", f"nobody{j}@example.net"] for j in range(seg.unknown)
        ]
        if kind == "file":
            write_csv(ws / "segments" / seg.source["path"], ["uid", "ext", "email"], rows)
            config["identifiers"].append({"field": "email", "kind": "email"})
        elif kind == "sql":
            with sqlite3.connect(ws / "warehouse.db") as warehouse:
                warehouse.executemany(
                    "INSERT INTO audience VALUES (?, ?, ?)", [(seg.id, r[0], r[1]) for r in rows]
                )
        elif kind == "mixpanel":  # matched by email only: distinct ids are Mixpanel's own
            cohort = [
                {"$distinct_id": f"mp-{uid}", "$properties": {"$email": email, "$phone": "x"}}
                for uid, _, email in rows
            ]
            mixpanel.add_cohort(seg.source["cohort_id"], seg.id, cohort)
            config["user_key"] = "$distinct_id"
            config["identifiers"] = [{"field": "$email", "kind": "email"}]
        else:
            config["user_key"] = "mixpanel_distinct_id"
            config["identifiers"] = [
                {"field": "email", "kind": "email"},
                {"field": "phone_number", "kind": "msisdn"},
            ]
        (ws / "segments" / f"{seg.id}.yaml").write_text(yaml.safe_dump(config))


class TimedMixpanel(FakeMixpanel):
    """FakeMixpanel that also records each request's (start, end) and answers a little slowly,
    so the concurrency Mixpanel saw can be read off overlapping intervals."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.intervals: list[tuple[float, float]] = []

    def route(self, req):
        start = time.monotonic()
        time.sleep(ENGAGE_DELAY)
        response = super().route(req)
        self.intervals.append((start, time.monotonic()))
        return response

    def most_concurrent(self) -> int:
        edges = sorted([(s, 1) for s, _ in self.intervals] + [(e, -1) for _, e in self.intervals])
        level = peak = 0
        for _, step in edges:  # an end sorts before a start at the same instant
            level += step
            peak = max(peak, level)
        return peak


class StagingWatcher(threading.Thread):
    """Samples the mode of everything in the steps' scratch folders (`connector-segments+*` in
    each worker's TMPDIR) while runs are in flight (a step deletes its scratch when it ends, so
    looking afterwards would see nothing)."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.modes: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            for root in self.roots:
                with contextlib.suppress(OSError):  # removed between listing and stat
                    for scratch in root.glob(f"{SCRATCH_PREFIX}*"):
                        for path in [scratch, *scratch.rglob("*")]:
                            name = f"{root.name}/{path.relative_to(root)}"
                            self.modes[name] = path.stat().st_mode


# -- the cluster and its runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_role(pg_server: str) -> Iterator[dict]:
    with pg_databases(pg_server, DB_PASSWORD) as pg:
        yield pg


def cluster_env(home: Path, ws: Path, pg: dict, port: int, fakes: dict) -> dict[str, str]:
    mixpanel, netmera_fake, s3 = fakes["mixpanel"], fakes["netmera"], fakes["s3"]
    env = airflow_env(home, ws, pg, port, REDIS_URL)
    env.update(
        {
            # Staging in the bucket only: no process is given a staging folder.
            "CONNECTOR_SEGMENTS_STAGING_DIR": f"s3://aws_staging@{fakes['bucket']}/"
            + STAGING_PREFIX,
            "CONNECTOR_SEGMENTS_STAGING_SSE": "AES256",
            "AIRFLOW_CONN_AWS_STAGING": s3.connection(),
            "CONNECTOR_SEGMENTS_POOL_MIXPANEL_API": str(POOL_SLOTS),
            "AIRFLOW_CONN_NETMERA_DEFAULT": netmera_conn(netmera_fake, NETMERA_KEY),
            "AIRFLOW_CONN_WAREHOUSE": sqlite_conn(ws / "warehouse.db"),
            "AIRFLOW_CONN_MIXPANEL_DEFAULT": json.dumps(
                {
                    "conn_type": "http",
                    "host": mixpanel.base_url,
                    "login": mixpanel.username,
                    "password": MIXPANEL_SECRET,
                    "extra": {"project_id": mixpanel.project_id, "queries_per_hour": 36_000},
                }
            ),
            "AIRFLOW_CONN_MIXPANEL_PUSH": json.dumps(
                {"conn_type": "http", "login": "mixpanel-sync", "password": WEBHOOK_PASSWORD}
            ),
        }
    )
    return env


@dataclass
class Outcome:
    airflow: Airflow
    segments: list[Segment]
    runs: dict[str, dict]  # segment id -> its finished DAG run
    mixpanel: TimedMixpanel
    netmera: FakeNetmera
    staging: StagingWatcher
    s3: S3Store
    bucket: str
    home: Path
    timings: dict[str, float]

    @property
    def cluster(self) -> Cluster:
        return self.airflow.cluster


@pytest.fixture(scope="module")
def outcome(pg_role: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    redis_or_skip(REDIS_URL)
    timings: dict[str, float] = {}
    clock = time.monotonic()
    ws = tmp_path_factory.mktemp("cluster")
    home, logs = ws / "airflow-home", ws / "logs"
    home.mkdir()
    logs.mkdir()
    tmpdirs = {name: ws / f"{name}-tmp" for name in WORKERS}  # each worker's own disk
    for folder in tmpdirs.values():
        folder.mkdir()
    segments = plan()
    load_pg_users(pg_role["netmera"], USERS)
    s3 = shared_store()
    bucket = f"cluster-{secrets.token_hex(6)}"
    s3.client().create_bucket(Bucket=bucket)
    mixpanel = TimedMixpanel(username="svc-user", secret=MIXPANEL_SECRET, page_size=1)
    with mixpanel, FakeNetmera(api_key=NETMERA_KEY) as netmera:
        write_sources(ws, segments, mixpanel)
        port = free_port()
        fakes = {"mixpanel": mixpanel, "netmera": netmera, "s3": s3, "bucket": bucket}
        env = cluster_env(home, ws, pg_role, port, fakes)
        cluster = Cluster(env, logs)
        try:
            airflow = boot(
                cluster,
                {seg.dag_id for seg in segments},
                worker_env=lambda name: {"TMPDIR": str(tmpdirs[name])},
            )
            timings["cluster up"] = time.monotonic() - clock
            staging = StagingWatcher(list(tmpdirs.values()))
            staging.start()
            runs = trigger_all(airflow, segments)
            finished = airflow.wait_runs(runs, RUN_TIMEOUT)
            timings["20 runs"] = time.monotonic() - clock - timings["cluster up"]
            staging.done.set()
            yield Outcome(
                airflow, segments, finished, mixpanel, netmera, staging, s3, bucket, home, timings
            )
        finally:
            cluster.stop()
            redis.Redis.from_url(REDIS_URL).flushdb()  # no queued work left for a later run
            print("timings:", {k: round(v, 1) for k, v in timings.items()})


def trigger_all(airflow: Airflow, segments: list[Segment]) -> dict[str, tuple[str, str]]:
    """The webhook segment by a full export through the API server (which triggers its run),
    every other segment by `POST .../dagRuns`, all at once: the Mixpanel ones first, so that
    their extracts are ready together and only the pool keeps them from all running at once."""
    admin, api = airflow.admin, airflow.api
    runs = {}
    push = next(s for s in segments if s.source["type"] == "mixpanel_webhook")
    sender = MixpanelWebhookSender(
        f"{api}/connector-segments/webhooks/mixpanel/{push.id}",
        auth=("mixpanel-sync", WEBHOOK_PASSWORD),
        page_size=10,
    )
    sender.export(members(push.people))
    pulled = sorted(
        (s for s in segments if s is not push), key=lambda s: s.source["type"] != "mixpanel"
    )
    for seg in pulled:
        runs[seg.id] = (seg.dag_id, airflow.trigger(seg.dag_id))
    (run,) = rest(admin, "GET", f"{api}/api/v2/dags/{push.dag_id}/dagRuns")["dag_runs"]
    runs[push.id] = (push.dag_id, run["dag_run_id"])
    return runs


# -- item 2: the run ----------------------------------------------------------------------------


def test_twenty_segments_triggered_together_reach_ready_with_exact_counts(outcome: Outcome):
    assert {k: r["state"] for k, r in outcome.runs.items()} == {
        seg.id: "success" for seg in outcome.segments
    }
    listed = outcome.airflow.cli_list()
    assert {
        seg.id: (r["status"], r["connector_users"], r["netmera_users"])
        for seg in outcome.segments
        if (r := listed[seg.id])
    } == {
        seg.id: ("Ready", len(seg.people) + seg.unknown, len(seg.people))
        for seg in outcome.segments
    }
    # Both workers ran tasks (task instances name the machine, not the Celery host: the
    # workers' own logs say what each received).
    received = {
        name: (outcome.cluster.logs / f"{name}.log").read_text().count("] received")
        for name in ("worker1", "worker2")
    }
    print("tasks received:", received, "timings:", outcome.timings)
    assert all(received.values()), received


def test_the_mixpanel_pool_is_never_exceeded(outcome: Outcome):
    mixpanel = outcome.mixpanel
    assert mixpanel.errors == []
    engage = [r for r in mixpanel.requests if r.path.endswith("/engage")]
    assert len(engage) >= 6 * 13  # 13 members a cohort, 1 a page
    peak = mixpanel.most_concurrent()
    print("most concurrent Mixpanel requests:", peak)
    assert 1 <= peak <= POOL_SLOTS


def test_send_message_reaches_netmera_once_per_user(outcome: Outcome):
    seg = outcome.segments[0]
    assert "campaign" in seg.extra
    netmera = outcome.netmera
    assert netmera.delivered() == []
    run_id = outcome.airflow.trigger(seg.dag_id, {"refresh": False, "send_message": True})
    (done,) = outcome.airflow.wait_runs({seg.id: (seg.dag_id, run_id)}, RUN_TIMEOUT).values()
    assert done["state"] == "success"
    assert sorted(netmera.delivered()) == sorted(f"ext-{i}" for i in seg.people)
    assert outcome.airflow.cli_list()[seg.id]["message_sent"] == len(seg.people)
    assert netmera.errors == []


# -- item 4: leaks and permissions --------------------------------------------------------------


def every_log(outcome: Outcome) -> list[Path]:
    task_logs = [p for p in (outcome.home / "logs").rglob("*") if p.is_file()]
    return task_logs + sorted(outcome.cluster.logs.iterdir())


def test_no_log_holds_a_secret_or_a_users_email_or_phone(outcome: Outcome):
    logs = every_log(outcome)
    task_logs = [p for p in logs if outcome.home in p.parents]
    # A file segment's run is one task process, a vendor's three: at least a log per run.
    assert len(task_logs) >= len(outcome.segments), "expected the task logs of every run"
    forbidden = [MIXPANEL_SECRET, NETMERA_KEY, WEBHOOK_PASSWORD, DB_PASSWORD, S3_LOGIN, S3_SECRET]
    forbidden += [value for row in USERS for value in row[2:4]]
    found = {}
    for path in logs:
        text = path.read_text(errors="replace")
        hits = [value for value in forbidden if value in text]
        if hits:
            found[str(path)] = hits[:5]
    assert found == {}


def staged_modes(outcome: Outcome) -> dict[str, str]:
    seen = outcome.staging.modes
    assert seen, "nothing was staged while the runs were in flight"
    return {path: oct(stat.S_IMODE(mode)) for path, mode in seen.items()}


def test_every_run_staged_through_the_bucket_and_left_nothing_in_it(outcome: Outcome):
    """The workers share no disk: each run's audience and members went through the store
    (uploaded encrypted, read back by the later steps), and no object or scratch is left."""
    under = f"/{outcome.bucket}/{STAGING_PREFIX}/"
    requests = [r for r in outcome.s3.requests if r.path.startswith(under)]

    def segments(name: str, uploads: bool) -> set[str]:
        """The segments whose `name` was uploaded (or read), from `/bucket/prefix/<id>/...`."""
        return {
            r.path.split("/")[3]
            for r in requests
            if r.path.endswith(f"/{name}") and (r.is_upload if uploads else r.method == "GET")
        }

    refreshed = {seg.id for seg in outcome.segments}
    for name in ("audience.parquet", "members.parquet"):
        assert segments(name, uploads=True) == segments(name, uploads=False) == refreshed, name
    assert {r.sse for r in requests if r.is_upload} == {"AES256"}
    assert outcome.s3.keys(outcome.bucket) == []
    scratch = [p for root in outcome.staging.roots for p in root.glob(f"{SCRATCH_PREFIX}*")]
    assert scratch == []


def test_the_scratch_folders_keep_everyone_but_the_service_user_out(outcome: Outcome):
    """What protects staged personal data on a worker: each step's scratch folder, 0700 and the
    service user's, every staged file inside it 0600."""
    modes = staged_modes(outcome)
    folders = {path: mode for path, mode in modes.items() if path.count("/") == 1}
    assert folders and set(folders.values()) == {"0o700"}
    assert {path.split("/")[0] for path in folders} <= {f"{name}-tmp" for name in WORKERS}
    assert any(path.endswith(".parquet") for path in modes)


def test_staged_files_and_folders_are_the_service_users_only(outcome: Outcome):
    loose = {path: mode for path, mode in staged_modes(outcome).items() if int(mode, 8) & 0o077}
    assert loose == {}


# -- item 2: the end ----------------------------------------------------------------------------


def test_every_process_stops_and_nothing_is_left(outcome: Outcome):
    cluster = outcome.cluster
    cluster.assert_running()
    cluster.stop()
    assert cluster.leftovers() == []
    port = int(cluster.env["AIRFLOW__API__PORT"])
    assert port_is_free(port)  # the workers serve no logs (--skip-serve-logs): no other port
    print("needed SIGKILL:", cluster.killed)
