"""The matcher: staged audience x exported user identifiers → members, counts and reasons.

Two steps, both streaming:
1. `normalize_audience` turns the staged audience into one row per present identifier,
   `(user_key, priority, kind, value)`, value null when it failed normalisation; a source user
   with no identifier at all gets one row with a null priority so that it is still counted.
2. `match` (the worker path) joins that with Netmera's identifiers exported to Parquet, in DuckDB
   (spills to disk, never holds the user table in Python), and applies the rules of `rules.py`:
   first identifier by priority that finds exactly one Netmera user wins; otherwise one reason,
   the first that applies of ambiguous → not_found → invalid_identifier → no_identifier.
   `database.py` runs the same rules inside the Netmera database instead; `paths.py` chooses.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.matching import rules
from include.matching.normalize import normalize_array
from include.matching.rules import REASONS, Counts, UserSide

if TYPE_CHECKING:
    from include.config import SegmentConfig

__all__ = ["REASONS", "MatchResult", "match", "normalize_audience"]
MEMBERS_FILE = "members.parquet"
DUCKDB_MEMORY_ENV = "CONNECTOR_SEGMENTS_DUCKDB_MEMORY"


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


def normalize_audience(segment: SegmentConfig, staged: Path, destination: Path) -> Path:
    """Staged audience → long identifier rows (see module doc), batch by batch."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("user_key", pa.string()),
            ("priority", pa.int16()),
            ("kind", pa.string()),
            ("value", pa.string()),
        ]
    )

    def rows(keys: pa.Array, priority: int | None, kind: str | None, value: pa.Array | None):
        n = len(keys)
        return pa.table(
            {
                "user_key": keys,
                "priority": pa.array([priority] * n, pa.int16()),
                "kind": pa.array([kind] * n, pa.string()),
                "value": value if value is not None else pa.nulls(n, pa.string()),
            },
            schema=schema,
        )

    with pq.ParquetWriter(destination, schema) as writer:
        for batch in pq.ParquetFile(staged).iter_batches(batch_size=100_000):
            keys = pc.utf8_trim_whitespace(batch.column(segment.user_key))
            any_present = pa.array([False] * batch.num_rows)
            for priority, ident in enumerate(segment.identifiers):
                raw = pc.utf8_trim_whitespace(batch.column(ident.field))
                present = pc.fill_null(pc.not_equal(raw, ""), False)
                any_present = pc.or_(any_present, present)
                value = normalize_array(ident.kind, raw, segment.default_region)
                writer.write_table(rows(keys, priority, ident.kind.value, value).filter(present))
            writer.write_table(rows(keys.filter(pc.invert(any_present)), None, None, None))
    return destination


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


def duckdb_config(workdir: Path) -> dict[str, Any]:
    """Bounded memory: past `CONNECTOR_SEGMENTS_DUCKDB_MEMORY` DuckDB spills to `workdir`."""
    return {
        "temp_directory": str(workdir / "duckdb.tmp"),
        "memory_limit": os.environ.get(DUCKDB_MEMORY_ENV, "1GB"),
        "threads": os.cpu_count() or 2,
        "preserve_insertion_order": False,
    }


def match(segment: SegmentConfig, identifiers: Path, users: Path, workdir: Path) -> MatchResult:
    """The worker path: rules in DuckDB over the exported user table (Parquet); writes the
    members Parquet (user_id, matched_by)."""
    import duckdb
    import pyarrow.parquet as pq

    members = workdir / MEMBERS_FILE
    names = set(pq.read_schema(users).names)
    side = UserSide(
        relation=f"read_parquet({_literal(users)})",
        columns={c: f"u.{c}" for c in names},
        has_push="push_permitted" in names,
    )
    con = duckdb.connect(config=duckdb_config(workdir))
    try:
        con.execute(
            f"CREATE TEMP TABLE cs_ids AS SELECT * FROM read_parquet({_literal(identifiers)})"
        )
        counts = rules.apply(
            lambda sql: con.execute(sql).fetchall(),
            {i.kind for i in segment.identifiers},
            side,
            rules.DUCKDB,
        )
        con.execute(
            f"COPY (SELECT user_id, matched_by FROM cs_members ORDER BY user_id)"
            f" TO {_literal(members)} (FORMAT parquet)"
        )
    finally:
        con.close()
    return result_of(segment, counts, members)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"
