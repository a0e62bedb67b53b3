"""Send Message to those who entered: a send records which members it was for, `all` (every
member of its version; what every earlier send was) or `entered` (those who entered after
`since_version`, the version the same message was last sent to; null the first time: all).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.add_column(
        "cs_sends", sa.Column("audience", sa.String(10), nullable=False, server_default="all")
    )
    op.add_column("cs_sends", sa.Column("since_version", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("cs_sends") as batch:  # SQLite drops a column by a table copy
        batch.drop_column("since_version")
        batch.drop_column("audience")
