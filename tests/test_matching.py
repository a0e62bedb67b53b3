"""The matching rules (DESIGN.md "Matching"), end to end: stage_audience → export_users (from a
real SQLite Netmera user table, one row per device) → identifier_reader → match_identifiers.

Every scenario is small enough that the expected answer is worked out by hand in the test; a
property test then checks the same rules on random small audiences against a plain-Python
reading of DESIGN.md.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.config.segments import SegmentConfig
from include.matching.audience import identifier_reader
from include.matching.pipeline import match_identifiers
from include.matching.result import MatchResult
from include.matching.rules import REASONS
from include.matching.user_table import DEFAULT_COLUMNS, UserTable, export_users
from include.matching.worker import Worker
from include.staging import stage_audience

USER_COLUMNS = ("user_id", "external_id", "email", "msisdn", "installation_id", "push_permitted")
NO_REASONS = dict.fromkeys(REASONS, 0)


# -- helpers ------------------------------------------------------------------------------------


def segment(*identifiers: tuple[str, str], default_region: str | None = None) -> SegmentConfig:
    """A segment keyed by `uid` with (field, kind) identifiers in priority order."""
    return SegmentConfig.model_validate(
        {
            "id": "test_segment",
            "name": "Test segment",
            "source": {"type": "file", "path": "x.csv"},
            "user_key": "uid",
            "identifiers": [{"field": f, "kind": k} for f, k in identifiers],
            "default_region": default_region,
        }
    )


def device(user_id: str | None, push: bool | None = True, **identifiers: str) -> tuple:
    """One row of Netmera's user table (one row per device)."""
    return (
        user_id,
        identifiers.get("external_id"),
        identifiers.get("email"),
        identifiers.get("msisdn"),
        identifiers.get("installation_id"),
        push,
    )


def netmera_db(path: Path, devices: list[tuple]) -> sa.Engine:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE netmera_users (user_id TEXT, external_id TEXT, email TEXT, "
            "msisdn TEXT, installation_id TEXT, push_permitted BOOLEAN)"
        )
        conn.executemany("INSERT INTO netmera_users VALUES (?, ?, ?, ?, ?, ?)", devices)
    conn.close()
    return sa.create_engine(f"sqlite:///{path}")


def run(
    workdir: Path,
    seg: SegmentConfig,
    audience: list[dict[str, str | None]],
    devices: list[tuple],
    table: UserTable | None = None,
) -> tuple[MatchResult, list[dict]]:
    """Stage the audience (two rows per Arrow batch), export the user table, match.

    Returns the result and the members rows, after checking the invariants every run must keep.
    """
    schema = pa.schema([(f, pa.string()) for f in seg.source_fields])
    batches = [
        pa.RecordBatch.from_pylist(audience[i : i + 2], schema=schema)
        for i in range(0, len(audience), 2)
    ]
    staged = stage_audience(batches, seg.source_fields, seg.user_key, workdir / "audience.parquet")
    engine = netmera_db(workdir / "netmera.db", devices)
    try:
        users = export_users(
            engine,
            table or UserTable(),
            {i.kind for i in seg.identifiers},
            workdir / "users.parquet",
        )
    finally:
        engine.dispose()
    identifiers = identifier_reader(seg, Path(staged.path))
    result = match_identifiers(seg, identifiers, Worker(users), workdir)
    members = pq.read_table(result.members_path).to_pylist()
    check_invariants(result, members)
    return result, members


def check_invariants(result: MatchResult, members: list[dict]) -> None:
    """Counting rules that hold for any audience (DESIGN.md "Matching")."""
    # Every source user is either matched or has exactly one reason.
    assert set(result.reasons) == set(REASONS)
    assert sum(result.reasons.values()) + result.matched_source_users == result.connector_users
    # Every matched source user is credited to exactly one identifier kind.
    assert sum(result.matched_by.values()) == result.matched_source_users
    # Members are the distinct matched Netmera users.
    ids = [m["user_id"] for m in members]
    assert len(ids) == len(set(ids)) == result.netmera_users
    assert result.netmera_users <= result.matched_source_users


def members_by_id(members: list[dict]) -> dict[str | None, str]:
    return {m["user_id"]: m["matched_by"] for m in members}


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def mobile(region: str) -> phonenumbers.PhoneNumber:
    return phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)


def e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


EXT_THEN_EMAIL = segment(("ext", "external_id"), ("mail", "email"))


# -- priority -----------------------------------------------------------------------------------


def test_first_identifier_in_priority_order_wins_when_two_find_different_users(
    tmp_path: Path,
) -> None:
    # external_id comes first in the segment, so A (found by it) wins over B (found by email).
    result, members = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [{"uid": "s1", "ext": "ext-a", "mail": "b@example.com"}],
        [device("A", external_id="ext-a"), device("B", email="b@example.com")],
    )
    assert members_by_id(members) == {"A": "external_id"}
    assert result.matched_by == {"external_id": 1, "email": 0}
    assert result.reasons == NO_REASONS


def test_later_identifier_matches_when_the_earlier_one_finds_nobody(tmp_path: Path) -> None:
    # ext-zzz is nobody's extId, so the email (next in priority) decides: B. A matched user has
    # no reason, although one of its identifiers was not found.
    result, members = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [{"uid": "s1", "ext": "ext-zzz", "mail": "b@example.com"}],
        [device("A", external_id="ext-a"), device("B", email="b@example.com")],
    )
    assert members_by_id(members) == {"B": "email"}
    assert result.matched_by == {"external_id": 0, "email": 1}
    assert result.reasons == NO_REASONS


# -- ambiguity ----------------------------------------------------------------------------------


def test_identifier_held_by_two_users_is_ambiguous_but_a_later_unique_one_still_matches(
    tmp_path: Path,
) -> None:
    # shared@ is held by A and B: it matches nobody. s1 has nothing else → `ambiguous`.
    # s2's email is just as ambiguous, but its extId (later in priority) finds only C → matched.
    seg = segment(("mail", "email"), ("ext", "external_id"))
    result, members = run(
        tmp_path,
        seg,
        [
            {"uid": "s1", "mail": "shared@example.com"},
            {"uid": "s2", "mail": "Shared@Example.com", "ext": "ext-c"},
        ],
        [
            device("A", email="shared@example.com"),
            device("B", email="shared@example.com"),
            device("C", external_id="ext-c"),
        ],
    )
    assert members_by_id(members) == {"C": "external_id"}
    assert result.matched_source_users == 1
    assert result.reasons == {**NO_REASONS, "ambiguous": 1}
    assert result.matched_by == {"email": 0, "external_id": 1}


# -- reasons ------------------------------------------------------------------------------------


def test_each_unmatched_user_gets_the_first_applicable_reason(tmp_path: Path) -> None:
    seg = segment(("ext", "external_id"), ("mail", "email"), ("phone", "msisdn"))
    audience = [
        # ambiguous beats not_found (ext-zzz finds nobody) and invalid_identifier (phone "12").
        {"uid": "amb", "ext": "ext-zzz", "mail": "dup@example.com", "phone": "12"},
        # not_found beats invalid_identifier ("not an email", "n/a").
        {"uid": "nf", "ext": "ext-yyy", "mail": "not an email", "phone": "n/a"},
        # every identifier present is invalid (the blank extId does not count as present).
        {"uid": "inv", "ext": "  ", "mail": "junk", "phone": "12"},
        # nothing present at all: blanks and nulls.
        {"uid": "none", "ext": " ", "mail": "", "phone": None},
        {"uid": "ok", "ext": "ext-a"},
    ]
    result, members = run(
        tmp_path,
        seg,
        audience,
        [
            device("A", external_id="ext-a"),
            device("B", email="dup@example.com"),
            device("C", email="dup@example.com"),
        ],
    )
    assert result.connector_users == 5
    assert result.matched_source_users == 1
    assert members_by_id(members) == {"A": "external_id"}
    assert result.reasons == {
        "ambiguous": 1,
        "not_found": 1,
        "invalid_identifier": 1,
        "no_identifier": 1,
    }


def test_valid_identifier_that_finds_nobody_is_not_found(tmp_path: Path) -> None:
    # Isolated: one user, one valid email, empty user table → exactly one `not_found`.
    result, members = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [{"uid": "s1", "mail": "nobody@example.com"}],
        [device("A", external_id="ext-a")],
    )
    assert members == []
    assert result.reasons == {**NO_REASONS, "not_found": 1}


# -- counting source users and Netmera users ----------------------------------------------------


def test_several_source_users_on_one_netmera_user_count_once_there(tmp_path: Path) -> None:
    # s1 (extId), s2 (email) and s3 (same email, other case/spaces) are three source users that
    # all resolve to A: Connector Users 3, Netmera Users 1, one member.
    result, members = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [
            {"uid": "s1", "ext": "ext-a"},
            {"uid": "s2", "mail": "a@example.com"},
            {"uid": "s3", "mail": "  A@EXAMPLE.com "},
        ],
        [device("A", external_id="ext-a", email="a@example.com")],
    )
    assert result.connector_users == 3
    assert result.matched_source_users == 3
    assert result.netmera_users == 1
    assert [m["user_id"] for m in members] == ["A"]
    assert result.matched_by == {"external_id": 1, "email": 2}


def test_duplicate_rows_of_one_user_key_are_one_source_user_with_pooled_identifiers(
    tmp_path: Path,
) -> None:
    # " k1 ", "k1" and "k1\t" are one source user after trimming the key. Its first row only
    # has an extId that finds nobody; its later row has B's email, so k1 matches B by email.
    # The row without a key is refused at staging and never counted.
    result, members = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [
            {"uid": " k1 ", "ext": "ext-zzz"},
            {"uid": "  ", "ext": "ext-a"},
            {"uid": "k2", "ext": "ext-a"},
            {"uid": "k1", "mail": "b@example.com"},
            {"uid": "k1\t"},
        ],
        [device("A", external_id="ext-a"), device("B", email="b@example.com")],
    )
    assert result.connector_users == 2
    assert result.matched_source_users == 2
    assert members_by_id(members) == {"A": "external_id", "B": "email"}
    assert result.reasons == NO_REASONS


# -- devices and reachability -------------------------------------------------------------------


def test_devices_of_one_user_count_once_and_reachable_needs_one_push_permitted_device(
    tmp_path: Path,
) -> None:
    seg = segment(("device", "installation_id"), ("mail", "email"))
    devices = [
        # U1: two devices, the same email on both (one user, so not ambiguous); push on dev-1b.
        device("U1", push=False, email="u1@example.com", installation_id="dev-1a"),
        device("U1", push=True, email="u1@example.com", installation_id="dev-1b"),
        # U2: one device without push permission; U3: push permission unknown (NULL).
        device("U2", push=False, installation_id="dev-2"),
        device("U3", push=None, installation_id="dev-3"),
        device("U4", push=True, installation_id="dev-4"),  # not in the audience
    ]
    audience = [
        {"uid": "s1", "device": "dev-1a"},  # U1 through its device without push
        {"uid": "s2", "mail": "u1@example.com"},  # U1 again, by the email both devices hold
        {"uid": "s3", "device": "dev-2"},
        {"uid": "s4", "device": "dev-3"},
    ]
    result, members = run(tmp_path, seg, audience, devices)
    assert members_by_id(members).keys() == {"U1", "U2", "U3"}
    assert result.matched_source_users == 4
    assert result.netmera_users == 3
    assert result.reasons == NO_REASONS
    # U1 has a push-permitted device (dev-1b), U2 and U3 have none.
    assert result.reachable == 1


def test_reachable_is_unknown_when_the_user_table_has_no_push_permission(tmp_path: Path) -> None:
    table = UserTable(columns={**DEFAULT_COLUMNS, "push_permitted": None})
    result, _ = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [{"uid": "s1", "ext": "ext-a"}],
        [device("A", push=True, external_id="ext-a")],
        table=table,
    )
    assert result.netmera_users == 1
    assert result.reachable is None


# -- hashed identifiers -------------------------------------------------------------------------


def test_hashed_identifiers_match_sha256_of_stored_email_and_e164_msisdn(tmp_path: Path) -> None:
    phone = e164(mobile("TR"))
    seg = segment(("email_hash", "email_sha256"), ("phone_hash", "msisdn_sha256"))
    audience = [
        # Upper-case hex with spaces around: still A's email hash.
        {"uid": "s1", "email_hash": f" {sha256_hex('a@example.com').upper()} "},
        # B's E.164 number, hashed.
        {"uid": "s2", "phone_hash": sha256_hex(phone)},
        # Hashed without normalising first (upper-case email): a valid hash of nobody's email.
        {"uid": "s3", "email_hash": sha256_hex("A@Example.com")},
        # Not a sha256 at all.
        {"uid": "s4", "email_hash": "a@example.com"},
    ]
    devices = [
        device("A", email="a@example.com", msisdn="+12015550123"),
        device("B", email="b@example.com", msisdn=phone),
    ]
    result, members = run(tmp_path, seg, audience, devices)
    assert members_by_id(members) == {"A": "email_sha256", "B": "msisdn_sha256"}
    assert result.reasons == {**NO_REASONS, "not_found": 1, "invalid_identifier": 1}


# -- phones -------------------------------------------------------------------------------------


def test_national_format_phones_match_with_the_segment_default_region(tmp_path: Path) -> None:
    number = mobile("TR")
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    international = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    audience = [{"uid": "s1", "phone": national}, {"uid": "s2", "phone": international}]
    devices = [device("A", msisdn=e164(number))]

    # With TR as default region, both spellings are A's stored E.164 number.
    with_region = tmp_path / "tr"
    with_region.mkdir()
    result, members = run(
        with_region, segment(("phone", "msisdn"), default_region="TR"), audience, devices
    )
    assert members_by_id(members) == {"A": "msisdn"}
    assert result.matched_source_users == 2

    # Without it, the national spelling cannot be read; the international one still matches.
    without_region = tmp_path / "none"
    without_region.mkdir()
    result, members = run(without_region, segment(("phone", "msisdn")), audience, devices)
    assert members_by_id(members) == {"A": "msisdn"}
    assert result.matched_source_users == 1
    assert result.reasons == {**NO_REASONS, "invalid_identifier": 1}


# -- a Netmera row without a user id ------------------------------------------------------------


def test_match_on_a_row_without_user_id_yields_a_null_member_not_a_silent_drop(
    tmp_path: Path,
) -> None:
    # The orphan row is the only holder of ext-orphan, so s1 matches "it"; the member must keep
    # a null user_id for validation to catch, and it must be counted in Netmera Users.
    result, members = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [{"uid": "s1", "ext": "ext-orphan"}, {"uid": "s2", "ext": "ext-a"}],
        [device(None, external_id="ext-orphan"), device("A", external_id="ext-a")],
    )
    assert result.matched_source_users == 2
    assert result.netmera_users == 2
    assert members_by_id(members) == {None: "external_id", "A": "external_id"}
    assert result.reachable == 1  # A; a null id cannot be looked up for push permission


def test_identifier_on_a_null_user_id_row_and_a_real_user_is_ambiguous(tmp_path: Path) -> None:
    # The null-id row is a user too: ext-x on it and on A is two users, so not a match for A.
    result, members = run(
        tmp_path,
        EXT_THEN_EMAIL,
        [{"uid": "s1", "ext": "ext-x"}],
        [device(None, external_id="ext-x"), device("A", external_id="ext-x")],
    )
    assert members == []
    assert result.reasons == {**NO_REASONS, "ambiguous": 1}


# -- property: random small audiences against a plain reading of the rules ----------------------

# Small pools so that collisions (ambiguity, shared users, duplicates) are common.
USER_IDS = ["u0", "u1", "u2", "u3", None]
EXT_IDS = ["e0", "e1", "e2", "e3"]
EMAILS = ["m0@x.io", "m1@x.io", "m2@x.io", "m3@x.io"]
PROPERTY_SEGMENT = segment(("ext", "external_id"), ("mail", "email"), ("dev", "installation_id"))
INSTALLS = ["i0", "i1", "i2", "i3"]
POOLS = {"ext": EXT_IDS, "mail": EMAILS, "dev": INSTALLS}
KIND_OF = {i.field: i.kind.value for i in PROPERTY_SEGMENT.identifiers}
STORED_COLUMN = {"ext": "external_id", "mail": "email", "dev": "installation_id"}

netmera_devices = st.lists(
    st.builds(
        lambda uid, ext, mail, dev, push: device(
            uid, push, external_id=ext, email=mail, installation_id=dev
        ),
        st.sampled_from(USER_IDS),
        st.sampled_from([None, *EXT_IDS]),
        st.sampled_from([None, *EMAILS]),
        st.sampled_from([None, *INSTALLS]),
        st.sampled_from([True, False, None]),
    ),
    max_size=8,
)


@st.composite
def spelling(draw: st.DrawFn, field: str, base: str | None) -> tuple[str | None, str | None]:
    """(what one source row carries, its normalised value or "INVALID"/None when absent)."""
    if base is None:
        return draw(st.sampled_from([None, "", "  "])), None
    choice = draw(st.sampled_from(["same", "decorated", "blank", "invalid"]))
    if choice == "blank":
        return draw(st.sampled_from([None, " "])), None
    if choice == "invalid" and field == "mail":
        return "not-an-email", "INVALID"
    if choice == "decorated":
        sent = base.upper() if field == "mail" else base
        return f" {sent}\t", base
    return base, base


@st.composite
def source_users(draw: st.DrawFn) -> list[dict]:
    """Logical source users, each sent as 1-3 rows whose identifiers are spellings of one base
    value per field (or an absent one), so each user has at most one valid value per field."""
    rows = []
    for key in draw(st.lists(st.sampled_from(["k0", "k1", "k2", "k3", "k4"]), unique=True)):
        bases = {f: draw(st.sampled_from([None, *pool, "zz-unknown"])) for f, pool in POOLS.items()}
        if bases["mail"] == "zz-unknown":
            bases["mail"] = "zz@unknown.io"
        for pad in draw(st.lists(st.sampled_from(["", " ", "\t"]), min_size=1, max_size=3)):
            row = {"uid": pad + key}
            expected = {}
            for field, base in bases.items():
                row[field], expected[field] = draw(spelling(field, base))
            rows.append((row, expected))
    return rows


def expected_outcome(rows: list[tuple[dict, dict]], devices: list[tuple]) -> dict:
    """DESIGN.md "Matching", read literally, in plain Python."""
    holders: dict[tuple[str, str], set] = {}
    push: dict[str | None, bool] = {}
    for dev in devices:
        stored = dict(zip(USER_COLUMNS, dev, strict=True))
        uid = stored["user_id"]
        push[uid] = push.get(uid, False) or bool(stored["push_permitted"])
        for field, column in STORED_COLUMN.items():
            if stored[column] is not None:
                holders.setdefault((field, stored[column]), set()).add(stored["user_id"])

    by_key: dict[str, list[dict]] = {}
    for row, expected in rows:
        by_key.setdefault(row["uid"].strip(), []).append(expected)
    matched: dict[str, tuple[str | None, str]] = {}
    reasons = Counter()
    for key, spellings in by_key.items():
        present = {f: {s[f] for s in spellings if s[f] is not None} for f in POOLS}
        for field in ("ext", "mail", "dev"):  # priority order
            valid = present[field] - {"INVALID"}
            found = [holders.get((field, v), set()) for v in valid]
            if len(found) == 1 and len(found[0]) == 1:
                matched[key] = (next(iter(found[0])), KIND_OF[field])
                break
        else:
            valid_hits = [
                len(holders.get((f, v), set())) for f in POOLS for v in present[f] - {"INVALID"}
            ]
            if any(n > 1 for n in valid_hits):
                reasons["ambiguous"] += 1
            elif valid_hits:
                reasons["not_found"] += 1
            elif any(present.values()):
                reasons["invalid_identifier"] += 1
            else:
                reasons["no_identifier"] += 1
    user_ids = {uid for uid, _ in matched.values()}
    return {
        "connector_users": len(by_key),
        "matched_source_users": len(matched),
        "netmera_users": len(user_ids),
        "members": user_ids,
        "reachable": sum(1 for uid in user_ids if uid is not None and push.get(uid)),
        "reasons": {r: reasons[r] for r in REASONS},
        "matched_by": dict(Counter(kind for _, kind in matched.values())),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source_users(), netmera_devices)
def test_random_audiences_follow_the_matching_rules(
    rows: list[tuple[dict, dict]], devices: list[tuple]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result, members = run(Path(tmp), PROPERTY_SEGMENT, [r for r, _ in rows], devices)
    want = expected_outcome(rows, devices)
    got_matched_by = {k: n for k, n in result.matched_by.items() if n}
    assert {
        "connector_users": result.connector_users,
        "matched_source_users": result.matched_source_users,
        "netmera_users": result.netmera_users,
        "members": {m["user_id"] for m in members},
        "reachable": result.reachable,
        "reasons": result.reasons,
        "matched_by": got_matched_by,
    } == want
