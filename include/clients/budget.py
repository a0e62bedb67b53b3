"""A vendor project's request budget: how many requests an hour and how many at once.

A client asks its `Budgets` for the budget of the project it calls (`budgets.project(...)`) and
spends one `slot()` per request: the slot waits until fewer than `concurrency` requests of that
project are in flight, then until the project's next paced start (one request every
3600/`per_hour` seconds), and is held until the answer has been read.

`LocalBudgets` keeps the budget in this process. The refresh uses the segment store's shared
budgets instead (`include.store.vendor_budgets`), so that every segment and every worker
process using one project spends one budget.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Limits:
    """A project's budget as the vendor states it; `None`: no limit of that kind."""

    per_hour: float | None
    concurrency: int | None

    @classmethod
    def from_extra(
        cls,
        conn_id: str,
        extra: dict,
        per_hour_key: str,
        per_hour: float | None,
        concurrency: int | None,
    ) -> Limits:
        """From a Connection's extras: `per_hour_key` and `max_concurrent`, else the defaults;
        0 or null: no limit of that kind."""

        def number(key: str, default: float | None, kind: type) -> float | None:
            value = extra.get(key, default)
            try:
                number = kind(value) if value else None
            except (TypeError, ValueError):
                number = -1
            if number is not None and not number > 0:  # also NaN
                raise ValueError(
                    f"connection {conn_id!r}: extra {key!r} must be a positive number (or 0 "
                    f"for no limit), got {value!r}"
                )
            return number

        return cls(
            number(per_hour_key, per_hour, float), number("max_concurrent", concurrency, int)
        )

    @property
    def interval(self) -> float:
        """Seconds between request starts."""
        return 3600.0 / self.per_hour if self.per_hour else 0.0


class Lease(Protocol):
    def renew(self) -> None:
        """Still in flight (a long download): keep the slot from expiring."""


class ProjectBudget(Protocol):
    def slot(self) -> contextlib.AbstractContextManager[Lease]:
        """Wait for a free slot and the next paced start; hold the slot inside the block."""


class Budgets(Protocol):
    def project(
        self, vendor: str, project: str, limits: Limits, lease_seconds: float
    ) -> ProjectBudget:
        """The budget of `vendor`'s `project`; `lease_seconds` bounds how long a slot whose
        holder died stays taken."""


class NoLease:
    """A slot with nothing to renew or give back (no concurrency limit, or a local one)."""

    def renew(self) -> None:
        pass

    def give_back(self) -> None:
        pass


class _LocalBudget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._next = 0.0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(limits.concurrency) if limits.concurrency else None

    @contextlib.contextmanager
    def slot(self) -> Iterator[Lease]:
        with self._slots or contextlib.nullcontext():
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next)
                self._next = start + self.limits.interval
            if start > now:
                time.sleep(start - now)
            yield NoLease()


class LocalBudgets:
    """Budgets held in this process: shared by its clients, not by other processes."""

    def __init__(self) -> None:
        self._budgets: dict[tuple[str, str, Limits], _LocalBudget] = {}
        self._lock = threading.Lock()

    def project(
        self, vendor: str, project: str, limits: Limits, lease_seconds: float
    ) -> ProjectBudget:
        with self._lock:
            key = (vendor, project, limits)
            if key not in self._budgets:
                self._budgets[key] = _LocalBudget(limits)
            return self._budgets[key]


PROCESS_BUDGETS = LocalBudgets()  # for clients given no shared budgets (the CLI, unit tests)
