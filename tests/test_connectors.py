"""`file` and `sql` sources: every format streams the segment's fields as strings, in batches,
and a missing field is an error naming the segment and the field."""

from __future__ import annotations

import gzip
import math
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.clients.connection import ConnectionInfo
from include.config.segments import SegmentConfig
from include.connectors import SourceError, read_source
from include.staging import stage_audience

ROWS = [["u1", "Ann@Example.com", "00123"], ["u2", "", "+90 532 000 00 00"], ["", "x@y.z", ""]]


def segment(source: dict, config_path: Path | None = None, user_key: str = "uid") -> SegmentConfig:
    config = SegmentConfig.model_validate(
        {
            "id": "src",
            "name": "Source test",
            "source": source,
            "user_key": user_key,
            "identifiers": [
                {"field": "email", "kind": "email"},
                {"field": "code", "kind": "external_id"},
            ],
        }
    )
    return config.model_copy(update={"config_path": config_path})


def no_connections(conn_id: str) -> ConnectionInfo:
    raise AssertionError(f"file sources need no connection, asked for {conn_id}")


def rows_of(config: SegmentConfig, get_connection=no_connections, batch_rows: int = 2) -> list:
    batches = list(read_source(config, get_connection, Path("unused"), batch_rows=batch_rows))
    assert all(b.schema.names == ["uid", "email", "code"] for b in batches)
    assert all(t == pa.string() for b in batches for t in b.schema.types)
    return [list(r.values()) for b in batches for r in b.to_pylist()]


def csv_text() -> str:
    lines = ["extra,uid,email,code"] + [f"x,{u},{e},{c}" for u, e, c in ROWS]
    return "\n".join(lines) + "\n"


def expected() -> list[list]:
    # Empty CSV cells read as null; leading zeros survive because everything is a string.
    return [[v or None for v in row] for row in ROWS]


def test_csv_relative_to_the_yaml_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text(csv_text())
    config = segment({"type": "file", "path": "data/a.csv"}, tmp_path / "src.yaml")
    assert rows_of(config) == expected()


def test_gzipped_csv_through_a_file_url(tmp_path):
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(csv_text().encode()))
    assert rows_of(segment({"type": "file", "path": path.as_uri()})) == expected()


def test_parquet_with_non_string_columns(tmp_path):
    table = pa.table({"uid": [1, 2], "email": ["a@b.co", None], "code": [7, None]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1)
    got = rows_of(segment({"type": "file", "path": str(tmp_path / "a.parquet")}))
    assert got == [["1", "a@b.co", "7"], ["2", None, None]]


def test_missing_field_names_segment_and_field(tmp_path):
    (tmp_path / "a.csv").write_text("uid,email\nu1,a@b.co\n")
    with pytest.raises(SourceError, match=r"'src'.*'code'"):
        rows_of(segment({"type": "file", "path": str(tmp_path / "a.csv")}))


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match=r"source\.path"):
        rows_of(segment({"type": "file", "path": str(tmp_path / "nope.csv")}))


def test_sql_source_streams_through_its_connection(tmp_path):
    db = tmp_path / "warehouse.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (uid TEXT, email TEXT, code INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(f"u{i}", None, i) for i in range(5)])
    asked = []

    def get_connection(conn_id: str) -> ConnectionInfo:
        asked.append(conn_id)
        return ConnectionInfo(conn_id=conn_id, conn_type="sqlite", host=str(db))

    config = segment({"type": "sql", "conn_id": "dwh", "query": "SELECT * FROM t ORDER BY uid"})
    assert rows_of(config, get_connection) == [[f"u{i}", None, str(i)] for i in range(5)]
    assert asked == ["dwh"]


def test_sql_source_with_an_empty_result_still_checks_the_fields(tmp_path):
    db = tmp_path / "w.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (uid TEXT, email TEXT)")
    config = segment({"type": "sql", "conn_id": "dwh", "query": "SELECT * FROM t"})
    with pytest.raises(SourceError, match="'code'"):
        rows_of(config, lambda c: ConnectionInfo(conn_id=c, conn_type="sqlite", host=str(db)))


class StagedPushes:
    """A `PushedAudience` (the webhook's staged state) in memory: what the refresh hands in."""

    def __init__(self, rows: list[tuple[str, dict]] | None) -> None:
        self.rows = rows  # None: no complete export yet

    def has_complete_export(self, segment_id: str) -> bool:
        return self.rows is not None

    def audience(self, segment_id: str, batch_rows: int):
        for start in range(0, len(self.rows), batch_rows):
            yield self.rows[start : start + batch_rows]


def test_the_webhook_source_reads_the_state_it_is_handed(tmp_path):
    source = {"type": "mixpanel_webhook", "conn_id": "mp_push"}
    config = segment(source, user_key="mixpanel_distinct_id")
    rows = [("mp-1", {"email": "a@b.co", "code": "7"}), ("mp-2", {}), ("mp-3", {"email": 7})]
    batches = read_source(config, no_connections, tmp_path, 2, pushed=StagedPushes(rows))
    assert [list(r.values()) for b in batches for r in b.to_pylist()] == [
        ["mp-1", "a@b.co", "7"],
        ["mp-2", None, None],
        ["mp-3", "7", None],
    ]
    with pytest.raises(SourceError, match="no complete Mixpanel `members` export"):
        list(read_source(config, no_connections, tmp_path, pushed=StagedPushes(None)))
    with pytest.raises(ValueError, match="needs the webhook state"):
        list(read_source(config, no_connections, tmp_path))


def test_staging_drops_and_counts_rows_without_a_user_key(tmp_path):
    (tmp_path / "a.csv").write_text(csv_text() + "x,   ,,\n")
    config = segment({"type": "file", "path": str(tmp_path / "a.csv")})
    staged = stage_audience(
        read_source(config, no_connections, tmp_path, batch_rows=2),
        fields=config.source_fields,
        user_key="uid",
        destination=tmp_path / "audience.parquet",
    )
    assert (staged.rows, staged.refused_no_user_key) == (2, 2)
    assert pq.read_table(staged.path).column("uid").to_pylist() == ["u1", "u2"]


def test_a_malformed_csv_fails_without_quoting_personal_data(tmp_path):
    (tmp_path / "a.csv").write_text("uid,email,code\nu1,secret.person@example.com\n")
    with pytest.raises(SourceError) as raised:
        rows_of(segment({"type": "file", "path": str(tmp_path / "a.csv")}))
    assert "Expected 3 columns" in str(raised.value)
    assert "secret.person" not in str(raised.value)


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    text = "uid,email,code\n" + "".join(f"{u},{e},{c}\n" for u, e, c in ROWS)
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel writes it
    assert rows_of(segment({"type": "file", "path": str(tmp_path / "a.csv")})) == expected()


# -- exact text from numbers, and read-only SQL (end to end in tests/test_hostile_sources.py) ----


def test_parquet_numbers_become_exact_digits_across_batches(tmp_path):
    import decimal

    table = pa.table(
        {
            "uid": pa.array([1.0, 2.0, 3.0, 4.0], pa.float64()),
            "email": pa.array([None, "a@b.co", None, None]).dictionary_encode(),
            "code": pa.array(
                [decimal.Decimal("905321234567.00"), None, decimal.Decimal("-7.00"), None],
                pa.decimal128(20, 2),
            ),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1)
    got = rows_of(segment({"type": "file", "path": str(tmp_path / "a.parquet")}))
    assert got == [
        ["1", None, "905321234567"],
        ["2", "a@b.co", None],
        ["3", None, "-7"],
        ["4", None, None],
    ]


def test_parquet_nan_is_missing_and_a_fraction_is_refused_with_its_row(tmp_path):
    table = pa.table(
        {"uid": ["u1", "u2", "u3"], "email": ["a@b.co"] * 3, "code": [7.0, math.nan, 7.5]}
    )
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1)
    with pytest.raises(SourceError) as raised:
        rows_of(segment({"type": "file", "path": str(tmp_path / "a.parquet")}), batch_rows=1)
    message = str(raised.value)
    assert message.startswith("segment 'src': field 'code' of file ")
    assert "holds non-integer numbers (e.g. row 3); identifiers must be text or whole numbers" in (
        message
    )
    assert "7.5" not in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1.25, "holds non-integer numbers"),
        (float("inf"), "holds infinite numbers"),
        (2.0**60, "beyond 2**53"),
        (b"\xff", "not UTF-8 text"),
    ],
)
def test_sql_values_that_are_not_exact_identifiers_are_refused(tmp_path, value, problem):
    db = tmp_path / "w.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (uid, email, code)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [("u1", None, 1), ("u2", None, value)])
    config = segment({"type": "sql", "conn_id": "dwh", "query": "SELECT * FROM t ORDER BY uid"})
    with pytest.raises(SourceError, match=r"field 'code' of the query on connection 'dwh'") as e:
        rows_of(config, lambda c: ConnectionInfo(conn_id=c, conn_type="sqlite", host=str(db)))
    assert problem in str(e.value) and "(e.g. row 2)" in str(e.value)


def test_sql_mixed_sqlite_values_become_exact_text_and_unused_columns_are_not_read(tmp_path):
    db = tmp_path / "w.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (uid, email, code, note)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            [
                (1, b"a@b.co", 905321234567.0, 1.5),
                ("u2", None, "00123", True),
                (3.0, None, 7, None),
            ],
        )
    config = segment({"type": "sql", "conn_id": "dwh", "query": "SELECT * FROM t"})
    got = rows_of(config, lambda c: ConnectionInfo(conn_id=c, conn_type="sqlite", host=str(db)))
    assert got == [["1", "a@b.co", "905321234567"], ["u2", None, "00123"], ["3", None, "7"]]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT replace(code, ' ', '') AS code, uid, email, start FROM t",
        "-- the audience\nSELECT uid, email, code /* all */ FROM t;\n",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "SELECT n FROM r",
        "(SELECT uid FROM t) UNION (SELECT uid FROM u)",
        "VALUES (1, 2)",
        "SELECT uid FROM t WHERE uid ~ '^s[0-9]$' AND email LIKE '%@x.co' AND a::text = 'it''s'",
    ],
)
def test_reading_queries_pass_the_pre_check(query):
    from include.connectors.read_only import read_only_problem

    assert read_only_problem(query) is None


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("DELETE FROM t RETURNING *", "it starts with DELETE"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "it contains DELETE"),
        ("SELECT 1; DROP TABLE t", "more than one statement"),
        ("SELECT '\\' ) q; DELETE FROM t; SELECT '\\'", "more than one statement"),
        ("SELECT * FROM t WHERE a = ';'", "more than one statement"),
        ("SELECT * INTO t2 FROM t", "it contains INTO"),
        ("SELECT * FROM t INTO OUTFILE '/tmp/x'", "it contains INTO"),
        ("SELECT * FROM t FOR UPDATE", "it contains UPDATE"),
        ("SELECT nextval('s')", "it calls nextval()"),
        ("SELECT pg_catalog.\"setval\"('s', 1)", "it calls setval()"),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", "set_config()"),
        ("SELECT pg_try_advisory_lock(1)", "pg_try_advisory_lock()"),
        ("ATTACH DATABASE 'x.db' AS x", "it starts with ATTACH"),
        ("VACUUM INTO 'x.db'", "it starts with VACUUM"),
        ("PRAGMA query_only = OFF", "it starts with PRAGMA"),
        ("CREATE TEMP TABLE x AS SELECT 1", "it starts with CREATE"),
        ("EXPLAIN ANALYZE DELETE FROM t", "it starts with EXPLAIN"),
        ("SELECT 'unclosed", "cannot be parsed"),
    ],
)
def test_writing_queries_are_refused_before_they_run_with_the_reason(tmp_path, query, reason):
    db = tmp_path / "w.db"
    sqlite3.connect(db).close()
    before = db.read_bytes()
    config = segment({"type": "sql", "conn_id": "dwh", "query": query})
    with pytest.raises(SourceError) as raised:
        rows_of(config, lambda c: ConnectionInfo(conn_id=c, conn_type="sqlite", host=str(db)))
    message = str(raised.value)
    assert message.startswith(
        "segment 'src': field 'source.query' on connection 'dwh' was refused before it ran: "
    )
    assert reason in message and "may only read" in message
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.db"]
