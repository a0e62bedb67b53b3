"""Restore: a rollback to an earlier kept version, as a run of the segment's DAG.

After a refresh publishes a wrong audience, restoring the version before gives back exactly its
members and counts, as a new version; what cannot be restored is refused and changes nothing.
Each test runs the real DAG file through `dag.test()` and reads the outcome through the CLI.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import (
    DAGS,
    airflow_api_server,
    cli,
    cli_json,
    run_segment,
    sqlite_conn,
    token_session,
    use_pg_netmera_db,
    write_users,
)
from tests.store_rows import stored_versions
from tests.test_refresh_dag import (
    SEGMENT,
    USERS,
    snapshot,
    unchanged,
    write_audience,
    write_segment,
)

pytestmark = pytest.mark.dagrun


@pytest.fixture(autouse=True)
def three_kept_versions(monkeypatch):
    """Three kept versions (the store keeps 30): a version falls out after three refreshes."""
    monkeypatch.setenv("CONNECTOR_SEGMENTS_KEEP_VERSIONS", "3")


RIGHT = range(1, 11)  # the audience of version 1: nm-1..nm-10 (+1 unknown email)
WRONG = range(11, 21)  # what a bad refresh published as version 2: nm-11..nm-20


def _two_versions(workspace, capsys) -> tuple[dict, dict]:
    write_segment(workspace)
    write_audience(workspace, RIGHT)
    assert run_segment(SEGMENT) == "success"
    first = snapshot(capsys)
    write_audience(workspace, WRONG, unknown_emails=3)
    assert run_segment(SEGMENT) == "success"
    wrong = snapshot(capsys)
    assert wrong["current_version"] == 2
    assert wrong["members"] == sorted(f"nm-{i}" for i in WRONG)
    return first, wrong


@pytest.fixture
def two_versions(workspace, capsys) -> tuple[dict, dict]:
    """Version 1 (the right audience), then version 2 (a wrong one), published."""
    write_users(workspace / "netmera.db", USERS)
    return _two_versions(workspace, capsys)


def _counts(details: dict) -> dict:
    keys = ("connector_users", "netmera_users", "reachable", "matched_source_users", "reasons")
    return {k: details[k] for k in (*keys, "matched_by", "refused_rows")}


def _past(date: str) -> None:
    """Waits until the clock, to the second the store's dates are shown in, is past `date`
    (runs of a small audience take less than a second)."""
    while datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") <= date:
        time.sleep(0.05)


def _task_states(run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            sa.select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == f"connector_segment_{SEGMENT}",
                TaskInstance.run_id == run_id,
            )
        ).all()
    return {task: str(state) for task, state in rows}


def test_restoring_the_version_before_a_wrong_refresh_gives_back_its_members_and_counts(
    two_versions, capsys
):
    first, _ = two_versions
    _past(first["last_update_date"])
    assert run_segment(SEGMENT, restore_version=1) == "success"
    after = snapshot(capsys)

    assert after["members"] == first["members"] == sorted(f"nm-{i}" for i in RIGHT)
    assert _counts(after) == _counts(first)
    assert after["status"] == "Ready"
    assert after["current_version"] == 3  # a new version: numbers only ever grow
    assert after["last_update_date"] > first["last_update_date"]
    listed = {r["id"]: r for r in cli_json(capsys, "list")}[SEGMENT]
    assert (listed["connector_users"], listed["netmera_users"], listed["status"]) == (
        first["connector_users"],
        first["netmera_users"],
        "Ready",
    )

    run = after["runs"][0]
    assert {k: run[k] for k in ("status", "version", "base_version", "restored_from")} == {
        "status": "published",
        "version": 3,
        "base_version": 2,
        "restored_from": 1,
    }
    assert (run["added"], run["removed"]) == (10, 10)  # nm-1..10 back, nm-11..20 out
    assert run["connector_users"] == first["connector_users"]

    # The unmatched users served are the restored version's (the refresh that published
    # version 1: one unknown email), not the wrong refresh's three.
    from include.orchestration.connections import netmera_database

    store = netmera_database().store
    assert store.unmatched_run(SEGMENT) == first["runs"][0]["airflow_run_id"]
    assert [reason for _, reason in store.unmatched(SEGMENT, store.unmatched_run(SEGMENT))] == [
        "not_found"
    ]

    # Nothing was extracted; the send ran after the restore and, not asked, skipped.
    # (The first task, `refresh`, only branched to the restore: the run's one step is it.)
    states = _task_states(run["airflow_run_id"])
    assert states == {"refresh": "success", "restore": "success", "send_message": "skipped"}
    assert list(run["step_seconds"]) == ["restore"]

    versions = after["versions"]
    assert [
        (v["version"], v["restored_from"], v["current"], v["restorable"]) for v in versions
    ] == [
        (3, 1, True, False),
        (2, None, False, True),
        (1, None, False, True),
    ]
    assert versions[2]["netmera_users"] == first["netmera_users"]
    assert versions[1]["published_at"] <= versions[0]["published_at"]
    assert set(versions[0]) == {
        "version",
        "published_at",
        "connector_users",
        "netmera_users",
        "reachable",
        "added",
        "removed",
        "restored_from",
        "current",
        "restorable",
    }


def test_a_retried_restore_after_its_commit_returns_what_it_recorded(two_versions, capsys):
    from include.orchestration.connections import netmera_database
    from include.store.repository import Publication

    assert run_segment(SEGMENT, restore_version=1) == "success"
    run_id = cli_json(capsys, "details", SEGMENT)["runs"][0]["airflow_run_id"]
    # The worker died after the commit: the retry must not restore a second time.
    again = netmera_database().store.restore(SEGMENT, run_id, 1)
    assert again == Publication(version=3, base_version=2, added=10, removed=10)
    assert cli_json(capsys, "details", SEGMENT)["current_version"] == 3


def test_what_cannot_be_restored_is_refused_and_changes_nothing(two_versions, workspace, capsys):
    _, wrong = two_versions

    # The current version, through the DAG: the run fails without retrying, naming the kept
    # versions; membership, counts and status are those of before.
    assert run_segment(SEGMENT, restore_version=2) == "failed"
    after = snapshot(capsys)
    unchanged(wrong, after)
    assert after["status"] == "Ready"
    refused = after["runs"][0]
    assert (refused["status"], refused["failed_step"], refused["restored_from"]) == (
        "failed",
        "restore",
        2,
    )
    assert (
        "segment 'shoppers': version 2 cannot be restored (it is the current version); "
        "kept versions: 2 (current), 1" in refused["error"]
    )

    # An unknown version, from the CLI: refused before any run.
    runs_before = len(cli_json(capsys, "details", SEGMENT, "--runs", "50")["runs"])
    code, out, err = cli(capsys, "restore", SEGMENT, "--version", "7")
    assert code != 0 and out == ""
    assert "version 7 cannot be restored (not a kept published version)" in err
    assert len(cli_json(capsys, "details", SEGMENT, "--runs", "50")["runs"]) == runs_before

    # A dry run restores nothing: there is no rolled-back restore to show.
    assert run_segment(SEGMENT, restore_version=1, dry_run=True) == "failed"
    unchanged(wrong, snapshot(capsys))

    # Version 1 through the CLI (dag.test() here: no API server Connection), then one more
    # refresh: version 1 is then older than the kept three and cannot come back.
    restored = cli_json(capsys, "restore", SEGMENT, "--version", "1")
    assert {k: restored[k] for k in ("segment_id", "restored_from", "version")} == {
        "segment_id": SEGMENT,
        "restored_from": 1,
        "version": 3,
    }
    assert (restored["added"], restored["removed"]) == (10, 10)
    assert (
        restored["dag_run_id"] == cli_json(capsys, "details", SEGMENT)["runs"][0]["airflow_run_id"]
    )
    write_audience(workspace, range(2, 12))
    assert run_segment(SEGMENT) == "success"
    latest = snapshot(capsys)
    assert [v["version"] for v in latest["versions"]] == [4, 3, 2]
    assert run_segment(SEGMENT, restore_version=1) == "failed"
    after = snapshot(capsys)
    unchanged(latest, after)
    assert (
        "version 1 cannot be restored (not a kept published version); kept versions: "
        in (after["runs"][0]["error"])
    )
    with sqlite3.connect(workspace / "netmera.db") as db:
        # Pruned: every stay that ended before the oldest kept version (2).
        assert db.execute("SELECT count(*) FROM cs_members WHERE left_version < 2").fetchone() == (
            0,
        )
    assert max(stored_versions(workspace / "netmera.db")) == 4


def test_with_an_api_server_configured_the_cli_triggers_the_restore_run_there(
    two_versions, workspace, capsys, monkeypatch
):
    """`restore` through `connector_segments_api`: the run is triggered by the API server as
    the Connection's user and only queued here (no scheduler), so the CLI prints its id."""
    users = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin"}
    with airflow_api_server(workspace / "api-server.log", **users) as base:
        generated = (
            Path(os.environ["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        )
        password = json.loads(generated.read_text())["admin"]
        admin = token_session(f"{base}/connector-segments", "admin")
        dag_url = f"{base}/api/v2/dags/connector_segment_{SEGMENT}"
        assert admin.patch(dag_url, json={"is_paused": False}, timeout=30).status_code == 200
        api = {"conn_type": "http", "host": base, "login": "admin", "password": password}
        monkeypatch.setenv("AIRFLOW_CONN_CONNECTOR_SEGMENTS_API", json.dumps(api))
        triggered = None
        try:
            code, out, err = cli(capsys, "restore", SEGMENT, "--version", "7")
            assert code != 0 and out == ""
            assert "HTTP 409" in err and "version 7 cannot be restored" in err

            triggered = cli_json(capsys, "restore", SEGMENT, "--version", "1")
            assert {k: triggered[k] for k in ("segment_id", "restored_from", "version")} == {
                "segment_id": SEGMENT,
                "restored_from": 1,
                "version": None,  # queued: its outcome is the run's to record
            }
            run = admin.get(f"{dag_url}/dagRuns/{triggered['dag_run_id']}", timeout=30).json()
            assert run["conf"]["restore_version"] == 1
            assert run["triggering_user_name"] == "admin"
            assert run["state"] == "queued"
        finally:  # no queued run left for a scheduler of a later test to pick up
            if triggered:
                admin.delete(f"{dag_url}/dagRuns/{triggered['dag_run_id']}", timeout=30)
    assert cli_json(capsys, "details", SEGMENT)["current_version"] == 2


def test_a_restore_sends_only_when_asked_and_then_to_the_restored_members(
    two_versions, workspace, capsys, monkeypatch
):
    """`send_on_refresh` is for refreshes: a rollback must not message the old audience again
    unless asked; asked, the send goes to the restored version, after the restore."""
    import yaml

    from tests.fakes import FakeNetmera
    from tests.test_send_message import KEY, connect

    path = workspace / "segments" / f"{SEGMENT}.yaml"
    config = yaml.safe_load(path.read_text())
    campaign = {"title": "Back in stock", "text": "Hello again", "send_on_refresh": True}
    path.write_text(yaml.safe_dump({**config, "campaign": campaign}))
    with FakeNetmera(api_key=KEY) as netmera:
        connect(monkeypatch, netmera, KEY)
        assert run_segment(SEGMENT, restore_version=1) == "success"
        assert netmera.requests_to(FakeNetmera.SEND) == []

        assert run_segment(SEGMENT, restore_version=2, send_message=True) == "success"
        sent = [
            json.loads(r.body)["target"]["extId"]
            for r in netmera.requests_to(FakeNetmera.SEND)
            if r.status == 200
        ]
        assert sorted(ext for batch in sent for ext in batch) == sorted(f"ext-{i}" for i in WRONG)
        assert netmera.errors == []
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["version"], report["recipients"]) == (4, len(WRONG))


def test_the_restore_step_runs_after_the_branch_and_before_the_send(workspace):
    from airflow.dag_processing.dagbag import DagBag

    write_segment(workspace)
    dag = DagBag(dag_folder=str(DAGS)).get_dag(f"connector_segment_{SEGMENT}")
    assert dag.get_task("restore").upstream_task_ids == {"refresh"}
    assert dag.get_task("send_message").upstream_task_ids == {"refresh", "restore"}
    assert dag.params["restore_version"] is None


@pytest.mark.postgres
def test_restore_on_postgres_matches_sqlite(workspace, capsys, monkeypatch, pg_database):
    def restored() -> dict:
        assert run_segment(SEGMENT, restore_version=1) == "success"
        after = snapshot(capsys)
        run = after["runs"][0]
        return {
            "counts": _counts(after),
            "members": after["members"],
            "run": {k: run[k] for k in ("version", "base_version", "added", "removed")},
            "versions": [(v["version"], v["current"]) for v in after["versions"]],
        }

    use_pg_netmera_db(monkeypatch, pg_database, USERS)
    _two_versions(workspace, capsys)
    on_postgres = restored()

    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", sqlite_conn(workspace / "netmera.db"))
    write_users(workspace / "netmera.db", USERS)
    _two_versions(workspace, capsys)
    assert restored() == on_postgres
    assert on_postgres["run"] == {"version": 3, "base_version": 2, "added": 10, "removed": 10}
