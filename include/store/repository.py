"""Segment store operations: the status lifecycle, run records, the versioned publish and
the restore of an earlier version.

Lifecycle: a refresh marks the segment Calculating (its current membership keeps serving), then
ends Ready (published), Failed (error recorded) or Held (guardrail tripped). Failed and Held never
touch the current membership or its counts. Dry runs record a run but leave the segment alone;
so does a restore until it commits (then Ready), and a refused or failed one never.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.clients.database import read_arrow
from include.store.migrate import upgrade
from include.store.redaction import MAX_ERROR, redact_personal_data
from include.store.tables import current_members, members, members_at, runs, segments, unmatched

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config.segments import SegmentConfig
    from include.matching.result import MatchResult

log = logging.getLogger(__name__)

READY, CALCULATING, FAILED, HELD = "Ready", "Calculating", "Failed", "Held"


@dataclass(frozen=True)
class Publication:
    """What a publish made current (or, on a dry run, would have): the new version, the one it
    replaced, and the members added and removed between them."""

    version: int
    base_version: int | None
    added: int
    removed: int


@dataclass(frozen=True)
class MemberChange:
    """A match's members' change against the members of the match run `since` made: `files()`
    gives the Parquet of who entered (user_id, matched_by) and who left (user_id), read only
    when used. A publish uses it when the current version is the one `since` published; any
    other current version (a held or dry run between, a restore) is diffed as before."""

    since: str
    files: Callable[[], tuple[str, str]]


# Everything a run records after it starts; reset when a cleared run starts again.
RUN_RESULTS = (
    "finished_at",
    "failed_step",
    "error",
    "hold_reason",
    "version",
    "base_version",
    "connector_users",
    "netmera_users",
    "matched_source_users",
    "refused_rows",
    "reachable",
    "reasons",
    "matched_by",
    "validation",
    "added",
    "removed",
    "restored_from",
    "step_seconds",
    "mode",
    "rematched",
)
# How many versions are kept: the current membership and those before it that Restore,
# history, changes and a send in flight can read. Kept as intervals, they cost one audience
# plus the stays that ended within them, not one audience each.
KEEP_VERSIONS_ENV = "CONNECTOR_SEGMENTS_KEEP_VERSIONS"
KEEP_VERSIONS = 30
# Unmatched source users are personal data: kept for the last few refreshes (and the newest
# few versions' own refreshes) only.
KEEP_UNMATCHED_RUNS = 3
# The segment's counts, set from the run that published its current version.
LISTED_COUNTS = ("connector_users", "netmera_users", "reachable")
# What a restore copies from the run that published the version it restores.
RESTORED_COUNTS = (*LISTED_COUNTS, "matched_source_users", "refused_rows", "reasons", "matched_by")
# A new version's members (user_id, matched_by), read in the publish's transaction.
Arriving = Callable[[sa.Connection], "pa.Table"]


def _now() -> datetime:
    return datetime.now(UTC)


def kept_versions_count() -> int:
    """KEEP_VERSIONS, or what CONNECTOR_SEGMENTS_KEEP_VERSIONS sets (every process of a
    deployment must see the same value)."""
    value = os.environ.get(KEEP_VERSIONS_ENV, "").strip()
    if not value:
        return KEEP_VERSIONS
    if not value.isdigit() or int(value) < 2:
        raise ValueError(f"{KEEP_VERSIONS_ENV}={value!r}: a whole number of versions, at least 2")
    return int(value)


def fails_segment(run: dict[str, Any] | None) -> bool:
    """Whether a run record is a failure that made its segment Failed: a refresh's, not a
    dry run's or a restore's (`_owns_status`), nor a run whose record is fine (its send
    failed, or it never started: a Send Message)."""
    return (
        run is not None
        and run["status"] == "failed"
        and not run["dry_run"]
        and run["restored_from"] is None
    )


IN_CHUNK = 5_000  # values per IN list (SQLite allows 32,766 variables)


def chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def _insert_batches(
    conn: sa.Connection, table: sa.Table, batches: Iterable[pa.RecordBatch], **keys: Any
) -> None:
    """Each Arrow batch into `table`, every row given `keys`: COPY on PostgreSQL (so publishing
    a million members costs little more than copying them in), elsewhere one executemany of
    the driver's own tuples (SQLAlchemy's per-row handling costs more than SQLite's insert)."""
    import pyarrow as pa

    from include.clients.database import copy_batch

    postgres = conn.dialect.name == "postgresql"
    insert = table.insert().compile(dialect=conn.dialect)
    for batch in batches:
        if not batch.num_rows:
            continue
        if postgres:
            columns = {
                c.name: pa.repeat(keys[c.name], batch.num_rows) if c.name in keys else batch[c.name]
                for c in table.columns
            }
            copy_batch(conn, table.name, pa.RecordBatch.from_pydict(columns))
        else:
            values = [
                [keys[name]] * batch.num_rows if name in keys else batch[name].to_pylist()
                for name in insert.positiontup
            ]
            conn.exec_driver_sql(str(insert), list(zip(*values, strict=True)))


class PublishAborted(RuntimeError):
    """Raised inside the publish transaction to roll it back (dry runs, previews)."""


class RestoreRefused(ValueError):
    """Only a kept, published version other than the current one can be restored."""


def oldest_kept_version(current: int | None) -> int | None:
    """The oldest version still kept when `current` is the segment's (None: nothing is)."""
    return max(1, current - kept_versions_count() + 1) if current else None


class ChangesGone(LookupError):
    """A run's added and removed members cannot be listed; the message says why."""


class SegmentStore:
    def __init__(self, engine: sa.Engine) -> None:
        upgrade(engine)
        self.engine = engine

    # -- reads -------------------------------------------------------------------------------

    def segment(self, segment_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(segments).where(segments.c.id == segment_id)).first()
        return dict(row._mapping) if row else None

    def list_segments(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(segments).order_by(segments.c.name)).all()
        return [dict(r._mapping) for r in rows]

    def runs(self, segment_id: str, limit: int = 5) -> list[dict[str, Any]]:
        query = (
            sa.select(runs)
            .where(runs.c.segment_id == segment_id)
            .order_by(runs.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def run(self, segment_id: str, run_id: str) -> dict[str, Any] | None:
        query = sa.select(runs).where(
            runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def run_config(self, segment_id: str, run_id: str) -> dict[str, Any] | None:
        """The config the run started with (`SegmentConfig.snapshot`); None for a run with no
        record, or one recorded before snapshots were (a send-only run, an older run)."""
        query = sa.select(runs.c.config).where(
            runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def last_run_with_status(
        self,
        segment_id: str,
        status: str,
        *,
        before: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any] | None:
        """The newest run in that status (other than the run `before`; of that `version`)."""
        query = sa.select(runs).where(runs.c.segment_id == segment_id, runs.c.status == status)
        if before:
            query = query.where(runs.c.airflow_run_id != before)
        if version is not None:
            query = query.where(runs.c.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(runs.c.id.desc()).limit(1)).first()
        return dict(row._mapping) if row else None

    def member_ids(self, segment_id: str) -> Iterator[str]:
        """The current membership's Netmera user ids, streamed."""
        query = (
            sa.select(members.c.user_id)
            .where(current_members(segment_id))
            .order_by(members.c.user_id)
        )
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
                yield row.user_id

    def stays(self, segment_id: str, user_id: str) -> list[dict[str, Any]]:
        """The user's kept stays in the segment, oldest first: the version each began and
        ended in (None: still a member), the kind it entered by, and when the runs that made
        those versions published them."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(members.c.entered_version, members.c.left_version, members.c.matched_by)
                .where(members.c.segment_id == segment_id, members.c.user_id == user_id)
                .order_by(members.c.entered_version)
            ).all()
            versions = {v for row in rows for v in row[:2] if v is not None}
            published = dict(
                conn.execute(
                    sa.select(runs.c.version, runs.c.finished_at).where(
                        runs.c.segment_id == segment_id,
                        runs.c.status == "published",
                        runs.c.version.in_(versions),
                    )
                ).all()
            )
        return [
            {
                "entered_version": row.entered_version,
                "entered_at": published.get(row.entered_version),
                "matched_by": row.matched_by,
                "left_version": row.left_version,
                "left_at": published.get(row.left_version),
            }
            for row in rows
        ]

    def changed_version(self, segment_id: str, run_id: str) -> int:
        """The version the run published, if its changes are still kept; else ChangesGone
        saying why (no such run, it published nothing, or its version is no longer kept)."""
        with self.engine.connect() as conn:
            run = conn.execute(
                sa.select(runs.c.status, runs.c.version).where(
                    runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id
                )
            ).first()
            current = self._current_version(conn, segment_id)
        if run is None:
            raise ChangesGone(f"segment {segment_id!r} has no run {run_id!r}")
        if run.status != "published":
            raise ChangesGone(f"run {run_id!r} published no version (it is {run.status})")
        if run.version < (oldest_kept_version(current) or 1):
            raise ChangesGone(
                f"run {run_id!r} published version {run.version}, which is no longer kept "
                f"(the newest {kept_versions_count()} are)"
            )
        return run.version

    def changes(self, segment_id: str, version: int) -> Iterator[tuple[str, str]]:
        """(user id, "added" | "removed") of every member the version added or removed against
        the one before it, by user id, streamed: the stays it began and ended."""
        change = sa.case((members.c.entered_version == version, "added"), else_="removed")
        query = (
            sa.select(members.c.user_id, change.label("change"))
            .where(
                members.c.segment_id == segment_id,
                sa.or_(members.c.entered_version == version, members.c.left_version == version),
            )
            .order_by(members.c.user_id)
        )
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
                yield row.user_id, row.change

    def unmatched_run(self, segment_id: str) -> str | None:
        """The run whose unmatched source users explain the current version: the refresh
        that published it (for a restored version, the refresh that first published it);
        None if nothing is published, or if that refresh's unmatched users are no longer kept
        (a restore of a version older than the newest few)."""
        with self.engine.connect() as conn:
            version = self._current_version(conn, segment_id)
            source = self._source_run(conn, segment_id, version) if version else None
            if source is None:
                return None
            reasons = conn.execute(
                sa.select(runs.c.reasons).where(
                    runs.c.segment_id == segment_id, runs.c.airflow_run_id == source
                )
            ).scalar()
            kept = conn.execute(
                sa.select(sa.literal(1)).where(*self._unmatched_of(segment_id, source)).limit(1)
            ).first()
            return source if kept or not any((reasons or {}).values()) else None

    def unmatched(self, segment_id: str, run_id: str | None) -> Iterator[tuple[str, str]]:
        """(user key, reason) of every unmatched source user of the run (`unmatched_run`, or
        one of the last few refreshes), by user key, streamed."""
        query = (
            sa.select(unmatched.c.user_key, unmatched.c.reason)
            .where(*self._unmatched_of(segment_id, run_id or ""))
            .order_by(unmatched.c.user_key)
        )
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
                yield row.user_key, row.reason

    def kept_versions(self, segment_id: str) -> list[dict[str, Any]]:
        """The kept published versions, newest first: each the record of the run that
        published it (one query)."""
        with self.engine.connect() as conn:
            return self._kept_versions(conn, segment_id)

    def check_restorable(self, segment_id: str, version: int) -> None:
        """RestoreRefused, naming the segment, the version and the kept ones, unless `restore`
        would accept `version` now."""
        with self.engine.connect() as conn:
            self._restorable_run(conn, segment_id, version)

    # -- lifecycle ---------------------------------------------------------------------------

    def start_run(
        self,
        config: SegmentConfig,
        run_id: str,
        *,
        dry_run: bool,
        approve: bool,
        restore_version: int | None = None,
    ) -> None:
        """Open (or, on a task retry, reopen) the run record with the config it runs with (a
        retry records the config read now: nothing ran yet); mark the segment Calculating,
        unless it is a dry run or a restore (which leaves the status alone until it commits)."""
        now = _now()
        with self.engine.begin() as conn:
            listed = {
                "name": config.name,
                "description": config.description,
                "source_type": config.source.type,
            }
            if conn.execute(sa.select(segments.c.id).where(segments.c.id == config.id)).first():
                conn.execute(segments.update().where(segments.c.id == config.id).values(**listed))
            else:
                conn.execute(
                    segments.insert().values(
                        id=config.id,
                        connector_users=0,
                        netmera_users=0,
                        message_sent=0,
                        updated_at=now,
                        **listed,
                    )
                )
            self._abandon_others(conn, config.id, run_id)
            if not dry_run and restore_version is None:
                self._set_status(conn, config.id, CALCULATING, None)
            # A cleared or retried run starts over: nothing of its earlier attempt stays.
            conn.execute(unmatched.delete().where(*self._unmatched_of(config.id, run_id)))
            values = {
                "dry_run": dry_run,
                "approve": approve,
                "status": "calculating",
                "started_at": now,
                **dict.fromkeys(RUN_RESULTS),
                "restored_from": restore_version,
                "config": config.snapshot(),
            }
            existing = conn.execute(
                sa.select(runs.c.id).where(
                    runs.c.segment_id == config.id, runs.c.airflow_run_id == run_id
                )
            ).first()
            if existing:
                conn.execute(runs.update().where(runs.c.id == existing.id).values(**values))
            else:
                conn.execute(
                    runs.insert().values(segment_id=config.id, airflow_run_id=run_id, **values)
                )

    def record_run(self, segment_id: str, run_id: str, **values: Any) -> None:
        """Store counts, reasons or the validation summary on the run record."""
        with self.engine.begin() as conn:
            conn.execute(self._run_update(segment_id, run_id).values(**values))

    def record_step(self, segment_id: str, run_id: str, step: str, seconds: float) -> None:
        """A step of the run finished in `seconds` (kept with the run's other steps')."""
        with self.engine.begin() as conn:
            took = conn.execute(
                sa.select(runs.c.step_seconds).where(
                    runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id
                )
            ).scalar()
            took = {**(took or {}), step: round(seconds, 3)}
            conn.execute(self._run_update(segment_id, run_id).values(step_seconds=took))

    def record_unmatched(
        self, segment_id: str, run_id: str, batches: Iterable[pa.RecordBatch]
    ) -> None:
        """The run's unmatched source users ({user_key, reason} batches), replacing those of an
        earlier attempt; in the same transaction, those of all but the segment's newest
        KEEP_UNMATCHED_RUNS refreshes (this one included) are deleted. Record them before the
        run's counts: until those land, readers still see the refresh before."""
        with self.engine.begin() as conn:
            conn.execute(unmatched.delete().where(*self._unmatched_of(segment_id, run_id)))
            _insert_batches(conn, unmatched, batches, segment_id=segment_id, airflow_run_id=run_id)
            self._prune_unmatched(conn, segment_id, run_id)

    def fail_run(
        self,
        segment_id: str,
        run_id: str,
        step: str,
        error: str,
        *,
        dry_run: bool = False,
        approve: bool = False,
        restored_from: int | None = None,
    ) -> str:
        """Failed: the run records the error, redacted of personal data (and returns it as
        recorded), in a record of its own if it had none yet (what the run was, `dry_run`,
        `approve`, `restored_from`, from its trigger); membership and counts stay as they
        were; the segment is Failed only by a refresh's failure."""
        error = redact_personal_data(error)[:MAX_ERROR]
        failed = {"status": "failed", "failed_step": step, "error": error, "finished_at": _now()}
        with self.engine.begin() as conn:
            recorded = conn.execute(self._run_update(segment_id, run_id).values(**failed))
            if not recorded.rowcount:  # failed before `start` could open its record: one as
                conn.execute(  # the run was asked for (`dry_run`... from its trigger's conf)
                    runs.insert().values(
                        segment_id=segment_id,
                        airflow_run_id=run_id,
                        dry_run=dry_run,
                        approve=approve,
                        restored_from=restored_from,
                        started_at=failed["finished_at"],
                        **failed,
                    )
                )
            owns_status = self._owns_status(conn, segment_id, run_id)
            if owns_status:
                self._set_status(conn, segment_id, FAILED, f"{step}: {error}")
        return error

    def abandon_run(self, segment_id: str, run_id: str, why: str) -> bool:
        """A run that ended without its steps reporting (killed worker, state set from the UI):
        Failed, but only if its record still says calculating. Returns whether it did."""
        with self.engine.begin() as conn:
            status = conn.execute(
                sa.select(runs.c.status)
                .where(runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id)
                .with_for_update()  # the failure callback and the hourly check may race
            ).scalar()
            if status != "calculating":
                return False
            owns_status = self._owns_status(conn, segment_id, run_id)
            conn.execute(
                self._run_update(segment_id, run_id).values(
                    status="failed", failed_step="run", error=why, finished_at=_now()
                )
            )
            if owns_status:
                self._set_status(conn, segment_id, FAILED, f"run: {why}")
        return True

    def calculating_runs(self) -> list[tuple[str, str]]:
        """(segment id, Airflow run id) of every run record still "calculating"."""
        query = sa.select(runs.c.segment_id, runs.c.airflow_run_id).where(
            runs.c.status == "calculating"
        )
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def hold_run(self, segment_id: str, run_id: str, reason: str) -> None:
        """Held: not published until approved; membership and counts stay as they were."""
        with self.engine.begin() as conn:
            conn.execute(
                self._run_update(segment_id, run_id).values(
                    status="held", hold_reason=reason, finished_at=_now()
                )
            )
            self._set_status(conn, segment_id, HELD, reason)

    def publish(
        self,
        segment_id: str,
        run_id: str,
        member_batches: Iterable[pa.RecordBatch],
        *,
        counts: MatchResult,
        dry_run: bool,
        change: MemberChange | None = None,
    ) -> Publication:
        """Make the new membership current in ONE transaction; report added/removed. With
        `change` (the match's members' change) the members are not read, if it applies.

        A dry run does the same work and rolls it back, so it shows exactly what would change.
        """
        done = self._published(segment_id, run_id)
        if done:
            return done
        arriving = self._arriving(member_batches)
        if dry_run:
            outcome = self._rolled_back(segment_id, arriving, change)
            self.record_run(
                segment_id,
                run_id,
                status="dry_run",
                finished_at=_now(),
                base_version=outcome.base_version,
                added=outcome.added,
                removed=outcome.removed,
            )
            return outcome
        listed = {k: getattr(counts, k) for k in LISTED_COUNTS}
        with self.engine.begin() as conn:
            outcome = self._add_version(conn, segment_id, arriving, change)
            self._make_current(conn, segment_id, run_id, outcome, listed)
        return outcome

    def preview(self, segment_id: str, member_batches: Iterable[pa.RecordBatch]) -> tuple[int, int]:
        """(added, removed): what publishing these members would change against the current
        version. The publish's own work, rolled back (what Approve shows)."""
        outcome = self._rolled_back(segment_id, self._arriving(member_batches))
        return outcome.added, outcome.removed

    def restore(self, segment_id: str, run_id: str, version: int) -> Publication:
        """Make kept version `version` current again in ONE transaction, as a NEW version
        (numbers stay monotonic, so pruning and the send ledger's once-per-version rule hold)
        with the counts of the run that published it; the run records it as a publish, with
        `restored_from`. Raises RestoreRefused unless the version is kept, published and not
        current (`check_restorable`)."""
        done = self._published(segment_id, run_id)
        if done:
            return done
        with self.engine.begin() as conn:
            source = self._restorable_run(conn, segment_id, version)
            outcome = self._add_version(conn, segment_id, self._kept(segment_id, version))
            self._make_current(
                conn,
                segment_id,
                run_id,
                outcome,
                {k: source[k] for k in LISTED_COUNTS},
                restored_from=version,
                **{k: source[k] for k in RESTORED_COUNTS},
            )
        return outcome

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _abandon_others(conn: sa.Connection, segment_id: str, run_id: str) -> None:
        # max_active_runs=1: another run still "calculating" can only be one that died.
        conn.execute(
            runs.update()
            .where(
                runs.c.segment_id == segment_id,
                runs.c.status == "calculating",
                runs.c.airflow_run_id != run_id,
            )
            .values(
                status="failed",
                failed_step="run",
                finished_at=_now(),
                error="abandoned: the run ended without reporting (worker killed or "
                "state changed from the UI)",
            )
        )

    @staticmethod
    def _run_update(segment_id: str, run_id: str) -> sa.Update:
        return runs.update().where(runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id)

    @staticmethod
    def _owns_status(conn: sa.Connection, segment_id: str, run_id: str) -> bool:
        """Whether the run's failure makes the segment Failed: not a dry run's, nor a restore's
        (neither touched the status, and the membership is as it was)."""
        run = conn.execute(
            sa.select(runs.c.dry_run, runs.c.restored_from).where(
                runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id
            )
        ).first()
        return run is None or (not run.dry_run and run.restored_from is None)

    @staticmethod
    def _unmatched_of(segment_id: str, run_id: str) -> tuple[sa.ColumnElement[bool], ...]:
        return unmatched.c.segment_id == segment_id, unmatched.c.airflow_run_id == run_id

    @staticmethod
    def _matched_refresh() -> sa.ColumnElement[bool]:
        """A run that matched an audience: a refresh (not a restore) past its match step."""
        return sa.and_(runs.c.connector_users.is_not(None), runs.c.restored_from.is_(None))

    @staticmethod
    def _newest_first() -> tuple[sa.UnaryExpression, ...]:
        # By start: a cleared run that runs again is the newest, whatever its id.
        return runs.c.started_at.desc(), runs.c.id.desc()

    @staticmethod
    def _current(segment_id: str) -> sa.Select:
        return sa.select(segments.c.current_version).where(segments.c.id == segment_id)

    def _current_version(self, conn: sa.Connection, segment_id: str) -> int | None:
        return conn.execute(self._current(segment_id)).scalar()

    def _kept_versions(self, conn: sa.Connection, segment_id: str) -> list[dict[str, Any]]:
        # The versions whose members publish has not pruned (see _make_current), by the runs
        # that published them: an empty version has no member rows but is kept all the same.
        current = self._current(segment_id).scalar_subquery()
        query = (
            sa.select(runs)
            .where(
                runs.c.segment_id == segment_id,
                runs.c.status == "published",
                runs.c.version > current - kept_versions_count(),
            )
            .order_by(runs.c.version.desc())
        )
        return [dict(r._mapping) for r in conn.execute(query).all()]

    def _prune_unmatched(self, conn: sa.Connection, segment_id: str, run_id: str) -> None:
        """Keep the unmatched users of `run_id`, of the segment's newest KEEP_UNMATCHED_RUNS
        refreshes (it included) and of the refreshes the newest KEEP_UNMATCHED_RUNS versions
        came from (a restore may make one current again, and the page's are the current
        version's); delete the rest."""
        others = conn.execute(
            sa.select(runs.c.airflow_run_id)
            .where(
                runs.c.segment_id == segment_id,
                runs.c.airflow_run_id != run_id,
                self._matched_refresh(),
            )
            .order_by(*self._newest_first())
            .limit(KEEP_UNMATCHED_RUNS - 1)
        ).scalars()
        explaining = {
            self._source_run(conn, segment_id, kept["version"])
            for kept in self._kept_versions(conn, segment_id)[:KEEP_UNMATCHED_RUNS]
        }
        conn.execute(
            unmatched.delete().where(
                unmatched.c.segment_id == segment_id,
                unmatched.c.airflow_run_id.not_in([run_id, *others, *explaining - {None}]),
            )
        )

    def _source_run(self, conn: sa.Connection, segment_id: str, version: int) -> str | None:
        """The refresh whose audience `version` is: the run that published it, or, for a
        restore, the one that published the version it restored (and so on)."""
        for _ in range(100):  # a chain of restores; each restores an older version
            run = conn.execute(
                sa.select(runs.c.airflow_run_id, runs.c.restored_from)
                .where(
                    runs.c.segment_id == segment_id,
                    runs.c.status == "published",
                    runs.c.version == version,
                )
                .order_by(runs.c.id.desc())
                .limit(1)
            ).first()
            if run is None or run.restored_from is None:
                return run.airflow_run_id if run else None
            version = run.restored_from
        return None

    def _restorable_run(self, conn: sa.Connection, segment_id: str, version: int) -> dict[str, Any]:
        """The run that published `version`, if it can be restored; else RestoreRefused."""
        current = self._current_version(conn, segment_id)
        kept = self._kept_versions(conn, segment_id)
        for run in kept:
            if run["version"] == version and version != current:
                return run
        why = "it is the current version" if version == current else "not a kept published version"
        listed = ", ".join(
            f"{r['version']}{' (current)' if r['version'] == current else ''}" for r in kept
        )
        raise RestoreRefused(
            f"segment {segment_id!r}: version {version} cannot be restored ({why}); "
            f"kept versions: {listed or 'none'}"
        )

    def _published(self, segment_id: str, run_id: str) -> Publication | None:
        """What the run published, if it did: a retry after the commit landed (the worker died
        before reporting success) returns it instead of publishing again."""
        done = self.run(segment_id, run_id)
        if done and done["status"] == "published":
            return Publication(*(done[k] for k in ("version", "base_version", "added", "removed")))
        return None

    def _rolled_back(
        self, segment_id: str, arriving: Arriving, change: MemberChange | None = None
    ) -> Publication:
        """What adding that version would change; nothing of it is kept."""
        try:
            with self.engine.begin() as conn:
                outcome = self._add_version(conn, segment_id, arriving, change)
                raise PublishAborted
        except PublishAborted:
            return outcome

    def _add_version(
        self,
        conn: sa.Connection,
        segment_id: str,
        arriving: Arriving,
        change: MemberChange | None = None,
    ) -> Publication:
        """Version current+1 with the `arriving` members: the stays of those who left close
        at it, those who entered open a stay at it; nobody else's row is written. Who entered
        and left comes from `change` when the current version is the members it is against,
        else from comparing the arriving members with a read of the current ones."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        current = conn.execute(self._current(segment_id)).scalar_one()  # the segment must exist
        version = (current or 0) + 1
        if change is not None and self._published_by(conn, segment_id, current, change.since):
            entered_file, left_file = change.files()
            entered = pq.read_table(entered_file).cast(_member_schema())
            left = pq.read_table(left_file)["user_id"].combine_chunks().cast(pa.string())
        else:
            new = arriving(conn)
            old = read_arrow(conn, sa.select(members.c.user_id).where(current_members(segment_id)))
            old_ids, new_ids = old["user_id"].combine_chunks(), new["user_id"].combine_chunks()
            entered = new.filter(pc.invert(pc.is_in(new_ids, value_set=old_ids)))
            left = old_ids.filter(pc.invert(pc.is_in(old_ids, value_set=new_ids)))
        _close_stays(conn, segment_id, version, left)
        _insert_batches(
            conn,
            members,
            entered.to_batches(),
            segment_id=segment_id,
            entered_version=version,
            left_version=None,
        )
        return Publication(version, current, entered.num_rows, len(left))

    @staticmethod
    def _published_by(
        conn: sa.Connection, segment_id: str, version: int | None, run_id: str
    ) -> bool:
        """Whether `version` is the one the refresh run `run_id` published (not a restore)."""
        if version is None:
            return False
        return (
            conn.execute(
                sa.select(runs.c.id).where(
                    runs.c.segment_id == segment_id,
                    runs.c.airflow_run_id == run_id,
                    runs.c.version == version,
                    runs.c.status == "published",
                    runs.c.restored_from.is_(None),
                )
            ).first()
            is not None
        )

    @staticmethod
    def _arriving(member_batches: Iterable[pa.RecordBatch]) -> Arriving:
        def arriving(conn: sa.Connection) -> pa.Table:
            import pyarrow as pa

            batches = [
                pa.record_batch(
                    [b["user_id"].cast(pa.string()), b["matched_by"].cast(pa.string())],
                    names=["user_id", "matched_by"],
                )
                for b in member_batches
            ]
            return pa.Table.from_batches(batches, _member_schema())

        return arriving

    @staticmethod
    def _kept(segment_id: str, version: int) -> Arriving:
        """A kept version's members, each with the kind it entered by."""

        def arriving(conn: sa.Connection) -> pa.Table:
            query = sa.select(members.c.user_id, members.c.matched_by).where(
                members_at(segment_id, version)
            )
            return read_arrow(conn, query)

        return arriving

    def _make_current(
        self,
        conn: sa.Connection,
        segment_id: str,
        run_id: str,
        outcome: Publication,
        listed: dict[str, Any],
        **run_values: Any,
    ) -> None:
        """The new version current, with the segment's counts `listed`; the run published;
        the stays no kept version spans pruned."""
        now = _now()
        conn.execute(
            segments.update()
            .where(segments.c.id == segment_id)
            .values(
                current_version=outcome.version,
                **listed,
                status=READY,
                status_reason=None,
                last_update_date=now,
                updated_at=now,
            )
        )
        conn.execute(
            self._run_update(segment_id, run_id).values(
                status="published", finished_at=now, **asdict(outcome), **run_values
            )
        )
        conn.execute(self._prune(outcome.version, segment_id))
        self._prune_unmatched(conn, segment_id, run_id)

    @staticmethod
    def _prune(version: int, segment_id: str) -> sa.Delete:
        """Version `version` keeps the kept count - 1 before it: a stay that left before the
        oldest of them goes (one that left in it stays, for that version's changes)."""
        return members.delete().where(
            members.c.segment_id == segment_id,
            members.c.left_version <= version - kept_versions_count(),
        )

    @staticmethod
    def _set_status(conn: sa.Connection, segment_id: str, status: str, reason: str | None) -> None:
        conn.execute(
            segments.update()
            .where(segments.c.id == segment_id)
            .values(status=status, status_reason=reason, updated_at=_now())
        )


def _member_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("user_id", pa.string()), ("matched_by", pa.string())])


def _close_stays(conn: sa.Connection, segment_id: str, version: int, user_ids: pa.Array) -> None:
    """The open stays of these users end at `version`: an UPDATE per chunk of users, probes
    of the primary key as many as users leave (a join to the segment's range read all of
    its rows whenever the planner's statistics were older than the last publish)."""
    for chunk in chunks(user_ids.to_pylist()):
        conn.execute(
            members.update()
            .where(current_members(segment_id), members.c.user_id.in_(chunk))
            .values(left_version=version)
        )
