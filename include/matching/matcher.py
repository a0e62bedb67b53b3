"""The matcher: staged audience x exported user identifiers → members, counts and reasons.

Two steps, both streaming:
1. `normalize_audience` turns the staged audience into one row per present identifier,
   `(user_key, priority, kind, value)`, value null when it failed normalisation; a source user
   with no identifier at all gets one row with a null priority so that it is still counted.
2. `match` joins that with Netmera's identifiers in DuckDB (spills to disk, never holds the user
   table in Python) and applies the rules: first identifier by priority that finds exactly one
   Netmera user wins; otherwise one reason, the first that applies of ambiguous → not_found →
   invalid_identifier → no_identifier.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.config import IdentifierKind
from include.matching.normalize import normalize_array

if TYPE_CHECKING:
    from include.config import SegmentConfig

REASONS = ("ambiguous", "not_found", "invalid_identifier", "no_identifier")
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


def _netmera_identifiers_sql(kinds: set[IdentifierKind], users: str) -> str:
    """One (kind, value, user_id) row per stored identifier the segment can use."""
    expressions = {
        IdentifierKind.EXTERNAL_ID: "external_id",
        IdentifierKind.EMAIL: "email",
        IdentifierKind.MSISDN: "msisdn",
        IdentifierKind.INSTALLATION_ID: "installation_id",
        IdentifierKind.EMAIL_SHA256: "sha256(email)",
        IdentifierKind.MSISDN_SHA256: "sha256(msisdn)",
    }
    parts = []
    for kind in sorted(kinds):
        column = expressions[kind].removeprefix("sha256(").removesuffix(")")
        parts.append(
            f"SELECT '{kind.value}' AS kind, {expressions[kind]} AS value, user_id "
            f"FROM read_parquet('{users}') WHERE {column} IS NOT NULL"
        )
    return " UNION ALL ".join(parts)


def match(segment: SegmentConfig, identifiers: Path, users: Path, workdir: Path) -> MatchResult:
    """Apply the matching rules; write the members Parquet (user_id, matched_by)."""
    import duckdb
    import pyarrow.parquet as pq

    kinds = {i.kind for i in segment.identifiers}
    has_push = "push_permitted" in pq.read_schema(users).names
    members = workdir / MEMBERS_FILE
    con = duckdb.connect(
        config={
            "temp_directory": str(workdir / "duckdb.tmp"),
            "memory_limit": os.environ.get(DUCKDB_MEMORY_ENV, "1GB"),
            "threads": os.cpu_count() or 2,
        }
    )
    try:
        con.execute(f"""
            CREATE TEMP TABLE candidates AS
            SELECT kind, value,
                   -- a null user id is a user too: validation must see it, not lose it
                   count(DISTINCT user_id) + max((user_id IS NULL)::INT) AS n,
                   min(user_id) AS user_id
            FROM ({_netmera_identifiers_sql(kinds, str(users))})
            GROUP BY kind, value
        """)
        con.execute(f"""
            CREATE TEMP TABLE hits AS
            SELECT s.user_key, s.priority, s.kind, s.value, coalesce(c.n, 0) AS n, c.user_id
            FROM read_parquet('{identifiers}') s
            LEFT JOIN candidates c ON s.value IS NOT NULL AND c.kind = s.kind AND c.value = s.value
        """)
        con.execute("""
            CREATE TEMP TABLE source_users AS
            WITH first_hit AS (
                SELECT user_key, user_id, kind AS matched_by, priority
                FROM hits WHERE n = 1
                QUALIFY row_number() OVER (PARTITION BY user_key ORDER BY priority, value) = 1
            ), flags AS (
                SELECT user_key,
                       bool_or(n > 1) AS ambiguous,
                       bool_or(value IS NOT NULL) AS any_valid,
                       bool_or(priority IS NOT NULL) AS any_present
                FROM hits GROUP BY user_key
            )
            SELECT f.user_key, h.user_id, h.matched_by, h.priority,
                   h.user_key IS NOT NULL AS matched,
                   CASE WHEN h.user_key IS NOT NULL THEN NULL
                        WHEN f.ambiguous THEN 'ambiguous'
                        WHEN f.any_valid THEN 'not_found'
                        WHEN f.any_present THEN 'invalid_identifier'
                        ELSE 'no_identifier' END AS reason
            FROM flags f LEFT JOIN first_hit h USING (user_key)
        """)
        # Several source users may land on one Netmera user: it is one member, credited to the
        # best-priority identifier that reached it.
        con.execute(f"""
            COPY (
                SELECT user_id, arg_min(matched_by, priority) AS matched_by
                FROM source_users WHERE matched GROUP BY user_id ORDER BY user_id
            ) TO '{members}' (FORMAT parquet)
        """)
        totals = con.execute("""
            SELECT count(*), count(*) FILTER (WHERE matched) FROM source_users
        """).fetchone()
        reasons = dict(
            con.execute(
                "SELECT reason, count(*) FROM source_users WHERE NOT matched GROUP BY reason"
            ).fetchall()
        )
        matched_by = dict(
            con.execute(
                "SELECT matched_by, count(*) FROM source_users WHERE matched GROUP BY matched_by"
            ).fetchall()
        )
        netmera_users = con.execute(f"SELECT count(*) FROM read_parquet('{members}')").fetchone()[0]
        reachable = None
        if has_push:
            reachable = con.execute(f"""
                SELECT count(DISTINCT m.user_id) FROM read_parquet('{members}') m
                JOIN read_parquet('{users}') u ON u.user_id = m.user_id
                WHERE u.push_permitted
            """).fetchone()[0]
    finally:
        con.close()
    return MatchResult(
        connector_users=totals[0],
        netmera_users=netmera_users,
        matched_source_users=totals[1],
        reachable=reachable,
        reasons={reason: reasons.get(reason, 0) for reason in REASONS},
        matched_by={i.kind.value: matched_by.get(i.kind.value, 0) for i in segment.identifiers},
        members_path=str(members),
    )
