"""On PostgreSQL the kept resolutions' terms get their second index, (segment_id, user_key),
back: an incremental save deletes the terms of the user keys it replaces, and without it each
save read the segment's whole range of terms (two million rows for a million source users,
1.2-1.6 s at 1 M x 10 M) for the ~1 % that go. Since a full match writes only what changed
(`carry.narrowed`), only a segment's very first match inserts its terms wholesale and pays the
index's upkeep in random order. Not on SQLite: there that upkeep made inserting a million
terms 2.5x and deleting them 6.5x slower (17.6 s and 26.7 s against 7.0 s and 4.1 s), more
than the pass it saves (docs/decisions.md, "Incremental matching").

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"

INDEX = "ix_cs_resolution_terms_user_key"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(INDEX, "cs_resolution_terms", ["segment_id", "user_key"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(INDEX, "cs_resolution_terms")
