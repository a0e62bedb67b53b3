"""Restore and unmatched source users: the version a run restored, and the last runs'
unmatched source users (user key and reason).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("cs_runs", sa.Column("restored_from", sa.Integer))
    op.create_table(
        "cs_unmatched",
        sa.Column("segment_id", sa.String(200), nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("user_key", sa.Text, nullable=False),
        sa.Column("reason", sa.String(30), nullable=False),
    )
    op.create_index("ix_cs_unmatched_run", "cs_unmatched", ["segment_id", "airflow_run_id"])


def downgrade() -> None:
    op.drop_table("cs_unmatched")
    with op.batch_alter_table("cs_runs") as batch:  # SQLite drops a column by a table copy
        batch.drop_column("restored_from")
