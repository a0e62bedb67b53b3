"""The segment store's member rows as tests read them: `cs_members` holds one row per stay
(entered in a version, left in a later one or still in), expanded here into versions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from include.store.tables import members, members_at, segments


def engine_of(database: Path | str) -> sa.Engine:
    """An engine on a SQLite file path or a database URL."""
    url = str(database)
    return sa.create_engine(url if "://" in url else f"sqlite:///{url}")


def version_members(database: Path | str, segment_id: str, version: int) -> set[str]:
    """The user ids of one version of the segment."""
    engine = engine_of(database)
    with engine.connect() as conn:
        query = sa.select(members.c.user_id).where(members_at(segment_id, version))
        found = set(conn.execute(query).scalars())
    engine.dispose()
    return found


def stored_versions(database: Path | str) -> dict[int, int]:
    """{version: members} of every version some stored row spans, over every segment (an
    open stay spans up to its segment's current version)."""
    engine = engine_of(database)
    with engine.connect() as conn:
        current = dict(conn.execute(sa.select(segments.c.id, segments.c.current_version)).all())
        rows = conn.execute(
            sa.select(members.c.segment_id, members.c.entered_version, members.c.left_version)
        ).all()
    engine.dispose()
    spans = Counter()
    for segment_id, entered, left in rows:
        spans.update(range(entered, left if left is not None else (current[segment_id] or 0) + 1))
    return dict(sorted(spans.items()))


def stored_rows(database: Path | str) -> int:
    """Member rows stored, every segment's."""
    engine = engine_of(database)
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(members)).scalar_one()
    engine.dispose()
    return count
