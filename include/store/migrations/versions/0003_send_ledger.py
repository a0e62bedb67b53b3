"""Send ledger: one row per (segment, version, message) send, one per batch of ≤1000 extIds.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "cs_sends",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("segment_id", sa.String(200), sa.ForeignKey("cs_segments.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("send_key", sa.String(300), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("platforms", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("notification_key", sa.BigInteger),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("not_addressable", sa.Integer, nullable=False),
        sa.Column("sent", sa.Integer, nullable=False, server_default="0"),
        sa.Column("uncertain", sa.Integer, nullable=False, server_default="0"),
        sa.Column("batches", sa.Integer, nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_cs_sends_segment", "cs_sends", ["segment_id", "created_at"])
    op.create_table(
        "cs_send_batches",
        sa.Column("send_id", sa.Integer, sa.ForeignKey("cs_sends.id"), nullable=False),
        sa.Column("batch_no", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("ext_ids", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("send_id", "batch_no"),
    )


def downgrade() -> None:
    op.drop_table("cs_send_batches")
    op.drop_table("cs_sends")
