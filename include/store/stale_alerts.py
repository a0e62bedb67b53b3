"""What the stale check has alerted, in the segment store: per segment, the last update date
of the stale episode it alerted. A segment stays in one episode until a publish moves its
last update date, so "alerted for this date" is "alerted for this episode", with nothing
to reset when it recovers. The schema is made by migration 0005.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from include.store.migrate import upgrade

stale_alerts = sa.Table(
    "cs_stale_alerts",
    sa.MetaData(),
    sa.Column("segment_id", sa.String(200), primary_key=True),
    sa.Column("last_update_date", sa.DateTime(timezone=True), nullable=False),
    sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=False),
)


def as_utc(value: datetime) -> datetime:
    """SQLite keeps no zone (the store writes UTC); PostgreSQL gives it back."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StaleAlerts:
    def __init__(self, engine: sa.Engine) -> None:
        upgrade(engine)
        self.engine = engine

    def alerted(self) -> dict[str, datetime]:
        """Each segment's last alerted episode, by its last update date (UTC)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(stale_alerts.c.segment_id, stale_alerts.c.last_update_date)
            )
            return {segment_id: as_utc(date) for segment_id, date in rows}

    def record(self, segment_id: str, last_update: datetime) -> None:
        """The stale episode of a segment last updated at `last_update` has been alerted."""
        values = {"last_update_date": as_utc(last_update), "alerted_at": datetime.now(UTC)}
        with self.engine.begin() as conn:
            updated = conn.execute(
                stale_alerts.update()
                .where(stale_alerts.c.segment_id == segment_id)
                .values(**values)
            )
            if not updated.rowcount:
                conn.execute(stale_alerts.insert().values(segment_id=segment_id, **values))
