"""PostgreSQL: `cs_members` without its foreign key to `cs_segments`.

The key's check is a trigger per inserted row: it doubled the cost of publishing a million
members over a plain COPY of them. Members are written only by publish and restore, inside the
transaction that reads the segment's row, so the store keeps the invariant itself. SQLite keeps
the key (dropping it there means copying the table; its publish uses batched INSERTs anyway).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE cs_members DROP CONSTRAINT IF EXISTS cs_members_segment_id_fkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(
            "cs_members_segment_id_fkey", "cs_members", "cs_segments", ["segment_id"], ["id"]
        )
