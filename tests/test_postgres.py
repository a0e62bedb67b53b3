"""The same refreshes with `netmera_db` on PostgreSQL: store migrations, matching and publish.

Skipped with a reason when no server is reachable at 127.0.0.1:5432; CI sets
CONNECTOR_SEGMENTS_REQUIRE_POSTGRES=1 so that there they must run.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import (
    cli,
    cli_json,
    run_segment,
    sqlite_conn,
    use_pg_netmera_db,
    write_users,
)
from tests.store_rows import stored_rows, stored_versions
from tests.test_refresh_dag import SEGMENT, USERS, write_audience, write_segment

pytestmark = [pytest.mark.postgres, pytest.mark.dagrun]


def _outcome(capsys) -> dict:
    details = cli_json(capsys, "details", SEGMENT)
    _, members, _ = cli(capsys, "members", SEGMENT)
    keep = (
        "status",
        "current_version",
        "connector_users",
        "netmera_users",
        "reachable",
        "matched_source_users",
        "reasons",
        "matched_by",
    )
    # The runs this store recorded: Airflow's metadata DB (which `details` joins) is the test
    # session's, and holds other tests' runs of the same DAG id.
    from include.orchestration.connections import netmera_database

    recorded = {r["airflow_run_id"] for r in netmera_database().store.runs(SEGMENT, 50)}
    runs = [
        {k: r[k] for k in ("status", "version", "added", "removed")}
        for r in details["runs"]
        if r["airflow_run_id"] in recorded
    ]
    return {**{k: details[k] for k in keep}, "runs": runs, "members": members.split()}


def _two_refreshes(workspace, capsys) -> dict:
    write_segment(workspace)
    write_audience(workspace, range(1, 11), unknown_emails=2)
    assert run_segment(SEGMENT) == "success"
    write_audience(workspace, range(4, 15), unknown_emails=1)
    assert run_segment(SEGMENT) == "success"
    return _outcome(capsys)


def test_refreshes_on_postgres_match_the_sqlite_results(
    workspace, capsys, monkeypatch, pg_database
):
    use_pg_netmera_db(monkeypatch, pg_database, USERS)
    on_postgres = _two_refreshes(workspace, capsys)

    # The store's schema was made by its migrations in the PostgreSQL database.
    engine = sa.create_engine(pg_database["url"])
    assert {"cs_segments", "cs_runs", "cs_members", "cs_alembic_version"} <= set(
        sa.inspect(engine).get_table_names()
    )
    engine.dispose()

    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", sqlite_conn(workspace / "netmera.db"))
    write_users(workspace / "netmera.db", USERS)
    on_sqlite = _two_refreshes(workspace, capsys)

    assert on_postgres == on_sqlite
    assert on_postgres["members"] == sorted(f"nm-{i}" for i in range(4, 15))
    assert on_postgres["runs"][0] == {"status": "published", "version": 2, "added": 4, "removed": 3}


def test_publish_keeps_its_versions_and_a_failed_publish_changes_no_row(
    workspace, capsys, monkeypatch, pg_database
):
    """Versions are kept as stays: five versions, each a member more, are one row a member. A
    publish that fails (a Netmera user id longer than the store takes) writes, closes and
    prunes nothing."""
    monkeypatch.setenv("CONNECTOR_SEGMENTS_KEEP_VERSIONS", "3")
    long_id = "nm-" + "9" * 300
    users = [*USERS, (long_id, "ext-99", None, None, None, True)]
    use_pg_netmera_db(monkeypatch, pg_database, users)
    write_segment(workspace, guardrails={"max_shrink": None, "max_growth": None})
    for last in range(10, 15):  # five versions, each a member more
        write_audience(workspace, range(1, last + 1))
        assert run_segment(SEGMENT) == "success"

    def kept() -> list[int]:
        return [v["version"] for v in cli_json(capsys, "details", SEGMENT)["versions"]]

    def stored() -> tuple[dict[int, int], int]:
        spans = stored_versions(pg_database["url"])
        return {v: spans[v] for v in kept()}, stored_rows(pg_database["url"])

    assert sorted(kept()) == [3, 4, 5]
    assert stored() == ({3: 12, 4: 13, 5: 14}, 14)
    write_audience(workspace, [*range(1, 15), 99])
    assert run_segment(SEGMENT) == "failed"
    assert stored() == ({3: 12, 4: 13, 5: 14}, 14)  # nothing written, nothing half-written
    details = cli_json(capsys, "details", SEGMENT)
    assert details["runs"][0]["failed_step"] == "publish"
    assert details["current_version"] == 5
