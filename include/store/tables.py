"""Table definitions used by queries. The schema itself is made by `migrations/` only."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

segments = sa.Table(
    "cs_segments",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("source_type", sa.String(50), nullable=False),
    sa.Column("status", sa.String(20)),
    sa.Column("status_reason", sa.Text),
    sa.Column("current_version", sa.Integer),
    sa.Column("connector_users", sa.Integer, nullable=False),
    sa.Column("netmera_users", sa.Integer, nullable=False),
    sa.Column("reachable", sa.Integer),
    sa.Column("message_sent", sa.Integer, nullable=False),
    sa.Column("last_update_date", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
    "cs_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("segment_id", sa.String(200), nullable=False),
    sa.Column("airflow_run_id", sa.String(250), nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("approve", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("failed_step", sa.String(50)),
    sa.Column("error", sa.Text),
    sa.Column("hold_reason", sa.Text),
    sa.Column("version", sa.Integer),
    sa.Column("base_version", sa.Integer),
    sa.Column("connector_users", sa.Integer),
    sa.Column("netmera_users", sa.Integer),
    sa.Column("matched_source_users", sa.Integer),
    sa.Column("refused_rows", sa.Integer),
    sa.Column("reachable", sa.Integer),
    sa.Column("reasons", sa.JSON),
    sa.Column("matched_by", sa.JSON),
    sa.Column("validation", sa.JSON),
    sa.Column("added", sa.Integer),
    sa.Column("removed", sa.Integer),
    sa.Column("restored_from", sa.Integer),  # the version a restore run made current again
    # The config the run started with (`SegmentConfig.snapshot`): its later steps use this one.
    sa.Column("config", sa.JSON),
    # {step: seconds} of the run's finished steps (several may run in one Airflow task).
    sa.Column("step_seconds", sa.JSON),
    # How the run matched: "full" or "incremental", and how many source users it matched
    # again (in full: all of them); the rest carried their stored resolution over.
    sa.Column("mode", sa.String(20)),
    sa.Column("rematched", sa.Integer),
)

# Membership as intervals: a row is one stay of a user in a segment, from the version it
# entered in to the version it left in (null: still a member); `matched_by` is the identifier
# kind that matched the user when it entered. A version's members are the rows spanning it
# (`members_at`); publish writes only who entered and who left (docs/decisions.md, "Members
# storage").
members = sa.Table(
    "cs_members",
    metadata,
    sa.Column("segment_id", sa.String(200), primary_key=True),
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("entered_version", sa.Integer, primary_key=True),
    sa.Column("left_version", sa.Integer),
    sa.Column("matched_by", sa.String(30), nullable=False),
)


def members_at(segment_id: str, version: int) -> sa.ColumnElement[bool]:
    """The rows of the segment's members at `version`: one range of the primary key, no other
    segment's rows read."""
    return sa.and_(
        members.c.segment_id == segment_id,
        members.c.entered_version <= version,
        sa.or_(members.c.left_version.is_(None), members.c.left_version > version),
    )


def current_members(segment_id: str) -> sa.ColumnElement[bool]:
    """The rows of the segment's current members: those whose stay is open."""
    return sa.and_(members.c.segment_id == segment_id, members.c.left_version.is_(None))


# The unmatched source users of a segment's last few runs (KEEP_UNMATCHED_RUNS); no key:
# rows are only ever written, read and deleted by (segment_id, airflow_run_id).
unmatched = sa.Table(
    "cs_unmatched",
    metadata,
    sa.Column("segment_id", sa.String(200), nullable=False),
    sa.Column("airflow_run_id", sa.String(250), nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("reason", sa.String(30), nullable=False),
)

# Incremental matching (include/matching/carry.py; docs/decisions.md, "Incremental matching"):
# per segment, each source user's resolution as the last match made it, the digest of its
# identifier fields, and the terms it depends on ((kind, SHA-256 of a value) looked up;
# ("@user", id) of a Netmera user found); the state says under which rules, and up to which
# change time.
resolutions = sa.Table(
    "cs_resolutions",
    metadata,
    sa.Column("segment_id", sa.String(200), primary_key=True),
    sa.Column("user_key", sa.Text, primary_key=True),
    sa.Column("digest", sa.String(32), nullable=False),
    sa.Column("user_id", sa.Text),
    sa.Column("matched_by", sa.String(30)),
    sa.Column("priority", sa.SmallInteger),
    sa.Column("reason", sa.String(30)),  # null: matched
    sa.Column("reachable", sa.Boolean),
)

resolution_terms = sa.Table(
    "cs_resolution_terms",
    metadata,
    sa.Column("segment_id", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(30), primary_key=True),
    sa.Column("value", sa.Text, primary_key=True),
    sa.Column("user_key", sa.Text, primary_key=True),
)

resolution_state = sa.Table(
    "cs_resolution_state",
    metadata,
    sa.Column("segment_id", sa.String(200), primary_key=True),
    sa.Column("basis", sa.String(64), nullable=False),  # carry.basis
    sa.Column("mark", sa.JSON),  # the newest change time read before the match (changes.py)
    sa.Column("full_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("matched_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("airflow_run_id", sa.String(250), nullable=False),
)

sends = sa.Table(
    "cs_sends",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("segment_id", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("send_key", sa.String(300), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("platforms", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("notification_key", sa.BigInteger),
    # Counted in members (Netmera user ids): recipients + holdout + not_addressable = the
    # version's members (include/campaign/audience.py).
    sa.Column("recipients", sa.Integer, nullable=False),
    sa.Column("not_addressable", sa.Integer, nullable=False),
    sa.Column("sent", sa.Integer, nullable=False),
    sa.Column("uncertain", sa.Integer, nullable=False),
    sa.Column("holdout", sa.Integer, nullable=False),
    sa.Column("holdout_shared", sa.Integer, nullable=False),  # of holdout: sharing its extId
    sa.Column("holdout_percent", sa.Float, nullable=False),
    sa.Column("batches", sa.Integer, nullable=False),
    sa.Column("airflow_run_id", sa.String(250), nullable=False),
    sa.Column("sent_by", sa.String(250)),  # the run's triggering user, or "schedule"
    # "all" the version's members, or "entered": those who entered after `since_version` (the
    # version the same message was last sent to; null the first time: all of them).
    sa.Column("audience", sa.String(10), nullable=False, default="all"),
    sa.Column("since_version", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

send_batches = sa.Table(
    "cs_send_batches",
    metadata,
    sa.Column("send_id", sa.Integer, primary_key=True),
    sa.Column("batch_no", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),  # extIds
    sa.Column("members", sa.Integer, nullable=False),  # the members behind them
    sa.Column("ext_ids", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# A send's held-out members: recorded with its batches, never messaged.
send_holdout = sa.Table(
    "cs_send_holdout",
    metadata,
    sa.Column("send_id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.String(200), primary_key=True),
)

# Vendor budgets (`vendor_budgets.py`); times are seconds since the epoch on the DB's clock.
vendor_pacing = sa.Table(
    "cs_vendor_pacing",
    metadata,
    sa.Column("vendor", sa.String(32), primary_key=True),
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("next_start", sa.Float, nullable=False),
)

vendor_slots = sa.Table(
    "cs_vendor_slots",
    metadata,
    sa.Column("vendor", sa.String(32), primary_key=True),
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("holder", sa.String(36)),
    sa.Column("lease_until", sa.Float, nullable=False),
)
