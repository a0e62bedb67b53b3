"""Run config: the segment config a run started with (its JSON dump), so that every step of
the run uses that one even if the YAML is edited while the run is in flight. Null for runs
from before this revision and for send-only runs (no start step).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("cs_runs", sa.Column("config", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("cs_runs") as batch:  # SQLite drops a column by a table copy
        batch.drop_column("config")
