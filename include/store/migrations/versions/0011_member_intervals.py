"""Membership as intervals: `cs_members` holds one row per stay of a user in a segment
(`entered_version`, `left_version`: null while still a member) instead of one row per kept
version and member.

The kept versions' rows become intervals: each run of consecutive versions a user is a member
of is one row (gaps and islands: a version minus the row's rank among the user's versions is
constant along a run), open if it reaches the segment's current version. History begins at the
oldest version the store kept (three before this revision): a stay that was already running
then began at an unknown earlier version, recorded as version 0 ("before the store kept
history"), so that a send to those who entered since some earlier version never takes its user
for a newcomer. `matched_by` is the kind that matched the user in the first kept version of
the stay.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"

OLD_KEPT = 3  # the versions a segment kept before this revision


def upgrade() -> None:
    op.create_table(
        "cs_member_intervals",
        sa.Column("segment_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("entered_version", sa.Integer, nullable=False),
        sa.Column("left_version", sa.Integer),
        sa.Column("matched_by", sa.String(30), nullable=False),
        sa.PrimaryKeyConstraint(
            "segment_id", "user_id", "entered_version", name="pk_cs_member_intervals"
        ),
    )
    op.execute(
        """
        INSERT INTO cs_member_intervals
            (segment_id, user_id, entered_version, left_version, matched_by)
        SELECT i.segment_id, i.user_id,
               CASE WHEN i.entered = o.oldest AND o.oldest > 1 THEN 0 ELSE i.entered END,
               CASE
                   WHEN i.last_version >= COALESCE(s.current_version, 0) THEN NULL
                   ELSE i.last_version + 1
               END,
               i.matched_by
        FROM (
            SELECT segment_id, user_id, island, min(version) AS entered,
                   max(version) AS last_version, min(first_kind) AS matched_by
            FROM (
                SELECT segment_id, user_id, version, island,
                       FIRST_VALUE(matched_by) OVER (
                           PARTITION BY segment_id, user_id, island ORDER BY version
                       ) AS first_kind
                FROM (
                    SELECT segment_id, user_id, version, matched_by,
                           version - ROW_NUMBER() OVER (
                               PARTITION BY segment_id, user_id ORDER BY version
                           ) AS island
                    FROM cs_members
                ) ranked
            ) kinds
            GROUP BY segment_id, user_id, island
        ) i
        JOIN cs_segments s ON s.id = i.segment_id
        JOIN (
            SELECT segment_id, min(version) AS oldest FROM cs_members GROUP BY segment_id
        ) o ON o.segment_id = i.segment_id
        """
    )
    op.drop_table("cs_members")
    op.rename_table("cs_member_intervals", "cs_members")


def downgrade() -> None:
    op.create_table(
        "cs_member_versions",
        sa.Column("segment_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("matched_by", sa.String(30), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "version", "user_id", name="pk_cs_member_versions"),
    )
    for back in range(OLD_KEPT):  # the current version and the two before it, as copies
        op.execute(
            f"""
            INSERT INTO cs_member_versions (segment_id, version, user_id, matched_by)
            SELECT m.segment_id, s.current_version - {back}, m.user_id, m.matched_by
            FROM cs_members m JOIN cs_segments s ON s.id = m.segment_id
            WHERE s.current_version - {back} >= 1
              AND m.entered_version <= s.current_version - {back}
              AND (m.left_version IS NULL OR m.left_version > s.current_version - {back})
            """
        )
    op.drop_table("cs_members")
    op.rename_table("cs_member_versions", "cs_members")
