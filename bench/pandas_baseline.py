"""The baseline: the same matching rules written the straightforward pandas way.

The whole user table in a DataFrame, source identifiers normalised column by column (`.str`
methods; phones through phonenumbers value by value), one `merge` per identifier kind, then
sort/`drop_duplicates` for priority and `groupby` for reasons. It must give our matcher's exact
counts (the benchmark checks), so its speed is the speed of the same job.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pandas as pd

from include.config.segments import IdentifierKind
from include.matching.normalize import _EMAIL, _SHA256, to_e164
from include.matching.rules import HASHED, REASONS
from include.matching.user_table import KIND_COLUMN

if TYPE_CHECKING:
    from include.config.segments import SegmentConfig


def normalise(kind: IdentifierKind, raw: pd.Series, region: str | None) -> pd.Series:
    text = raw.str.strip().replace("", None)
    if kind in (IdentifierKind.EXTERNAL_ID, IdentifierKind.INSTALLATION_ID):
        return text
    if kind == IdentifierKind.MSISDN:
        return text.map(lambda v: to_e164(v, region), na_action="ignore")
    lowered = text.str.lower()
    # `_EMAIL` is the matcher's fast path (an address already in normal form, ASCII domain):
    # the same rule on the bench's data, which has no brackets, mailto: or IDN domains.
    valid = lowered.str.match(_EMAIL if kind == IdentifierKind.EMAIL else _SHA256)
    return lowered.where(valid.fillna(False).astype(bool))


def identifiers(segment: SegmentConfig, audience: pd.DataFrame) -> pd.DataFrame:
    keys = audience[segment.user_key].str.strip()
    parts, any_present = [], pd.Series(False, index=audience.index)
    for priority, ident in enumerate(segment.identifiers):
        raw = audience[ident.field]
        present = raw.notna() & (raw.str.strip() != "")
        any_present |= present
        value = normalise(ident.kind, raw[present], segment.default_region)
        parts.append(
            pd.DataFrame(
                {
                    "user_key": keys[present],
                    "priority": priority,
                    "kind": ident.kind.value,
                    "value": value,
                }
            )
        )
    parts.append(pd.DataFrame({"user_key": keys[~any_present], "priority": pd.NA, "kind": None}))
    return pd.concat(parts, ignore_index=True)


def candidates(ids: pd.DataFrame, users: pd.DataFrame, kind: IdentifierKind) -> pd.DataFrame:
    column = KIND_COLUMN[kind]
    stored = users[["user_id", column]].dropna(subset=[column])
    if kind in HASHED:
        stored[column] = stored[column].map(lambda v: hashlib.sha256(v.encode()).hexdigest())
    wanted = ids.loc[ids["kind"] == kind.value, ["value"]].dropna().drop_duplicates()
    found = wanted.merge(stored, left_on="value", right_on=column)
    grouped = found.groupby("value", sort=False)["user_id"]
    has_null = found["user_id"].isna().groupby(found["value"], sort=False).any()
    result = pd.DataFrame(
        {"n": grouped.nunique() + has_null.astype(int), "user_id": grouped.min()}
    ).reset_index()
    result["kind"] = kind.value
    return result


def match(segment: SegmentConfig, audience: pd.DataFrame, users: pd.DataFrame) -> dict[str, Any]:
    ids = identifiers(segment, audience)
    kinds = sorted({i.kind for i in segment.identifiers})
    found = pd.concat([candidates(ids, users, k) for k in kinds], ignore_index=True)
    hits = ids.merge(found, on=["kind", "value"], how="left")
    hits["n"] = hits["n"].fillna(0)
    first = (
        hits[hits["n"] == 1]
        .sort_values(["user_key", "priority", "value"])
        .drop_duplicates("user_key")
        .set_index("user_key")
    )
    flags = (
        hits.assign(
            ambiguous=hits["n"] > 1,
            any_valid=hits["value"].notna(),
            any_present=hits["priority"].notna(),
        )
        .groupby("user_key")[["ambiguous", "any_valid", "any_present"]]
        .any()
    )
    unmatched = flags[~flags.index.isin(first.index)]
    reason = pd.Series("no_identifier", index=unmatched.index)
    reason[unmatched["any_present"]] = "invalid_identifier"
    reason[unmatched["any_valid"]] = "not_found"
    reason[unmatched["ambiguous"]] = "ambiguous"
    members = first.sort_values("priority").drop_duplicates("user_id")
    push = users.loc[users["push_permitted"].fillna(False).astype(bool), "user_id"]
    return {
        "connector_users": len(flags),
        "matched_source_users": len(first),
        "netmera_users": len(members),
        "reachable": int((members["user_id"].notna() & members["user_id"].isin(push)).sum()),
        "reasons": {r: int((reason == r).sum()) for r in REASONS},
        "matched_by": {
            i.kind.value: int((first["kind"] == i.kind.value).sum()) for i in segment.identifiers
        },
    }
