"""Matching as a pipeline, the one entry a refresh calls: staged audience → normalise → look up
(through a backend: in the Netmera database, or on the worker over the user table's export) →
decide (in DuckDB, whichever backend looked up) → result.

`paths.py` chooses the backend; both feed the same decision (`decide.py`) the same tables
(`rules.py`), so members, reasons and counts do not depend on the path.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from include.matching import decide, rules
from include.matching.audience import identifier_reader
from include.matching.database import Database
from include.matching.paths import choose_path
from include.matching.result import MatchResult
from include.matching.worker import exported

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import SegmentConfig
    from include.matching.carry import Kept, Update
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
    import duckdb

    from include.matching import carry
    from include.matching.changes import ChangeColumn, changed_rows, missing_users, read_mark

    if kept is None:
        return _matched(segment, staged, engine, users, extra, workdir)
    change = ChangeColumn.from_extras(extra)
    if change is None:  # nothing would keep stored resolutions true: none are kept
        result = _matched(segment, staged, engine, users, extra, workdir)
        return dataclasses.replace(result, resolutions=carry.Update(full=True))
    now = now or datetime.now(UTC)
    kinds = {i.kind for i in segment.identifiers}
    state, now_basis = kept.state(), carry.basis(segment, users, change)
    why = carry.full_reason(segment, change, state, now_basis, full_refresh, now)
    mark = read_mark(engine)  # before any lookup: later changes are read again
    digests = workdir / carry.DIGESTS_FILE
    con = duckdb.connect(config=decide.duckdb_config(workdir, carry.PLAN_MEMORY))
    try:
        carry.write_digests(con, segment, staged, digests)
        if why is None:
            assert state is not None
            changed = changed_rows(engine, users, change, state.mark, kinds)
            gone = missing_users(engine, users, kept.user_ids())
            affected = kept.keys_with_terms(carry.changed_terms(changed, gone))
            planned = carry.plan(
                con, digests, kept.export(workdir / carry.KEPT_FILE), affected, workdir
            )
        else:
            log.info("segment %s: matching in full: %s", segment.id, why)
    finally:
        con.close()
    if why is not None:
        update = carry.Update(True, now_basis, mark, now)
        return _matched(segment, staged, engine, users, extra, workdir, digests, update)
    rematch = workdir / carry.REMATCH_FILE
    carry.write_rematch(segment, staged, planned.rematch, rematch)
    log.info(
        "segment %s: incremental match: %d source users matched again (%d Netmera rows changed,"
        " %d users deleted)",
        segment.id,
        len(planned.rematch),
        len(set(changed["user_id"].to_pylist())),
        len(gone),
    )
    update = carry.Update(False, now_basis, mark, state.full_at, dropped=str(planned.dropped))
    return _matched(
        segment, rematch, engine, users, extra, workdir, digests, update, planned.carried
    )


def _matched(
    segment: SegmentConfig,
    staged: Path,
    engine: sa.Engine,
    users: UserTable,
    extra: dict[str, Any],
    workdir: Path,
    digests: Path | None = None,
    update: Update | None = None,
    carried: Path | None = None,
) -> MatchResult:
    """Match the source users `staged` holds; with `update`, write their resolutions and
    terms out and decide with those `carried` over."""
    import pyarrow.parquet as pq

    from include.matching import carry

    rows = pq.ParquetFile(staged).metadata.num_rows
    carrying = None
    if update is not None and digests is not None:
        carrying = decide.Carry(
            carried, workdir / carry.RESOLUTIONS_FILE, workdir / carry.TERMS_FILE
        )
    if carried is not None and not rows:  # nobody to look up: no backend, empty lookups
        backend: AbstractContextManager[Backend] = nullcontext(_Unchanged(users))
    else:
        path = choose_path(engine, extra, users, rows, {i.kind for i in segment.identifiers})
        log.info("segment %s: matching on the %s path", segment.id, path)
        backend = (
            nullcontext(Database(engine, users, workdir))
            if path == "database"
            else exported(engine, users, segment, workdir)
        )
    with backend as found_by:
        result = match_identifiers(
            segment, identifier_reader(segment, staged), found_by, workdir, carrying, digests
        )
    if update is None:
        return result
    assert carrying is not None
    update = dataclasses.replace(
        update, resolutions=str(carrying.resolutions), terms=str(carrying.terms)
    )
    mode = "full" if carried is None else "incremental"
    rematched = rows and pq.read_metadata(carrying.resolutions).num_rows
    return dataclasses.replace(result, mode=mode, rematched=rematched, resolutions=update)


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
