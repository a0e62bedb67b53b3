"""Normalisation of source identifiers, one rule per identifier kind, vectorised over Arrow.

A present value (non-blank) either normalises or is invalid (null). Netmera's side is compared
as stored, so these rules define what "the same identifier" means:
- external_id, installation_id: trimmed;
- email: trimmed, lower-cased, and shaped like `local@domain.tld`;
- msisdn: parsed with `phonenumbers` (the segment's default region for national formats),
  valid numbers only, formatted E.164;
- email_sha256, msisdn_sha256: trimmed, lower-cased, 64 hex digits (the hash of the normalised
  email or E.164 number).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from include.config import IdentifierKind

if TYPE_CHECKING:
    import pyarrow as pa

# No separators or control characters anywhere (RE2's \s alone is ASCII-only).
_NOT_EMAIL_CHAR = r"[^@\s\pZ\pC]"
_EMAIL = rf"^{_NOT_EMAIL_CHAR}+@{_NOT_EMAIL_CHAR}+\.{_NOT_EMAIL_CHAR}+$"
_SHA256 = r"^[0-9a-f]{64}$"


def normalize_array(kind: IdentifierKind, values: pa.Array, region: str | None) -> pa.Array:
    """Normalise an Arrow string array: null where absent or invalid."""
    import pyarrow as pa
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim_whitespace(values)
    trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    if kind in (IdentifierKind.EXTERNAL_ID, IdentifierKind.INSTALLATION_ID):
        return trimmed
    if kind == IdentifierKind.MSISDN:
        return _msisdn_array(trimmed, region)
    lowered = pc.utf8_lower(trimmed)
    pattern = _EMAIL if kind == IdentifierKind.EMAIL else _SHA256
    valid = pc.match_substring_regex(lowered, pattern)
    return pc.if_else(valid, lowered, pa.scalar(None, pa.string()))


def normalize_value(kind: IdentifierKind, value: str | None, region: str | None) -> str | None:
    """One value, by the same code path as the arrays (so the two can never disagree)."""
    import pyarrow as pa

    return normalize_array(kind, pa.array([value], pa.string()), region)[0].as_py()


def _msisdn_array(values: pa.Array, region: str | None) -> pa.Array:
    # phonenumbers is pure Python: parse each distinct value once.
    import pyarrow as pa
    import pyarrow.compute as pc

    distinct = pc.unique(values.drop_null())
    formatted = pa.array([to_e164(v, region) for v in distinct.to_pylist()], pa.string())
    return pc.take(formatted, pc.index_in(values, distinct))


@lru_cache(maxsize=200_000)
def to_e164(raw: str, region: str | None) -> str | None:
    import phonenumbers

    for candidate, default in _readings(raw, region):
        try:
            number = phonenumbers.parse(candidate, default)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _readings(raw: str, region: str | None) -> list[tuple[str, str | None]]:
    """How to read a value, most likely first.

    Exports often drop the "+" ("4915123456789"). Read as national, such digits can still be a
    *valid but different* number (+49 4915123456789), so when they start with the default
    region's country code the international reading is tried first.
    """
    import phonenumbers

    readings = [(raw, region)]
    digits = "".join(ch for ch in raw if ch.isdigit())
    if region and raw.lstrip()[:1] not in ("+", "0") and digits:
        code = str(phonenumbers.country_code_for_region(region))
        if code != "0" and digits.startswith(code):
            readings.insert(0, ("+" + digits, None))
    return readings
