"""Vendor budgets shared by every segment and worker process of a project.

Segments of one Mixpanel project refresh at the same moment, each in a process of its own
(`tests/refresh_process.py`: `dag.test()` with a metadata DB of its own; the segment store is
what they share, as workers do). The Mixpanel test server enforces each project's limits
(429 beyond them) and its request log is the evidence: arrival times show the pacing, arrival
and answer times the requests in flight. Nothing is timed on the client.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_json, run_segment, use_pg_netmera_db, write_users
from tests.fakes import FakeAmplitude, FakeMixpanel, ProjectLimits, make_members, make_rows
from tests.test_vendor_sources import netmera_users_for, write_segment

pytestmark = pytest.mark.dagrun

SECRET = "svc-secret-Bd7"
PROJECT_A, PROJECT_B = 77, 88
PAGE_SIZE = 3
MEMBERS = 29  # 10 pages, the last one short: each read outlasts the processes' start skew
PAGES = 10


def cohort(seed: int) -> list[dict]:
    return make_members(MEMBERS, seed=seed)


UsersLoader = Callable[[list[tuple]], None]


def connect(monkeypatch, conn_id: str, fake: FakeMixpanel, project: int, **extra) -> None:
    settings = {"project_id": project, "timeout": 10, "backoff_base": 0.05, **extra}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "http",
                "host": fake.base_url,
                "login": "svc-user",
                "password": SECRET,
                "extra": settings,
            }
        ),
    )


def mixpanel_segments(
    ws: Path, load_users: UsersLoader, fake: FakeMixpanel, plan: dict[str, tuple]
) -> None:
    """`plan`: segment id -> (conn id, cohort id); every cohort's users are known to Netmera by
    external id or email, two in three of them (`netmera_users_for`)."""
    users = []
    for segment_id, (conn_id, cohort_id) in plan.items():
        members = cohort(cohort_id)
        fake.add_cohort(cohort_id, f"PN_{segment_id}", members)
        users += netmera_users_for(
            [m["$distinct_id"] for m in members], [m["$properties"]["$email"] for m in members]
        )
        write_segment(
            ws,
            segment_id,
            {"type": "mixpanel", "cohort_id": cohort_id, "conn_id": conn_id},
            "$distinct_id",
            {"$distinct_id": "external_id", "$email": "email"},
        )
    # Netmera user ids must differ between cohorts: number them per cohort.
    load_users([(f"{row[0]}-{n}", *row[1:]) for n, row in enumerate(users)])


def refresh_at_once(tmp_path: Path, airflow_db: Path, segment_ids: list[str]) -> None:
    """Start one process per segment, let them all parse, then release them together; fail
    with a process's own output if any run did not succeed."""
    gate = tmp_path / "gate"
    gate.mkdir()
    processes = {}
    for segment_id in segment_ids:
        home = tmp_path / f"airflow-{segment_id}"
        home.mkdir()
        shutil.copy(airflow_db / "airflow.db", home / "airflow.db")
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
        processes[segment_id] = subprocess.Popen(
            [sys.executable, "-m", "tests.refresh_process", segment_id, str(gate)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 300
        while not all((gate / f"{s}.ready").exists() for s in segment_ids):
            exited = {s: p for s, p in processes.items() if p.poll() is not None}
            assert not exited, {s: p.stdout.read()[-3000:] for s, p in exited.items()}
            assert time.monotonic() < deadline, "the refresh processes never got ready"
            time.sleep(0.1)
        (gate / "go").touch()
        outputs = {s: p.communicate(timeout=600)[0] for s, p in processes.items()}
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
    failed = {s: outputs[s][-3000:] for s, p in processes.items() if p.returncode != 0}
    assert not failed, failed


def engage(fake: FakeMixpanel, project: int) -> list:
    return [
        r for r in fake.requests_to(FakeMixpanel.ENGAGE) if r.param("project_id") == str(project)
    ]


def cohort_of(request) -> int:
    return json.loads(request.param("filter_by_cohort"))["id"]


def gaps(requests) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(sorted(requests, key=lambda r: r.at))]


def most_in_flight(requests) -> int:
    """The most requests the server was serving at once: at each arrival, those already
    arrived and not yet answered."""
    return max(sum(1 for o in requests if o.at <= r.at < o.done) for r in requests)


def assert_ran_together(requests) -> None:
    """Every cohort's read began before any other's ended: the processes really overlapped."""
    by_cohort = {}
    for r in requests:
        by_cohort.setdefault(cohort_of(r), []).append(r.at)
    assert max(min(ats) for ats in by_cohort.values()) < min(max(ats) for ats in by_cohort.values())


def published(capsys) -> dict[str, int]:
    return {row["id"]: row["connector_users"] for row in cli_json(capsys, "list")}


INTERVAL = 0.4  # queries_per_hour 9000


@pytest.mark.postgres
def test_one_projects_segments_in_separate_processes_keep_its_budget_and_spare_another_project(
    workspace, monkeypatch, capsys, tmp_path, airflow_db, pg_database
):
    # The server refuses a fourth query within one second, per project: one budget sends 2.5 a
    # second; three segments each pacing itself to 9,000 an hour would send 7.5.
    limits = ProjectLimits(queries=3, window=1.0, concurrent=5)
    with FakeMixpanel(
        secret=SECRET,
        project_id=PROJECT_A,
        other_projects=(PROJECT_B,),
        page_size=PAGE_SIZE,
        limits=limits,
    ) as fake:
        connect(monkeypatch, "mixpanel_a", fake, PROJECT_A, queries_per_hour=3600 / INTERVAL)
        connect(monkeypatch, "mixpanel_b", fake, PROJECT_B, queries_per_hour=3600 / INTERVAL)
        plan = {
            "a1": ("mixpanel_a", 1),
            "a2": ("mixpanel_a", 2),
            "a3": ("mixpanel_a", 3),
            "b1": ("mixpanel_b", 4),
        }
        mixpanel_segments(
            workspace, lambda users: use_pg_netmera_db(monkeypatch, pg_database, users), fake, plan
        )
        refresh_at_once(tmp_path, airflow_db, list(plan))
        assert fake.errors == []

    assert [r.status for r in fake.requests if r.status != 200] == []  # never over a limit
    project_a, project_b = engage(fake, PROJECT_A), engage(fake, PROJECT_B)
    assert len(project_a) == 3 * PAGES and len(project_b) == PAGES
    assert_ran_together(project_a)
    # One budget for the project: its queries arrived one interval apart, whichever segment
    # (and process) sent them.
    assert min(gaps(project_a)) >= 0.8 * INTERVAL, gaps(project_a)
    # The other project's segment ran beside them at its own pace: had it shared their budget,
    # its queries would have been four intervals apart. The median, not the largest gap: a gap
    # also holds the process's own work on the page before, which a loaded machine stretches
    # (the first gap reached 2 s under load), while a shared budget would stretch them all.
    assert min(r.at for r in project_b) < max(r.at for r in project_a)
    assert statistics.median(gaps(project_b)) < 2 * INTERVAL, gaps(project_b)
    assert published(capsys) == dict.fromkeys(plan, MEMBERS)


@pytest.mark.postgres
def test_a_projects_concurrency_is_shared_by_its_segments_in_separate_processes(
    workspace, monkeypatch, capsys, tmp_path, airflow_db, pg_database
):
    # Each page takes 1.2 s to answer and nothing paces the queries: only the shared slots
    # keep three segments (three processes) to the project's two at once. The answers are
    # slow enough (18 s for the three cohorts) that processes started seconds apart on a
    # loaded machine still overlap (at 0.6 s one started too late once).
    limits = ProjectLimits(queries=10_000, window=1.0, concurrent=2)
    with FakeMixpanel(
        secret=SECRET, project_id=PROJECT_A, page_size=PAGE_SIZE, limits=limits, answer_delay=1.2
    ) as fake:
        connect(monkeypatch, "mixpanel_a", fake, PROJECT_A, queries_per_hour=0, max_concurrent=2)
        plan = {f"c{n}": ("mixpanel_a", n) for n in (1, 2, 3)}
        mixpanel_segments(
            workspace, lambda users: use_pg_netmera_db(monkeypatch, pg_database, users), fake, plan
        )
        refresh_at_once(tmp_path, airflow_db, list(plan))
        assert fake.errors == []

    assert [r.status for r in fake.requests if r.status != 200] == []
    project_a = engage(fake, PROJECT_A)
    assert len(project_a) == 3 * PAGES
    assert_ran_together(project_a)
    assert most_in_flight(project_a) == 2  # both slots used, never a third
    assert published(capsys) == dict.fromkeys(plan, MEMBERS)


def test_amplitude_clients_of_one_api_key_share_its_pacing(workspace, monkeypatch):
    """Two segments' Amplitude clients (threads here; the budget lives in the store's
    database either way) pace their requests as one project."""
    from include.clients.amplitude import AmplitudeClient
    from include.clients.connection import ConnectionInfo
    from include.orchestration.connections import netmera_database

    budgets = netmera_database().budgets
    with FakeAmplitude(api_key="amp-key", secret_key=SECRET, polls_before_ready=2) as fake:
        for cohort_id in ("x", "y"):
            fake.add_cohort(cohort_id, cohort_id, make_rows(5))
        conn = ConnectionInfo(
            "amplitude_default",
            "http",
            host=fake.base_url,
            login="amp-key",
            password=SECRET,
            extra={"requests_per_hour": 3600 / INTERVAL, "poll_interval": 0, "timeout": 10},
        )

        def export(cohort_id: str) -> None:
            client = AmplitudeClient(conn, budgets)
            request_id = client.request_export(cohort_id, [])
            client.wait_until_ready(request_id)
            client.download(request_id, workspace / f"{cohort_id}.csv")

        threads = [threading.Thread(target=export, args=(c,)) for c in ("x", "y")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert fake.errors == []
    api = [r for r in fake.requests if r.path.startswith("/api/")]
    assert len([r for r in api if r.path.endswith("/file")]) == 2
    assert (workspace / "x.csv").exists() and (workspace / "y.csv").exists()
    assert min(gaps(api)) >= 0.8 * INTERVAL, gaps(api)


def test_a_slot_whose_holder_was_killed_is_free_again_once_its_lease_ends(workspace, tmp_path):
    """A worker killed mid-request keeps no slot for ever: the lease ends and the next
    request of the project goes out."""
    holder = tmp_path / "holding"
    script = f"""
import pathlib, time
from include.clients.budget import Limits
from include.orchestration.connections import netmera_database
budget = netmera_database().budgets.project("mixpanel", "project 9", Limits(None, 1), 1.0)
with budget.slot():
    pathlib.Path({str(holder)!r}).touch()
    time.sleep(600)
"""
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not holder.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the holder never ran"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    from include.clients.budget import Limits
    from include.orchestration.connections import netmera_database

    budgets = netmera_database().budgets
    budget = budgets.project("mixpanel", "project 9", Limits(None, 1), 1.0)
    got = threading.Event()

    def take() -> None:
        with budget.slot():
            got.set()

    threading.Thread(target=take, daemon=True).start()
    assert got.wait(30), "the dead holder's slot was never freed"


@pytest.mark.parametrize("extra", [{"max_concurrent": "five"}, {"queries_per_hour": -60}])
def test_a_budget_setting_that_is_not_a_positive_number_fails_naming_connection_and_field(
    workspace, monkeypatch, capsys, extra
):
    with FakeMixpanel(secret=SECRET, project_id=PROJECT_A, page_size=PAGE_SIZE) as fake:
        connect(monkeypatch, "mixpanel_a", fake, PROJECT_A, **extra)
        load = lambda users: write_users(workspace / "netmera.db", users)  # noqa: E731
        mixpanel_segments(workspace, load, fake, {"a1": ("mixpanel_a", 1)})
        assert run_segment("a1") == "failed"
        assert fake.requests == []  # refused before any call
    [field] = extra
    error = cli_json(capsys, "details", "a1")["runs"][0]["error"]
    assert f"connection 'mixpanel_a': extra '{field}' must be a positive number" in error
