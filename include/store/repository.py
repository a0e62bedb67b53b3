"""Segment store operations: the status lifecycle, run records and the versioned publish.

Lifecycle: a refresh marks the segment Calculating (its current membership keeps serving), then
ends Ready (published), Failed (error recorded) or Held (guardrail tripped). Failed and Held never
touch the current membership or its counts. Dry runs record a run but leave the segment alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.store.migrate import upgrade
from include.store.redaction import MAX_ERROR, redact_personal_data
from include.store.tables import members, runs, segments

if TYPE_CHECKING:
    from include.config.segments import SegmentConfig
    from include.matching.result import MatchResult

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
)
KEEP_VERSIONS = 3  # the current membership plus two before it, for added/removed and rollback
_INSERT_BATCH = 10_000


def _now() -> datetime:
    return datetime.now(UTC)


class PublishAborted(RuntimeError):
    """Raised inside the publish transaction to roll it back (dry runs)."""


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
        current = (
            sa.select(segments.c.current_version)
            .where(segments.c.id == segment_id)
            .scalar_subquery()
        )
        query = (
            sa.select(members.c.user_id)
            .where(members.c.segment_id == segment_id, members.c.version == current)
            .order_by(members.c.user_id)
        )
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
                yield row.user_id

    # -- lifecycle ---------------------------------------------------------------------------

    def start_run(
        self, config: SegmentConfig, run_id: str, *, dry_run: bool, approve: bool
    ) -> None:
        """Open (or, on a task retry, reopen) the run record; mark the segment Calculating."""
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
            if not dry_run:
                self._set_status(conn, config.id, CALCULATING, None)
            # A cleared or retried run starts over: nothing of its earlier attempt stays.
            values = {
                "dry_run": dry_run,
                "approve": approve,
                "status": "calculating",
                "started_at": now,
                **dict.fromkeys(RUN_RESULTS),
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

    def fail_run(self, segment_id: str, run_id: str, step: str, error: str) -> str:
        """Failed: the run records the error, redacted of personal data (and returns it as
        recorded); membership and counts stay as they were."""
        error = redact_personal_data(error)[:MAX_ERROR]
        with self.engine.begin() as conn:
            dry_run = self._is_dry_run(conn, segment_id, run_id)
            conn.execute(
                self._run_update(segment_id, run_id).values(
                    status="failed", failed_step=step, error=error, finished_at=_now()
                )
            )
            if not dry_run:
                self._set_status(conn, segment_id, FAILED, f"{step}: {error}")
        return error

    def abandon_run(self, segment_id: str, run_id: str, why: str) -> None:
        """A run that ended without its steps reporting (killed worker, state set from the UI):
        Failed, but only if its record still says calculating."""
        with self.engine.begin() as conn:
            run = conn.execute(
                sa.select(runs.c.status, runs.c.dry_run).where(
                    runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id
                )
            ).first()
            if run is None or run.status != "calculating":
                return
            conn.execute(
                self._run_update(segment_id, run_id).values(
                    status="failed", failed_step="run", error=why, finished_at=_now()
                )
            )
            if not run.dry_run:
                self._set_status(conn, segment_id, FAILED, f"run: {why}")

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
        member_batches: Iterable[list[dict[str, str]]],
        *,
        counts: MatchResult,
        dry_run: bool,
    ) -> Publication:
        """Make the new membership current in ONE transaction; report added/removed.

        A dry run does the same work and rolls it back, so it shows exactly what would change.
        """
        done = self.run(segment_id, run_id)
        if done and done["status"] == "published":
            # A retry after the commit landed (worker died before reporting success).
            return Publication(*(done[k] for k in ("version", "base_version", "added", "removed")))
        outcome = Publication(version=0, base_version=None, added=0, removed=0)
        try:
            with self.engine.begin() as conn:
                current = conn.execute(
                    sa.select(segments.c.current_version).where(segments.c.id == segment_id)
                ).scalar_one()
                version = (current or 0) + 1
                for batch in member_batches:
                    rows = [{"segment_id": segment_id, "version": version, **m} for m in batch]
                    if rows:
                        conn.execute(members.insert(), rows)
                added, removed = self._diff(conn, segment_id, version, current)
                outcome = Publication(version, current, added, removed)
                if dry_run:
                    raise PublishAborted
                now = _now()
                conn.execute(
                    segments.update()
                    .where(segments.c.id == segment_id)
                    .values(
                        current_version=version,
                        connector_users=counts.connector_users,
                        netmera_users=counts.netmera_users,
                        reachable=counts.reachable,
                        status=READY,
                        status_reason=None,
                        last_update_date=now,
                        updated_at=now,
                    )
                )
                conn.execute(
                    self._run_update(segment_id, run_id).values(
                        status="published", finished_at=now, **asdict(outcome)
                    )
                )
                conn.execute(
                    members.delete().where(
                        members.c.segment_id == segment_id,
                        members.c.version <= version - KEEP_VERSIONS,
                    )
                )
        except PublishAborted:
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
    def _is_dry_run(conn: sa.Connection, segment_id: str, run_id: str) -> bool:
        return bool(
            conn.execute(
                sa.select(runs.c.dry_run).where(
                    runs.c.segment_id == segment_id, runs.c.airflow_run_id == run_id
                )
            ).scalar()
        )

    @staticmethod
    def _set_status(conn: sa.Connection, segment_id: str, status: str, reason: str | None) -> None:
        conn.execute(
            segments.update()
            .where(segments.c.id == segment_id)
            .values(status=status, status_reason=reason, updated_at=_now())
        )

    @staticmethod
    def _diff(conn: sa.Connection, segment_id: str, new: int, old: int | None) -> tuple[int, int]:
        def only_in(a: int | None, b: int | None) -> int:
            if a is None:
                return 0
            mine = members.alias("mine")
            theirs = members.alias("theirs")
            other = sa.exists().where(
                theirs.c.segment_id == segment_id,
                theirs.c.version == b,
                theirs.c.user_id == mine.c.user_id,
            )
            query = sa.select(sa.func.count()).where(
                mine.c.segment_id == segment_id, mine.c.version == a, ~other
            )
            return conn.execute(query).scalar_one()

        return only_in(new, old), only_in(old, new)
