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
    runs = [{k: r[k] for k in ("status", "version", "added", "removed")} for r in details["runs"]]
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
