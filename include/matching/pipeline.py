"""Matching as a pipeline, the one entry a refresh calls: staged audience → normalise → look up
(through a backend: in the Netmera database, or on the worker over the user table's export) →
decide (in DuckDB, whichever backend looked up) → result.

`paths.py` chooses the backend; both feed the same decision (`decide.py`) the same tables
(`rules.py`), so members, reasons and counts do not depend on the path. With the resolutions
the last match kept, `carry.py` first plans who must be matched again: the pipeline then runs
over those alone, and the decision adds everyone else as they were.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from include.matching import carry, decide, rules
from include.matching.audience import identifier_reader
from include.matching.database import Database
from include.matching.paths import choose_path
from include.matching.result import MatchResult
from include.matching.worker import exported

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import SegmentConfig
    from include.matching.carry import Kept, Planned
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
    kept: Kept | None = None,
    *,
    full_refresh: bool = False,
    now: datetime | None = None,
) -> MatchResult:
    """Staged audience x Netmera user table → members and unmatched Parquet in `workdir`,
    counts, reasons. The path follows `extra["match_path"]`: database | worker | auto (by the
    audience's size against the table, and on SQLite by the indexes this segment's kinds
    need).

    With `kept` (the resolutions the last match kept) the match is incremental when it can be
    (`carry.full_reason`; `full_refresh` asks for a full one): only the source users it must
    are matched again (`carry.py`); the result says what to keep (`MatchResult.resolutions`)."""

    if kept is None:
        return _matched(segment, staged, engine, users, extra, workdir)
    planned = carry.prepare(
        segment, staged, engine, users, extra, workdir, kept, full_refresh, now or datetime.now(UTC)
    )
    if planned is None:  # no change column: nothing would keep resolutions true, none are kept
        result = _matched(segment, staged, engine, users, extra, workdir)
        return dataclasses.replace(result, resolutions=carry.Update(full=True))
    result = _matched(segment, planned.staged, engine, users, extra, workdir, planned)
    if result.mode == "full":  # keep only what changed
        update = carry.narrowed(result.resolutions, kept, workdir)
        result = dataclasses.replace(result, resolutions=update)
    return result


def _matched(
    segment: SegmentConfig,
    staged: Path,
    engine: sa.Engine,
    users: UserTable,
    extra: dict[str, Any],
    workdir: Path,
    planned: Planned | None = None,
) -> MatchResult:
    """Match the source users `staged` holds; with `planned`, write their resolutions and
    terms out for the store, and decide with those it carries over."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(staged).metadata.num_rows
    carrying = None
    if planned is not None:
        carrying = decide.Carry(
            workdir / carry.RESOLUTIONS_FILE,
            workdir / carry.TERMS_FILE,
            planned.kept,
            Path(planned.update.dropped) if planned.update.dropped else None,
        )
    if planned is not None and planned.kept is not None and not rows:
        # Nobody to look up: no backend, empty lookups.
        backend: AbstractContextManager[Backend] = nullcontext(_Unchanged(users))
    else:
        path = choose_path(engine, extra, users, rows, {i.kind for i in segment.identifiers})
        log.info("segment %s: matching on the %s path", segment.id, path)
        backend = (
            nullcontext(Database(engine, users, workdir))
            if path == "database"
            else exported(engine, users, segment, workdir)
        )
    digests = planned.digests if planned else None
    with backend as found_by:
        result = match_identifiers(
            segment, identifier_reader(segment, staged), found_by, workdir, carrying, digests
        )
    if planned is None or carrying is None:
        return result
    update = dataclasses.replace(
        planned.update, resolutions=str(carrying.resolutions), terms=str(carrying.terms)
    )
    return dataclasses.replace(
        result,
        mode="full" if planned.kept is None else "incremental",
        rematched=pq.read_metadata(carrying.resolutions).num_rows,  # one a source user
        resolutions=update,
        changed_since=planned.kept_by,
    )


class _Unchanged:
    """A backend for an incremental match that re-matches nobody: stage 1's tables, empty."""

    memory = "256MB"

    def __init__(self, users: UserTable) -> None:
        self.users = users

    def lookup(
        self, segment: SegmentConfig, identifiers: pa.RecordBatchReader, duck: decide.DuckSession
    ) -> bool:
        for statement in rules.EMPTY_LOOKUP:
            duck.run(statement)
        # What either backend would say of this table.
        return bool(self.users.columns.get("push_permitted"))


def match_identifiers(
    segment: SegmentConfig,
    identifiers: pa.RecordBatchReader,
    backend: Backend,
    workdir: Path,
    carry: decide.Carry | None = None,
    digests: Path | None = None,
) -> MatchResult:
    """Normalised identifier rows (`audience.identifier_reader`) → looked up → decided."""
    members, unmatched = workdir / decide.MEMBERS_FILE, workdir / decide.UNMATCHED_FILE
    with decide.session(workdir, backend.memory) as duck:
        has_push = backend.lookup(segment, identifiers, duck)
        if digests is not None:
            duck.load_parquet("cs_digests", digests)
        counts = decide.decide(duck, has_push, members, unmatched, carry)
    return MatchResult.of(segment, counts, str(members), str(unmatched))
