"""Vendor budgets shared by every segment and worker process, in the segment store's database.

Per (vendor, project): one row holds the next paced start (`cs_vendor_pacing`) and
`concurrency` rows are the slots (`cs_vendor_slots`). Each step is one short single-statement
transaction, atomic on PostgreSQL (row lock) and SQLite (write lock) alike:
- take a slot: mark the first slot whose lease has run out as ours, leased for
  `lease_seconds` (a holder that dies frees its slot by itself when the lease ends);
- pace: move the project's `next_start` on by one interval and sleep until the old one;
- give the slot back once the answer is read: for HANDOFF seconds only another client may
  take it (a client that gives a slot back and asks again at once would otherwise keep it,
  its waiting peers polling in vain: one segment starved until the others had finished).
Times are the database's clock, so workers on different hosts agree. Why the store's database
and not Redis: docs/decisions.md ("Vendor budgets").
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

from include.clients.budget import Lease, Limits, NoLease, ProjectBudget
from include.store import migrate
from include.store.tables import vendor_pacing, vendor_slots

log = logging.getLogger(__name__)

SLOT_POLL = 0.2  # seconds between tries for a slot while the project's are all taken
HANDOFF = 2 * SLOT_POLL  # a slot just given back waits this long for another client's poll
_RELEASED = "~"  # holder of a slot given back: ~<the client that gave it> (fits String(36))
_SAY_AFTER = 10.0  # a wait longer than this is logged, so a slow extract explains itself


class SharedBudgets:
    """`Budgets` (include/clients/budget.py) kept in the store's database."""

    def __init__(self, engine: sa.Engine) -> None:
        migrate.upgrade(engine)
        self.engine = engine
        if engine.dialect.name == "postgresql":
            self.now = sa.cast(sa.extract("epoch", sa.func.statement_timestamp()), sa.Float)
            self.greatest = sa.func.greatest
        else:  # SQLite: julianday is a double with millisecond precision
            self.now = (sa.func.julianday("now") - 2440587.5) * 86400.0
            self.greatest = sa.func.max  # with two arguments, SQLite's max is a scalar

    def project(
        self, vendor: str, project: str, limits: Limits, lease_seconds: float
    ) -> ProjectBudget:
        key = {"vendor": vendor, "project": project}
        with self.engine.begin() as conn:
            _insert_missing(conn, vendor_pacing, [{**key, "next_start": 0.0}])
            slots = [{**key, "slot": n, "lease_until": 0.0} for n in range(limits.concurrency or 0)]
            _insert_missing(conn, vendor_slots, slots)
        return _SharedBudget(self, vendor, project, limits, lease_seconds)


def _insert_missing(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(table).on_conflict_do_nothing(), rows)


class _SharedBudget:
    def __init__(
        self, budgets: SharedBudgets, vendor: str, project: str, limits: Limits, lease: float
    ) -> None:
        self.budgets, self.limits, self.lease = budgets, limits, lease
        self.vendor, self.project = vendor, project
        self.client = uuid.uuid4().hex  # this budget object: one client, in one process
        self._pacing = (vendor_pacing.c.vendor == vendor) & (vendor_pacing.c.project == project)
        self._slots = (vendor_slots.c.vendor == vendor) & (vendor_slots.c.project == project)

    @contextlib.contextmanager
    def slot(self) -> Iterator[Lease]:
        lease = self._take_slot() if self.limits.concurrency else NoLease()
        try:
            self._pace()
            yield lease
        finally:
            lease.give_back()

    def _take_slot(self) -> _SlotLease:
        holder = str(uuid.uuid4())
        began = time.monotonic()
        said = False
        while True:
            number = self._try_slot(holder)
            if number is not None:
                return _SlotLease(self, number, holder)
            waited = time.monotonic() - began
            if waited > _SAY_AFTER and not said:
                log.info(
                    "%s %s: its %d requests at once are all in flight (shared by every "
                    "segment on it); waiting for one to finish",
                    self.vendor,
                    self.project,
                    self.limits.concurrency,
                )
                said = True
            time.sleep(SLOT_POLL * random.uniform(0.5, 1.5))

    def _try_slot(self, holder: str) -> int | None:
        now = self.budgets.now
        free = vendor_slots.alias("free")
        first_free = (
            sa.select(free.c.slot)
            .where(
                free.c.vendor == self.vendor,
                free.c.project == self.project,
                free.c.slot < self.limits.concurrency,
                self._free(free, now),
            )
            .order_by(free.c.slot)
            .limit(1)
            .scalar_subquery()
        )
        # The lease is checked again on the row itself: of two takers of one free slot, the
        # one that waited for the other's row lock then finds it taken and tries again.
        take = (
            sa.update(vendor_slots)
            .where(self._slots, vendor_slots.c.slot == first_free, self._free(vendor_slots, now))
            .values(holder=holder, lease_until=now + self.lease)
            .returning(vendor_slots.c.slot)
        )
        with self.budgets.engine.begin() as conn:
            return conn.execute(take).scalar()

    def _free(self, slots: sa.Table | sa.Alias, now: sa.ColumnElement) -> sa.ColumnElement[bool]:
        """A slot this client may take: its lease over, or given back by another client."""
        handed_off = slots.c.holder.startswith(_RELEASED) & (
            slots.c.holder != f"{_RELEASED}{self.client}"
        )
        return (slots.c.lease_until < now) | handed_off

    def _pace(self) -> None:
        interval = self.limits.interval
        if not interval:
            return
        now = self.budgets.now
        reserve = (
            sa.update(vendor_pacing)
            .where(self._pacing)
            .values(next_start=self.budgets.greatest(vendor_pacing.c.next_start, now) + interval)
            .returning(vendor_pacing.c.next_start, now)
        )
        with self.budgets.engine.begin() as conn:
            next_start, at = conn.execute(reserve).one()
        wait = next_start - interval - at
        if wait > _SAY_AFTER:
            log.info(
                "%s %s: next request in %.0f s (%g an hour, shared by every segment on it)",
                self.vendor,
                self.project,
                wait,
                self.limits.per_hour,
            )
        if wait > 0:
            time.sleep(wait)


class _SlotLease:
    def __init__(self, budget: _SharedBudget, number: int, holder: str) -> None:
        self.budget, self.number, self.holder = budget, number, holder
        self._renewed = time.monotonic()
        self._mine = (
            budget._slots & (vendor_slots.c.slot == number) & (vendor_slots.c.holder == holder)
        )

    def renew(self) -> None:
        """Cheap to call per chunk of a download: writes once a third of the lease has gone."""
        if time.monotonic() - self._renewed < self.budget.lease / 3:
            return
        self._renewed = time.monotonic()
        lease_until = self.budget.budgets.now + self.budget.lease
        self._update(lease_until=lease_until)

    def give_back(self) -> None:
        budget = self.budget
        released = f"{_RELEASED}{budget.client}"
        self._update(holder=released, lease_until=budget.budgets.now + HANDOFF)

    def _update(self, **values) -> None:
        with self.budget.budgets.engine.begin() as conn:
            conn.execute(sa.update(vendor_slots).where(self._mine).values(**values))
