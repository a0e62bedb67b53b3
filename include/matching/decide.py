"""Stage 2 of the rules (`rules.py`), the decision, in DuckDB on the worker whichever backend
looked the audience up: per source user a match or one reason, the members Parquet
(user_id, matched_by), the unmatched source users Parquet (user_key, reason), the counts.

The DuckDB session is the decision's; the worker backend runs its lookup in it too, so that
its lookup's tables are already where the decision reads them. Its memory is bounded: past
`CONNECTOR_SEGMENTS_DUCKDB_MEMORY` (or the backend's default) DuckDB spills to the run folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.matching import rules

if TYPE_CHECKING:
    import pyarrow as pa

DUCKDB_MEMORY_ENV = "CONNECTOR_SEGMENTS_DUCKDB_MEMORY"
MEMBERS_FILE = "members.parquet"
UNMATCHED_FILE = "unmatched.parquet"  # beside the members: why each other source user is out
# Beside the members of an incremental match: its members' change against the previous one's.
ENTERED_FILE = "entered.parquet"  # user_id, matched_by
LEFT_FILE = "left.parquet"  # user_id


@dataclass(frozen=True)
class Counts:
    connector_users: int
    matched_source_users: int
    netmera_users: int
    reachable: int | None
    reasons: dict[str, int] = field(default_factory=dict)
    matched_by: dict[str, int] = field(default_factory=dict)


def duckdb_config(workdir: Path, memory: str) -> dict[str, Any]:
    """Bounded memory: past `CONNECTOR_SEGMENTS_DUCKDB_MEMORY` (or `memory` when unset) DuckDB
    spills to `workdir`."""
    return {
        "temp_directory": str(workdir / "duckdb.tmp"),
        "memory_limit": os.environ.get(DUCKDB_MEMORY_ENV) or memory,
        "threads": os.cpu_count() or 2,
        "preserve_insertion_order": False,
    }


class DuckSession:
    """lookup.Session on a DuckDB connection, with the loads a backend feeds it by."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def run(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def fetch(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def load(self, table: str, data: pa.Table | pa.RecordBatchReader) -> None:
        """A new temporary table from Arrow data, read once (a reader streams in)."""
        self.con.register("cs_arrow_in", data)
        self.con.execute(rules.create_from(table, "cs_arrow_in"))
        self.con.unregister("cs_arrow_in")

    def load_parquet(self, table: str, path: Path) -> None:
        self.con.execute(rules.create_from(table, rules.parquet(path)))

    def analyze(self, table: str) -> None:
        pass  # DuckDB keeps its statistics as it writes


@contextmanager
def session(workdir: Path, memory: str) -> Iterator[DuckSession]:
    """A DuckDB connection within the memory limit, closed after."""
    import duckdb

    con = duckdb.connect(config=duckdb_config(workdir, memory))
    try:
        yield DuckSession(con)
    finally:
        con.close()


@dataclass(frozen=True)
class Carry:
    """An incremental match's part in the decision (`carry.py`): where the resolutions and
    terms of the source users decided now go (`cs_digests` must hold their digests) and, in
    an incremental match, the resolutions the last match kept (`kept`, Parquet,
    `carry.resolution_schema`) of which those whose key is not in `dropped` (Parquet) carry
    over. The members' change against that match's members is then written beside the members
    (`ENTERED_FILE`, `LEFT_FILE`)."""

    resolutions: Path
    terms: Path
    kept: Path | None = None
    dropped: Path | None = None


def decide(
    session: DuckSession,
    has_push: bool,
    members: Path,
    unmatched: Path,
    carry: Carry | None = None,
) -> Counts:
    """Stage 2 over `cs_ids`, `cs_resolved`, `cs_hits` and (with push) `cs_reach`; writes
    the members to `members` and the unmatched source users to `unmatched`. With `carry`, the
    source users decided here are written out as resolutions, then those carried over join
    them: members and counts are always over every source user."""
    run = session.run
    run(rules.DECIDE)
    incremental = carry is not None and carry.kept is not None and carry.dropped is not None
    if carry is not None:
        # An incremental match's go to the store as they are; a full one's are narrowed first.
        run(rules.copy_resolutions(carry.resolutions, has_push, ordered=incremental))
        run(rules.copy_terms(carry.terms, ordered=incremental))
    if incremental:
        for statement in rules.add_carried(carry.kept, carry.dropped, has_push):
            run(statement)
    run(rules.MEMBERS)
    run(rules.copy_members(members))
    if incremental:
        run(rules.copy_entered(members.with_name(ENTERED_FILE)))
        run(rules.copy_left(members.with_name(LEFT_FILE)))
    run(rules.copy_unmatched(unmatched))
    ((total, matched),) = run(rules.SOURCE_USER_COUNTS)
    reasons = dict(run(rules.REASON_COUNTS))
    matched_by = dict(run(rules.MATCHED_BY_COUNTS))
    ((netmera_users,),) = run(rules.MEMBER_COUNT)
    reachable = None
    if has_push:
        ((reachable,),) = run(rules.REACHABLE_COUNT)
    return Counts(
        connector_users=total,
        matched_source_users=matched,
        netmera_users=netmera_users,
        reachable=reachable,
        reasons={r: reasons.get(r, 0) for r in rules.REASONS},
        matched_by={k: n for k, n in matched_by.items() if k is not None},
    )
