"""Phone numbers to E.164, exactly as `to_e164` reads them, vectorised over Arrow.

`normalize.to_e164` (phonenumbers, pure Python, ~20 µs a value) defines the result. Most real
spellings are plain: ASCII digits and the separators ` ().-`, with or without one leading "+".
For those this module follows the steps phonenumbers takes (international or national prefix,
country calling code, national prefix, possible lengths, the number patterns of the regions of
the calling code) as Arrow regex kernels over the whole array, which is ~50x faster. Whatever
would take a branch that is not reproduced here (carrier codes and prefix transform rules, a
national number that starts with the default country code, a "+" followed by no known calling
code, fewer than three digits, any other character: letters, other scripts' digits, `tel:`,
extensions) is left *undecided* and goes to `to_e164`, value by value: undecided is always
safe, a wrong decision never is. A value longer than 250 characters is invalid, unread, on
both. tests/test_matching_paths.py compares both on random numbers of many regions in many
spellings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

PLAIN = r"^\+?[0-9 ().\-]+$"
_MAX_INPUT = 250  # normalize.MAX_PHONE_INPUT: to_e164 refuses longer input
_MAX_NSN = 17
# Every type _number_type_helper tries; matching any one makes a number valid, so the order is
# free: the common ones first, then only numbers none matched yet are tried against the rest.
_TYPES = (
    "mobile",
    "fixed_line",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


class _Unsupported(Exception):
    """A metadata pattern RE2 cannot run, or a rule not reproduced: leave the values undecided."""


@dataclass(frozen=True)
class _Desc:
    lengths: tuple[int, ...]  # empty: any length
    pattern: str


@dataclass(frozen=True)
class _Region:
    leading_digits: str | None
    general: _Desc | None
    types: tuple[_Desc, ...]


def _desc(desc) -> _Desc | None:
    if desc is None or not desc.national_number_pattern:
        return None
    return _Desc(tuple(desc.possible_length), desc.national_number_pattern)


def _region(metadata) -> _Region:
    types = tuple(d for d in (_desc(getattr(metadata, t)) for t in _TYPES) if d is not None)
    return _Region(metadata.leading_digits, _desc(metadata.general_desc), types)


@cache
def _calling_code(code: int) -> tuple[tuple[_Region, ...], str | None] | None:
    """(regions in phonenumbers' order, the national prefix parse strips) or None if unknown."""
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata
    from phonenumbers.phonenumberutil import region_code_for_country_code

    regions = COUNTRY_CODE_TO_REGION_CODE.get(code)
    if not regions:
        return None
    main = PhoneMetadata.metadata_for_region_or_calling_code(
        code, region_code_for_country_code(code)
    )
    if len(regions) == 1:
        found = [main]
    else:  # _region_code_for_number_from_list reads geographic metadata only
        found = [PhoneMetadata.metadata_for_region(r.upper(), None) for r in regions]
    return tuple(_region(m) for m in found if m is not None), main.national_prefix_for_parsing


@cache
def _known_codes() -> pa.Array:
    import pyarrow as pa
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    return pa.array([str(code) for code in COUNTRY_CODE_TO_REGION_CODE])


def _full(values: pa.Array, pattern: str) -> np.ndarray:
    return _search(values, f"^(?:{pattern})$")


def _starts(values: pa.Array, pattern: str) -> np.ndarray:
    return _search(values, f"^(?:{pattern})")


def _search(values: pa.Array, pattern: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        found = pc.match_substring_regex(values, pattern)
    except pa.ArrowInvalid as exc:
        raise _Unsupported(pattern) from exc
    return _np(found)


def _np(values: pa.Array) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _prefix(values: pa.Array, pattern: str) -> pa.Array:
    """The text `pattern` matches at the start (null where it does not), as `re.match` finds it.

    RE2's leftmost-first matching picks the same alternative as Python's backtracking `re`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if re.compile(pattern).groups:
        raise _Unsupported(pattern)  # capturing groups mean carrier codes or transform rules
    try:
        found = pc.extract_regex(values, f"^(?P<p>(?:{pattern}))")
    except pa.ArrowInvalid as exc:
        raise _Unsupported(pattern) from exc
    return pc.struct_field(found, "p")


def _lengths(values: pa.Array) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.utf8_length(values).to_numpy(zero_copy_only=False)


def _matches(desc: _Desc | None, values: pa.Array, lengths: np.ndarray) -> np.ndarray:
    """phonenumbers' _is_number_matching_desc: possible length, then the full pattern."""
    if desc is None:
        return np.zeros(len(values), bool)
    ok = np.isin(lengths, desc.lengths) if desc.lengths else np.ones(len(values), bool)
    if ok.any():
        ok &= _full(values, desc.pattern)
    return ok


def _known_type(region: _Region, nsn: pa.Array, lengths: np.ndarray) -> np.ndarray:
    """_number_type_helper(...) != UNKNOWN: the general pattern and any type's pattern."""
    import pyarrow as pa

    valid = _matches(region.general, nsn, lengths)
    typed = np.zeros(len(nsn), bool)
    for desc in region.types:
        rest = np.flatnonzero(valid & ~typed)
        if not len(rest):
            break
        typed[rest] = _matches(desc, nsn.take(pa.array(rest)), lengths[rest])
    return valid & typed


def valid_numbers(code: int, nsn: pa.Array) -> np.ndarray:
    """phonenumbers.is_valid_number for (calling code, national significant number) pairs."""
    known = _calling_code(code)
    if known is None:
        return np.zeros(len(nsn), bool)
    regions, _ = known
    lengths = _lengths(nsn)
    if len(regions) == 1:
        return _known_type(regions[0], nsn, lengths)
    # The region is the first whose leading digits match, or (without leading digits) for
    # which the number is valid; the number is then valid if valid for that region.
    valid, open_ = np.zeros(len(nsn), bool), np.ones(len(nsn), bool)
    for region in regions:
        fits = _known_type(region, nsn, lengths)
        chosen = open_ & (_starts(nsn, region.leading_digits) if region.leading_digits else fits)
        valid |= chosen & fits
        open_ &= ~chosen
    return valid


class _Decisions:
    """Which positions are decided, and the E.164 strings of those found valid (kept as Arrow
    arrays: no Python string per value)."""

    def __init__(self, size: int) -> None:
        self.decided = np.zeros(size, bool)
        self._rows: list[np.ndarray] = []
        self._values: list[pa.Array] = []

    def invalid(self, rows: np.ndarray) -> None:
        self.decided[rows] = True

    def valid(self, rows: np.ndarray, e164: pa.Array) -> None:
        self.decided[rows] = True
        self._rows.append(rows)
        self._values.append(e164)

    def found(self) -> tuple[np.ndarray, pa.Array]:
        """(positions, E.164 strings) of the valid decisions."""
        import pyarrow as pa

        if not self._rows:
            return np.empty(0, np.int64), pa.array([], pa.string())
        return np.concatenate(self._rows), pa.concat_arrays(self._values)

    def result(self) -> pa.Array:
        """E.164 per position, null where invalid or undecided."""
        import pyarrow as pa

        rows, values = self.found()
        index = np.full(len(self.decided), -1, np.int64)
        index[rows] = np.arange(len(rows))
        return values.take(pa.array(index, mask=index < 0))


def _international(out: _Decisions, rows: np.ndarray, digits: pa.Array, *, retry: bool) -> None:
    """Digits after "+" (or an international prefix): calling code, then national number.

    `retry`: after "+", an unknown calling code makes phonenumbers re-read the digits as a
    national number, which is not reproduced (undecided); after an IDD it is simply invalid.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    sizes = _lengths(digits)
    out.invalid(rows[sizes <= 2])  # "too short after IDD"
    keep = sizes > 2
    rows, digits = rows[keep], digits.filter(pa.array(keep))
    codes = np.zeros(len(rows), np.int64)
    for width in (3, 2, 1):  # phonenumbers takes the shortest known code: overwrite with it
        head = pc.utf8_slice_codeunits(digits, 0, width)
        known = _np(pc.is_in(head, value_set=_known_codes()))
        codes[known] = pc.cast(head.filter(pa.array(known)), pa.int64()).to_numpy()
    leading_zero = _starts(digits, "0")
    codes[leading_zero] = 0
    if not retry:
        out.invalid(rows[codes == 0])
    for code in np.unique(codes[codes != 0]):
        mine = codes == code
        _with_code(out, rows[mine], int(code), digits.filter(pa.array(mine)))


def _with_code(out: _Decisions, rows: np.ndarray, code: int, digits: pa.Array) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    rest = pc.utf8_slice_codeunits(digits, len(str(code)))
    sizes = _lengths(rest)
    out.invalid(rows[sizes < 2])  # too short, before any national prefix is stripped
    fits = sizes >= 2
    _, national_prefix = _calling_code(code)
    if national_prefix:
        try:
            fits &= ~_starts(rest, national_prefix)  # parse may strip it: not reproduced
        except _Unsupported:
            return
    out.invalid(rows[fits & (sizes > _MAX_NSN)])  # too long, nothing to strip
    fits &= sizes <= _MAX_NSN
    if not fits.any():
        return
    subset = pa.array(fits)
    try:
        valid = valid_numbers(code, rest.filter(subset))
    except _Unsupported:
        return
    chosen = rows[fits]
    out.invalid(chosen[~valid])
    out.valid(
        chosen[valid],
        pc.binary_join_element_wise("+", digits.filter(subset), "").filter(pa.array(valid)),
    )


@dataclass(frozen=True)
class _Home:
    """The default region: how phonenumbers reads a number written without "+"."""

    code: int
    idd: str | None
    national_prefix: str | None
    general: str | None
    lengths: tuple[int, ...]
    local_lengths: tuple[int, ...]


@cache
def _home(region: str) -> _Home | None:
    from phonenumbers import SUPPORTED_REGIONS, PhoneMetadata

    metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
    if region.upper() not in SUPPORTED_REGIONS or metadata is None:
        return None
    general = metadata.general_desc
    if not general or not general.possible_length:
        return None
    return _Home(
        code=metadata.country_code,
        idd=metadata.international_prefix,
        national_prefix=metadata.national_prefix_for_parsing,
        general=general.national_number_pattern or None,
        lengths=tuple(general.possible_length),
        local_lengths=tuple(general.possible_length_local_only),
    )


def _national(out: _Decisions, rows: np.ndarray, digits: pa.Array, home: _Home) -> None:
    """Digits without "+", read in the home region: IDD, then national prefix, then validity."""
    import pyarrow as pa
    import pyarrow.compute as pc

    national = np.ones(len(rows), bool)
    if home.idd:
        try:
            idd = _prefix(digits, home.idd)
        except _Unsupported:
            return
        has_idd = _np(pc.is_valid(idd))
        if has_idd.any():
            after = _after(digits, idd)
            national &= ~has_idd
            # An IDD followed by "0" is no IDD for phonenumbers (then it reads on): undecided.
            stripped = has_idd & ~_starts(after, "0")
            _international(out, rows[stripped], after.filter(pa.array(stripped)), retry=False)
    # A national number starting with the home calling code: phonenumbers weighs both readings.
    national &= ~_starts(digits, str(home.code))
    if not national.any():
        return
    rows, digits = rows[national], digits.filter(pa.array(national))
    nsn = digits
    if home.national_prefix:
        try:
            prefix = _prefix(digits, home.national_prefix)
        except _Unsupported:
            return
        nsn = _strip_national_prefix(digits, prefix, home)
    sizes = _lengths(nsn)
    out.invalid(rows[sizes > _MAX_NSN])
    ok = sizes <= _MAX_NSN
    _with_code(
        out,
        rows[ok],
        home.code,
        pc.binary_join_element_wise(str(home.code), nsn.filter(pa.array(ok)), ""),
    )


def _after(digits: pa.Array, prefix: pa.Array) -> pa.Array:
    """digits without their matched prefix (all of digits where there is none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cut = pc.fill_null(pc.utf8_length(prefix), 0).to_numpy(zero_copy_only=False)
    result = digits
    for width in np.unique(cut[cut > 0]):
        result = pc.if_else(
            pa.array(cut == width), pc.utf8_slice_codeunits(digits, int(width)), result
        )
    return result


@cache
def _length_result(size: int, lengths: tuple[int, ...], local: tuple[int, ...]) -> str:
    """phonenumbers' _test_number_length against the general description, step by step."""
    if size in local:
        return "local_only"
    if size == lengths[0]:
        return "possible"
    if size < lengths[0]:
        return "too_short"
    if size > lengths[-1]:
        return "too_long"
    return "possible" if size in lengths[1:] else "invalid_length"


def _possible(size: int, home: _Home) -> bool:
    """parse keeps a stripped national prefix only if the rest is a possible (or long) number."""
    return _length_result(size, home.lengths, home.local_lengths) in ("possible", "too_long")


def _strip_national_prefix(digits: pa.Array, prefix: pa.Array, home: _Home) -> pa.Array:
    """_maybe_strip_national_prefix_carrier_code, then parse's possible-length check."""
    import pyarrow as pa
    import pyarrow.compute as pc

    matched = _np(pc.is_valid(prefix))
    if not matched.any():
        return digits
    stripped = _after(digits, prefix)
    if home.general:
        viable_before = _full(digits, home.general)
        viable_after = _full(stripped, home.general)
    else:
        viable_before = viable_after = np.zeros(len(digits), bool)
    sizes = _lengths(stripped)
    possible = np.isin(sizes, [n for n in np.unique(sizes) if _possible(int(n), home)])
    use = matched & ~(viable_before & ~viable_after) & possible
    return pc.if_else(pa.array(use), stripped, digits)


def e164_array(values: pa.Array, region: str | None) -> tuple[pa.Array, np.ndarray]:
    """(E.164 or null per value, which values were decided); values are trimmed, non-blank."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = _Decisions(len(values))
    rows = np.arange(len(values))
    short = _lengths(values) <= _MAX_INPUT
    out.invalid(rows[~short])  # to_e164 refuses them unread, whatever they hold
    plain = _np(pc.match_substring_regex(values, PLAIN)) & short
    digits = values  # plain values: dropping the separators leaves the digits
    for separator in " ().-+":
        digits = pc.replace_substring(digits, separator, "")
    enough = _lengths(digits) >= 3
    plus = _np(pc.starts_with(values, "+"))
    out.invalid(rows[plain & plus & ~enough])  # not a viable number for phonenumbers
    international = plain & plus & enough
    _international(out, rows[international], digits.filter(pa.array(international)), retry=True)
    home = _home(region) if region else None
    if region is None:
        out.invalid(rows[plain & ~plus])  # no "+" and no region: phonenumbers cannot read it
    elif home is not None:
        national = plain & ~plus & enough
        _home_first(out, rows[national], values.filter(pa.array(national)), digits, home)
    return out.result(), out.decided


def _home_first(
    out: _Decisions, rows: np.ndarray, raw: pa.Array, all_digits: pa.Array, home: _Home
) -> None:
    """normalize._readings: digits starting with the home calling code (and not written with a
    trunk "0") are first read as international; only a valid reading decides."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = all_digits.take(pa.array(rows)) if len(rows) else pa.array([], pa.string())
    first = _np(pc.starts_with(digits, str(home.code))) & ~_np(pc.starts_with(raw, "0"))
    if first.any():
        probe = _Decisions(len(rows))
        picked = np.flatnonzero(first)
        _international(probe, picked, digits.filter(pa.array(first)), retry=False)
        hits, e164 = probe.found()
        out.valid(rows[hits], e164)
    rest = ~first
    _national(out, rows[rest], digits.filter(pa.array(rest)), home)
