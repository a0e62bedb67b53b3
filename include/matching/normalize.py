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
    import numpy as np
    import pyarrow as pa

# No separators or control characters anywhere (RE2's \s alone is ASCII-only).
_NOT_EMAIL_CHAR = r"[^@\s\pZ\pC]"
_EMAIL = rf"^{_NOT_EMAIL_CHAR}+@{_NOT_EMAIL_CHAR}+\.{_NOT_EMAIL_CHAR}+$"
_SHA256 = r"^[0-9a-f]{64}$"


# Kinds costly to normalise (phones: ~1 µs a value vectorised, ~20 µs by phonenumbers): when not
# a segment's first identifier, the matcher reads them only for source users that no earlier
# identifier matched (audience.py), typically a tenth of the audience.
DEFERRED = frozenset({IdentifierKind.MSISDN})


def normalize_array(kind: IdentifierKind, values: pa.Array, region: str | None) -> pa.Array:
    """Normalise an Arrow string array: null where absent or invalid."""
    import pyarrow as pa
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim_whitespace(values)
    trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    return normalize_trimmed(kind, trimmed, region)


def normalize_trimmed(kind: IdentifierKind, trimmed: pa.Array, region: str | None) -> pa.Array:
    """`normalize_array` for values already trimmed, blanks already null."""
    import pyarrow as pa
    import pyarrow.compute as pc

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


def normalize_or_defer(
    kind: IdentifierKind, trimmed: pa.Array, region: str | None
) -> tuple[pa.Array, pa.Array | None]:
    """(values, raw): like `normalize_trimmed`, except that a DEFERRED kind's values come back
    null in `values` and as they are in `raw`, to be normalised later if needed."""
    if kind not in DEFERRED:
        return normalize_trimmed(kind, trimmed, region), None
    import pyarrow as pa

    return pa.nulls(len(trimmed), pa.string()), trimmed


def _msisdn_array(values: pa.Array, region: str | None) -> pa.Array:
    """The exact vectorised reading (phones.py) where it decides, phonenumbers for the rest
    (each distinct value once)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    formatted, decided = _fast_msisdn(values, region)
    if decided.all():
        return formatted
    open_ = pa.array(~decided)
    distinct = pc.unique(values.filter(open_))
    slow = pa.array([to_e164(v, region) for v in distinct.to_pylist()], pa.string())
    return pc.replace_with_mask(
        formatted, open_, pc.take(slow, pc.index_in(values.filter(open_), distinct))
    )


def _fast_msisdn(values: pa.Array, region: str | None) -> tuple[pa.Array, np.ndarray]:
    """phones.e164_array over each distinct value once → (E.164 or null, decided) per value;
    a null value is decided (null)."""
    import numpy as np
    import pyarrow.compute as pc

    from include.matching.phones import e164_array

    distinct = pc.unique(values.drop_null())
    formatted, decided = e164_array(distinct, region)
    index = pc.index_in(values, distinct)
    codes = pc.fill_null(index, -1).to_numpy()
    per_value = np.ones(len(values), bool)
    present = codes >= 0
    per_value[present] = decided[codes[present]]
    return pc.take(formatted, index), per_value


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
