"""Stale alerts: per segment, the last update date of the stale episode already alerted, so
that the hourly stale check alerts each episode once (a publish starts a new one).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "cs_stale_alerts",
        sa.Column("segment_id", sa.String(200), primary_key=True),
        sa.Column("last_update_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cs_stale_alerts")
