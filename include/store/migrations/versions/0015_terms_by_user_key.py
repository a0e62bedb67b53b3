"""The kept resolutions' terms get their second index, (segment_id, user_key), back: an
incremental save deletes the terms of the user keys it replaces, and without it each save
read the segment's whole range of terms (two million rows for a million source users, 1.2-1.6
s at 1 M x 10 M) for the ~1 % that go. Since a full match writes only what changed
(`carry.narrowed`), only a segment's very first match inserts its terms wholesale and pays
the index's upkeep in random order (docs/decisions.md, "Incremental matching").

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"


def upgrade() -> None:
    op.create_index(
        "ix_cs_resolution_terms_user_key", "cs_resolution_terms", ["segment_id", "user_key"]
    )


def downgrade() -> None:
    op.drop_index("ix_cs_resolution_terms_user_key", "cs_resolution_terms")
