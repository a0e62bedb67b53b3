"""End to end through `dag.test()`: what a refresh publishes, and what it must never touch.

Every test parses the real DAG file from a per-test segments folder, runs the DAG on the
migrated metadata DB and reads the outcome through the CLI, as on-call would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli, cli_json, run_segment, write_csv, write_users

pytestmark = pytest.mark.dagrun

SEGMENT = "shoppers"
USERS = [
    (f"nm-{i}", f"ext-{i}", f"user{i}@example.com", None, f"inst-{i}", i % 2 == 0)
    for i in range(1, 21)
]


def write_segment(ws: Path, guardrails: dict | None = None) -> None:
    config = {
        "id": SEGMENT,
        "name": "Shoppers",
        "description": "Test audience",
        "schedule": None,
        "source": {"type": "file", "path": str(ws / "audience.csv")},
        "user_key": "uid",
        "identifiers": [
            {"field": "ext", "kind": "external_id"},
            {"field": "email", "kind": "email"},
        ],
        "guardrails": guardrails or {"max_shrink": 0.5},
    }
    (ws / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))


def write_audience(ws: Path, ext_ids: range, unknown_emails: int = 1) -> None:
    """Source users matched by external id, plus some whose email Netmera does not know."""
    rows = [[f"s{i}", f"ext-{i}", ""] for i in ext_ids]
    rows += [[f"x{k}", "", f"  Nobody{k}@Example.com "] for k in range(unknown_emails)]
    write_csv(ws / "audience.csv", ["uid", "ext", "email"], rows)


@pytest.fixture
def published(workspace: Path, capsys) -> dict:
    """A segment with version 1 published: source users s1..s10 (+1 unknown)."""
    write_users(workspace / "netmera.db", USERS)
    write_segment(workspace)
    write_audience(workspace, range(1, 11))
    assert run_segment(SEGMENT) == "success"
    return snapshot(capsys)


def snapshot(capsys) -> dict:
    details = cli_json(capsys, "details", SEGMENT)
    code, out, _ = cli(capsys, "members", SEGMENT)
    details["members"] = out.split() if code == 0 else None
    return details


def unchanged(before: dict, after: dict) -> None:
    for key in (
        "current_version",
        "connector_users",
        "netmera_users",
        "reachable",
        "last_update_date",
        "members",
    ):
        assert after[key] == before[key], key


def test_a_refresh_builds_one_engine_per_database(workspace):
    # Each engine has its own pool of server connections (PostgreSQL, under Celery): the steps
    # of a refresh share one for the Netmera database instead of building one each.
    import sqlalchemy as sa

    engines: dict[str, set[int]] = {}

    def connected(conn: sa.Connection) -> None:
        engines.setdefault(str(conn.engine.url.database), set()).add(id(conn.engine))

    write_users(workspace / "netmera.db", USERS)
    write_segment(workspace)
    write_audience(workspace, range(1, 11))
    sa.event.listen(sa.engine.Engine, "engine_connect", connected)
    try:
        assert run_segment(SEGMENT) == "success"
    finally:
        sa.event.remove(sa.engine.Engine, "engine_connect", connected)
    assert len(engines.pop(str(workspace / "netmera.db"))) == 1
    assert all(len(ids) == 1 for ids in engines.values()), engines  # Airflow's own DB too


def test_first_refresh_publishes_matched_users_with_counts_and_reasons(published):
    assert published["status"] == "Ready"
    assert published["current_version"] == 1
    assert published["connector_users"] == 11
    assert published["netmera_users"] == 10
    assert published["reasons"]["not_found"] == 1
    assert published["matched_by"] == {"external_id": 10, "email": 0}
    assert published["reachable"] == 5  # even user numbers have push permission
    assert published["members"] == sorted(f"nm-{i}" for i in range(1, 11))
    assert published["runs"][0]["validation"]["outcome"] == "pass"


def test_two_refreshes_report_added_and_removed(published, workspace, capsys):
    write_audience(workspace, range(3, 13))  # drops users 1-2, adds 11-12
    assert run_segment(SEGMENT) == "success"
    after = snapshot(capsys)
    run = after["runs"][0]
    assert (run["version"], run["base_version"], run["added"], run["removed"]) == (2, 1, 2, 2)
    assert after["members"] == sorted(f"nm-{i}" for i in range(3, 13))
    assert after["last_update_date"] >= published["last_update_date"]


def _break_extract(ws: Path) -> None:
    (ws / "audience.csv").unlink()


def _break_match(ws: Path) -> None:
    with sqlite3.connect(ws / "netmera.db") as conn:
        conn.execute("ALTER TABLE netmera_users RENAME TO netmera_users_moved")


def _break_validate(ws: Path) -> None:
    # A Netmera row without a user id that an audience email finds: members would hold a null.
    with sqlite3.connect(ws / "netmera.db") as conn:
        conn.execute(
            "INSERT INTO netmera_users (user_id, email) VALUES (NULL, 'nobody0@example.com')"
        )


def _break_publish(ws: Path) -> None:
    # The database refuses the final status update, after the members were inserted.
    with sqlite3.connect(ws / "netmera.db") as conn:
        conn.execute(
            "CREATE TRIGGER refuse_publish BEFORE UPDATE OF current_version ON cs_segments "
            "BEGIN SELECT RAISE(ABORT, 'simulated outage during publish'); END"
        )


@pytest.mark.parametrize(
    ("step", "break_it", "error_text"),
    [
        ("extract", _break_extract, "audience.csv"),
        ("match", _break_match, "netmera_users"),
        ("validate", _break_validate, "not_null"),
        ("publish", _break_publish, "simulated outage"),
    ],
)
def test_a_failing_step_keeps_previous_members_and_counts(
    published, workspace, capsys, step, break_it, error_text
):
    write_audience(workspace, range(5, 15))  # a refresh that would change the membership
    break_it(workspace)
    assert run_segment(SEGMENT) == "failed"
    after = snapshot(capsys)
    unchanged(published, after)
    assert after["status"] == "Failed"
    assert after["status_reason"].startswith(f"{step}:")
    run = after["runs"][0]
    assert run["status"] == "failed"
    assert run["failed_step"] == step
    assert error_text in run["error"]
    # Nothing of the failed attempt is left behind in the store.
    with sqlite3.connect(workspace / "netmera.db") as conn:
        assert conn.execute(
            "SELECT count(*) FROM cs_members WHERE entered_version > 1 OR left_version IS NOT NULL"
        ).fetchone() == (0,)  # no stay began or ended after version 1


def test_shrink_past_max_shrink_is_held_until_approved(published, workspace, capsys):
    write_audience(workspace, range(1, 4))  # 10 -> 3 Netmera users: shrinks by 70 % > 50 %
    assert run_segment(SEGMENT) == "success"  # held is not an error: publish is skipped
    held = snapshot(capsys)
    unchanged(published, held)
    assert held["status"] == "Held"
    assert "max_shrink" in held["status_reason"]
    assert held["runs"][0]["status"] == "held"
    # What approving it would change, against version 1 (the publish's work, rolled back).
    preview = {k: held["runs"][0][k] for k in ("base_version", "added", "removed", "version")}
    assert preview == {"base_version": 1, "added": 0, "removed": 7, "version": None}
    # The held audience is personal data, and the approval extracts again: nothing is kept.
    assert not [p for p in (workspace / "staging").rglob("*") if p.is_file()]

    assert run_segment(SEGMENT, approve=True) == "success"
    approved = snapshot(capsys)
    assert approved["status"] == "Ready"
    assert approved["current_version"] == 2
    assert approved["netmera_users"] == 3
    assert approved["members"] == ["nm-1", "nm-2", "nm-3"]
    assert approved["runs"][0]["validation"]["approved"] == ["max_shrink"]


def test_dry_run_publishes_nothing_but_shows_what_would_change(published, workspace, capsys):
    write_audience(workspace, range(3, 13))
    assert run_segment(SEGMENT, dry_run=True) == "success"
    after = snapshot(capsys)
    unchanged(published, after)
    assert after["status"] == "Ready"
    run = after["runs"][0]
    assert run["status"] == "dry_run"
    assert (run["added"], run["removed"]) == (2, 2)
    with sqlite3.connect(workspace / "netmera.db") as conn:
        assert conn.execute(
            "SELECT count(*) FROM cs_members WHERE entered_version > 1 OR left_version IS NOT NULL"
        ).fetchone() == (0,)  # no stay began or ended after version 1


def test_an_approval_covers_what_was_held_not_a_worse_refresh(published, workspace, capsys):
    write_audience(workspace, range(1, 4))  # 10 -> 3: shrinks 70 %, held
    assert run_segment(SEGMENT) == "success"
    write_audience(workspace, range(1, 2))  # the source collapsed further: 10 -> 1, 90 %
    assert run_segment(SEGMENT, approve=True) == "success"
    after = snapshot(capsys)
    unchanged(published, after)
    assert after["status"] == "Held"
    assert "does not cover: max_shrink (worse than in the held refresh)" in after["status_reason"]


def test_a_run_left_calculating_by_a_dead_worker_is_marked_failed_by_the_next(
    published, workspace, capsys
):
    from include.config.segments import find_segment
    from include.orchestration.connections import netmera_database

    # A run whose worker was killed: it started, and nothing ever reported its end.
    netmera_database().store.start_run(
        find_segment(SEGMENT), "manual__killed", dry_run=False, approve=False
    )
    assert run_segment(SEGMENT) == "success"
    runs = {r["airflow_run_id"]: r for r in cli_json(capsys, "details", SEGMENT)["runs"]}
    assert runs["manual__killed"]["status"] == "failed"
    assert runs["manual__killed"]["error"].startswith("abandoned")
    assert snapshot(capsys)["status"] == "Ready"


def test_the_hourly_check_fails_only_records_whose_airflow_run_failed(published, workspace, capsys):
    """`fail_abandoned_runs` is given Airflow's state of each "calculating" run: only a failed
    one is marked Failed (a running or unknown one is left alone), with the file's error when
    the YAML is invalid now; the membership stays."""
    from include.config.segments import find_segment
    from include.orchestration.abandoned_runs import fail_abandoned_runs
    from include.orchestration.connections import netmera_database

    store = netmera_database().store
    store.start_run(find_segment(SEGMENT), "manual__lost", dry_run=False, approve=False)
    path = workspace / "segments" / f"{SEGMENT}.yaml"
    path.write_text(path.read_text() + "colour: red\n")
    asked = []

    def state_is(state: str | None):
        def run_state(dag_id: str, run_id: str) -> str:
            asked.append((dag_id, run_id))
            if state is None:
                raise LookupError("404: no such run")  # what Airflow says of a deleted run
            return state

        return run_state

    def status() -> str:
        runs = cli_json(capsys, "details", SEGMENT)["runs"]
        return next(r["status"] for r in runs if r["airflow_run_id"] == "manual__lost")

    for alive in ("running", "queued", None):
        assert fail_abandoned_runs(state_is(alive)) == {"checked": 1, "marked_failed": 0}
        assert status() == "calculating"
    assert fail_abandoned_runs(state_is("failed")) == {"checked": 1, "marked_failed": 1}
    assert set(asked) == {(f"connector_segment_{SEGMENT}", "manual__lost")}
    assert status() == "failed"
    after = snapshot(capsys)
    assert after["status"] == "Failed"
    assert f"{SEGMENT}.yaml" in after["status_reason"] and "colour" in after["status_reason"]
    unchanged(published, after)
    assert fail_abandoned_runs(state_is("failed")) == {"checked": 0, "marked_failed": 0}


def test_recorded_errors_carry_no_emails_or_phone_numbers():
    from include.store.redaction import redact_personal_data

    text = "bad value 'Ann.Lee@Example.com' or +90 532 123 45 67 / 905321234567 at 10.0.0.1:5432"
    redacted = redact_personal_data(text)
    assert "Ann.Lee" not in redacted and "532" not in redacted and "90532" not in redacted
    assert "10.0.0.1:5432" in redacted  # where it failed stays readable


def test_an_undefined_connection_fails_the_step_at_once_naming_it(
    published, workspace, capsys, monkeypatch
):
    """Retrying cannot define a Connection: the step fails on its first try (not after the
    retries and their delays), and the run record names the connection id."""
    import sqlalchemy as sa
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRIES", "2")
    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRY_DELAY", "0")
    config = yaml.safe_load((workspace / "segments" / f"{SEGMENT}.yaml").read_text())
    config["source"] = {"type": "sql", "conn_id": "warehouse_nowhere", "query": "SELECT 1"}
    (workspace / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    assert run_segment(SEGMENT) == "failed"
    with create_session() as session:
        tries = session.scalars(
            sa.select(TaskInstance.try_number).where(
                TaskInstance.dag_id == f"connector_segment_{SEGMENT}",
                TaskInstance.task_id == "refresh",  # a sql source: the whole refresh is one task
            )
        ).all()
    assert max(tries) == 1
    details = cli_json(capsys, "details", SEGMENT)
    last = details["runs"][0]
    assert (last["status"], last["failed_step"]) == ("failed", "extract")
    assert "'warehouse_nowhere' is not defined" in last["error"]
    unchanged(published, snapshot(capsys))


def test_failed_data_expectations_fail_the_run_at_once(published, workspace, capsys, monkeypatch):
    """Retrying cannot fix the data: no second try (which would extract again), and the run
    record names validate, though its task ran every step."""
    import sqlalchemy as sa
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRIES", "2")
    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRY_DELAY", "0")
    _break_validate(workspace)
    assert run_segment(SEGMENT) == "failed"
    with create_session() as session:
        tries = session.scalars(
            sa.select(TaskInstance.try_number).where(
                TaskInstance.dag_id == f"connector_segment_{SEGMENT}",
                TaskInstance.task_id == "refresh",
            )
        ).all()
    assert max(tries) == 1
    last = cli_json(capsys, "details", SEGMENT)["runs"][0]
    assert (last["status"], last["failed_step"]) == ("failed", "validate")
    assert "not_null" in last["error"]
    unchanged(published, snapshot(capsys))


def test_a_scheduled_segment_not_refreshed_within_its_interval_and_grace_is_stale(
    published, workspace, capsys
):
    from datetime import UTC, datetime, timedelta

    path = workspace / "segments" / f"{SEGMENT}.yaml"
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, "schedule": "0 2 * * *"}))
    assert cli_json(capsys, "list")[0]["stale"] is False  # just published

    # Last published three days ago: what a nightly segment whose runs kept failing shows.
    old = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(workspace / "netmera.db") as db:
        db.execute("UPDATE cs_segments SET last_update_date = ? WHERE id = ?", (old, SEGMENT))
    assert cli_json(capsys, "list")[0]["stale"] is True
    path.write_text(yaml.safe_dump({**config, "schedule": None}))  # manual: never stale
    assert cli_json(capsys, "list")[0]["stale"] is False


def test_stale_means_older_than_one_interval_plus_the_grace():
    from datetime import UTC, datetime, timedelta

    from include.store.staleness import is_stale

    now, hour = datetime(2026, 12, 1, 9, 30, tzinfo=UTC), timedelta(hours=1)
    nightly = "0 2 * * *"  # interval 24 h
    assert not is_stale(nightly, now - 24 * hour - 59 * timedelta(minutes=1), now, hour)
    assert is_stale(nightly, now - 25 * hour - timedelta(minutes=1), now, hour)
    assert is_stale("@hourly", now - 3 * hour, now, timedelta(minutes=30))
    assert not is_stale("@hourly", now - 80 * timedelta(minutes=1), now, timedelta(minutes=30))
    assert not is_stale(nightly, None, now, hour)  # never published: its status says why
    assert not is_stale("@once", now - 100 * hour, now, hour)
    assert not is_stale(None, now - 100 * hour, now, hour)


def test_processes_opening_a_new_sqlite_store_at_once_all_get_its_schema(tmp_path):
    # Several first refreshes starting together each migrate the store on first use; SQLite's
    # DDL is not transactional under pysqlite, so without the file lock they each created
    # half the tables ("table cs_segments already exists").
    import subprocess
    import sys

    database = tmp_path / "netmera.db"
    code = (
        "import sqlalchemy as sa, sys; from include.store.repository import SegmentStore; "
        "SegmentStore(sa.create_engine('sqlite:///' + sys.argv[1])).list_segments()"
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(database)], stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    errors = [racer.communicate()[1].decode() for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 6, errors
    with sqlite3.connect(database) as conn:
        (version,) = conn.execute("SELECT version_num FROM cs_alembic_version").fetchone()
    from include.store.migrate import heads_and_pending

    assert {version} == heads_and_pending(set())[0]  # the latest migration
