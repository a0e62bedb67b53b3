"""Hostile and sloppy sources, end to end through `dag.test()` and the CLI.

1. A `sql` source's query may only read: every writing query (DROP, DELETE ... RETURNING,
   writable CTEs, several statements, ATTACH / VACUUM INTO / PRAGMA on SQLite, nextval and
   set_config on PostgreSQL...) fails the run with a message naming the segment, the field
   `source.query` and the connection, and leaves the source database exactly as it was: the
   same bytes and no new file next to a SQLite database, the same rows on PostgreSQL. Each
   layer is also tested alone: the database refuses the writes even when the pre-check is
   skipped.
2. Identifiers stored as numbers are converted exactly or refused naming the field: a float64
   phone column (a spreadsheet export) matches exactly as the text column does; a column with
   fractions is refused; a SQLite REAL column matches exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import cli, cli_json, run_segment, sqlite_conn, write_users

pytestmark = pytest.mark.dagrun

SEGMENT = "hostile"
CONN_ID = "warehouse"
# Netmera users 1..8 with an extId and a Turkish mobile in E.164.
USERS = [
    (f"nm-{i}", f"ext-{i}", f"user{i}@example.com", f"+90532123450{i}", f"inst-{i}", True)
    for i in range(1, 9)
]
# The warehouse: six source users, five of them Netmera users by extId.
AUDIENCE = [
    (f"s{i}", f"ext-{i}" if i < 6 else "ext-unknown", f"90532123450{i}") for i in range(1, 7)
]
MEMBERS = [f"nm-{i}" for i in range(1, 6)]


def write_segment(ws: Path, source: dict, identifiers: list[dict], seg_id: str = SEGMENT) -> None:
    config = {
        "id": seg_id,
        "name": f"Hostile source {seg_id}",
        "schedule": None,
        "source": source,
        "user_key": "uid",
        "identifiers": identifiers,
        "default_region": "TR",
        "guardrails": {"max_shrink": None, "max_growth": None},
    }
    (ws / "segments" / f"{seg_id}.yaml").write_text(yaml.safe_dump(config))


def write_sql_segment(ws: Path, query: str) -> None:
    write_segment(
        ws,
        {"type": "sql", "conn_id": CONN_ID, "query": query},
        [{"field": "ext", "kind": "external_id"}],
    )


def outcome(capsys, seg_id: str = SEGMENT) -> dict:
    details = cli_json(capsys, "details", seg_id)
    code, out, _ = cli(capsys, "members", seg_id)
    details["members"] = sorted(out.split()) if code == 0 else []
    return details


def assert_refused(details: dict) -> str:
    """The run is Failed at extract with the clear message, and nothing was published."""
    assert details["status"] == "Failed"
    assert details["current_version"] is None
    assert details["members"] == []
    run = details["runs"][0]
    assert (run["status"], run["failed_step"]) == ("failed", "extract")
    error = run["error"]
    assert f"segment '{SEGMENT}'" in error
    assert "field 'source.query'" in error
    assert f"connection '{CONN_ID}'" in error
    assert "may only read" in error
    return error


# -- SQLite -------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_warehouse(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A warehouse database alone in its folder, so that a new file there is seen."""
    write_users(workspace / "netmera.db", USERS)
    folder = workspace / "warehouse"
    folder.mkdir()
    db = folder / "warehouse.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE audience (uid TEXT, ext TEXT, phone TEXT)")
        conn.executemany("INSERT INTO audience VALUES (?, ?, ?)", AUDIENCE)
        conn.execute("CREATE VIEW vip AS SELECT * FROM audience WHERE uid < 's4'")
    conn.close()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", sqlite_conn(db))
    return db


def sqlite_state(db: Path) -> tuple[str, list[str]]:
    """The file's bytes (as a digest) and every file in its folder."""
    return hashlib.sha256(db.read_bytes()).hexdigest(), sorted(p.name for p in db.parent.iterdir())


SQLITE_WRITES = {
    "drop": "DROP TABLE audience",
    "delete_returning": "DELETE FROM audience RETURNING uid, ext, phone",
    "insert_returning": "INSERT INTO audience VALUES ('evil', 'ext-7', NULL) RETURNING *",
    "update_returning": "UPDATE audience SET ext = 'ext-8' RETURNING uid, ext, phone",
    "replace": "REPLACE INTO audience VALUES ('evil', 'ext-7', NULL)",
    "writable_cte": "WITH d AS (DELETE FROM audience RETURNING *) SELECT * FROM d",
    "two_statements": "SELECT uid, ext, phone FROM audience; DROP TABLE audience",
    "attach": "ATTACH DATABASE '{folder}/attached.db' AS evil",
    "vacuum_into": "VACUUM INTO '{folder}/copy.db'",
    "pragma": "PRAGMA user_version = 7",
    "pragma_query_only_off": "PRAGMA query_only = OFF",
    "temp_table": "CREATE TEMP TABLE t AS SELECT uid, ext, phone FROM audience",
    "create_table_as": "CREATE TABLE stolen AS SELECT uid, ext, phone FROM audience",
    "load_extension": "SELECT load_extension('/tmp/evil') AS uid, 1 AS ext",
}


@pytest.mark.parametrize("query", list(SQLITE_WRITES.values()), ids=list(SQLITE_WRITES))
def test_a_writing_query_on_sqlite_fails_and_changes_nothing(
    sqlite_warehouse, workspace, capsys, query
):
    before = sqlite_state(sqlite_warehouse)
    write_sql_segment(workspace, query.format(folder=sqlite_warehouse.parent))
    assert run_segment(SEGMENT) == "failed"
    assert_refused(outcome(capsys))
    assert sqlite_state(sqlite_warehouse) == before  # same bytes, no new file beside it


@pytest.mark.parametrize(
    "query",
    [
        "SELECT uid, ext, phone FROM audience",
        "WITH a AS (SELECT uid, ext FROM audience WHERE ext <> 'ext-unknown') SELECT * FROM a;",
        "select a.uid, a.ext from audience a join (values ('s1'), ('s2'), ('s3'), ('s4'), ('s5'), "
        "('s6')) v on v.column1 = a.uid",
    ],
    ids=["select", "cte", "join_values"],
)
def test_a_reading_query_on_sqlite_still_publishes(sqlite_warehouse, workspace, capsys, query):
    assert_publishes_and_writes_nothing(
        workspace, capsys, query, lambda: sqlite_state(sqlite_warehouse)
    )


def assert_publishes_and_writes_nothing(workspace, capsys, query: str, state) -> None:
    """The query's segment publishes its members; the warehouse's `state()` is unchanged."""
    before = state()
    write_sql_segment(workspace, query)
    assert run_segment(SEGMENT) == "success"
    details = outcome(capsys)
    assert (details["status"], details["current_version"]) == ("Ready", 1)
    assert details["members"] == MEMBERS
    assert state() == before


def test_a_query_on_a_view_of_a_wal_database_reads_it(sqlite_warehouse, workspace, capsys):
    """A source database in WAL mode (another tool writes it) is read, and never written."""
    with sqlite3.connect(sqlite_warehouse) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    rows_before = sqlite_rows(sqlite_warehouse)
    write_sql_segment(workspace, "SELECT uid, ext FROM vip")
    assert run_segment(SEGMENT) == "success"
    assert outcome(capsys)["members"] == ["nm-1", "nm-2", "nm-3"]
    assert sqlite_rows(sqlite_warehouse) == rows_before


def sqlite_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM audience ORDER BY uid").fetchall()


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture
def pg_warehouse(workspace: Path, monkeypatch: pytest.MonkeyPatch, pg_database: dict) -> dict:
    write_users(workspace / "netmera.db", USERS)
    engine = sa.create_engine(pg_database["url"])
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE audience (uid TEXT, ext TEXT, phone TEXT)")
        conn.execute(
            sa.text("INSERT INTO audience VALUES (:u, :x, :p)"),
            [dict(zip("uxp", row, strict=True)) for row in AUDIENCE],
        )
        conn.exec_driver_sql("CREATE SEQUENCE audience_seq")
    engine.dispose()
    connection = {k: v for k, v in pg_database.items() if k != "url"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    return pg_database


def pg_state(pg: dict) -> dict:
    engine = sa.create_engine(pg["url"])
    with engine.connect() as conn:
        state = {
            "rows": conn.exec_driver_sql("SELECT * FROM audience ORDER BY uid").fetchall(),
            "tables": conn.exec_driver_sql(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE "
                "table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            ).fetchall(),
            "sequence": conn.exec_driver_sql(
                "SELECT last_value, is_called FROM audience_seq"
            ).fetchall(),
            "settings": conn.exec_driver_sql(
                "SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting"
            ).fetchall(),
        }
    engine.dispose()
    return state


PG_WRITES = {
    "drop": "DROP TABLE audience",
    "truncate": "TRUNCATE audience",
    "delete_returning": "DELETE FROM audience RETURNING uid, ext, phone",
    "insert_returning": "INSERT INTO audience VALUES ('evil', 'ext-7', NULL) RETURNING *",
    "update_returning": "UPDATE audience SET ext = 'ext-8' RETURNING uid, ext, phone",
    "writable_cte": "WITH d AS (DELETE FROM audience RETURNING *) SELECT * FROM d",
    "cte_after_select": "WITH a AS (SELECT 1), d AS (UPDATE audience SET ext = 'x' RETURNING *) "
    "SELECT uid, ext FROM d",
    "two_statements": "SELECT uid, ext FROM audience; DROP TABLE audience",
    "commit_escape": "SELECT uid, ext FROM audience; COMMIT; "
    "SET default_transaction_read_only = off; COMMIT; DELETE FROM audience",
    "backslash_escape": "SELECT uid, ext FROM audience WHERE ext <> '\\' ) q; DELETE FROM "
    "audience; SELECT * FROM (SELECT '\\'",
    "nextval": "SELECT uid, ext, nextval('audience_seq') AS n FROM audience",
    "nextval_quoted": "SELECT uid, ext, pg_catalog.\"nextval\"('audience_seq') AS n FROM audience",
    "set_config": "SELECT uid, ext, set_config('default_transaction_read_only', 'off', false) "
    "AS s FROM audience",
    "advisory_lock": "SELECT uid, ext, pg_advisory_lock(1) AS l FROM audience",
    "temp_table": "CREATE TEMP TABLE t AS SELECT * FROM audience",
    "select_into": "SELECT uid, ext INTO stolen FROM audience",
    "for_update": "SELECT uid, ext FROM audience FOR UPDATE",
    "copy": "COPY audience TO '/tmp/cs-hostile-copy.csv'",
    "alter_database": "ALTER DATABASE {db} SET default_transaction_read_only = off",
}


@pytest.mark.postgres
@pytest.mark.parametrize("query", list(PG_WRITES.values()), ids=list(PG_WRITES))
def test_a_writing_query_on_postgres_fails_and_changes_nothing(
    pg_warehouse, workspace, capsys, query
):
    before = pg_state(pg_warehouse)
    write_sql_segment(workspace, query.format(db=pg_warehouse["schema"]))
    assert run_segment(SEGMENT) == "failed"
    assert_refused(outcome(capsys))
    assert pg_state(pg_warehouse) == before


@pytest.mark.postgres
@pytest.mark.parametrize(
    "query",
    [
        "SELECT uid, ext, phone FROM audience",
        "WITH a AS (SELECT uid, ext FROM audience WHERE ext <> 'ext-unknown') SELECT * FROM a;",
        "SELECT uid::text, ext FROM audience WHERE phone LIKE '90%' AND uid ~ '^s[0-9]$'",
    ],
    ids=["select", "cte", "casts_and_percent"],
)
def test_a_reading_query_on_postgres_still_publishes(pg_warehouse, workspace, capsys, query):
    assert_publishes_and_writes_nothing(workspace, capsys, query, lambda: pg_state(pg_warehouse))


# -- the database layer alone (as if the pre-check had let a query through) -------------------


def _database_refuses(info, statements: list[str]) -> None:
    """Each statement straight through a read-only connection: refused as a write (not, say,
    as a syntax error)."""
    from include.connectors.read_only import (
        NotReadOnly,
        read_only_connection,
        refused_as_a_write,
        source_engine_for,
    )

    engine = source_engine_for(info)
    try:
        for statement in statements:
            with read_only_connection(engine) as conn:
                try:
                    conn.exec_driver_sql(statement)
                except (sa.exc.DBAPIError, NotReadOnly) as exc:
                    assert refused_as_a_write(exc), (statement, exc)
                else:
                    pytest.fail(f"the database ran {statement!r}")
    finally:
        engine.dispose()


def test_sqlite_refuses_writes_even_without_the_pre_check(sqlite_warehouse):
    from include.clients.connection import ConnectionInfo

    before = sqlite_state(sqlite_warehouse)
    folder = sqlite_warehouse.parent
    statements = [
        q.format(folder=folder) for q in SQLITE_WRITES.values() if not q.startswith("WITH d")
    ]
    _database_refuses(
        ConnectionInfo(conn_id=CONN_ID, conn_type="sqlite", host=str(sqlite_warehouse)),
        statements,
    )
    assert sqlite_state(sqlite_warehouse) == before


def test_a_missing_sqlite_source_is_an_error_not_a_new_file(workspace, monkeypatch, capsys):
    write_users(workspace / "netmera.db", USERS)
    (workspace / "warehouse").mkdir()
    missing = workspace / "warehouse" / "typo.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", sqlite_conn(missing))
    write_sql_segment(workspace, "SELECT uid, ext FROM audience")
    assert run_segment(SEGMENT) == "failed"
    assert "unable to open database file" in outcome(capsys)["runs"][0]["error"]
    assert list((workspace / "warehouse").iterdir()) == []


@pytest.mark.postgres
def test_postgres_refuses_writes_even_without_the_pre_check(pg_warehouse):
    from include.clients.connection import ConnectionInfo

    before = pg_state(pg_warehouse)
    info = ConnectionInfo(
        conn_id=CONN_ID,
        conn_type="postgres",
        host=pg_warehouse["host"],
        port=pg_warehouse["port"],
        login=pg_warehouse["login"],
        schema=pg_warehouse["schema"],
    )
    # set_config / advisory locks change only the session, which ends with the query; COPY TO a
    # file is no write to the database: a superuser may do it even read-only (the pre-check
    # refuses it; give sources a login without pg_write_server_files).
    statements = [
        q.format(db=pg_warehouse["schema"])
        for q in PG_WRITES.values()
        if not any(f in q for f in ("set_config", "pg_advisory_lock", "COPY"))
    ]
    _database_refuses(info, statements)
    assert pg_state(pg_warehouse) == before


# -- numbers as identifiers ---------------------------------------------------------------------

PHONES = [905321234501.0, math.nan, 905321234503.0, 5321234504.0, 905329999999.0, math.nan]


def write_phone_parquet(path: Path, phones: pa.Array) -> None:
    uids = [f"s{i}" for i in range(1, len(phones) + 1)]
    pq.write_table(pa.table({"uid": uids, "phone": phones}), path, row_group_size=2)


def phone_segment(ws: Path, seg_id: str, path: Path) -> None:
    write_segment(
        ws, {"type": "file", "path": str(path)}, [{"field": "phone", "kind": "msisdn"}], seg_id
    )


def test_a_float_phone_column_matches_exactly_as_the_text_column(workspace, capsys):
    """A spreadsheet export: phones as float64, missing ones NaN (as pandas writes them)."""
    write_users(workspace / "netmera.db", USERS)
    as_text = [None if math.isnan(p) else str(int(p)) for p in PHONES]
    write_phone_parquet(workspace / "text.parquet", pa.array(as_text, pa.string()))
    write_phone_parquet(workspace / "float.parquet", pa.array(PHONES, pa.float64()))
    phone_segment(workspace, "phones_text", workspace / "text.parquet")
    phone_segment(workspace, "phones_float", workspace / "float.parquet")
    assert run_segment("phones_text") == "success"
    assert run_segment("phones_float") == "success"

    text, floats = outcome(capsys, "phones_text"), outcome(capsys, "phones_float")
    assert floats["members"] == text["members"] == ["nm-1", "nm-3", "nm-4"]
    for key in ("connector_users", "netmera_users", "matched_by", "reasons"):
        assert floats[key] == text[key], key
    assert floats["matched_by"]["msisdn"] == 3


def test_a_float_phone_column_with_fractions_is_refused_naming_the_field(workspace, capsys):
    write_users(workspace / "netmera.db", USERS)
    phones = pa.array([905321234501.0, None, 905321234503.0, 53212345.25, 1.0], pa.float64())
    write_phone_parquet(workspace / "float.parquet", phones)
    phone_segment(workspace, SEGMENT, workspace / "float.parquet")
    assert run_segment(SEGMENT) == "failed"
    details = outcome(capsys)
    assert (details["status"], details["current_version"]) == ("Failed", None)
    error = details["runs"][0]["error"]
    assert f"segment '{SEGMENT}'" in error
    assert "field 'phone'" in error and "float.parquet" in error
    assert "non-integer numbers (e.g. row 4)" in error  # counted across row groups
    assert "53212345" not in error  # the value is personal data: never quoted


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        (pa.array([905321234501.0, math.inf]), "infinite numbers"),
        (pa.array([905321234501.0, 2.0**53 + 2]), "beyond 2**53"),
        (pa.array([True, False]), "type bool"),
        (pa.array([0, 1], pa.timestamp("ms")), "type timestamp[ms]"),
        (pa.array([[1], [2]]), "type list"),
        (pa.array([b"905321234501", b"\xff\xfe"]), "not UTF-8 text (e.g. row 2)"),
    ],
    ids=["inf", "too_large", "bool", "timestamp", "list", "binary"],
)
def test_other_non_text_identifiers_are_refused_naming_field_and_type(
    workspace, capsys, column, problem
):
    write_users(workspace / "netmera.db", USERS)
    write_phone_parquet(workspace / "odd.parquet", column)
    phone_segment(workspace, SEGMENT, workspace / "odd.parquet")
    assert run_segment(SEGMENT) == "failed"
    error = outcome(capsys)["runs"][0]["error"]
    assert "field 'phone'" in error and problem in error


def test_a_sqlite_real_phone_column_matches_exactly(sqlite_warehouse, workspace, capsys):
    """SQLite keeps each value's own type: REAL, INTEGER and TEXT phones in one column."""
    db = sqlite_warehouse
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE phones (uid TEXT, phone REAL)")
        conn.executemany(
            "INSERT INTO phones VALUES (?, ?)",
            [("s1", 905321234501.0), ("s2", None), ("s3", 905321234503), ("s5", 905321234505.0)],
        )
        conn.execute("CREATE TABLE anything (uid TEXT, phone)")  # no type: values keep theirs
        conn.executemany(
            "INSERT INTO anything VALUES (?, ?)",
            [("s4", "+90 532 123 45 04"), ("s6", 905321234506), ("s7", 905329999999.0)],
        )
    conn.close()
    query = "SELECT uid, phone FROM phones UNION ALL SELECT uid, phone FROM anything"
    write_segment(
        workspace,
        {"type": "sql", "conn_id": CONN_ID, "query": query},
        [{"field": "phone", "kind": "msisdn"}],
    )
    assert run_segment(SEGMENT) == "success"
    details = outcome(capsys)
    assert details["members"] == ["nm-1", "nm-3", "nm-4", "nm-5", "nm-6"]
    assert details["matched_by"] == {"msisdn": 5}
    assert details["connector_users"] == 7


def test_a_sqlite_column_with_a_fraction_is_refused_naming_field_and_row(
    sqlite_warehouse, workspace, capsys
):
    with sqlite3.connect(sqlite_warehouse) as conn:
        conn.execute("CREATE TABLE phones (uid TEXT, phone)")
        conn.executemany(
            "INSERT INTO phones VALUES (?, ?)",
            [("s1", "905321234501"), ("s2", 905321234502), ("s3", 53212345.25)],
        )
    conn.close()
    write_segment(
        workspace,
        {"type": "sql", "conn_id": CONN_ID, "query": "SELECT uid, phone FROM phones"},
        [{"field": "phone", "kind": "msisdn"}],
    )
    assert run_segment(SEGMENT) == "failed"
    error = outcome(capsys)["runs"][0]["error"]
    assert f"field 'phone' of the query on connection '{CONN_ID}'" in error
    assert "non-integer numbers (e.g. row 3)" in error
    assert "53212345" not in error
