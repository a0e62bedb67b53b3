"""Demo data for the embedded default: Netmera's user table and a warehouse VIP list.

    python -m include.demo.seed --db PATH --warehouse PATH [--users N]

Every person comes from a string-seeded `random.Random`, so user *i* is the same person whatever
`--users` is, on any Python version: the bundled sample audiences (`include.demo.samples`) pick
users through the same `netmera_user(i)` and so keep matching the seeded table.

Netmera's side is stored normalised (lower-case emails, E.164 phone numbers), except for a few
legacy rows kept as typed (mixed-case email, national-format phone): compared as stored, those
do not match by that identifier, as in real data (see `stored_identifiers`). Emails and
phone numbers embed the user's number, so they are unique except for the deliberate family pairs
that share an email, and never collide with `outsider(k)` people (for `--users` < 900,000).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import time
import uuid
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import phonenumbers

OUTSIDER_SERIAL_BASE = 900_000  # outsiders' phone/email serials; Netmera users stay below it
FAMILY_PAIR_RATE = 0.005  # pairs (2k-1, 2k) sharing one email: ~0.5 % of users
LEGACY_RATE = 0.015  # per identifier: stored as typed, not normalised

_COUNTRIES = ("TR", "DE", "GB", "US")
_COUNTRY_WEIGHTS = (75, 12, 8, 5)
_FIRST = {  # space-separated to stay compact; split below
    "TR": "ahmet mehmet mustafa ali huseyin hasan ibrahim yusuf omer murat emre burak can deniz "
    "elif zeynep ayse fatma emine merve busra esra ozge selin ece irem ebru gizem",
    "DE": "lukas leon finn jonas paul felix max anna lea lena hannah sophie marie laura",
    "GB": "oliver george harry jack charlie olivia amelia isla ava emily jessica",
    "US": "james john robert michael william mary patricia jennifer linda elizabeth",
}
_LAST = {
    "TR": "yilmaz kaya demir sahin celik yildiz yildirim ozturk aydin ozdemir arslan dogan kilic "
    "aslan cetin kara koc kurt ozkan simsek polat korkmaz erdogan tekin aksoy",
    "DE": "mueller schmidt schneider fischer weber meyer wagner becker schulz hoffmann",
    "GB": "smith jones taylor brown williams wilson johnson davies evans thomas",
    "US": "smith johnson williams brown jones garcia miller davis rodriguez martinez",
}
_FIRST = {country: names.split() for country, names in _FIRST.items()}
_LAST = {country: names.split() for country, names in _LAST.items()}
_DOMAINS = {
    "TR": ("gmail.com", "hotmail.com", "yandex.com.tr", "outlook.com", "icloud.com"),
    "DE": ("gmx.de", "web.de", "gmail.com", "t-online.de"),
    "GB": ("gmail.com", "yahoo.co.uk", "outlook.com", "btinternet.com"),
    "US": ("gmail.com", "yahoo.com", "icloud.com", "outlook.com"),
}
# country: (calling code, mobile prefixes, serial digits). A national number is prefix + one
# filler digit (2-9; none for TR) + the person's scrambled serial, which keeps numbers unique.
_MOBILE = {
    "TR": (90, "505 506 507 530 532 533 535 536 538 539 541 542 543 544 545 546 551 552 553", 7),
    "DE": (49, "151 152 157 159 160 162 170 171 172 175 176 177 178 179", 7),
    "GB": (44, "74 75 77 78 79", 7),
    "US": (1, "212 312 415 617 206 305 512 303 404 702", 6),
}


def sha256_hex(value: str) -> str:
    """Lower-case hex SHA-256 of a normalised identifier, as warehouses share them."""
    return hashlib.sha256(value.encode()).hexdigest()


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID string drawn from `rng`, so that it is reproducible."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _identity(rng: random.Random, serial: int, email_sep: str) -> dict[str, str]:
    """Country, email and E.164 mobile: always drawn first, so a partner can be recomputed."""
    country = rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0]
    first, last = rng.choice(_FIRST[country]), rng.choice(_LAST[country])
    shapes = (f"{first}.{last}", f"{first}{last}", f"{first[0]}.{last}", f"{first}_{last}")
    local = rng.choice(shapes)
    email = f"{local}{email_sep}{serial}@{rng.choice(_DOMAINS[country])}"
    return {"country": country, "email": email, "msisdn": _mobile(rng, country, serial)}


def _mobile(rng: random.Random, country: str, serial: int) -> str:
    code, prefixes, digits = _MOBILE[country]
    # x -> x * odd-non-5 multiplier + offset is a bijection mod 10**digits: unique, less regular.
    tail = f"{(serial * 7_919_317 + 1_234_567) % 10**digits:0{digits}d}"
    for _ in range(50):
        filler = "" if country == "TR" else rng.choice("23456789")
        national = f"{rng.choice(prefixes.split())}{filler}{tail}"
        number = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
        if phonenumbers.is_valid_number_for_region(number, country):
            return f"+{code}{national}"
    raise RuntimeError(f"no valid {country} mobile number for serial {serial}")


def shares_email(i: int) -> bool:
    """Whether user i belongs to a family pair (2k-1, 2k) holding one email between them."""
    return random.Random(f"netmera-family-{(i + 1) // 2}").random() < FAMILY_PAIR_RATE


def netmera_user(i: int) -> dict[str, Any]:
    """Netmera user number i (1-based), with its devices; pure and stable for a given i."""
    rng = random.Random(f"netmera-user-{i}")
    person = _identity(rng, i, "")
    has_external_id, has_email, has_msisdn = (rng.random() < p for p in (0.92, 0.80, 0.70))
    email = person["email"] if has_email else None
    if shares_email(i):  # both take the odd member's address
        holder = i if i % 2 else i - 1
        email = _identity(random.Random(f"netmera-user-{holder}"), holder, "")["email"]
    roll = rng.random()
    n_devices = 0 if roll < 0.07 else 1 if roll < 0.82 else 2 if roll < 0.97 else 3
    devices = [
        {
            "installation_id": random_uuid(rng),
            "push_permitted": rng.random() < 0.60,
        }
        for _ in range(n_devices)
    ]
    return {
        "user_id": f"nm-{i:07d}",
        "external_id": f"ext-{i:07d}" if has_external_id else None,
        "email": email,
        "msisdn": person["msisdn"] if has_msisdn else None,
        "country": person["country"],
        "devices": devices,
    }


def outsider(k: int) -> dict[str, Any]:
    """Person k who is not a Netmera user: email and phone disjoint from every netmera_user."""
    person = _identity(random.Random(f"outsider-{k}"), OUTSIDER_SERIAL_BASE + k, ".")
    return {"external_id": None, **person}


def stored_identifiers(user: dict[str, Any]) -> tuple[str | None, str | None]:
    """How Netmera holds the user's email and phone: normalised, but for legacy rows written
    before normalisation (LEGACY_RATE each), which keep the typed case or a national format."""
    rng = random.Random(f"netmera-legacy-{user['user_id']}")
    email, msisdn = user["email"], user["msisdn"]
    if email and rng.random() < LEGACY_RATE:
        local, domain = email.split("@")
        email = f"{local.title()}@{domain.capitalize()}"
    if msisdn and rng.random() < LEGACY_RATE:
        national = phonenumbers.PhoneNumberFormat.NATIONAL
        msisdn = phonenumbers.format_number(phonenumbers.parse(msisdn), national)
    return email, msisdn


def device_rows(user: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One netmera_users row per device; a user without devices keeps one row, without one."""
    base = (user["user_id"], user["external_id"], *stored_identifiers(user))
    if not user["devices"]:
        return [(*base, None, 0)]
    return [(*base, d["installation_id"], int(d["push_permitted"])) for d in user["devices"]]


def _replace_table(
    path: Path, name: str, ddl: str, rows: Iterable[tuple[Any, ...]], indexed: Iterable[str] = ()
) -> int:
    """Drop and refill one table in a single transaction; other tables in the file stay as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN: DDL joins the txn
    try:
        conn.execute("BEGIN")
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} ({ddl})")
        columns = ddl.count(",") + 1
        insert = f"INSERT INTO {name} VALUES ({', '.join('?' * columns)})"
        count, it = 0, iter(rows)
        while batch := list(islice(it, 10_000)):
            conn.executemany(insert, batch)
            count += len(batch)
        for column in indexed:
            conn.execute(f"CREATE INDEX ix_{name}_{column} ON {name} ({column})")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return count


def seed_netmera_users(db: Path, users: int) -> int:
    """(Re)create netmera_users for users 1..N; returns the number of device rows."""
    rows = (row for i in range(1, users + 1) for row in device_rows(netmera_user(i)))
    return _replace_table(
        db,
        "netmera_users",
        "user_id TEXT NOT NULL, external_id TEXT, email TEXT, msisdn TEXT, installation_id TEXT,"
        " push_permitted BOOLEAN NOT NULL",
        rows,
        indexed=("user_id", "external_id", "email", "msisdn", "installation_id"),
    )


def vip_rows(users: int, size: int = 3_000) -> list[tuple[Any, ...]]:
    """A hashed-identifier customer list: mostly Netmera users, plus unmatchable rows of each kind.

    Lifetime values are all above 1,000, as the demo segment describes its VIPs.
    Hashes are upper-cased now and then, as some warehouses emit them, to exercise normalisation.
    """
    rng = random.Random("vip-customers")
    invalid, both_null = 12, 8
    outsiders = round(size * 0.06)
    known = size - outsiders - invalid - both_null

    def hashed(value: str | None) -> str | None:
        digest = None if value is None else sha256_hex(value)
        return digest.upper() if digest and rng.random() < 0.2 else digest

    def hashes(person: dict[str, Any]) -> tuple[str | None, str | None]:
        # Both identifiers, or only one of them when the person has it.
        mode = rng.choices(("both", "email", "phone"), (5, 3, 2))[0]
        email = person["email"] if mode != "phone" or not person["msisdn"] else None
        phone = person["msisdn"] if mode != "email" or not person["email"] else None
        return hashed(email), hashed(phone)

    pairs = [hashes(outsider(k)) for k in rng.sample(range(1, 50_000), outsiders)]
    for i in rng.sample(range(1, users + 1), users):
        if len(pairs) == outsiders + known:
            break
        user = netmera_user(i)
        if user["email"] or user["msisdn"]:
            pairs.append(hashes(user))
    pairs += [("not-a-hash", None), (None, "not-a-hash")] * (invalid // 2)
    pairs += [(None, None)] * both_null
    rng.shuffle(pairs)
    rows = [
        (f"c-{10_001 + n}", email, phone, round(1_000 + rng.lognormvariate(7, 1), 2))
        for n, (email, phone) in enumerate(pairs)
    ]
    for n in rng.sample(range(len(rows)), 2):  # customers the warehouse lost the id of
        rows[n] = (None, *rows[n][1:])
    return rows


def seed_warehouse(warehouse: Path, users: int) -> int:
    """(Re)create vip_customers in the warehouse file; returns its row count."""
    return _replace_table(
        warehouse,
        "vip_customers",
        "customer_id TEXT, email_sha256 TEXT, phone_sha256 TEXT, lifetime_value REAL",
        vip_rows(users),
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m include.demo.seed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", type=Path, required=True, help="SQLite file for netmera_users")
    parser.add_argument(
        "--warehouse", type=Path, required=True, help="SQLite file for vip_customers"
    )
    parser.add_argument("--users", type=int, default=100_000, help="Netmera users (default 100000)")
    args = parser.parse_args(argv)
    if not 1 <= args.users < OUTSIDER_SERIAL_BASE:
        parser.error(f"--users must be between 1 and {OUTSIDER_SERIAL_BASE - 1}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Seed both files and print a one-line summary (counts and paths only, no identifiers)."""
    args = _parse_args(argv)
    started = time.perf_counter()
    rows = seed_netmera_users(args.db, args.users)
    vips = seed_warehouse(args.warehouse, args.users)
    print(
        f"seeded {args.users} Netmera users ({rows} device rows) into {args.db}, "
        f"{vips} vip_customers into {args.warehouse} in {time.perf_counter() - started:.1f}s"
    )


if __name__ == "__main__":
    main()
