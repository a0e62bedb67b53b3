"""Send Message with a holdout group, and who sent it.

`cs_send_holdout` records a send's held-out members (written with its batches, never
messaged); `cs_sends` gains their count, the percent asked and the sender. A batch records the
members behind its extIds (`members`), so that a send counts members, not extIds: sends made
before this counted extIds, one member each, which is what `members = size` keeps.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"

_COUNTS = ("holdout", "holdout_shared")


def upgrade() -> None:
    for name in _COUNTS:
        op.add_column("cs_sends", sa.Column(name, sa.Integer, nullable=False, server_default="0"))
    op.add_column(
        "cs_sends", sa.Column("holdout_percent", sa.Float, nullable=False, server_default="0")
    )
    op.add_column("cs_sends", sa.Column("sent_by", sa.String(250)))
    op.add_column(
        "cs_send_batches", sa.Column("members", sa.Integer, nullable=False, server_default="0")
    )
    op.execute("UPDATE cs_send_batches SET members = size")
    op.create_table(
        "cs_send_holdout",
        sa.Column("send_id", sa.Integer, sa.ForeignKey("cs_sends.id"), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("send_id", "user_id"),
    )


def downgrade() -> None:
    op.drop_table("cs_send_holdout")
    with op.batch_alter_table("cs_send_batches") as batch:
        batch.drop_column("members")
    with op.batch_alter_table("cs_sends") as batch:
        for name in (*_COUNTS, "holdout_percent", "sent_by"):
            batch.drop_column(name)
