"""Table definitions for the staged webhook state, used by queries.

The schema itself is made by migration 0002 only (migrations are frozen history and must not
import these). One row per cohort-sync session (its id is the arrival order), one per page
received (the idempotency key), one per member of a page.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

webhook_sessions = sa.Table(
    "cs_webhook_sessions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("segment_id", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("session_id", sa.String(255), nullable=False),
    sa.Column("total_pages", sa.Integer, nullable=False),
    sa.Column("pages_received", sa.Integer, nullable=False),
    sa.Column("cohort_id", sa.String(100)),
    sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("superseded_at", sa.DateTime(timezone=True)),
)

webhook_pages = sa.Table(
    "cs_webhook_pages",
    metadata,
    sa.Column("session_ref", sa.Integer, primary_key=True),
    sa.Column("segment_id", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("session_id", sa.String(255), nullable=False),
    sa.Column("page_count", sa.Integer, primary_key=True),
    sa.Column("member_count", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

webhook_members = sa.Table(
    "cs_webhook_members",
    metadata,
    sa.Column("session_ref", sa.Integer, primary_key=True),
    sa.Column("page_count", sa.Integer, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("distinct_id", sa.Text, nullable=False),
    sa.Column("properties", sa.JSON, nullable=False),
)
