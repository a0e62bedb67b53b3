"""Staged webhook state in the segment store: pages stored idempotently, exports completed,
and the current audience derived from them.

State model (tables `cs_webhook_*`, migration 0002):
- a *session* is all pages sharing (segment, action, mixpanel_session_id); its autoincrement
  id is the order in which sessions first arrived, and it is complete once pages 1..total_pages
  are all stored;
- the current audience is the latest complete `members` export, then every complete
  `add_members` / `remove_members` session that arrived after it, applied in arrival order:
  for each distinct id, the last event wins;
- when a newer export completes, older sessions are superseded: their pages and members are
  deleted and a small tombstone row stays, so a late retry of a superseded page is
  acknowledged and ignored instead of resurrecting a stale diff;
- once published, `compact` folds the complete diffs that follow the base export into it (the
  base's members become the current audience; the diffs become tombstones), so the state
  stays one audience plus what arrived since, however many rounds Mixpanel sends;
- tombstones are kept for the newest TOMBSTONES_KEPT sessions of a segment: Mixpanel retries
  a page within about a minute, and syncs every ~30 minutes.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from include.store import migrate
from include.store.webhook_tables import webhook_members, webhook_pages, webhook_sessions
from include.webhooks.payload import CohortSyncCall

MEMBERS, ADD, REMOVE = "members", "add_members", "remove_members"
TOMBSTONES_KEPT = 64  # superseded sessions remembered per segment (about a day of syncs)
_LOCK_SPACE = 0x6373_7768  # "cswh": advisory locks on a segment's sessions (PostgreSQL)
_ATTEMPTS = 3  # a concurrent first page of the same session or page wins the unique key once
# SQLite cannot upgrade a read transaction to a write one while another writer commits (it
# fails at once instead of waiting), so this process writes pages to a SQLite database one at a
# time: one lock per database, shared by every WebhookState built on it (one is built per use).
_SQLITE_WRITES: dict[str, threading.Lock] = {}


class SessionConflict(ValueError):
    """A page disagrees with the earlier pages of its session (a different total_pages)."""


@dataclass(frozen=True)
class Receipt:
    """What storing one page did. `completed` is true only for the call that completed it."""

    outcome: Literal["stored", "duplicate", "superseded"]
    completed: bool
    pages_received: int
    total_pages: int


def _now() -> datetime:
    return datetime.now(UTC)


class WebhookState:
    def __init__(self, engine: sa.Engine) -> None:
        migrate.upgrade(engine)
        self.engine = engine
        self._sqlite_writes = (
            _SQLITE_WRITES.setdefault(engine.url.render_as_string(), threading.Lock())
            if engine.dialect.name == "sqlite"
            else None
        )

    # -- writes -------------------------------------------------------------------------------

    def receive(self, segment_id: str, call: CohortSyncCall) -> Receipt:
        """Store one page in one transaction; a repeated page changes nothing."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._serialised(), self.engine.begin() as conn:
                    return self._receive(conn, segment_id, call)
            except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
                # IntegrityError: another request stored the same session or page first, so
                # look again. OperationalError: SQLite busy with another process's write.
                retry = isinstance(exc, sa.exc.IntegrityError) or self._sqlite_writes is not None
                if attempt == _ATTEMPTS or not retry:
                    raise
        raise AssertionError("unreachable")

    def _serialised(self) -> threading.Lock | contextlib.nullcontext:
        return self._sqlite_writes or contextlib.nullcontext()

    def _receive(self, conn: sa.Connection, segment_id: str, call: CohortSyncCall) -> Receipt:
        s = webhook_sessions
        now = _now()
        session = conn.execute(
            sa.select(s)
            .where(
                s.c.segment_id == segment_id,
                s.c.action == call.action,
                s.c.session_id == call.session_id,
            )
            .with_for_update()  # serialises pages of one session on PostgreSQL
        ).first()
        if session is None:
            self._lock_sessions(conn, segment_id)  # a new session's id must follow compaction's
            session_ref = conn.execute(
                s.insert()
                .values(
                    segment_id=segment_id,
                    action=call.action,
                    session_id=call.session_id,
                    total_pages=call.total_pages,
                    pages_received=0,
                    cohort_id=call.cohort_id,
                    first_received_at=now,
                )
                .returning(s.c.id)
            ).scalar_one()
        else:
            session_ref = session.id
            if session.superseded_at is not None:
                return Receipt("superseded", False, session.pages_received, session.total_pages)
            if session.total_pages != call.total_pages:
                raise SessionConflict(
                    f"page_info.total_pages is {call.total_pages} but earlier pages of this "
                    f"session said {session.total_pages}"
                )
            stored = conn.execute(
                sa.select(webhook_pages.c.page_count).where(
                    webhook_pages.c.session_ref == session_ref,
                    webhook_pages.c.page_count == call.page_count,
                )
            ).first()
            if stored:
                return Receipt("duplicate", False, session.pages_received, session.total_pages)

        conn.execute(
            webhook_pages.insert().values(
                session_ref=session_ref,
                segment_id=segment_id,
                action=call.action,
                session_id=call.session_id,
                page_count=call.page_count,
                member_count=len(call.parameters.members),
                received_at=now,
            )
        )
        rows = [
            {
                "session_ref": session_ref,
                "page_count": call.page_count,
                "position": position,
                "distinct_id": member.mixpanel_distinct_id,
                # A removed member needs no properties: keep no personal data we will not use.
                "properties": {} if call.action == REMOVE else member.properties,
            }
            for position, member in enumerate(call.parameters.members)
        ]
        if rows:
            conn.execute(webhook_members.insert(), rows)
        received = conn.execute(
            s.update()
            .where(s.c.id == session_ref)
            .values(pages_received=s.c.pages_received + 1)
            .returning(s.c.pages_received)
        ).scalar_one()
        completed = received == call.total_pages
        if completed:
            conn.execute(s.update().where(s.c.id == session_ref).values(completed_at=now))
            if call.action == MEMBERS:
                self._supersede_before(conn, segment_id, session_ref, now)
        return Receipt("stored", completed, received, call.total_pages)

    @classmethod
    def _supersede_before(
        cls, conn: sa.Connection, segment_id: str, export_ref: int, now: datetime
    ) -> None:
        """A complete export replaces every session that arrived before it."""
        s = webhook_sessions
        cls._supersede(conn, segment_id, s.c.id < export_ref, now)

    @staticmethod
    def _supersede(
        conn: sa.Connection, segment_id: str, which: sa.ColumnElement[bool], now: datetime
    ) -> None:
        """Those sessions become tombstones (no pages, no members); the oldest tombstones
        beyond TOMBSTONES_KEPT go."""
        s = webhook_sessions
        ended = (
            conn.execute(
                s.update()
                .where(s.c.segment_id == segment_id, which, s.c.superseded_at.is_(None))
                .values(superseded_at=now)
                .returning(s.c.id)
            )
            .scalars()
            .all()
        )
        if ended:
            conn.execute(webhook_members.delete().where(webhook_members.c.session_ref.in_(ended)))
            conn.execute(webhook_pages.delete().where(webhook_pages.c.session_ref.in_(ended)))
        kept = (
            sa.select(s.c.id)
            .where(s.c.segment_id == segment_id, s.c.superseded_at.is_not(None))
            .order_by(s.c.id.desc())
            .limit(TOMBSTONES_KEPT)
        )
        conn.execute(
            s.delete().where(
                s.c.segment_id == segment_id,
                s.c.superseded_at.is_not(None),
                s.c.id.not_in(kept),
            )
        )

    def compact(self, segment_id: str) -> int:
        """Fold the complete diffs that follow the base export into it; returns how many.

        The audience is the same before and after. Only the run of complete sessions right
        after the base is folded: an incomplete one (and all after it) waits, since it applies
        at its own place once complete. Serialised with the creation of new sessions
        (`_lock_sessions`), so no session can arrive, unseen, among those folded.
        """
        s, m = webhook_sessions, webhook_members
        with self._serialised(), self.engine.begin() as conn:
            self._lock_sessions(conn, segment_id)
            base = conn.execute(self._base_export(segment_id)).scalar()
            if base is None:
                return 0
            later = conn.execute(
                sa.select(s.c.id, s.c.completed_at)
                .where(s.c.segment_id == segment_id, s.c.id > base, s.c.superseded_at.is_(None))
                .order_by(s.c.id)
            ).all()
            folded = []
            for row in later:
                if row.completed_at is None:
                    break
                folded.append(row.id)
            if not folded:
                return 0
            # The audience of base + folded, as the base's members (page 0; their old rows go).
            current = self._current_members(segment_id, [base, *folded]).subquery("current")
            conn.execute(
                m.insert().from_select(
                    ["session_ref", "page_count", "position", "distinct_id", "properties"],
                    sa.select(
                        sa.literal(base, sa.Integer),
                        sa.literal(-1, sa.Integer),
                        sa.func.row_number().over(order_by=current.c.distinct_id),
                        current.c.distinct_id,
                        current.c.properties,
                    ),
                )
            )
            conn.execute(m.delete().where(m.c.session_ref == base, m.c.page_count != -1))
            conn.execute(m.update().where(m.c.session_ref == base).values(page_count=0))
            self._supersede(conn, segment_id, s.c.id.in_(folded), _now())
        return len(folded)

    @staticmethod
    def _lock_sessions(conn: sa.Connection, segment_id: str) -> None:
        """Until this transaction ends, nobody else creates a session of the segment or
        compacts it. PostgreSQL: an advisory lock on the segment. SQLite: the database's write
        lock, taken at once by a write (SQLite has one writer at a time)."""
        if conn.dialect.name == "postgresql":
            key = zlib.crc32(segment_id.encode()) - (1 << 31)  # int4
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": _LOCK_SPACE, "key": key},
            )
        else:
            s = webhook_sessions
            conn.execute(s.update().where(s.c.id == -1).values(id=-1))

    # -- reads --------------------------------------------------------------------------------

    def has_complete_export(self, segment_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(self._base_export(segment_id)).scalar() is not None

    def audience(self, segment_id: str, batch_rows: int) -> Iterator[Sequence[sa.Row]]:
        """The current audience as (distinct_id, properties) rows, streamed in partitions.

        One statement (so one consistent snapshot), with a server-side cursor on PostgreSQL.
        """
        current = self._current_members(segment_id)
        query = current.order_by(current.selected_columns.distinct_id)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                query
            )
            yield from result.partitions()

    def sessions(self, segment_id: str) -> list[dict[str, Any]]:
        """Every staged session of the segment, oldest first (no members: no personal data)."""
        s = webhook_sessions
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s).where(s.c.segment_id == segment_id).order_by(s.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    @classmethod
    def _current_members(cls, segment_id: str, only: list[int] | None = None) -> sa.Select:
        """(distinct_id, properties) of the audience: the base export and the complete diffs
        after it, the last event per distinct id winning; `only`: of these sessions alone."""
        s, m = webhook_sessions, webhook_members
        if only is None:
            base = cls._base_export(segment_id).scalar_subquery()
            which = sa.and_(
                s.c.completed_at.is_not(None),
                s.c.superseded_at.is_(None),
                sa.or_(s.c.id == base, sa.and_(s.c.id > base, s.c.action != MEMBERS)),
            )
        else:
            which = s.c.id.in_(only)
        applicable = (
            sa.select(s.c.id, s.c.action)
            .where(s.c.segment_id == segment_id, which)
            .subquery("applicable")
        )
        last_event = sa.func.row_number().over(
            partition_by=m.c.distinct_id,
            order_by=(applicable.c.id.desc(), m.c.page_count.desc(), m.c.position.desc()),
        )
        ranked = (
            sa.select(m.c.distinct_id, m.c.properties, applicable.c.action, last_event.label("rn"))
            .join_from(m, applicable, m.c.session_ref == applicable.c.id)
            .subquery("ranked")
        )
        return sa.select(ranked.c.distinct_id, ranked.c.properties).where(
            ranked.c.rn == 1, ranked.c.action != REMOVE
        )

    @staticmethod
    def _base_export(segment_id: str) -> sa.Select:
        """The latest complete, unsuperseded `members` export (its session ref), or NULL."""
        s = webhook_sessions
        return sa.select(sa.func.max(s.c.id)).where(
            s.c.segment_id == segment_id,
            s.c.action == MEMBERS,
            s.c.completed_at.is_not(None),
            s.c.superseded_at.is_(None),
        )
