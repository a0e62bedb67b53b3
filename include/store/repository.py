"""Segment store operations: the status lifecycle, run records, the versioned publish and
the restore of an earlier version.

Lifecycle: a refresh marks the segment Calculating (its current membership keeps serving), then
ends Ready (published), Failed (error recorded) or Held (guardrail tripped). Failed and Held never
touch the current membership or its counts. Dry runs record a run but leave the segment alone;
so does a restore until it commits (then Ready), and a refused or failed one never.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.store.migrate import upgrade
from include.store.redaction import MAX_ERROR, redact_personal_data
from include.store.tables import members, runs, segments, unmatched

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
)
KEEP_VERSIONS = 3  # the current membership plus two before it, for added/removed and rollback
# Unmatched source users are personal data: kept for the last few refreshes only.
KEEP_UNMATCHED_RUNS = 3
# The segment's counts, set from the run that published its current version.
LISTED_COUNTS = ("connector_users", "netmera_users", "reachable")
# What a restore copies from the run that published the version it restores.
RESTORED_COUNTS = (*LISTED_COUNTS, "matched_source_users", "refused_rows", "reasons", "matched_by")
# Fills a new version's members, given the transaction and the version's number; returns their
# user ids when it has them at hand (None: read them back).
Fill = Callable[[sa.Connection, int], "pa.ChunkedArray | None"]


def _now() -> datetime:
    return datetime.now(UTC)


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


def _insert_batches(
    conn: sa.Connection, table: sa.Table, batches: Iterable[pa.RecordBatch], **keys: Any
) -> None:
    """Each Arrow batch into `table`, every row given `keys`: COPY on PostgreSQL (so publishing
    a million members costs little more than copying them in), one executemany elsewhere."""
    import pyarrow as pa

    from include.clients.database import copy_batch

    postgres = conn.dialect.name == "postgresql"
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
            conn.execute(table.insert(), [{**keys, **row} for row in batch.to_pylist()])


class PublishAborted(RuntimeError):
    """Raised inside the publish transaction to roll it back (dry runs, previews)."""


class RestoreRefused(ValueError):
    """Only a kept, published version other than the current one can be restored."""


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
        current = self._current(segment_id).scalar_subquery()
        query = (
            sa.select(members.c.user_id)
            .where(members.c.segment_id == segment_id, members.c.version == current)
            .order_by(members.c.user_id)
        )
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
                yield row.user_id

    def unmatched_run(self, segment_id: str) -> str | None:
        """The run whose unmatched source users explain the current version: the refresh
        that published it (for a restored version, the refresh that first published it);
        None if nothing is published."""
        with self.engine.connect() as conn:
            version = self._current_version(conn, segment_id)
            return self._source_run(conn, segment_id, version) if version else None

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
    ) -> Publication:
        """Make the new membership current in ONE transaction; report added/removed.

        A dry run does the same work and rolls it back, so it shows exactly what would change.
        """
        done = self._published(segment_id, run_id)
        if done:
            return done
        if dry_run:
            outcome = self._rolled_back(segment_id, self._inserted(segment_id, member_batches))
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
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as conn:
                fill = self._inserted(segment_id, member_batches)
                outcome = self._add_version(conn, segment_id, fill)
                self._make_current(conn, segment_id, run_id, outcome, listed)
            return outcome
        # The publish's transaction ends (commits) before the one beside it.
        with self._pruning_beside(segment_id) as beside, self.engine.begin() as conn:
            fill = self._inserted(segment_id, member_batches)
            outcome = self._add_version(conn, segment_id, fill, beside)
            self._make_current(conn, segment_id, run_id, outcome, listed, pruned=True)
        return outcome

    @contextlib.contextmanager
    def _pruning_beside(self, segment_id: str) -> Iterator[tuple[int | None, Future]]:
        """PostgreSQL: while the publish copies the new version in, a second connection reads
        the current version's ids (for the diff) and deletes the versions the publish will
        prune, and commits that only once the publish has committed. Both are off the COPY's
        critical path: together they were half its time. A crash between the two commits
        leaves one extra version, which the next publish prunes."""
        conn = self.engine.connect()
        try:
            side = conn.begin()
            current = conn.execute(self._current(segment_id)).scalar_one()

            def read_and_prune() -> pa.ChunkedArray:
                ids = _version_ids(conn, segment_id, current)
                conn.execute(self._prune((current or 0) + 1, segment_id))
                return ids

            with ThreadPoolExecutor(max_workers=1) as pool:
                old_ids = pool.submit(read_and_prune)
                try:
                    yield current, old_ids
                except BaseException:
                    futures_wait([old_ids])
                    side.rollback()
                    raise
                try:
                    old_ids.result()
                    side.commit()
                except Exception as exc:  # the publish has committed: the next one prunes
                    log.warning("segment %s: pruning old versions failed: %s", segment_id, exc)
                    side.rollback()
        finally:
            conn.close()

    def preview(self, segment_id: str, member_batches: Iterable[pa.RecordBatch]) -> tuple[int, int]:
        """(added, removed): what publishing these members would change against the current
        version. The publish's own work, rolled back (what Approve shows)."""
        outcome = self._rolled_back(segment_id, self._inserted(segment_id, member_batches))
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
            outcome = self._add_version(conn, segment_id, self._copied(segment_id, version))
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
                runs.c.version > current - KEEP_VERSIONS,
            )
            .order_by(runs.c.version.desc())
        )
        return [dict(r._mapping) for r in conn.execute(query).all()]

    def _prune_unmatched(self, conn: sa.Connection, segment_id: str, run_id: str) -> None:
        """Keep the unmatched users of `run_id`, of the segment's newest KEEP_UNMATCHED_RUNS
        refreshes (it included) and of the refreshes the kept versions came from (a restore may
        make one current again, and the page's are the current version's); delete the rest."""
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
            for kept in self._kept_versions(conn, segment_id)
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

    def _rolled_back(self, segment_id: str, fill: Fill) -> Publication:
        """What adding that version would change; nothing of it is kept."""
        try:
            with self.engine.begin() as conn:
                outcome = self._add_version(conn, segment_id, fill)
                raise PublishAborted
        except PublishAborted:
            return outcome

    def _add_version(
        self,
        conn: sa.Connection,
        segment_id: str,
        fill: Fill,
        read_beside: tuple[int | None, Future] | None = None,
    ) -> Publication:
        """Version current+1, filled, and how it differs from the current one.
        `read_beside`: the current version and its ids, being read on another connection."""
        current = conn.execute(self._current(segment_id)).scalar_one()  # the segment must exist
        version = (current or 0) + 1
        new_ids = fill(conn, version)
        if new_ids is None:
            new_ids = _version_ids(conn, segment_id, version)
        if read_beside is not None and read_beside[0] == current:
            old_ids = read_beside[1].result()
        else:
            old_ids = _version_ids(conn, segment_id, current)
        added, removed = _diff(new_ids, old_ids)
        return Publication(version, current, added, removed)

    @staticmethod
    def _inserted(segment_id: str, member_batches: Iterable[pa.RecordBatch]) -> Fill:
        def fill(conn: sa.Connection, version: int) -> pa.ChunkedArray:
            import pyarrow as pa

            ids = []

            def noting_ids() -> Iterator[pa.RecordBatch]:
                for batch in member_batches:
                    ids.append(batch["user_id"].cast(pa.string()))
                    yield batch

            _insert_batches(conn, members, noting_ids(), segment_id=segment_id, version=version)
            return pa.chunked_array(ids, pa.string())

        return fill

    @staticmethod
    def _copied(segment_id: str, source_version: int) -> Fill:
        def fill(conn: sa.Connection, version: int) -> None:  # its ids are read back
            conn.execute(
                members.insert().from_select(
                    ["segment_id", "version", "user_id", "matched_by"],
                    sa.select(
                        members.c.segment_id,
                        sa.literal(version, sa.Integer),
                        members.c.user_id,
                        members.c.matched_by,
                    ).where(
                        members.c.segment_id == segment_id, members.c.version == source_version
                    ),
                )
            )

        return fill

    def _make_current(
        self,
        conn: sa.Connection,
        segment_id: str,
        run_id: str,
        outcome: Publication,
        listed: dict[str, Any],
        pruned: bool = False,
        **run_values: Any,
    ) -> None:
        """The new version current, with the segment's counts `listed`; the run published;
        versions older than KEEP_VERSIONS pruned (unless `pruned` beside it already)."""
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
        if not pruned:
            conn.execute(self._prune(outcome.version, segment_id))
        self._prune_unmatched(conn, segment_id, run_id)

    @staticmethod
    def _prune(version: int, segment_id: str) -> sa.Delete:
        """Version `version` keeps KEEP_VERSIONS - 1 before it."""
        return members.delete().where(
            members.c.segment_id == segment_id, members.c.version <= version - KEEP_VERSIONS
        )

    @staticmethod
    def _set_status(conn: sa.Connection, segment_id: str, status: str, reason: str | None) -> None:
        conn.execute(
            segments.update()
            .where(segments.c.id == segment_id)
            .values(status=status, status_reason=reason, updated_at=_now())
        )


def _version_ids(conn: sa.Connection, segment_id: str, version: int | None) -> pa.ChunkedArray:
    """The user ids of one version of the segment, by its primary key (no other segment's rows
    are read): COPY out on PostgreSQL, a SELECT elsewhere."""
    import pyarrow as pa

    if version is None:
        return pa.chunked_array([], pa.string())
    query = sa.select(members.c.user_id).where(
        members.c.segment_id == segment_id, members.c.version == version
    )
    if conn.dialect.name == "postgresql":
        from include.clients.database import copy_out

        return copy_out(conn, query)["user_id"]
    return pa.chunked_array([pa.array(conn.execute(query).scalars().all(), pa.string())])


def _diff(new: pa.ChunkedArray, old: pa.ChunkedArray) -> tuple[int, int]:
    """(added, removed) between two versions' user ids, each unique within its version.

    In Arrow on the worker rather than a join in the database: PostgreSQL plans that join on
    a version written in this very transaction without statistics for it, and a NOT EXISTS
    then ran as a quadratic nested loop (minutes for 100,000 members)."""
    import pyarrow.compute as pc

    if not len(old):
        return len(new), 0
    kept = pc.sum(pc.is_in(new, value_set=old.combine_chunks())).as_py() or 0
    return len(new) - kept, len(old) - kept
