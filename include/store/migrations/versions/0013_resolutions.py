"""Incremental matching: each source user's resolution as the last match made it, the terms it
depends on and the state they were made in (cs_resolutions, cs_resolution_terms,
cs_resolution_state); a run records how it matched (`mode`) and how many source users it
matched again (`rematched`), null for runs from before this revision.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    op.add_column("cs_runs", sa.Column("mode", sa.String(20)))
    op.add_column("cs_runs", sa.Column("rematched", sa.Integer))
    op.create_table(
        "cs_resolutions",
        sa.Column("segment_id", sa.String(200), primary_key=True),
        sa.Column("user_key", sa.Text, primary_key=True),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("matched_by", sa.String(30)),
        sa.Column("priority", sa.SmallInteger),
        sa.Column("reason", sa.String(30)),
        sa.Column("reachable", sa.Boolean),
    )
    op.create_table(
        "cs_resolution_terms",
        sa.Column("segment_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(30), primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column("user_key", sa.Text, primary_key=True),
    )
    # The primary key finds who holds a term; this, a user's terms (to replace them).
    op.create_index(
        "ix_cs_resolution_terms_user_key", "cs_resolution_terms", ["segment_id", "user_key"]
    )
    op.create_table(
        "cs_resolution_state",
        sa.Column("segment_id", sa.String(200), primary_key=True),
        sa.Column("basis", sa.String(64), nullable=False),
        sa.Column("mark", sa.JSON),
        sa.Column("full_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cs_resolution_state")
    op.drop_index("ix_cs_resolution_terms_user_key", "cs_resolution_terms")
    op.drop_table("cs_resolution_terms")
    op.drop_table("cs_resolutions")
    with op.batch_alter_table("cs_runs") as batch:  # SQLite drops a column by a table copy
        batch.drop_column("rematched")
        batch.drop_column("mode")
