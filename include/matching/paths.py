"""Which of the two matching paths a deployment and an audience take (`pipeline.py` runs it):
- **database**: looks the identifiers up inside the Netmera database (`database.py`): they go
  in, audience-sized results come out, the user table never does; worker memory stays flat
  as the table grows; or
- **worker**: streams the user table's identifier columns out once into Parquet and runs the
  same rules in DuckDB on the worker (`worker.py`), within `CONNECTOR_SEGMENTS_DUCKDB_MEMORY`
  (spilling to disk past it), for databases the first path does not support.

Both decide with the same SQL (`rules.py`) on the same identifiers, so members, reasons and
counts are identical. The `netmera_db` connection's extra `match_path` picks one:
`"database"`, `"worker"` or `"auto"` (default). Auto weighs what each path costs on that
database (docs/matching-at-scale.md, "Two paths"; the benchmark's sqlite and database groups):
- PostgreSQL: the database path unless the audience has more rows than 1/PROBE_RATIO of the
  user table's (PostgreSQL's estimate): then every lookup would hash-join the whole table in
  PostgreSQL (one core per session), and streaming the table to DuckDB once is faster;
- SQLite: the database path only when every index it needs for the segment's kinds exists
  (`indexes.missing`, what `doctor` lists) and the audience has fewer rows than
  1/SQLITE_RATIO of the table's (`count(*)`). SQLite has no hash join: without an index each
  kind's lookup builds one over the whole table (scan and sort) on every run, 2-3x the worker
  path's time at a million users; with them the database path costs ~50 µs per source row
  against ~5 µs per table row for the worker path's whole run (export through the driver,
  DuckDB's join), so they are even at ~1/SQLITE_RATIO and the worker path is faster past it;
- anything else (e.g. MySQL): the worker path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from include.matching.indexes import missing
from include.matching.rules import DIALECTS, PROBE_RATIO
from include.matching.user_table import KIND_COLUMN, table_rows

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.config.segments import IdentifierKind
    from include.matching.user_table import UserTable

PATH_EXTRA = "match_path"
PATHS = ("auto", "database", "worker")
# SQLite, indexed user table: the database path costs ~50 µs per source row (beyond ~2 s for a
# hashed kind's pass over the table), the worker path ~5 µs per table (device) row. Measured at
# 1,000,000 users (1,149,575 rows): even at 100,000 source rows (1.09x the worker path's time),
# 1.9x at 200,000, 0.46x at 20,000. Below 1/SQLITE_RATIO of the table's rows the database path
# is never the slower by more than noise (bench: `--groups sqlite`).
SQLITE_RATIO = 10


def supported(engine: sa.Engine) -> bool:
    """The database path runs on PostgreSQL and SQLite."""
    return engine.dialect.name in DIALECTS


def choose_path(
    engine: sa.Engine,
    extra: dict[str, Any],
    table: UserTable,
    audience_rows: int,
    kinds: Iterable[IdentifierKind] | None = None,
) -> str:
    """ "database" or "worker" for this deployment and this audience (see module doc).

    `kinds`: the identifier kinds the segment matches on, whose indexes SQLite's database path
    needs; by default every kind the table maps (as `doctor` checks with no segment)."""
    wanted = extra.get(PATH_EXTRA) or "auto"
    if wanted not in PATHS:
        raise ValueError(
            f"connection 'netmera_db': extra {PATH_EXTRA!r} must be one of {list(PATHS)}, "
            f"got {wanted!r}"
        )
    if wanted == "database" and not supported(engine):
        raise ValueError(
            f"connection 'netmera_db': {PATH_EXTRA} 'database' needs PostgreSQL or SQLite, "
            f"not {engine.dialect.name}; use 'worker'"
        )
    if wanted != "auto":
        return wanted
    if not supported(engine):
        return "worker"
    if engine.dialect.name == "postgresql":
        rows = table_rows(engine, table)
        # Too large an audience for index probes: PostgreSQL would hash-join the whole table
        # once per kind on one core; streaming it to DuckDB once is faster (the benchmark).
        if rows and audience_rows * PROBE_RATIO > rows:
            return "worker"
        return "database"
    # SQLite: no hash join. A lookup without its index builds one over the whole table on
    # every run; with them all, it costs per source row what the worker path's whole run
    # costs per SQLITE_RATIO table rows.
    import sqlalchemy as sa

    if not sa.inspect(engine).has_table(table.table, schema=table.schema):
        return "worker"  # nothing to look up in; either path then fails, naming the table
    if kinds is None:
        kinds = {k for k, column in KIND_COLUMN.items() if table.columns.get(column)}
    if missing(engine, table, set(kinds)):
        return "worker"
    if audience_rows * SQLITE_RATIO >= table_rows(engine, table):
        return "worker"
    return "database"
