"""The send ledger: at most one message per user for one (segment, version, message) key.

The ledger row and all its batches are written in one transaction before the first API call
(and before the Netmera client is built: a send that cannot start is still listed). Each batch
is marked `in_flight` before its request and `sent` after Netmera's answer, in the same
transaction that adds to the segment's Message Sent. A batch found `in_flight` on resume (the
worker died mid-request) becomes `uncertain` and is never sent again: at most once beats exactly
once when the two conflict.

Send statuses: sending → sent | partial (some batches uncertain) | failed (Netmera refused, or
the send could not go on: no usable Connection, Netmera unreachable). A failed send is resumed
by the next trigger of the same key (`recover`), from its first batch not sent. A trigger that
has no message to send at all gets a failed entry of its own (`record_failure`), keyed by the
run (`<segment>/v<version>/failed/<run hash>`, never a message's key), so it is listed with its
reason and blocks nothing. Errors are stored redacted, as run errors are.

Counts (recipients, sent, uncertain, holdout, not_addressable) are of members (Netmera user
ids), each batch knowing the members behind its extIds; the held-out members' user ids are
written with the batches (`cs_send_holdout`), so a resumed send never draws them again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from include.store import migrate
from include.store.redaction import MAX_ERROR, redact_personal_data
from include.store.tables import segments, send_batches, send_holdout, sends

HOLDOUT_ROWS = 10_000  # held-out user ids a statement
PENDING, IN_FLIGHT, SENT, UNCERTAIN = "pending", "in_flight", "sent", "uncertain"
SENDING, DONE, PARTIAL, FAILED = "sending", "sent", "partial", "failed"  # see the docstring


def _now() -> datetime:
    return datetime.now(UTC)


def _redacted(error: str) -> str:
    """As a run's error is stored: drivers and libraries quote the values they choke on."""
    return redact_personal_data(error)[:MAX_ERROR]


class SendLedger:
    def __init__(self, engine: sa.Engine) -> None:
        migrate.upgrade(engine)
        self.engine = engine

    def find(self, send_key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sends).where(sends.c.send_key == send_key)).first()
        return dict(row._mapping) if row else None

    def for_segment(self, segment_id: str, limit: int = 20) -> list[dict[str, Any]]:
        query = (
            sa.select(sends)
            .where(sends.c.segment_id == segment_id)
            .order_by(sends.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def last_sent_version(self, segment_id: str, fingerprint: str) -> int | None:
        """The newest version the message (by its fingerprint, whatever its send_key) was sent
        to: a send that finished, or that messaged (or may have messaged) anyone before it
        failed. None if it never was."""
        query = sa.select(sa.func.max(sends.c.version)).where(
            sends.c.segment_id == segment_id,
            sends.c.fingerprint == fingerprint,
            sa.or_(sends.c.status.in_((DONE, PARTIAL)), sends.c.sent + sends.c.uncertain > 0),
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def create(
        self,
        *,
        segment_id: str,
        version: int,
        send_key: str,
        fingerprint: str,
        message: dict[str, Any],
        batches: Iterable[tuple[list[str], int]],
        not_addressable: int,
        holdout: Iterable[str],
        holdout_shared: int,
        holdout_percent: float,
        sent_by: str | None,
        run_id: str,
        audience: str = "all",
        since_version: int | None = None,
    ) -> int:
        """The send's entry, its batches ((extIds, the members behind them), in order) and its
        held-out members' user ids, in one transaction; counts are the members'."""
        now = _now()
        with self.engine.begin() as conn:
            send_id = conn.execute(
                sends.insert().values(
                    segment_id=segment_id,
                    version=version,
                    send_key=send_key,
                    fingerprint=fingerprint,
                    title=message["title"],
                    text=message["text"],
                    platforms=message["platforms"],
                    status=SENDING,
                    recipients=0,
                    not_addressable=not_addressable,
                    sent=0,
                    uncertain=0,
                    holdout=0,
                    holdout_shared=holdout_shared,
                    holdout_percent=holdout_percent,
                    batches=0,
                    airflow_run_id=run_id,
                    sent_by=sent_by,
                    audience=audience,
                    since_version=since_version,
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            recipients = count = 0
            for number, (ext_ids, members) in enumerate(batches):
                conn.execute(
                    send_batches.insert().values(
                        send_id=send_id,
                        batch_no=number,
                        status=PENDING,
                        size=len(ext_ids),
                        members=members,
                        ext_ids=ext_ids,
                        updated_at=now,
                    )
                )
                recipients += members
                count += 1
            held, user_ids = 0, iter(holdout)
            while chunk := list(itertools.islice(user_ids, HOLDOUT_ROWS)):
                conn.execute(
                    send_holdout.insert(), [{"send_id": send_id, "user_id": u} for u in chunk]
                )
                held += len(chunk)
            conn.execute(
                sends.update()
                .where(sends.c.id == send_id)
                .values(recipients=recipients, batches=count, holdout=held)
            )
        return send_id

    def holdout_ids(self, send_id: int) -> Iterator[str]:
        """The send's held-out members' user ids, sorted, streamed."""
        query = (
            sa.select(send_holdout.c.user_id)
            .where(send_holdout.c.send_id == send_id)
            .order_by(send_holdout.c.user_id)
        )
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
                yield row.user_id

    def record_failure(
        self,
        *,
        segment_id: str,
        version: int,
        send_key: str,
        message: dict[str, Any],
        error: str,
        run_id: str,
        sent_by: str | None = None,
    ) -> int:
        """A send that failed before it had a ledger entry of its own: failed, nothing planned
        or sent, with the (redacted) error. Again for the same `send_key` updates the error."""
        now = _now()
        values = {"status": FAILED, "error": _redacted(error), "updated_at": now}
        with self.engine.begin() as conn:
            known = conn.execute(
                sa.select(sends.c.id).where(sends.c.send_key == send_key)
            ).scalar_one_or_none()
            if known is not None:
                conn.execute(sends.update().where(sends.c.id == known).values(**values))
                return known
            return conn.execute(
                sends.insert().values(
                    segment_id=segment_id,
                    version=version,
                    send_key=send_key,
                    fingerprint="",  # no message, no fingerprint: never a message's key
                    title=message["title"],
                    text=message["text"],
                    platforms=message["platforms"],
                    recipients=0,
                    not_addressable=0,
                    sent=0,
                    uncertain=0,
                    holdout=0,
                    holdout_shared=0,
                    holdout_percent=0,
                    batches=0,
                    airflow_run_id=run_id,
                    sent_by=sent_by,
                    created_at=now,
                    **values,
                )
            ).inserted_primary_key[0]

    def set_notification_key(self, send_id: int, key: int) -> None:
        self._update(send_id, notification_key=key)

    def recover(self, send_id: int) -> int:
        """Resume a send: batches caught mid-request by a dead worker become uncertain (returns
        how many), and a failed send is sending again."""
        with self.engine.begin() as conn:
            conn.execute(
                sends.update()
                .where(sends.c.id == send_id, sends.c.status == FAILED)
                .values(status=SENDING, error=None, updated_at=_now())
            )
            caught = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(send_batches.c.members), 0), sa.func.count()
                ).where(send_batches.c.send_id == send_id, send_batches.c.status == IN_FLIGHT)
            ).one()
            if caught[1]:
                conn.execute(
                    self._batch(send_id)
                    .where(send_batches.c.status == IN_FLIGHT)
                    .values(status=UNCERTAIN, updated_at=_now())
                )
                conn.execute(
                    sends.update()
                    .where(sends.c.id == send_id)
                    .values(uncertain=sends.c.uncertain + caught[0], updated_at=_now())
                )
        return caught[1]

    def pending(self, send_id: int) -> Iterator[tuple[int, list[str], int]]:
        """(batch number, extIds, the members behind them) of each batch still to send."""
        query = (
            sa.select(send_batches.c.batch_no, send_batches.c.ext_ids, send_batches.c.members)
            .where(send_batches.c.send_id == send_id, send_batches.c.status == PENDING)
            .order_by(send_batches.c.batch_no)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        yield from ((r.batch_no, list(r.ext_ids), r.members) for r in rows)

    def claim(self, send_id: int, batch_no: int) -> bool:
        """pending → in_flight, only if still pending: of two workers on one send, exactly one
        gets each batch."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                self._batch(send_id, batch_no)
                .where(send_batches.c.status == PENDING)
                .values(status=IN_FLIGHT, updated_at=_now())
            ).rowcount
        return claimed == 1

    def mark_pending(self, send_id: int, batch_no: int) -> None:
        """Netmera refused the batch outright: it was not sent and may be sent later."""
        with self.engine.begin() as conn:
            conn.execute(self._batch(send_id, batch_no).values(status=PENDING, updated_at=_now()))

    def mark_sent(self, send_id: int, batch_no: int, segment_id: str, members: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._batch(send_id, batch_no).values(status=SENT, updated_at=_now()))
            conn.execute(
                sends.update()
                .where(sends.c.id == send_id)
                .values(sent=sends.c.sent + members, updated_at=_now())
            )
            conn.execute(
                segments.update()
                .where(segments.c.id == segment_id)
                .values(message_sent=segments.c.message_sent + members)
            )

    def mark_uncertain(self, send_id: int, batch_no: int, members: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._batch(send_id, batch_no).values(status=UNCERTAIN, updated_at=_now()))
            conn.execute(
                sends.update()
                .where(sends.c.id == send_id)
                .values(uncertain=sends.c.uncertain + members, updated_at=_now())
            )

    def finish(self, send_id: int, status: str, error: str | None = None) -> None:
        self._update(send_id, status=status, error=None if error is None else _redacted(error))

    def _update(self, send_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sends.update().where(sends.c.id == send_id).values(updated_at=_now(), **values)
            )

    @staticmethod
    def _batch(send_id: int, batch_no: int | None = None) -> sa.Update:
        update = send_batches.update().where(send_batches.c.send_id == send_id)
        if batch_no is not None:
            update = update.where(send_batches.c.batch_no == batch_no)
        return update
