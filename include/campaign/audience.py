"""Who a send messages: the version's members by extId, in batches, less a holdout group.

A member (a Netmera user id of `cs_members`) is addressed by its user's extId (the smallest,
should the user table hold several). A member without one is `not_addressable`: counted, never
dropped silently.

Holdout (`holdout_percent`, 0 to 50): of the A addressable members, k = floor(A * percent / 100)
(in decimal arithmetic) are *drawn*: the k whose sha256 of the compact JSON array
`[segment id, version, message fingerprint, user id]` is smallest. The same message to the same
version draws the same members whatever its `send_key`, and a larger percent draws a superset.
A drawn member's extId is never messaged, so a member who was not drawn but shares that extId is
held out with it (`holdout_shared` counts them): a push to the extId would reach the drawn one.

Counts are of members, so that recipients + holdout + not_addressable = the version's members;
recipients are the members whose extId is messaged (two members sharing an extId are two
recipients of one push).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

import sqlalchemy as sa

from include.clients.netmera import MAX_EXT_IDS
from include.store.tables import members, members_at

if TYPE_CHECKING:
    from include.matching.user_table import UserTable


class Batch(NamedTuple):
    ext_ids: list[str]
    members: int  # the members behind these extIds: more than len(ext_ids) where some share one


@dataclass(frozen=True)
class Audience:
    batches: list[Batch]
    not_addressable: int
    holdout: list[str] = field(default_factory=list)  # held-out members' user ids
    holdout_shared: int = 0  # of `holdout`, those not drawn but sharing a drawn one's extId

    @property
    def recipients(self) -> int:
        return sum(b.members for b in self.batches)

    @property
    def members(self) -> int:
        return self.recipients + len(self.holdout) + self.not_addressable


def holdout_size(addressable: int, percent: float) -> int:
    """How many addressable members are drawn: floor(addressable * percent / 100), computed in
    decimal (0.57 % of 10,000 is 57; in binary floating point it would be 56)."""
    return int(Decimal(addressable) * Decimal(str(percent)) / 100)


def draw_key(segment_id: str, version: int, fingerprint: str, user_id: str) -> bytes:
    """What orders the members for the draw (the smallest are held out)."""
    value = json.dumps([segment_id, version, fingerprint, user_id], separators=(",", ":"))
    return hashlib.sha256(value.encode()).digest()


def audience(
    engine: sa.Engine,
    users: UserTable,
    segment_id: str,
    version: int,
    *,
    fingerprint: str = "",
    holdout_percent: float = 0,
    entered_after: int | None = None,
) -> Audience:
    """The version's addressable members by extId, sorted, in batches of ≤1000 extIds, less the
    holdout of the message whose `fingerprint` is given (see the module's docstring).
    `entered_after`: only the members whose stay began after that version (they entered since;
    the rest are not counted at all)."""
    per_member = _per_member(users, segment_id, version, entered_after)
    addressable = per_member.c.ext_id.is_not(None)
    with engine.connect() as conn:
        count, missing = conn.execute(
            sa.select(
                sa.func.count(per_member.c.ext_id),
                sa.func.count() - sa.func.count(per_member.c.ext_id),
            )
        ).one()
        k = holdout_size(count, holdout_percent)
        rows = sa.select(per_member.c.user_id, per_member.c.ext_id).where(addressable)
        drawn = (
            heapq.nsmallest(
                k,
                (
                    (draw_key(segment_id, version, fingerprint, user), user, str(ext))
                    for user, ext in _stream(conn, rows)
                ),
            )
            if k
            else []
        )
        # Every extId of a drawn member's user, not only the one it is addressed by: a push to
        # any of them would reach it.
        held_ext_ids = {ext for _, _, ext in drawn} | _all_ext_ids(
            conn, users, [user for _, user, _ in drawn]
        )
        by_ext_id = _stream(conn, rows.order_by(per_member.c.ext_id, per_member.c.user_id))
        batches, holdout = _split(by_ext_id, held_ext_ids)
    return Audience(
        batches=batches,
        not_addressable=missing,
        holdout=holdout,
        holdout_shared=len(holdout) - len(drawn),
    )


def _user_columns(users: UserTable) -> tuple[sa.TableClause, sa.ColumnClause, sa.ColumnClause]:
    table = sa.table(
        users.table,
        sa.column(users.columns["user_id"]),
        sa.column(users.columns["external_id"]),
        schema=users.schema,
    )
    return table, table.c[users.columns["user_id"]], table.c[users.columns["external_id"]]


def _all_ext_ids(conn: sa.Connection, users: UserTable, user_ids: list[str]) -> set[str]:
    """Every extId the user table holds for these users (a user may have several)."""
    _, user_id, external_id = _user_columns(users)
    found: set[str] = set()
    for start in range(0, len(user_ids), MAX_EXT_IDS):
        chunk = user_ids[start : start + MAX_EXT_IDS]
        query = (
            sa.select(external_id).distinct().where(user_id.in_(chunk), external_id.is_not(None))
        )
        found.update(str(ext) for ext in conn.execute(query).scalars())
    return found


def _per_member(
    users: UserTable, segment_id: str, version: int, entered_after: int | None
) -> sa.Subquery:
    """(user_id, ext_id) of each member of the version (that entered after `entered_after`);
    ext_id null for those without one."""
    table, user_id, external_id = _user_columns(users)
    chosen = members_at(segment_id, version)
    if entered_after is not None:
        chosen = sa.and_(chosen, members.c.entered_version > entered_after)
    return (
        sa.select(members.c.user_id, sa.func.min(external_id).label("ext_id"))
        .select_from(members.outerjoin(table, user_id == members.c.user_id))
        .where(chosen)
        .group_by(members.c.user_id)
        .subquery()
    )


def _stream(conn: sa.Connection, query: sa.Select) -> Iterator[tuple[str, object]]:
    for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
        yield row.user_id, row.ext_id


def _split(
    rows: Iterable[tuple[str, object]], held_ext_ids: set[str]
) -> tuple[list[Batch], list[str]]:
    """Members ordered by extId → batches of the extIds not held, and the held-out user ids."""
    batches: list[Batch] = []
    holdout: list[str] = []
    ext_ids: list[str] = []
    behind = 0
    for ext, group in itertools.groupby(rows, key=lambda row: str(row[1])):
        user_ids = [user for user, _ in group]
        if ext in held_ext_ids:
            holdout.extend(user_ids)
            continue
        ext_ids.append(ext)
        behind += len(user_ids)
        if len(ext_ids) == MAX_EXT_IDS:
            batches.append(Batch(ext_ids, behind))
            ext_ids, behind = [], 0
    if ext_ids:
        batches.append(Batch(ext_ids, behind))
    return batches, holdout
