"""The matcher: staged audience x exported user identifiers → members, counts and reasons.

Two steps, both streaming:
1. `normalize_audience` turns the staged audience into one row per present identifier,
   `(user_key, priority, kind, value)`, value null when it failed normalisation; a source user
   with no identifier at all gets one row with a null priority so that it is still counted.
2. `match` (the worker path) looks those values up in Netmera's identifiers exported to
   Parquet and applies the rules (`rules.py`), all in DuckDB (spills to disk past its memory
   limit, never holds the user table in Python): first identifier by priority that finds
   exactly one Netmera user wins; otherwise one reason, the first that applies of ambiguous →
   not_found → invalid_identifier → no_identifier. The database path (`database.py`) makes
   the lookups in the Netmera database and decides with `decide_found`; `paths.py` chooses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.matching import rules
from include.matching.audience import normalize_audience
from include.matching.normalize import normalize_trimmed
from include.matching.rules import REASONS, Counts, UserSide

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config import SegmentConfig

__all__ = ["REASONS", "MatchResult", "match", "normalize_audience"]
MEMBERS_FILE = "members.parquet"
DUCKDB_MEMORY_ENV = "CONNECTOR_SEGMENTS_DUCKDB_MEMORY"
# Defaults of that limit. The worker path joins the user table: 1GB. The database path's DuckDB
# only decides over audience-sized lookups: 512MB, which with Python, Arrow and the drivers
# (~350 MB) keeps its worker under 1 GiB. Past the limit DuckDB spills to the run folder.
WORKER_PATH_MEMORY = "1GB"
DATABASE_PATH_MEMORY = "512MB"


@dataclass(frozen=True)
class MatchResult:
    connector_users: int
    netmera_users: int
    matched_source_users: int
    reachable: int | None  # None when the user table has no push permission column
    reasons: dict[str, int] = field(default_factory=dict)
    matched_by: dict[str, int] = field(default_factory=dict)
    members_path: str = ""

    @property
    def match_rate(self) -> float:
        return self.matched_source_users / self.connector_users if self.connector_users else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_of(segment: SegmentConfig, counts: Counts, members: Path) -> MatchResult:
    return MatchResult(
        connector_users=counts.connector_users,
        netmera_users=counts.netmera_users,
        matched_source_users=counts.matched_source_users,
        reachable=counts.reachable,
        reasons=counts.reasons,
        matched_by={
            i.kind.value: counts.matched_by.get(i.kind.value, 0) for i in segment.identifiers
        },
        members_path=str(members),
    )


def duckdb_config(workdir: Path, memory: str = WORKER_PATH_MEMORY) -> dict[str, Any]:
    """Bounded memory: past `CONNECTOR_SEGMENTS_DUCKDB_MEMORY` (or `memory` when unset) DuckDB
    spills to `workdir`."""
    return {
        "temp_directory": str(workdir / "duckdb.tmp"),
        "memory_limit": os.environ.get(DUCKDB_MEMORY_ENV) or memory,
        "threads": os.cpu_count() or 2,
        "preserve_insertion_order": False,
    }


def match(segment: SegmentConfig, identifiers: Path, users: Path, workdir: Path) -> MatchResult:
    """The worker path: both stages of `rules.py` in DuckDB over the user table's Parquet
    export; writes the members Parquet (user_id, matched_by)."""
    return _match(segment, identifiers, users, workdir)


def match_staged(segment: SegmentConfig, staged: Path, users: Path, workdir: Path) -> MatchResult:
    """`match` from the staged audience: normalised batches stream straight into DuckDB (no
    identifier file written and read back)."""
    import pyarrow as pa

    from include.matching.audience import identifier_schema, identifier_tables

    batches = (b for table in identifier_tables(segment, staged) for b in table.to_batches())
    reader = pa.RecordBatchReader.from_batches(identifier_schema(), batches)
    return _match(segment, reader, users, workdir)


def _match(
    segment: SegmentConfig, identifiers: Path | pa.RecordBatchReader, users: Path, workdir: Path
) -> MatchResult:
    import pyarrow.parquet as pq

    names = set(pq.read_schema(users).names)
    side = UserSide(
        relation=f"read_parquet({_literal(users)})",
        columns={c: f"u.{c}" for c in names},
        has_push="push_permitted" in names,
    )
    with _duckdb(workdir, identifiers) as session:
        kinds = {i.kind for i in segment.identifiers}
        rules.lookup(session, kinds, side, rules.DUCKDB, resolver(segment))
        return _decide(session, segment, side.has_push, workdir)


def resolver(segment: SegmentConfig) -> rules.Resolve:
    """How deferred values of this segment are normalised."""
    return lambda kind, raws: normalize_trimmed(kind, raws, segment.default_region)


def decide_found(
    segment: SegmentConfig,
    identifiers: Path,
    found: dict[str, Path],
    resolved: dict[int, pa.Table],
    workdir: Path,
) -> MatchResult:
    """Stage 2 in DuckDB over a lookup made elsewhere: `found` maps its tables to their
    Parquet files, `resolved` holds the deferred values it normalised."""
    with _duckdb(workdir, identifiers, DATABASE_PATH_MEMORY) as session:
        session.run(rules.CREATE_RESOLVED)
        for priority, pairs in resolved.items():
            rules.apply_resolved(session, priority, pairs)
        for table, path in found.items():
            session.run(
                f"CREATE TEMP TABLE {table} AS SELECT * FROM read_parquet({_literal(path)})"
            )
        return _decide(session, segment, "cs_reach" in found, workdir)


class _DuckSession:
    """rules.Session on a DuckDB connection."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def run(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def fetch(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def load(self, table: str, data: pa.Table) -> None:
        self.con.register("cs_arrow_in", data)
        self.con.execute(f"CREATE TEMP TABLE {table} AS SELECT * FROM cs_arrow_in")
        self.con.unregister("cs_arrow_in")

    def analyze(self, table: str) -> None:
        pass  # DuckDB keeps its statistics as it writes


@contextmanager
def _duckdb(
    workdir: Path, identifiers: Path | pa.RecordBatchReader, memory: str = WORKER_PATH_MEMORY
) -> Iterator[_DuckSession]:
    """A DuckDB connection within the memory limit, `cs_ids` loaded (from a file or a
    stream of batches)."""
    import duckdb

    con = duckdb.connect(config=duckdb_config(workdir, memory))
    try:
        if isinstance(identifiers, Path):
            source = f"read_parquet({_literal(identifiers)})"
        else:
            con.register("cs_ids_in", identifiers)
            source = "cs_ids_in"
        con.execute(f"CREATE TEMP TABLE cs_ids AS SELECT * FROM {source}")
        yield _DuckSession(con)
    finally:
        con.close()


def _decide(
    session: _DuckSession, segment: SegmentConfig, has_push: bool, workdir: Path
) -> MatchResult:
    counts = rules.decide(session.run, has_push)
    members = workdir / MEMBERS_FILE
    session.run(
        f"COPY (SELECT user_id, matched_by FROM cs_members) TO {_literal(members)} (FORMAT parquet)"
    )
    return result_of(segment, counts, members)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"
