"""The database path: look the audience up inside the Netmera database; the user table never
leaves it.

The normalised identifiers are bulk-loaded into a temporary table (PostgreSQL `COPY`, SQLite
batched inserts); stage 1 of `rules.py` runs against the real, indexed user table; its
audience-sized results (`cs_hits`, `cs_reach`) stream out to Parquet and stage 2 decides
in DuckDB on the worker, as on the worker path. All in one transaction that is rolled back: the
user table is only read and nothing persists in Netmera's database, whatever happens (a killed
worker ends its session, which drops temporary tables too). Worker memory follows the
audience, never the user table.

SQLite has no SHA-256: a Python function `cs_sha256` is registered on the connection for the
hashed kinds (it hashes every stored value the segment needs: fine at SQLite sizes).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.matching import indexes, rules
from include.matching.audience import release_memory
from include.matching.export import export_query, fetch_query
from include.matching.matcher import MatchResult, decide_found, resolver
from include.matching.rules import HASHED, UserSide

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config import IdentifierKind, SegmentConfig
    from include.matching.user_table import UserTable

DIALECTS = {"postgresql": rules.POSTGRES, "sqlite": rules.SQLITE}
LOAD_ROWS = 100_000
PG_WORK_MEM = "64MB"


def supported(engine: sa.Engine) -> bool:
    """The database path runs on PostgreSQL and SQLite."""
    return engine.dialect.name in DIALECTS


def match_in_database(
    segment: SegmentConfig,
    identifiers: Path,
    engine: sa.Engine,
    table: UserTable,
    workdir: Path,
) -> MatchResult:
    """Look up in the database, decide on the worker; write the members Parquet."""
    import pyarrow.parquet as pq

    kinds = {i.kind for i in segment.identifiers}
    for kind in kinds:
        table.column_for(kind)  # a kind whose column is mapped to null fails here, by name
    with engine.connect() as conn:
        session = _DatabaseSession(conn)
        try:
            session.prepare(hashing=bool(kinds & HASHED))
            ids = pq.ParquetFile(identifiers)
            session.load_batches("cs_ids", ids.schema_arrow, ids.iter_batches(LOAD_ROWS))
            session.analyze("cs_ids")
            users, dialect = user_side(conn, table, kinds)
            resolved = rules.lookup(session, kinds, users, dialect, resolver(segment))
            found = _export_found(conn, workdir, users.has_push)
        finally:
            session.clean_up()
    release_memory()
    return decide_found(segment, identifiers, found, resolved, workdir)


class _DatabaseSession:
    """rules.Session on a SQLAlchemy connection to PostgreSQL or SQLite: temporary tables
    only, one transaction, rolled back by `clean_up`."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"

    def prepare(self, hashing: bool) -> None:
        if self.postgres:
            # For this transaction only: analytic joins, not worth compiling (JIT), and hash
            # tables that fit in memory (work_mem is the server's, per operation).
            self.conn.exec_driver_sql(f"SET LOCAL work_mem = '{PG_WORK_MEM}'")
            self.conn.exec_driver_sql("SET LOCAL jit = off")
        elif hashing:
            self.conn.connection.dbapi_connection.create_function(
                "cs_sha256", 1, _sha256, deterministic=True
            )

    def run(self, sql: str) -> list[tuple]:
        result = self.conn.exec_driver_sql(sql)
        return [tuple(r) for r in result] if result.returns_rows else []

    def fetch(self, sql: str) -> pa.Table:
        import pyarrow as pa

        return fetch_query(self.conn, sql, pa.schema([("raw", pa.string())]))

    def load(self, table: str, data: pa.Table) -> None:
        self.load_batches(table, data.schema, data.to_batches())

    def load_batches(
        self, table: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]
    ) -> None:
        """A new temporary table of text columns (and smallint `priority`) from Arrow
        batches: COPY on PostgreSQL, batched inserts on SQLite."""
        columns = ", ".join(
            f"{c} {'SMALLINT' if c == 'priority' else 'TEXT'}" for c in schema.names
        )
        self.conn.exec_driver_sql(f"CREATE TEMP TABLE {table} ({columns})")
        write = self._copy if self.postgres else self._insert
        for batch in batches:
            write(table, batch)

    def analyze(self, table: str) -> None:
        if self.postgres:  # autovacuum never sees temporary tables
            self.conn.exec_driver_sql(f"ANALYZE {table}")

    def _copy(self, table: str, batch: pa.RecordBatch) -> None:
        copy_batch(self.conn, table, batch)

    def _insert(self, table: str, batch: pa.RecordBatch) -> None:
        rows = list(zip(*(c.to_pylist() for c in batch.columns), strict=True))
        marks = ", ".join("?" * batch.num_columns)
        self.conn.exec_driver_sql(f"INSERT INTO {table} VALUES ({marks})", rows)

    def clean_up(self) -> None:
        """Roll back (PostgreSQL drops the temporary tables with it); SQLite's DDL ran outside
        the transaction, so drop them too. If even that fails, close the connection: a
        session's temporary tables die with it."""
        try:
            self.conn.rollback()
            for name in rules.LOOKUP_TABLES:
                self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
            self.conn.commit()
        except Exception:
            self.conn.invalidate()


def copy_batch(conn: sa.Connection, table: str, batch: pa.RecordBatch) -> None:
    """PostgreSQL: COPY one Arrow batch into `table`, as CSV with nulls unquoted and strings
    quoted (so an empty string stays one)."""
    import pyarrow.csv as pcsv

    buffer = io.BytesIO()
    pcsv.write_csv(batch, buffer, pcsv.WriteOptions(include_header=False))
    buffer.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv)", buffer)
    finally:
        cursor.close()


def _export_found(conn: sa.Connection, workdir: Path, has_push: bool) -> dict[str, Path]:
    """cs_hits (and cs_reach) → Parquet; user ids as text, as the worker path has them."""
    import pyarrow as pa

    text = pa.string()
    found = {
        "cs_hits": export_query(
            conn,
            "SELECT user_key, priority, kind, value, n, CAST(user_id AS TEXT) FROM cs_hits",
            pa.schema(
                [
                    ("user_key", text),
                    ("priority", pa.int16()),
                    ("kind", text),
                    ("value", text),
                    ("n", pa.int32()),
                    ("user_id", text),
                ]
            ),
            workdir / "hits.parquet",
        )
    }
    if has_push:
        found["cs_reach"] = export_query(
            conn,
            "SELECT CAST(user_id AS TEXT) FROM cs_reach",
            pa.schema([("user_id", text)]),
            workdir / "reach.parquet",
        )
    return found


def _sha256(value: Any) -> str | None:
    return None if value is None else hashlib.sha256(str(value).encode()).hexdigest()


def table_rows(bind: sa.Engine | sa.Connection, table: UserTable) -> int:
    """The table's rows: PostgreSQL's estimate (0 when unknown: never analyzed); SQLite's
    `count(*)` (it keeps no estimate; ~40 ms at a million rows, through the smallest index)."""
    if bind.dialect.name == "postgresql":
        name = ".".join(f'"{part}"' for part in (table.schema, table.table) if part)
        sql = "SELECT greatest(coalesce(max(reltuples), 0), 0)::bigint FROM pg_class"
        sql += " WHERE oid = to_regclass(%(t)s)"
        params: dict[str, Any] = {"t": name}
    else:
        quote = bind.dialect.identifier_preparer.quote
        relation = quote(table.table)
        if table.schema:
            relation = f"{quote(table.schema)}.{relation}"
        sql, params = f"SELECT count(*) FROM {relation}", {}
    if hasattr(bind, "exec_driver_sql"):
        return int(bind.exec_driver_sql(sql, params).scalar())
    with bind.connect() as conn:
        return int(conn.exec_driver_sql(sql, params).scalar())


def user_side(
    conn: sa.Connection, table: UserTable, kinds: set[IdentifierKind]
) -> tuple[UserSide, rules.Dialect]:
    """The real table under alias `u`, and how to speak to it. On PostgreSQL, what an index
    serves is looked up through it (indexes.py), and an identifier column that is not text is
    compared as its text (as the worker path exports it), which no index can serve."""
    import sqlalchemy as sa

    postgres = conn.dialect.name == "postgresql"
    quote = conn.dialect.identifier_preparer.quote
    relation = quote(table.table)
    if table.schema:
        relation = f"{quote(table.schema)}.{relation}"
    types = {
        c["name"]: c["type"] for c in sa.inspect(conn).get_columns(table.table, schema=table.schema)
    }
    columns, cast = {}, set()
    for logical, actual in table.columns.items():
        if not actual:
            continue
        expression = f"u.{quote(actual)}"
        textual = isinstance(types.get(actual), sa.String)  # SQLite compares by affinity
        if postgres and logical not in ("user_id", "push_permitted") and not textual:
            expression = f"CAST({expression} AS TEXT)"
            cast.add(actual)
        columns[logical] = expression
    dialect, indexed, rows = DIALECTS[conn.dialect.name], frozenset(), 0
    if postgres:
        rows = table_rows(conn, table)
        lacking = {n.key for n in indexes.missing(conn, table, kinds)}
        usable = [
            n
            for n in indexes.needed(table, kinds, "postgresql")
            if n.key not in lacking and n.column not in cast
        ]
        indexed = frozenset(n.key for n in usable)
        if any(n.hashed for n in usable):
            dialect = rules.POSTGRES_INDEXED_HASH
    side = UserSide(relation, columns, bool(table.columns.get("push_permitted")), indexed, rows)
    return side, dialect
