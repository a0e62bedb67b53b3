"""Normalisation of source identifiers, one rule per identifier kind, vectorised over Arrow.

A present value (non-blank) either normalises or is invalid (null). Netmera's side is compared
as stored, so these rules define what "the same identifier" means:
- external_id, installation_id: trimmed;
- email: trimmed and lower-cased; then one pair of enclosing angle brackets and a `mailto:`
  prefix are removed, and one trailing dot of the domain (a name written with its root dot);
  what is left must be one address: a local part without separators, controls or the
  characters that only a list or a display name would hold (`<>()[]\\,;:"`), one `@`, and a
  domain of two or more labels that IDNA 2008 (UTS #46 mapping, `idna`) accepts, written in its
  ASCII form (A-labels, `xn--...`); at most 254 characters in all. The local part is kept as
  written (lower-cased): a look-alike letter from another script is another address;
- msisdn: parsed with `phonenumbers` (the segment's default region for national formats),
  valid numbers only, formatted E.164; digits that begin with the default region's calling code
  and carry no "+" are read as international first; decimal digits of any script count as
  digits; letters are never read as digits (vanity spellings are invalid); more than 250
  characters is invalid;
- email_sha256, msisdn_sha256: trimmed, lower-cased, 64 hex digits (the hash of the normalised
  email, A-label domain included, or of the E.164 number): compared as given.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING

from include.config.segments import IdentifierKind

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

MAX_EMAIL = 254  # RFC 5321: the longest path is 256 octets, "<" and ">" included

# A domain label as IDNA leaves an ASCII one: letters, digits, hyphens, 1-63 long, no hyphen
# first or last, and none in both the 3rd and 4th place (that is an A-label, "xn--", or a
# reserved one: only `idna` can tell those apart).
_A, _H = "[a-z0-9]", "[a-z0-9-]"
_LABEL = rf"{_A}(?:{_A}|{_H}{_A}(?:{_H}{{0,59}}{_A})?|{_H}-{_A}(?:{_H}{{0,58}}{_A})?)?"
_LDH_DOMAIN = rf"(?:{_LABEL}\.)+{_LABEL}"
_LDH = rf"^{_LDH_DOMAIN}$"
# An address already in normal form with a plain ASCII domain: most rows, decided at once.
# (Its local part takes every printable ASCII character the general rule below allows.)
# bench/pandas_baseline.py reads this name.
_EMAIL = rf"^[a-z0-9!#$%&'*+/=?^_`{{|}}~.-]+@{_LDH_DOMAIN}$"
# Any other value, lower-cased: <one pair of brackets> mailto: local @ domain. The local part
# holds no separators, controls, "@" or what an address list or a display name adds
# (RFC 5322 specials: quoting is not supported); the domain no separators, ASCII controls, "@"
# or brackets (the rest is IDNA's to judge). RE2's \s alone is ASCII-only.
_EMAIL_PARTS = (
    r"^(?P<open><?)(?:mailto:)?"
    r"(?P<local>[^@\s\pZ\pC<>()\[\]\\,;:\"]+)@(?P<domain>[^@\s\pZ\p{Cc}<>]+)(?P<close>>?)$"
)
_SHA256 = r"^[0-9a-f]{64}$"

MAX_PHONE_INPUT = 250  # phonenumbers refuses longer input
_PLUS = re.compile(r"\s*[+\uff0b]")  # phonenumbers' plus signs: ASCII and full-width
_LETTER = re.compile("[A-Za-z]")


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
    if kind == IdentifierKind.EMAIL:
        return _email_array(lowered)
    valid = pc.match_substring_regex(lowered, _SHA256)
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


def _email_array(lowered: pa.Array) -> pa.Array:
    """Lower-cased values → normalised addresses (null where invalid). Addresses already in
    normal form with a plain ASCII domain (nearly all) take one regex; only the others are
    taken apart, and only their non-ASCII or A-label domains reach Python (`idna`), each
    distinct domain once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = _np(pc.match_substring_regex(lowered, _EMAIL))
    plain &= pc.binary_length(lowered).to_numpy(zero_copy_only=False) <= MAX_EMAIL  # ASCII
    rest = ~plain & _np(pc.is_valid(lowered))
    other = pa.scalar(None, pa.string())
    if rest.any():
        found = _email_parts(lowered.filter(pa.array(rest)))
        if found.null_count < len(found):
            index = np.full(len(lowered), -1, np.int64)
            index[rest] = np.arange(len(found))
            other = found.take(pa.array(index, mask=index < 0))
    return pc.if_else(pa.array(plain), lowered, other)


def _email_parts(lowered: pa.Array) -> pa.Array:
    """The general rule (module doc) for values the plain pattern did not take."""
    import pyarrow as pa
    import pyarrow.compute as pc

    null = pa.scalar(None, pa.string())
    # Most of these are junk without an "@" ("n/a", "x at y.com"): no parse for them.
    has_at = pc.match_substring(lowered, "@")
    if not pc.any(has_at).as_py():
        return pa.nulls(len(lowered), pa.string())
    parts = pc.extract_regex(pc.if_else(has_at, lowered, null), _EMAIL_PARTS)
    paired = pc.equal(
        pc.binary_length(pc.struct_field(parts, "open")),
        pc.binary_length(pc.struct_field(parts, "close")),
    )
    local = pc.if_else(paired, pc.struct_field(parts, "local"), null)
    domain = pc.if_else(paired, pc.struct_field(parts, "domain"), null)
    ascii_ = _np(pc.string_is_ascii(domain))
    # An ASCII domain: one trailing (root) dot off, then a plain domain or, if it may hold an
    # A-label, idna's to judge; any other ASCII domain is one IDNA refuses.
    rooted = pc.if_else(pc.ends_with(domain, "."), pc.utf8_slice_codeunits(domain, 0, -1), domain)
    ldh = ascii_ & _np(pc.match_substring_regex(rooted, _LDH))
    python = _np(pc.is_valid(domain)) & ~ldh & (~ascii_ | _np(pc.match_substring(domain, "--")))
    normal = pc.if_else(pa.array(ldh), rooted, null)
    if python.any():
        mask = pa.array(python)
        open_ = domain.filter(mask)
        distinct = pc.unique(open_)
        encoded = pa.array([idna_domain(d) for d in distinct.to_pylist()], pa.string())
        normal = pc.replace_with_mask(normal, mask, pc.take(encoded, pc.index_in(open_, distinct)))
    address = pc.binary_join_element_wise(local, normal, "@")
    short = pc.less_equal(pc.utf8_length(address), MAX_EMAIL)
    return pc.if_else(short, address, null)


def idna_domain(domain: str) -> str | None:
    """A domain (lower-cased, perhaps with its root dot) in IDNA's ASCII form, or None if
    IDNA 2008 refuses it or it has fewer than two labels. UTS #46 maps it first (the other
    full stops U+3002, U+FF0E, U+FF61, width, case, NFC; ignorable characters such as the soft
    hyphen are dropped)."""
    import idna

    try:
        # STD3 rules: a host name's ASCII is letters, digits and hyphens, mapped or not.
        encoded = idna.encode(domain, uts46=True, std3_rules=True).decode("ascii")
    except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
        return None
    encoded = encoded.removesuffix(".")
    return encoded if "." in encoded else None


def _np(values: pa.Array) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


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
    """E.164 of a valid number, or None. Longer than phonenumbers reads (250 characters) is
    invalid; so is a reading that took letters for digits ("0532 CAR 45 67" is not
    +905322274567, somebody else's number): only digits as written count."""
    import phonenumbers

    if len(raw) > MAX_PHONE_INPUT:
        return None
    for candidate, default in _readings(raw, region):
        try:
            number = phonenumbers.parse(candidate, default)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number) and _as_written(candidate, number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _decimal_digits(raw: str) -> str:
    """The decimal digits of `raw` in ASCII, any script's ("٠٥٣٢" → "0532")."""
    return "".join(str(d) for d in (unicodedata.decimal(ch, None) for ch in raw) if d is not None)


def _as_written(raw: str, number) -> bool:
    """No letter was read as a digit: phonenumbers turns three or more ASCII letters into
    digits (vanity numbers); the national number must then appear among the digits written.
    (Without letters the check is skipped: national prefix transform rules, as Argentina's,
    rewrite digits legitimately.)"""
    import phonenumbers

    if not _LETTER.search(raw):
        return True
    return phonenumbers.national_significant_number(number) in _decimal_digits(raw)


def _readings(raw: str, region: str | None) -> list[tuple[str, str | None]]:
    """How to read a value, most likely first.

    Exports often drop the "+" ("4915123456789"). Read as national, such digits can still be a
    *valid but different* number (+49 4915123456789), so when they start with the default
    region's country code and carry no "+" the international reading is tried first (digits
    of any script count: "٩٠٥٣٢١٢٣٤٥٦٧" is 905321234567; no calling code starts with the
    trunk prefix "0", so a number written with it is read as national).
    """
    import phonenumbers

    readings = [(raw, region)]
    digits = _decimal_digits(raw)
    if region and not _PLUS.match(raw) and digits:
        code = str(phonenumbers.country_code_for_region(region))
        if code != "0" and digits.startswith(code):
            readings.insert(0, ("+" + digits, None))
    return readings
