"""Stale: a scheduled segment whose last successful refresh is older than one interval of its
schedule plus a grace, i.e. at least one scheduled refresh has not published on time.

The interval is the time between the schedule's two latest fire times (croniter, as Airflow's
cron timetables read it), so a nightly segment is Stale once its membership is more than a
day and the grace old. Manual segments (`schedule: null`), `@once` and `@continuous` are never
Stale, nor is a segment that has never published: its status (Failed, Held...) says why.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

GRACE_ENV = "CONNECTOR_SEGMENTS_STALE_GRACE_MINUTES"
DEFAULT_GRACE = timedelta(hours=1)
_NO_INTERVAL = {"@once", "@continuous"}


def grace() -> timedelta:
    minutes = os.environ.get(GRACE_ENV)
    return timedelta(minutes=float(minutes)) if minutes else DEFAULT_GRACE


def is_stale(
    schedule: str | None, last_update: datetime | None, now: datetime, grace: timedelta
) -> bool:
    if not schedule or schedule in _NO_INTERVAL or last_update is None:
        return False
    from croniter import croniter

    if last_update.tzinfo is None:  # SQLite keeps no zone; the store writes UTC
        last_update = last_update.replace(tzinfo=UTC)
    fire_times = croniter(schedule, now)
    latest = fire_times.get_prev(datetime)
    interval = latest - fire_times.get_prev(datetime)
    return now - last_update > interval + grace
