"""Staged Mixpanel cohort-sync calls: sessions, pages and their members.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "cs_webhook_sessions",
        # Autoincrement id = the order in which sessions first arrived; diffs apply in this order.
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("segment_id", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("total_pages", sa.Integer, nullable=False),
        sa.Column("pages_received", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cohort_id", sa.String(100)),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("superseded_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint(
            "segment_id", "action", "session_id", name="uq_cs_webhook_sessions_key"
        ),
    )
    op.create_table(
        "cs_webhook_pages",
        sa.Column(
            "session_ref",
            sa.Integer,
            sa.ForeignKey("cs_webhook_sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("segment_id", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("page_count", sa.Integer, nullable=False),
        sa.Column("member_count", sa.Integer, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_ref", "page_count"),
        sa.UniqueConstraint(
            "segment_id", "action", "session_id", "page_count", name="uq_cs_webhook_pages_key"
        ),
    )
    op.create_table(
        "cs_webhook_members",
        sa.Column(
            "session_ref",
            sa.Integer,
            sa.ForeignKey("cs_webhook_sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("page_count", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("distinct_id", sa.Text, nullable=False),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("session_ref", "page_count", "position"),
    )


def downgrade() -> None:
    op.drop_table("cs_webhook_members")
    op.drop_table("cs_webhook_pages")
    op.drop_table("cs_webhook_sessions")
