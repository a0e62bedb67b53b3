"""Vendor budgets shared by every worker: per vendor project, the next paced request start and
its concurrency slots (a slot is leased until a time, so a dead holder frees it by itself).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "cs_vendor_pacing",
        sa.Column("vendor", sa.String(32), primary_key=True),
        sa.Column("project", sa.String(200), primary_key=True),
        sa.Column("next_start", sa.Float, nullable=False),  # seconds since the epoch, DB clock
    )
    op.create_table(
        "cs_vendor_slots",
        sa.Column("vendor", sa.String(32), primary_key=True),
        sa.Column("project", sa.String(200), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("holder", sa.String(36)),
        sa.Column("lease_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cs_vendor_slots")
    op.drop_table("cs_vendor_pacing")
