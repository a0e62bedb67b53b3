"""Segments, runs and versioned members.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "cs_segments",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("source_type", sa.String(50), nullable=False),
        sa.Column("status", sa.String(20)),
        sa.Column("status_reason", sa.Text),
        sa.Column("current_version", sa.Integer),
        sa.Column("connector_users", sa.Integer, nullable=False, server_default="0"),
        sa.Column("netmera_users", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reachable", sa.Integer),
        sa.Column("message_sent", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_update_date", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "cs_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("segment_id", sa.String(200), sa.ForeignKey("cs_segments.id"), nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("approve", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("failed_step", sa.String(50)),
        sa.Column("error", sa.Text),
        sa.Column("hold_reason", sa.Text),
        sa.Column("version", sa.Integer),
        sa.Column("base_version", sa.Integer),
        sa.Column("connector_users", sa.Integer),
        sa.Column("netmera_users", sa.Integer),
        sa.Column("matched_source_users", sa.Integer),
        sa.Column("refused_rows", sa.Integer),
        sa.Column("reachable", sa.Integer),
        sa.Column("reasons", sa.JSON),
        sa.Column("matched_by", sa.JSON),
        sa.Column("validation", sa.JSON),
        sa.Column("added", sa.Integer),
        sa.Column("removed", sa.Integer),
        sa.UniqueConstraint("segment_id", "airflow_run_id", name="uq_cs_runs_airflow_run"),
    )
    op.create_index("ix_cs_runs_segment_started", "cs_runs", ["segment_id", "started_at"])
    op.create_table(
        "cs_members",
        sa.Column("segment_id", sa.String(200), sa.ForeignKey("cs_segments.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("matched_by", sa.String(30), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "version", "user_id"),
    )


def downgrade() -> None:
    op.drop_table("cs_members")
    op.drop_table("cs_runs")
    op.drop_table("cs_segments")
