"""The database backend: look the audience up inside the Netmera database; the user table never
leaves it.

The normalised identifiers are bulk-loaded into a temporary table (PostgreSQL `COPY`, SQLite
batched inserts); stage 1 of the rules (`lookup.py`) runs against the real, indexed user table;
its audience-sized results (`cs_resolved`, `cs_hits`, `cs_reach`) stream out to Parquet and into
the decision's DuckDB. All in one transaction that is rolled back: the user table is only read
and nothing persists in Netmera's database, whatever happens (a killed worker ends its session,
which drops temporary tables too). Worker memory follows the audience, never the user table.

SQLite has no SHA-256: a Python function `cs_sha256` is registered on the connection for the
hashed kinds (it hashes every stored value the segment needs: fine at SQLite sizes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.clients.database import copy_batch
from include.matching import indexes, rules
from include.matching.audience import release_memory, write_identifiers
from include.matching.export import export_query, fetch_query
from include.matching.lookup import lookup, resolver
from include.matching.rules import HASHED, UserSide
from include.matching.user_table import table_rows

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import IdentifierKind, SegmentConfig
    from include.matching.decide import DuckSession
    from include.matching.user_table import UserTable

IDENTIFIERS_FILE = "identifiers.parquet"
LOAD_ROWS = 100_000
PG_WORK_MEM = "64MB"


@dataclass(frozen=True)
class Database:
    engine: sa.Engine
    table: UserTable
    workdir: Path
    # DuckDB only decides over audience-sized lookups here: 512MB, which with Python, Arrow and
    # the drivers (~350 MB) keeps the worker under 1 GiB.
    memory: str = "512MB"

    def lookup(
        self, segment: SegmentConfig, identifiers: pa.RecordBatchReader, duck: DuckSession
    ) -> bool:
        """Stage 1 in the database, its results then loaded into `duck`; whether the table
        has push permissions."""
        import pyarrow.parquet as pq

        kinds = {i.kind for i in segment.identifiers}
        for kind in kinds:
            self.table.column_for(kind)  # a kind whose column is mapped to null fails here
        ids = write_identifiers(identifiers, self.workdir / IDENTIFIERS_FILE)
        with self.engine.connect() as conn:
            session = _DatabaseSession(conn)
            try:
                session.prepare(hashing=bool(kinds & HASHED))
                source = pq.ParquetFile(ids)
                session.load_batches(rules.IDS, source.schema_arrow, source.iter_batches(LOAD_ROWS))
                session.analyze(rules.IDS)
                users, dialect = user_side(conn, self.table, kinds)
                lookup(session, kinds, users, dialect, resolver(segment))
                found = self._export(conn, users.has_push)
            finally:
                session.clean_up()
        release_memory()
        for name, path in {rules.IDS: ids, **found}.items():
            duck.load_parquet(name, path)
        return users.has_push

    def _export(self, conn: sa.Connection, has_push: bool) -> dict[str, Path]:
        """The lookup's results the decision reads → Parquet files in the run folder."""
        names = [rules.RESOLVED, rules.HITS, rules.CANDIDATES, *([rules.REACH] if has_push else [])]
        return {
            name: export_query(
                conn,
                rules.EXPORTS[name],
                rules.export_schema(name),
                self.workdir / f"{name.removeprefix('cs_')}.parquet",
            )
            for name in names
        }


class _DatabaseSession:
    """lookup.Session on a SQLAlchemy connection to PostgreSQL or SQLite: temporary tables
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
        self.conn.exec_driver_sql(rules.create_text_table(table, schema.names))
        write = self._copy if self.postgres else self._insert
        for batch in batches:
            write(table, batch)

    def analyze(self, table: str) -> None:
        if self.postgres:  # autovacuum never sees temporary tables
            self.conn.exec_driver_sql(rules.analyze(table))

    def _copy(self, table: str, batch: pa.RecordBatch) -> None:
        copy_batch(self.conn, table, batch)

    def _insert(self, table: str, batch: pa.RecordBatch) -> None:
        rows = list(zip(*(c.to_pylist() for c in batch.columns), strict=True))
        self.conn.exec_driver_sql(rules.insert_rows(table, batch.num_columns), rows)

    def clean_up(self) -> None:
        """Roll back (PostgreSQL drops the temporary tables with it); SQLite's DDL ran outside
        the transaction, so drop them too. If even that fails, close the connection: a
        session's temporary tables die with it."""
        try:
            self.conn.rollback()
            for name in rules.LOOKUP_TABLES:
                self.conn.exec_driver_sql(rules.drop(name))
            self.conn.commit()
        except Exception:
            self.conn.invalidate()


def _sha256(value: Any) -> str | None:
    return None if value is None else hashlib.sha256(str(value).encode()).hexdigest()


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
    dialect, indexed, rows = rules.DIALECTS[conn.dialect.name], frozenset(), 0
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
