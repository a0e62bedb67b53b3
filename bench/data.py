"""Synthetic Netmera users and a messy source audience, vectorised so 10M rows take seconds.

Every person is a pure function of an integer index (no RNG state), so the audience can
recompute any person's identifiers: index `i < users` is a Netmera user, `i >= users` an outsider
(same shapes, identifiers nobody in Netmera holds). What varies per row (which fields a source
sends, how it spells them) comes from a seeded hash of the index, so a size always yields the
same files.

Netmera side (`users.parquet`, one row per device, ~1.15 rows per user): external id for 92 %,
email for 80 % (1 % of users share it with a family member: ambiguous), E.164 mobile for 70 %
(TR, some DE), push permission on ~65 % of devices, ~1 % legacy rows stored un-normalised.

Source side (`audience.parquet`, all strings, like a staged audience): 95 % Netmera users, the
rest outsiders (some with only junk or nothing); external id, email, phone and an email SHA-256
for some; mixed case, padding, national/international/digits-only phones, duplicate rows. About
8-9 % of source users end unmatched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from include.config.segments import SegmentConfig

AUDIENCE_FIELDS = ("uid", "ext", "email", "phone", "email_hash")
MEMBER_SHARE = 0.95  # of the audience; the rest are outsiders
DEVICE_SHARE = 0.15  # users with a second device
EXT_SHARE = 92.0  # % of Netmera users with an extId
_FIRST = [
    "ahmet",
    "mehmet",
    "ayse",
    "fatma",
    "emre",
    "zeynep",
    "can",
    "elif",
    "lukas",
    "anna",
    "oliver",
    "emily",
    "james",
    "mary",
]
_LAST = [
    "yilmaz",
    "kaya",
    "demir",
    "sahin",
    "celik",
    "mueller",
    "schmidt",
    "smith",
    "jones",
    "brown",
    "garcia",
]
_DOMAINS = ["gmail.com", "hotmail.com", "outlook.com", "yandex.com.tr", "icloud.com", "gmx.de"]
# TR mobile prefixes 500-509 and 530-559: every 7-digit serial after them is a valid number.
_TR_PREFIXES = [str(p) for p in [*range(500, 510), *range(530, 560)]]
_DE_THIRD = "01256789"  # +49 15x: 15[0-25-9] then 8 digits is a valid German mobile
_SPACE = 400_000_000  # phone serials: idx -> (idx * _STEP) mod _SPACE is one-to-one
_STEP = 7_654_321


def _mix(idx: np.ndarray, salt: int) -> np.ndarray:
    """SplitMix64 of (idx, salt): a reproducible pseudo-random uint64 per index."""
    with np.errstate(over="ignore"):
        x = idx.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _pct(idx: np.ndarray, salt: int) -> np.ndarray:
    return (_mix(idx, salt) % np.uint64(10_000)).astype(np.int64) / 100.0


def _pick(words: list[str], idx: np.ndarray, salt: int) -> pa.Array:
    return pc.take(pa.array(words), pa.array(_mix(idx, salt) % np.uint64(len(words))))


def _text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _where(mask: np.ndarray, values: pa.Array, other: pa.Array | None = None) -> pa.Array:
    other = pa.nulls(len(values), pa.string()) if other is None else other
    return pc.if_else(pa.array(mask), values, other)


def external_id(idx: np.ndarray) -> pa.Array:
    return _join("ext-", _text(idx * 13 + 7))


def email(idx: np.ndarray) -> pa.Array:
    """first.last<idx>@domain; family pairs (2k, 2k+1) share one address (ambiguous)."""
    family = _pct(idx // 2, 5) < 1.0
    own = idx.copy()
    own[family] = idx[family] // 2 * 2
    local = _join(_pick(_FIRST, own, 1), ".", _pick(_LAST, own, 2), _text(own))
    local = _where(family, _join("family.", _text(own)), local)
    return _join(local, "@", _pick(_DOMAINS, own, 3))


def national_phone(idx: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(country code, national significant number): TR mostly, DE for ~10 %."""
    n = (idx.astype(np.int64) * _STEP) % _SPACE
    serial = pc.utf8_lpad(_text(n % 10_000_000), 7, "0")
    tr = _join(pc.take(pa.array(_TR_PREFIXES), pa.array(n // 10_000_000)), serial)
    de_third = pc.take(pa.array(list(_DE_THIRD)), pa.array(n % len(_DE_THIRD)))
    de = _join("15", de_third, pc.utf8_lpad(_text(n % 100_000_000), 8, "0"))
    german = _pct(idx, 4) < 10.0
    return _where(german, pa.array(["49"] * len(idx)), pa.array(["90"] * len(idx))), _where(
        german, de, tr
    )


def e164(idx: np.ndarray) -> pa.Array:
    code, nsn = national_phone(idx)
    return _join("+", code, nsn)


def users_table(users: int) -> pa.Table:
    """Netmera's user table, one row per device, stored normalised except legacy rows."""
    person = np.arange(users, dtype=np.int64)
    second = person[_pct(person, 6) < DEVICE_SHARE * 100]
    idx = np.sort(np.concatenate([person, second]))
    rows = np.arange(len(idx))
    mail = email(idx)
    legacy_mail = _pct(idx, 7) < 1.0
    mail = _where(legacy_mail, pc.utf8_capitalize(mail), mail)
    code, nsn = national_phone(idx)
    phone = _join("+", code, nsn)
    legacy_phone = (_pct(idx, 8) < 1.0) & pc.equal(code, "90").to_numpy(zero_copy_only=False)
    phone = _where(legacy_phone, _join("0", nsn), phone)
    return pa.table(
        {
            "user_id": _join("nm", _text(idx)),
            "external_id": _where(_pct(idx, 10) < EXT_SHARE, external_id(idx)),
            "email": _where(_pct(idx, 11) < 80.0, mail),
            "msisdn": _where(_pct(idx, 12) < 70.0, phone),
            "installation_id": _join("dev-", _text(rows * 31 + 11)),
            "push_permitted": pa.array(_pct(rows, 13) < 65.0),
        }
    )


def _messy_email(idx: np.ndarray, spell: np.ndarray) -> pa.Array:
    """Person `idx`'s email as a source writes it; `spell` picks the writing."""
    clean = email(idx)
    case = _pct(spell, 20)
    spelled = pc.choose(
        pa.array(np.select([case < 25, case < 35], [1, 2], 0).astype(np.int8)),
        clean,
        pc.utf8_title(clean),
        pc.utf8_upper(clean),
    )
    padded = _pct(spell, 21) < 10.0
    spelled = _where(padded, _join("  ", spelled, " "), spelled)
    junk = _pct(spell, 22) < 1.0
    return _where(junk, pc.replace_substring(clean, "@", " at "), spelled)


def _messy_phone(idx: np.ndarray, spell: np.ndarray) -> pa.Array:
    """E.164, spaced, national (TR only: "0532 123 45 67"), digits only, 00-prefixed, junk."""
    code, nsn = national_phone(idx)

    def part(start: int, stop: int | None = None) -> pa.Array:
        return pc.utf8_slice_codeunits(nsn, start, stop)

    variants = [
        _join("+", code, nsn),
        _join("+", code, " ", part(0, 3), " ", part(3)),
        _join("0", part(0, 3), " ", part(3, 6), " ", part(6, 8), " ", part(8)),
        _join(code, nsn),
        _join("00", code, "-", part(0, 3), "-", part(3)),
        _join("(", part(0, 3), ") ", part(3)),
    ]
    style = (_mix(spell, 23) % np.uint64(100)).astype(np.int64)
    choice = np.searchsorted(np.cumsum([30, 20, 25, 12, 8, 5]), style, side="right")
    german = pc.equal(code, "49").to_numpy(zero_copy_only=False)
    choice[german & np.isin(choice, [2, 5])] = 1  # national spellings only for the home region
    phone = pc.choose(pa.array(choice.astype(np.int8)), *variants)
    junk = _pct(spell, 24)
    return _where(junk < 2.0, pa.array(np.where(junk < 1.0, "n/a", "12345")), phone)


def _sha256(values: pa.Array) -> pa.Array:
    return pa.array(
        [None if v is None else hashlib.sha256(v.encode()).hexdigest() for v in values.to_pylist()]
    )


def audience_table(users: int, audience: int, seed: int = 7) -> pa.Table:
    """The staged source audience: one row per source row (some users twice)."""
    rng = np.random.default_rng(seed)
    members = int(audience * MEMBER_SHARE)
    person = np.concatenate(
        [
            rng.choice(users, size=min(members, users), replace=False),
            np.arange(users, users + audience - min(members, users)),
        ]
    ).astype(np.int64)
    dupes = person[_pct(person, 30) < 2.0]
    idx = np.concatenate([person, dupes])
    row_salt = np.concatenate([np.zeros(len(person), np.int64), np.ones(len(dupes), np.int64)])
    spell = idx * 2 + row_salt  # a duplicate row spells its identifiers differently
    outsider = idx >= users
    nothing = outsider & (_pct(idx, 31) < 10.0)
    only_junk = outsider & ~nothing & (_pct(idx, 32) < 10.0)
    # A source knows a member's extId only if Netmera has one; email and phone it knows anyway.
    has_ext = (_pct(idx, 33) < 92.0) & ((_pct(idx, 10) < EXT_SHARE) | outsider)
    hashed = _pct(idx, 36) < 10.0
    has_mail = (_pct(idx, 34) < 75.0) & ~hashed
    has_phone = _pct(idx, 35) < 60.0
    clean_mail = email(idx)
    padded_ext = _where(_pct(spell, 37) < 5.0, _join(" ", external_id(idx), "\t"), external_id(idx))
    junk = pa.array(np.where(_pct(idx, 38) < 50.0, "not-an-email", "--"))
    return pa.table(
        {
            "uid": _join("src-", _text(idx)),
            "ext": _where(has_ext & ~nothing & ~only_junk, padded_ext),
            "email": _where(only_junk, junk, _where(has_mail & ~nothing, _messy_email(idx, spell))),
            "phone": _where(has_phone & ~nothing & ~only_junk, _messy_phone(idx, spell)),
            "email_hash": _where(hashed & ~nothing & ~only_junk, _sha256(clean_mail)),
        }
    )


def write(folder: Path, users: int, audience: int) -> tuple[Path, Path]:
    """users.parquet and audience.parquet in `folder` (kept: generating is the slow part)."""
    folder.mkdir(parents=True, exist_ok=True)
    users_path, audience_path = folder / "users.parquet", folder / "audience.parquet"
    if not users_path.exists():
        pq.write_table(users_table(users), users_path.with_suffix(".tmp"), row_group_size=500_000)
        users_path.with_suffix(".tmp").replace(users_path)
    return users_path, write_audience(audience_path, users, audience)


def write_audience(path: Path, users: int, audience: int, seed: int = 7) -> Path:
    """An audience of `audience` source rows against `users` Netmera users at `path` (kept;
    `seed` picks its members: name the path after it)."""
    if not path.exists():
        pq.write_table(audience_table(users, audience, seed), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return path


SEGMENT = SegmentConfig.model_validate(
    {
        "id": "bench",
        "name": "Benchmark audience",
        "source": {"type": "file", "path": "audience.parquet"},
        "user_key": "uid",
        "identifiers": [
            {"field": "ext", "kind": "external_id"},
            {"field": "email", "kind": "email"},
            {"field": "phone", "kind": "msisdn"},
            {"field": "email_hash", "kind": "email_sha256"},
        ],
        "default_region": "TR",
    }
)
