"""The holdout's draw when a Netmera user has several extIds (one row per device, each with its
own): a push to any of a held-out user's extIds would reach it, so none of them is messaged,
and a member addressed by one of them is held out with it. On a real SQLite store and user
table, through `include.campaign.audience`."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from include.campaign.audience import audience, draw_key
from include.matching.user_table import UserTable
from include.store.repository import SegmentStore
from include.store.tables import members
from tests.conftest import write_users

SEGMENT, VERSION, FINGERPRINT = "multi", 1, "f" * 64


def test_every_extid_of_a_held_out_user_is_held(tmp_path: Path):
    # The member drawn first (smallest key) has two devices: ext-a1 and ext-a2. Another member
    # has only ext-a2, a third is ordinary.
    candidates = sorted(
        (f"nm-{i}" for i in range(50)), key=lambda u: draw_key(SEGMENT, VERSION, FINGERPRINT, u)
    )
    drawn, sharing, ordinary = candidates[0], candidates[-1], candidates[-2]
    db = write_users(
        tmp_path / "netmera.db",
        [
            (drawn, "ext-a1", None, None, None, True),
            (drawn, "ext-a2", None, None, None, True),
            (sharing, "ext-a2", None, None, None, True),
            (ordinary, "ext-o", None, None, None, True),
        ],
    )
    engine = sa.create_engine(f"sqlite:///{db}")
    SegmentStore(engine)  # the store's tables
    with engine.begin() as conn:
        conn.execute(
            members.insert(),
            [
                {"segment_id": SEGMENT, "entered_version": VERSION, "user_id": u}
                | {"matched_by": "email"}
                for u in (drawn, sharing, ordinary)
            ],
        )
    users = UserTable.from_extras({})
    # One of three addressable members at 34 %: the drawn one.
    target = audience(engine, users, SEGMENT, VERSION, fingerprint=FINGERPRINT, holdout_percent=34)
    messaged = {ext for batch in target.batches for ext in batch.ext_ids}
    assert messaged == {"ext-o"}  # neither ext-a1 nor ext-a2
    assert sorted(target.holdout) == sorted([drawn, sharing])
    assert target.holdout_shared == 1
    assert target.recipients + len(target.holdout) + target.not_addressable == 3
    # Without a holdout, each member is addressed once (by its smallest extId).
    everyone = audience(engine, users, SEGMENT, VERSION, fingerprint=FINGERPRINT)
    assert {ext for b in everyone.batches for ext in b.ext_ids} == {"ext-a1", "ext-a2", "ext-o"}
