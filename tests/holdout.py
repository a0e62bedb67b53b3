"""The holdout rule as the README states it, written out independently of the product's code:
the tests compare what a send recorded and messaged with what the rule says."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal


def documented_holdout(
    segment_id: str,
    version: int,
    fingerprint: str,
    ext_id_of: Mapping[str, str | None],
    percent: float,
) -> set[str]:
    """The held-out user ids of a send, given each member's extId (None: not addressable):
    floor(addressable * percent / 100) members with the smallest sha256 of the compact JSON
    [segment id, version, message fingerprint, user id] are drawn, and every member sharing a
    drawn member's extId is held out with it."""
    addressable = sorted(user for user, ext in ext_id_of.items() if ext is not None)
    k = int(Decimal(len(addressable)) * Decimal(str(percent)) / 100)

    def draw_key(user_id: str) -> bytes:
        value = json.dumps([segment_id, version, fingerprint, user_id], separators=(",", ":"))
        return hashlib.sha256(value.encode()).digest()

    held_ext_ids = {ext_id_of[user] for user in sorted(addressable, key=draw_key)[:k]}
    return {user for user in addressable if ext_id_of[user] in held_ext_ids}
