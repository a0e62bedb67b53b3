"""The bundled sample audiences: a Mixpanel cohort export (CSV) and an Amplitude cohort (Parquet).

    python -m include.demo.samples [--out DIR]

People are drawn (seeded) from the first 100,000 `netmera_user(i)`, so the files match the table
that `include.demo.seed` writes by default. Identifiers are rendered the messy way real exports
are (mixed case, stray spaces, national phone formats), and a few rows of every unmatchable kind
(unknown person, invalid values, no identifiers, an email two users share, repeats) are mixed in
so that a demo run shows each outcome.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path
from typing import Any

import phonenumbers

from include.demo.seed import netmera_user, outsider, random_uuid, shares_email

POOL = 100_000  # users the samples draw from: the default `--users` of the seed
DATA_DIR = Path(__file__).resolve().parent.parent / "segments" / "data"
MIXPANEL_FILE = "mixpanel_cart_abandoners.csv"
AMPLITUDE_FILE = "amplitude_churn_risk.parquet"

_BAD_EMAILS = ("n/a", "N/A", "not-an-email", "@")
_BAD_PHONES = ("12", "0", "123", "n/a")
# A local way of writing a national number, besides phonenumbers' own NATIONAL format.
_LOCAL_STYLE = {
    "TR": lambda nsn: f"(0{nsn[:3]}) {nsn[3:6]}-{nsn[6:]}",
    "DE": lambda nsn: f"0{nsn[:3]}/{nsn[3:]}",
}
_FORMAT = phonenumbers.PhoneNumberFormat


def messy_email(rng: random.Random, email: str) -> str:
    """The email as a tool exports it: any letter case, sometimes padded with spaces."""
    style = rng.randrange(4)
    if style == 1:
        email = email.upper()
    elif style == 2:
        email = email.title()
    elif style == 3:
        email = "".join(c.upper() if rng.random() < 0.5 else c for c in email)
    lead = " " if rng.random() < 0.15 else ""
    trail = rng.choice(("", "", "", "", " ", "  "))
    return f"{lead}{email}{trail}"


def messy_phone(rng: random.Random, e164: str, region: str, national_only: bool = False) -> str:
    """The number as people type it: national forms in the segment's region, else international.

    Every form parses back to `e164` with `region` as the default region.
    """
    number = phonenumbers.parse(e164)
    if phonenumbers.region_code_for_number(number) != region:
        return rng.choice((phonenumbers.format_number(number, _FORMAT.INTERNATIONAL), e164))
    nsn = str(number.national_number)
    forms = [phonenumbers.format_number(number, _FORMAT.NATIONAL)]
    if region in _LOCAL_STYLE:
        forms.append(_LOCAL_STYLE[region](nsn))
    if not national_only:
        forms += [
            phonenumbers.format_number(number, _FORMAT.INTERNATIONAL),
            f"{number.country_code}{nsn}",
        ]
    return rng.choice(forms)


def audience(
    rng: random.Random,
    size: int,
    region: str,
    *,
    national_only: bool = False,
    no_id: int = 0,
    prefer: str | None = None,
) -> list[dict[str, Any]]:
    """`size` rows {kind, external_id, email, phone}, shuffled; external_id only for known users.

    Kinds: known (has an external_id), anonymous (email/phone only), outsider (not in Netmera),
    invalid, empty, shared (an email two users hold, alone), duplicate (a known user again) and
    no_id (a known user's email/phone without the tool's own id). `prefer` biases the draw
    towards users of one country.
    """
    shares = {
        "outsider": 0.05,
        "invalid": 0.02,
        "empty": 0.01,
        "duplicate": 0.02,
        "anonymous": 0.15,
    }
    counts = {kind: round(size * share) for kind, share in shares.items()}
    counts |= {"shared": 6, "no_id": no_id}
    counts["known"] = size - sum(counts.values())
    candidates = (netmera_user(i) for i in rng.sample(range(1, POOL + 1), POOL))

    def draw(kind: str) -> dict[str, Any]:
        for user in candidates:
            if prefer and user["country"] != prefer and rng.random() > 0.35:
                continue
            if user["external_id"] if kind == "known" else user["email"] or user["msisdn"]:
                return user
        raise RuntimeError("sample pool exhausted")

    def row(kind: str, person: dict[str, Any]) -> dict[str, Any]:
        email = phone = None
        if kind == "invalid":
            email = rng.choice(_BAD_EMAILS) if rng.random() < 0.8 else None
            phone = rng.choice(_BAD_PHONES) if email is None or rng.random() < 0.8 else None
            return {"kind": kind, "external_id": None, "email": email, "phone": phone}
        if kind == "shared":
            email = person["email"]
        elif kind != "empty":
            email = person["email"] if rng.random() < 0.8 else None
            phone = person["msisdn"] if rng.random() < 0.6 else None
            if kind != "known" and not (email or phone):  # these rows need one to match on
                email = person["email"]
                phone = None if email else person["msisdn"]
        return {
            "kind": kind,
            "external_id": person["external_id"] if kind in ("known", "duplicate") else None,
            "email": email and messy_email(rng, email),
            "phone": phone and messy_phone(rng, phone, region, national_only),
        }

    known = [draw("known") for _ in range(counts["known"])]
    families = [i for i in range(1, POOL + 1) if shares_email(i)]
    rows = [row("known", user) for user in known]
    rows += [row("duplicate", rng.choice(known)) for _ in range(counts["duplicate"])]
    rows += [row(kind, draw(kind)) for kind in ("anonymous", "no_id") for _ in range(counts[kind])]
    rows += [row("outsider", outsider(k)) for k in rng.sample(range(1, 99_999), counts["outsider"])]
    rows += [row("shared", netmera_user(i)) for i in rng.sample(families, counts["shared"])]
    rows += [row(kind, {}) for kind in ("invalid", "empty") for _ in range(counts[kind])]
    rng.shuffle(rows)
    return rows


def write_mixpanel(path: Path, size: int = 5_000) -> int:
    """Mixpanel cohort export: `$distinct_id` is the external_id, or `$device:…` when anonymous."""
    rng = random.Random("sample-mixpanel-cart-abandoners")
    rows = audience(rng, size, "TR", no_id=3)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["$distinct_id", "$email", "$phone"])
        for r in rows:
            # `$distinct_id` is the user key: only the no_id rows lack one (refused at staging).
            distinct_id = r["external_id"] or (
                "" if r["kind"] == "no_id" else f"$device:{random_uuid(rng)}"
            )
            writer.writerow([distinct_id, r["email"] or "", r["phone"] or ""])
    return len(rows)


def write_amplitude(path: Path, size: int = 3_000) -> int:
    """Amplitude cohort: every row has an amplitude_id; user_id is null for anonymous users."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random("sample-amplitude-churn-risk")
    rows = audience(rng, size, "DE", national_only=True, prefer="DE")
    table = pa.table(
        {
            "amplitude_id": pa.array(rng.sample(range(10**11, 10**12), len(rows)), pa.int64()),
            "user_id": pa.array([r["external_id"] for r in rows], pa.string()),
            "email": pa.array([r["email"] for r in rows], pa.string()),
            "phone": pa.array([r["phone"] for r in rows], pa.string()),
        }
    )
    pq.write_table(table, path)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    """Write both sample files and print their row counts."""
    parser = argparse.ArgumentParser(
        prog="python -m include.demo.samples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"folder (default {DATA_DIR})")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    mixpanel = write_mixpanel(out / MIXPANEL_FILE)
    amplitude = write_amplitude(out / AMPLITUDE_FILE)
    print(f"wrote {mixpanel} rows to {out / MIXPANEL_FILE}, {amplitude} to {out / AMPLITUDE_FILE}")


if __name__ == "__main__":
    main()
