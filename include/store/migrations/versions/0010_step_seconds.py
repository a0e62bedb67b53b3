"""Step durations on the run record: a refresh runs several steps in one Airflow task, so the
task's duration no longer tells each step's. `{step: seconds}` of the steps that finished;
null for runs from before this revision.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.add_column("cs_runs", sa.Column("step_seconds", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("cs_runs") as batch:  # SQLite drops a column by a table copy
        batch.drop_column("step_seconds")
