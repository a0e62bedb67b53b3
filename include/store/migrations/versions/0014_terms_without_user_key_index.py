"""The kept resolutions' terms lose their second index, (segment_id, user_key): keeping it up
cost a full match most of its time on PostgreSQL (a million resolutions' terms inserted in a
random order of user keys); a replaced user's terms are now deleted by one join over the
segment's range of the primary key (include/store/resolutions.py).

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    op.drop_index("ix_cs_resolution_terms_user_key", "cs_resolution_terms")


def downgrade() -> None:
    op.create_index(
        "ix_cs_resolution_terms_user_key", "cs_resolution_terms", ["segment_id", "user_key"]
    )
