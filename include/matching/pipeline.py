"""Matching as a pipeline, the one entry a refresh calls: staged audience → normalise → look up
(through a backend: in the Netmera database, or on the worker over the user table's export) →
decide (in DuckDB, whichever backend looked up) → result.

`paths.py` chooses the backend; both feed the same decision (`decide.py`) the same tables
(`rules.py`), so members, reasons and counts do not depend on the path.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from include.matching import decide
from include.matching.audience import identifier_reader
from include.matching.database import Database
from include.matching.paths import choose_path
from include.matching.result import MatchResult
from include.matching.worker import exported

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import SegmentConfig
    from include.matching.user_table import UserTable

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Where stage 1 of the rules runs: `lookup` leaves in `duck` the tables the decision
    reads (`cs_ids`, `cs_resolved`, `cs_hits`, and `cs_reach` when it returns True: the user
    table has push permissions)."""

    memory: str  # the decision's DuckDB memory limit by default

    def lookup(
        self, segment: SegmentConfig, identifiers: pa.RecordBatchReader, duck: decide.DuckSession
    ) -> bool: ...


def match_audience(
    segment: SegmentConfig,
    staged: Path,
    engine: sa.Engine,
    users: UserTable,
    extra: dict[str, Any],
    workdir: Path,
) -> MatchResult:
    """Staged audience x Netmera user table → members and unmatched Parquet in `workdir`,
    counts, reasons. The path follows `extra["match_path"]`: database | worker | auto (by the
    audience's size against the table, and on SQLite by the indexes this segment's kinds
    need)."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(staged).metadata.num_rows
    path = choose_path(engine, extra, users, rows, {i.kind for i in segment.identifiers})
    log.info("segment %s: matching on the %s path", segment.id, path)
    backend: AbstractContextManager[Backend] = (
        nullcontext(Database(engine, users, workdir))
        if path == "database"
        else exported(engine, users, segment, workdir)
    )
    with backend as found_by:
        return match_identifiers(segment, identifier_reader(segment, staged), found_by, workdir)


def match_identifiers(
    segment: SegmentConfig, identifiers: pa.RecordBatchReader, backend: Backend, workdir: Path
) -> MatchResult:
    """Normalised identifier rows (`audience.identifier_reader`) → looked up → decided."""
    members, unmatched = workdir / decide.MEMBERS_FILE, workdir / decide.UNMATCHED_FILE
    with decide.session(workdir, backend.memory) as duck:
        has_push = backend.lookup(segment, identifiers, duck)
        counts = decide.decide(duck, has_push, members, unmatched)
    return MatchResult.of(segment, counts, str(members), str(unmatched))
