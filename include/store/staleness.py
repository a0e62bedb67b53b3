"""Stale: a scheduled segment whose last successful refresh is older than one interval of its
schedule plus a grace, i.e. at least one scheduled refresh has not published on time.

The interval is the time between the schedule's two latest fire times (croniter, as Airflow's
cron timetables read it), so a nightly segment is Stale once its membership is more than a
day and the grace old. Manual segments (`schedule: null`), `@once` and `@continuous` are never
Stale, nor is a segment that has never published: its status (Failed, Held...) says why.

Also what the page says of freshness: when the next scheduled refresh is, since when a Stale
segment is overdue (the first scheduled refresh after its last publish), and the schedule in
words. Schedules fire in UTC (Airflow's default timezone, which the examples and compose keep).
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime, timedelta

GRACE_ENV = "CONNECTOR_SEGMENTS_STALE_GRACE_MINUTES"
DEFAULT_GRACE = timedelta(hours=1)
_NO_INTERVAL = {"@once", "@continuous"}
# Airflow's cron presets (`airflow.utils.dates.cron_presets`), for the schedule in words.
PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}


def grace() -> timedelta:
    minutes = os.environ.get(GRACE_ENV)
    return timedelta(minutes=float(minutes)) if minutes else DEFAULT_GRACE


def is_stale(
    schedule: str | None, last_update: datetime | None, now: datetime, grace: timedelta
) -> bool:
    return Staleness(now, grace)(schedule, last_update)


class Staleness:
    """`is_stale` at one moment for many segments: each schedule's interval is computed once
    (croniter costs ~50 µs a call; 10,000 segments share a handful of schedules)."""

    def __init__(self, now: datetime, grace: timedelta) -> None:
        self.now, self.grace = now, grace
        self._intervals: dict[str, timedelta] = {}

    def __call__(self, schedule: str | None, last_update: datetime | None) -> bool:
        if not schedule or schedule in _NO_INTERVAL or last_update is None:
            return False
        if last_update.tzinfo is None:  # SQLite keeps no zone; the store writes UTC
            last_update = last_update.replace(tzinfo=UTC)
        return self.now - last_update > self._interval(schedule) + self.grace

    def next_refresh(self, schedule: str | None) -> datetime | None:
        """When the schedule fires next; None for manual, `@once` and `@continuous`."""
        if not schedule or schedule in _NO_INTERVAL:
            return None
        from croniter import croniter

        now = self.now.astimezone(UTC)
        return croniter(PRESETS.get(schedule, schedule), now).get_next(datetime)

    def overdue_since(self, schedule: str | None, last_update: datetime | None) -> datetime | None:
        """For a Stale segment: the first scheduled refresh after its last publish, the one
        that did not publish; None when it is not Stale."""
        if not self(schedule, last_update):
            return None
        from croniter import croniter

        # In UTC, where the schedule fires (PostgreSQL answers in its session's zone).
        if last_update.tzinfo is None:
            last_update = last_update.replace(tzinfo=UTC)
        last_update = last_update.astimezone(UTC)
        return croniter(PRESETS.get(schedule, schedule), last_update).get_next(datetime)

    def _interval(self, schedule: str) -> timedelta:
        if schedule not in self._intervals:
            from croniter import croniter

            fire_times = croniter(PRESETS.get(schedule, schedule), self.now)
            latest = fire_times.get_prev(datetime)
            self._intervals[schedule] = latest - fire_times.get_prev(datetime)
        return self._intervals[schedule]


@functools.lru_cache(maxsize=1024)  # a page lists a few schedules many times
def in_words(schedule: str | None) -> str:
    """The schedule as a marketer reads it ("At 03:30, UTC"); the cron text itself if it has no
    words."""
    if not schedule:
        return "Manual: refreshed only when someone presses Refresh"
    if schedule in _NO_INTERVAL:
        return {"@once": "Once", "@continuous": "Continuously"}[schedule]
    from cron_descriptor import Options, get_description

    options = Options()
    options.use_24hour_time_format = True
    try:
        return f"{get_description(PRESETS.get(schedule, schedule), options)}, UTC"
    except Exception:  # an expression Airflow takes but the describer does not
        return f"{schedule} (cron, UTC)"
