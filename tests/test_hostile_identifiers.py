"""Hostile identifiers end to end: a real DAG run (`dag.test()`) over a source CSV in which every
row is one source user with one hostile spelling, against a Netmera user table that holds the
right user for each spelling that must match and a *decoy* for each one that must not (the
value as typed, lower-cased, or what a lenient reading would make of it: the first of two
addresses, a vanity number's digits, the Latin twin of a look-alike). The outcome is read back
through the CLI (`details --json`, `members`) as on-call would, on both match paths, on SQLite
and on PostgreSQL (where the database path COPYs the source values into a temporary table).

Every row states its outcome: the Netmera user it must reach, or the reason it must be counted
under. Members, Netmera Users, matched-by kinds and per-reason counts are then asserted exactly,
so a row that drifts from its outcome (a decoy reached, an invalid value taken as not found)
changes at least one of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import cli, cli_json, run_segment, use_pg_netmera_db, write_csv, write_users

pytestmark = pytest.mark.dagrun

SEGMENT = "hostile"
KB10 = 10 * 1024
INVALID, NOT_FOUND = "invalid_identifier", "not_found"
AMBIGUOUS, NO_IDENTIFIER = "ambiguous", "no_identifier"


def tr_phone(k: int) -> str:
    return f"+90532100{k:04d}"


def address_of_length(size: int, domain: str = "example.com") -> str:
    return "x" * (size - len(domain) - 1) + "@" + domain


@dataclass(frozen=True)
class Row:
    uid: str
    email: str = ""
    phone: str = ""
    expect: str = ""  # a Netmera user id (matched) or a reason
    kind: str = ""  # the kind it is matched by, when matched


def email(uid: str, value: str, expect: str) -> Row:
    return Row(uid, email=value, expect=expect, kind="email" if expect.startswith("N") else "")


def phone(uid: str, value: str, expect: str) -> Row:
    return Row(uid, phone=value, expect=expect, kind="msisdn" if expect.startswith("N") else "")


# Netmera's side, stored normalised (as DESIGN.md expects): (user_id, email, msisdn).
RIGHT = [
    ("N-mailto", "mailto.user@example.com", None),
    ("N-angle", "angle.user@example.com", None),
    ("N-both", "both.user@example.com", None),
    ("N-root", "root.user@example.com", None),
    ("N-idn", "idn.user@xn--mnchen-3ya.de", None),
    ("N-wide", "wide.user@example.com", None),
    ("N-254", address_of_length(254), None),
    ("N-turkish", "ali@gmail.com", None),
    ("N-zw-domain", "zw.user@example.com", None),
    ("N-sql-key", "sql.key@example.com", None),
    ("N-path-key", None, tr_phone(20)),
    ("N-long-key", "long.key@example.com", None),
    ("N-mixed", None, tr_phone(19)),
    *[(f"N-p{k:02d}", None, tr_phone(k)) for k in range(1, 14)],
]
# What a wrong reading would find. None of these may ever be a member.
DECOYS = [
    ("D-shared-1", "shared@example.com", None),  # one address, two users: ambiguous
    ("D-shared-2", "shared@example.com", None),
    ("D-latin", "alice@example.com", None),
    ("D-bob", "bob@example.com", None),
    ("D-255", address_of_length(255), None),
    ("D-legacy-ulabel", "legacy@münchen.de", None),  # stored in Unicode form: not comparable
    ("D-passwd", "../../etc/passwd", None),
    ("D-sql", "' or 1=1 --", None),
    ("D-10kb", "x" * KB10 + "@example.com", None),
    ("D-fake-alabel", "user@xn--abc.com", None),
    ("D-snowman", "user@xn--n3h.com", None),  # IDNA 2003's reading of user@☃.com
    ("D-display", "alice <alice@example.com>", None),
    ("D-vanity", None, "+905321000222"),  # "0532 100 0 ABC" read as digits
    ("D-letter-o", None, "+905321666614"),  # "+90 532 1OO OO 14": letter O read as 6
    ("D-two-1", None, tr_phone(15)),
    ("D-two-2", None, tr_phone(16)),
    ("D-long-phone", None, tr_phone(17)),
    ("D-bell", None, tr_phone(18)),
]

ROWS = [
    # -- email: wrappers removed, one address, the domain in one form -------------------------
    email("s-mailto", "mailto:Mailto.User@Example.com", "N-mailto"),
    email("s-angle", "<angle.user@example.com>", "N-angle"),
    email("s-angle-mailto", " <MAILTO:Both.User@example.com> ", "N-both"),
    email("s-root-dot", "root.user@example.com.", "N-root"),
    email("s-idn-unicode", "idn.user@münchen.de", "N-idn"),
    email("s-idn-ascii", "IDN.USER@XN--MNCHEN-3YA.DE", "N-idn"),
    email("s-idn-nfd", "idn.user@mu\u0308nchen.de", "N-idn"),
    email("s-idn-caps", "Idn.User@MÜNCHEN.DE.", "N-idn"),
    email("s-ideographic-dot", "wide.user@example\u3002com", "N-wide"),
    email("s-254", address_of_length(254).upper(), "N-254"),
    email("s-turkish-caps", "ALİ@GMAİL.COM", "N-turkish"),
    email("s-zero-width-domain", "zw.user@exa\u200bmple.com", "N-zw-domain"),
    email("s-ambiguous", "<Shared@Example.com>", AMBIGUOUS),
    # -- email: valid, and nobody's ------------------------------------------------------------
    email("s-homoglyph-local", "\u0430lice@example.com", NOT_FOUND),  # Cyrillic a
    email("s-homoglyph-domain", "alice@ex\u0430mple.com", NOT_FOUND),
    email("s-legacy-ulabel", "legacy@münchen.de", NOT_FOUND),
    email("s-sql-shaped", "admin'--@example.com", NOT_FOUND),
    email("s-path-shaped", "../../etc/passwd@example.com", NOT_FOUND),
    # -- email: invalid ------------------------------------------------------------------------
    email("s-255", address_of_length(255), INVALID),
    email("s-two-comma", "alice@example.com,bob@example.com", INVALID),
    email("s-two-semicolon", "alice@example.com; bob@example.com", INVALID),
    email("s-two-space", "alice@example.com bob@example.com", INVALID),
    email("s-two-at", "alice@bob@example.com", INVALID),
    email("s-display-name", "Alice <alice@example.com>", INVALID),
    email("s-mailto-outside", "mailto:<alice@example.com>", INVALID),
    email("s-unpaired", "<alice@example.com", INVALID),
    email("s-double-brackets", "<<alice@example.com>>", INVALID),
    email("s-two-root-dots", "alice@example.com..", INVALID),
    email("s-10kb-local", "x" * KB10 + "@example.com", INVALID),
    email("s-10kb-domain", "a@" + "ü" * KB10 + ".com", INVALID),
    email("s-10kb-junk", "<" * KB10, INVALID),
    email("s-sql", "' OR 1=1 --", INVALID),
    email("s-sql-after", "alice@example.com' OR '1'='1", INVALID),
    email("s-path", "../../etc/passwd", INVALID),
    email("s-bell", "alice\x07@example.com", INVALID),
    email("s-escape", "\x1b[31malice@example.com", INVALID),
    email("s-delete", "alice@example.com\x7f", INVALID),
    email("s-backspace", "alice\x08@example.com", INVALID),
    email("s-zero-width-local", "al\u200bice@example.com", INVALID),
    email("s-rtl-override", "\u202emoc.elpmaxe@ecila", INVALID),
    email("s-fake-alabel", "user@xn--abc.com", INVALID),
    email("s-snowman", "user@☃.com", INVALID),
    email("s-underscore-domain", "alice@exa_mple.com", INVALID),
    # -- phone: odd spellings of valid numbers -------------------------------------------------
    phone("s-p-spaces", "+90 532 100 00 01", "N-p01"),
    phone("s-p-dots", "0532.100.00.02", "N-p02"),
    phone("s-p-parens", "(0532) 100 00 03", "N-p03"),
    phone("s-p-00", "0090 532 100 00 04", "N-p04"),
    phone("s-p-tel", "tel:+90-532-100-00-05", "N-p05"),
    phone("s-p-extension", "+90 532 100 00 06 ext. 12", "N-p06"),
    phone("s-p-international-first", "905321000007", "N-p07"),
    phone(
        "s-p-arabic-indic",
        "\u0660\u0665\u0663\u0662\u0661\u0660\u0660\u0660\u0660\u0660\u0668",
        "N-p08",
    ),
    phone(
        "s-p-arabic-indic-international-first",
        "\u0669\u0660\u0665\u0663\u0662\u0661\u0660\u0660\u0660\u0660\u0660\u0669",
        "N-p09",
    ),
    phone(
        "s-p-full-width",
        "\uff0b\uff19\uff10\uff15\uff13\uff12\uff11\uff10\uff10\uff10\uff10\uff11\uff10",
        "N-p10",
    ),
    phone("s-p-no-break-spaces", "+90\u00a0532\u00a0100\u00a000\u00a011", "N-p11"),
    phone("s-p-trunk", "0532 100 00 12", "N-p12"),
    phone("s-p-trailing-bell", "+90 532 100 00 13\x07", "N-p13"),  # phonenumbers drops the tail
    # -- phone: invalid ------------------------------------------------------------------------
    phone("s-p-vanity", "0532 100 0 ABC", INVALID),
    phone("s-p-letter-o", "+90 532 1OO OO 14", INVALID),
    phone("s-p-two", "+905321000015, +905321000016", INVALID),
    phone("s-p-10kb", "9" * KB10, INVALID),
    phone("s-p-251", "90" + " " * 239 + "5321000017", INVALID),
    phone("s-p-bell-inside", "+90 532\x07100 00 18", INVALID),
    phone("s-p-sql", "' OR 1=1 --", INVALID),
    phone("s-p-path", "../../etc/passwd", INVALID),
    phone("s-p-short", "12", INVALID),
    phone("s-p-superscripts", "\u2079\u2070\u2075\u00b3\u00b2", INVALID),
    # -- several identifiers, blanks, hostile user keys ----------------------------------------
    Row("s-mixed", "alice@example.com, bob@example.com", "+90 532 100 00 19", "N-mixed", "msisdn"),
    Row("s-valid-and-invalid", "nobody@example.com", "' OR 1=1 --", NOT_FOUND),
    Row("s-both-invalid", "../../etc/passwd", "../../etc/passwd", INVALID),
    Row("s-blank", " ", "\t", NO_IDENTIFIER),
    Row("s-nothing", "", "", NO_IDENTIFIER),
    Row("k'); DROP TABLE netmera_users; --", "sql.key@example.com", "", "N-sql-key", "email"),
    Row("../../etc/passwd", "", "+90 532 100 00 20", "N-path-key", "msisdn"),
    Row("k" * KB10, "<long.key@example.com>", "", "N-long-key", "email"),
    Row("key\x07bell", "", "", NO_IDENTIFIER),
]
REFUSED = [Row("   ", "alice@example.com", "", "")]  # no user key: refused, not matched


def expected() -> dict:
    reasons = {r: 0 for r in (AMBIGUOUS, NOT_FOUND, INVALID, NO_IDENTIFIER)}
    matched_by = {"email": 0, "msisdn": 0}
    members = set()
    for row in ROWS:
        if row.expect.startswith("N"):
            members.add(row.expect)
            matched_by[row.kind] += 1
        else:
            reasons[row.expect] += 1
    return {
        "connector_users": len(ROWS),
        "matched_source_users": sum(matched_by.values()),
        "netmera_users": len(members),
        "members": sorted(members),
        "reasons": reasons,
        "matched_by": matched_by,
        "refused_rows": len(REFUSED),
    }


def test_the_corpus_is_what_it_claims() -> None:
    """Every hostile kind named in the issue is present; keys distinct; decoys unreachable."""
    assert len({r.uid for r in ROWS}) == len(ROWS)
    targets = {r.expect for r in ROWS if r.expect.startswith("N")}
    assert targets == {u for u, _, _ in RIGHT}  # each right user is some row's target
    assert not targets & {u for u, _, _ in DECOYS}
    want = expected()
    assert all(want["reasons"].values()) and all(want["matched_by"].values())


def test_each_row_alone_normalises_to_its_target_or_to_nothing_stored() -> None:
    """The same expectations value by value, to name the row when the run test fails."""
    from include.config.segments import IdentifierKind
    from include.matching.normalize import normalize_value

    stored = {user: {"email": m, "msisdn": p} for user, m, p in RIGHT + DECOYS}
    every_value = {v for kinds in stored.values() for v in kinds.values() if v}
    for row in ROWS:
        found = {
            "email": normalize_value(IdentifierKind.EMAIL, row.email, None),
            "msisdn": normalize_value(IdentifierKind.MSISDN, row.phone, "TR"),
        }
        values = set(found.values()) - {None}
        if row.expect.startswith("N"):
            assert found[row.kind] == stored[row.expect][row.kind], row.uid
        elif row.expect == INVALID:
            assert not values, row.uid
        elif row.expect == NOT_FOUND:
            assert values and not values & every_value, row.uid


def write_segment(ws: Path) -> None:
    config = {
        "id": SEGMENT,
        "name": "Hostile identifiers",
        "description": "Every hostile spelling, one source user each",
        "schedule": None,
        "source": {"type": "file", "path": str(ws / "audience.csv")},
        "user_key": "uid",
        "identifiers": [
            {"field": "email", "kind": "email"},
            {"field": "phone", "kind": "msisdn"},
        ],
        "default_region": "TR",
        "guardrails": {"min_match_rate": 0, "max_shrink": None, "max_growth": None},
    }
    (ws / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))


def netmera_rows() -> list[tuple]:
    return [
        (user, f"ext-{user}", mail, msisdn, f"dev-{user}", True)
        for user, mail, msisdn in RIGHT + DECOYS
    ]


def use_netmera_db(
    request: pytest.FixtureRequest, workspace: Path, database: str, match_path: str
) -> sa.Engine:
    """The user table in SQLite (the workspace's file) or in a fresh PostgreSQL database, and
    `netmera_db` pointing at it with the match path chosen; an engine to read it back."""
    if database == "sqlite":
        write_users(workspace / "netmera.db", netmera_rows())
        conn = {"conn_type": "sqlite", "host": str(workspace / "netmera.db")}
        url = f"sqlite:///{workspace / 'netmera.db'}"
    else:
        pg = request.getfixturevalue("pg_database")
        use_pg_netmera_db(request.getfixturevalue("monkeypatch"), pg, netmera_rows())
        conn = {k: v for k, v in pg.items() if k != "url"}
        url = pg["url"]
    request.getfixturevalue("monkeypatch").setenv(
        "AIRFLOW_CONN_NETMERA_DB", json.dumps({**conn, "extra": {"match_path": match_path}})
    )
    engine = sa.create_engine(url)
    request.addfinalizer(engine.dispose)
    return engine


@pytest.mark.parametrize(
    ("database", "match_path"),
    [
        ("sqlite", "worker"),
        ("sqlite", "database"),
        pytest.param("postgres", "worker", marks=pytest.mark.postgres),
        pytest.param("postgres", "database", marks=pytest.mark.postgres),
    ],
)
def test_hostile_identifiers_match_or_are_counted_exactly_on_every_path(
    request: pytest.FixtureRequest, workspace: Path, capsys, database: str, match_path: str
) -> None:
    engine = use_netmera_db(request, workspace, database, match_path)
    write_segment(workspace)
    write_csv(
        workspace / "audience.csv",
        ["uid", "email", "phone"],
        [[r.uid, r.email, r.phone] for r in ROWS + REFUSED],
    )

    assert run_segment(SEGMENT) == "success"

    details = cli_json(capsys, "details", SEGMENT)
    code, out, err = cli(capsys, "members", SEGMENT)
    assert code == 0, err
    run = details["runs"][0]
    assert (details["status"], run["status"]) == ("Ready", "published"), run
    found = {
        "connector_users": details["connector_users"],
        "matched_source_users": details["matched_source_users"],
        "netmera_users": details["netmera_users"],
        "members": sorted(out.split()),
        "reasons": details["reasons"],
        "matched_by": details["matched_by"],
        "refused_rows": details["refused_rows"],
    }
    assert found == expected()
    assert not set(found["members"]) & {user for user, _, _ in DECOYS}
    # The user table is only read, whatever the source held.
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM netmera_users").fetchall()
    assert sorted(tuple(r) for r in rows) == sorted(netmera_rows())
