"""One interface, two matching paths, chosen per deployment.

`match_segment` normalises the staged audience once, then either
- **database**: looks the identifiers up inside the Netmera database (`database.py`): they go
  in, audience-sized results come out, the user table never does; worker memory stays flat
  as the table grows; or
- **worker**: streams the user table's identifier columns out once into Parquet and runs the
  same rules in DuckDB on the worker (`matcher.match`), within `CONNECTOR_SEGMENTS_DUCKDB_MEMORY`
  (spilling to disk past it), for databases the first path does not support.

Both decide with the same SQL (`rules.py`) on the same identifiers, so members, reasons and
counts are identical. The `netmera_db` connection's extra `match_path` picks one:
`"database"`, `"worker"` or `"auto"` (default). Auto takes the database path on SQLite, and on
PostgreSQL unless the audience has more rows than 1/PROBE_RATIO of the user table's: then
every lookup would hash-join the whole table in PostgreSQL (one core per session), and
streaming the table to DuckDB once is faster. Anything else (e.g. MySQL) takes the worker path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.matching.audience import normalize_audience
from include.matching.database import match_in_database, supported, table_rows
from include.matching.matcher import MatchResult, match_staged
from include.matching.rules import PROBE_RATIO
from include.matching.user_table import export_users

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.config import SegmentConfig
    from include.matching.user_table import UserTable

PATH_EXTRA = "match_path"
PATHS = ("auto", "database", "worker")
IDENTIFIERS_FILE = "identifiers.parquet"
USERS_FILE = "netmera_users.parquet"


def choose_path(
    engine: sa.Engine, extra: dict[str, Any], table: UserTable, audience_rows: int
) -> str:
    """ "database" or "worker" for this deployment and this audience (see module doc)."""
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


def match_segment(
    segment: SegmentConfig,
    staged: Path,
    engine: sa.Engine,
    table: UserTable,
    workdir: Path,
    path: str,
) -> MatchResult:
    """Staged audience x Netmera user table → members Parquet in `workdir`, counts, reasons."""
    if path == "database":
        identifiers = normalize_audience(segment, staged, workdir / IDENTIFIERS_FILE)
        return match_in_database(segment, identifiers, engine, table, workdir)
    users = workdir / USERS_FILE
    try:
        export_users(engine, table, {i.kind for i in segment.identifiers}, users)
        return match_staged(segment, staged, users, workdir)
    finally:
        users.unlink(missing_ok=True)  # the user table's copy is not needed past matching
