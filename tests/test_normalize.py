"""Normalisation rules per identifier kind (DESIGN.md "Matching"), by example and by property.

`normalize_value` / `normalize_array` decide what "the same identifier" means on the source side;
Netmera's side is compared as stored (already normalised), so every rule here is a rule for
whether a source user can be found at all.
"""

from __future__ import annotations

import hashlib

import phonenumbers
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from include.config import IdentifierKind
from include.matching.normalize import normalize_array, normalize_value

EMAIL = IdentifierKind.EMAIL
MSISDN = IdentifierKind.MSISDN
HASHED = (IdentifierKind.EMAIL_SHA256, IdentifierKind.MSISDN_SHA256)
VERBATIM = (IdentifierKind.EXTERNAL_ID, IdentifierKind.INSTALLATION_ID)
REGIONS = ("TR", "DE", "GB", "US", "FR", "IN", "BR", "JP")
HEX_DIGITS = "0123456789abcdefABCDEF"

# Whitespace a CSV export or a hand-edited sheet puts around values (ASCII and Unicode).
padding = st.text(alphabet=" \t\r\n\u00a0\u3000", max_size=3)
hex_digests = st.binary(min_size=1, max_size=32).map(lambda b: hashlib.sha256(b).hexdigest())


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@st.composite
def case_scrambled(draw: st.DrawFn, text: str) -> str:
    """`text` with an arbitrary subset of its characters upper-cased."""
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def decorated_emails(draw: st.DrawFn) -> tuple[str, str]:
    """(what a source might send, the canonical form): random case, whitespace around."""
    email = draw(st.emails()).lower()
    return draw(padding) + draw(case_scrambled(email)) + draw(padding), email


@st.composite
def mobile_numbers(draw: st.DrawFn) -> tuple[str, phonenumbers.PhoneNumber]:
    """(region, a valid mobile number of it): the region's example with new trailing digits."""
    region = draw(st.sampled_from(REGIONS))
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    national = str(example.national_number)
    tail = draw(st.text(alphabet="0123456789", min_size=4, max_size=4))
    number = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{tail}")
    assume(phonenumbers.is_valid_number(number))
    return region, number


def e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


# -- blank values (every kind) ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(IdentifierKind))
@pytest.mark.parametrize("blank", [None, "", " ", "\t\r\n", "\u00a0 "])
def test_absent_or_blank_value_is_none_for_every_kind(kind: IdentifierKind, blank) -> None:
    assert normalize_value(kind, blank, "TR") is None


# -- email --------------------------------------------------------------------------------------


@given(decorated_emails())
def test_email_case_and_surrounding_whitespace_are_normalised_away(sent: tuple[str, str]) -> None:
    raw, canonical = sent
    assert normalize_value(EMAIL, raw, None) == canonical


@given(
    st.sampled_from(list(IdentifierKind)),
    st.one_of(st.text(), decorated_emails().map(lambda pair: pair[0])),
    st.sampled_from([None, "TR", "US"]),
)
def test_normalisation_is_idempotent(kind: IdentifierKind, raw: str, region: str | None) -> None:
    once = normalize_value(kind, raw, region)
    if once is not None:
        assert normalize_value(kind, once, region) == once


@pytest.mark.parametrize(
    "raw",
    [
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "alice@@example.com",
        "alice@mail@example.com",
        "alice smith@example.com",
        "alice@exa mple.com",
        "alice@example.",
        "alice@.com",
        "<alice@example.com>,bob@example.com",
        "alice\u00a0smith@example.com",  # Unicode separators inside are not trimmed away
        "alice\u3000smith@example.com",
        "alice\x0bsmith@example.com",
    ],
)
def test_email_without_local_at_domain_tld_shape_is_invalid(raw: str) -> None:
    assert normalize_value(EMAIL, raw, None) is None


@given(st.text().filter(lambda s: "@" not in s))
def test_text_without_an_at_sign_is_never_a_valid_email(raw: str) -> None:
    assert normalize_value(EMAIL, raw, None) is None


@given(
    st.text(alphabet=st.characters(exclude_characters="@.", categories=["L", "N"]), min_size=1),
    st.text(alphabet=st.characters(exclude_characters="@.", categories=["L", "N"]), min_size=1),
)
def test_email_whose_domain_has_no_dot_is_invalid(local: str, domain: str) -> None:
    assert normalize_value(EMAIL, f"{local}@{domain}", None) is None


@given(decorated_emails(), st.sampled_from(["@", "x@"]))
def test_email_with_a_second_at_sign_is_invalid(sent: tuple[str, str], extra: str) -> None:
    _, canonical = sent
    local, domain = canonical.split("@", 1)
    assert normalize_value(EMAIL, f"{local}@{extra}{domain}", None) is None
    assert normalize_value(EMAIL, f"{canonical}@{extra}", None) is None


# -- msisdn -------------------------------------------------------------------------------------

# The formats a phone number arrives in, apart from digits-only (tested on its own below).
FORMATS = {
    "E164": PhoneNumberFormat.E164,
    "INTERNATIONAL": PhoneNumberFormat.INTERNATIONAL,
    "NATIONAL": PhoneNumberFormat.NATIONAL,
    "RFC3966": PhoneNumberFormat.RFC3966,
}


@given(mobile_numbers(), st.sampled_from(list(FORMATS)), padding, padding)
def test_msisdn_in_any_common_format_normalises_to_its_e164(
    drawn: tuple[str, phonenumbers.PhoneNumber], fmt: str, before: str, after: str
) -> None:
    region, number = drawn
    raw = before + phonenumbers.format_number(number, FORMATS[fmt]) + after
    assert normalize_value(MSISDN, raw, region) == e164(number)


@given(mobile_numbers(), padding)
def test_msisdn_digits_only_with_country_code_normalises_to_its_e164(
    drawn: tuple[str, phonenumbers.PhoneNumber], pad: str
) -> None:
    # "905321234567": the E.164 digits without the '+', as CRMs and messaging exports write them.
    region, number = drawn
    raw = pad + e164(number).removeprefix("+") + pad
    assert normalize_value(MSISDN, raw, region) == e164(number)


@given(
    mobile_numbers(),
    st.sampled_from(["E164", "INTERNATIONAL", "RFC3966"]),
    st.sampled_from([None, *REGIONS]),
)
def test_msisdn_with_explicit_country_code_ignores_the_default_region(
    drawn: tuple[str, phonenumbers.PhoneNumber], fmt: str, region: str | None
) -> None:
    _, number = drawn
    raw = phonenumbers.format_number(number, FORMATS[fmt])
    assert normalize_value(MSISDN, raw, region) == e164(number)


@given(mobile_numbers())
def test_msisdn_in_national_format_without_default_region_is_invalid(
    drawn: tuple[str, phonenumbers.PhoneNumber],
) -> None:
    _, number = drawn
    raw = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    assert normalize_value(MSISDN, raw, None) is None


@pytest.mark.parametrize("region", [None, "TR", "US"])
@pytest.mark.parametrize("raw", ["12", "n/a", "none", "+", "phone", "0", "+90 12", "--"])
def test_junk_msisdn_is_invalid(raw: str, region: str | None) -> None:
    assert normalize_value(MSISDN, raw, region) is None


# -- hashed kinds -------------------------------------------------------------------------------


@given(
    st.sampled_from(HASHED),
    hex_digests,
    st.sampled_from([str.lower, str.upper, str.swapcase]),
    padding,
    padding,
)
def test_sha256_hex_digest_normalises_to_lower_case(
    kind: IdentifierKind, digest: str, case, before: str, after: str
) -> None:
    assert normalize_value(kind, before + case(digest) + after, None) == digest


@given(
    st.sampled_from(HASHED),
    hex_digests,
    st.one_of(
        st.integers(min_value=1, max_value=63).map(lambda cut: lambda d: d[:-cut]),
        st.text(alphabet=HEX_DIGITS, min_size=1).map(lambda extra: lambda d: d + extra),
    ),
)
def test_hex_of_the_wrong_length_is_not_a_sha256(kind: IdentifierKind, digest: str, resize) -> None:
    # A digest cut short (truncated export column) or with extra hex digits (two glued values).
    raw = resize(digest)
    assert len(raw) != 64
    assert normalize_value(kind, raw, None) is None


@given(
    st.sampled_from(HASHED),
    hex_digests,
    st.integers(min_value=0, max_value=63),
    st.characters(exclude_characters=HEX_DIGITS, codec="utf-8"),  # sources hold valid text,
)
def test_64_characters_with_a_non_hex_one_is_not_a_sha256(
    kind: IdentifierKind, digest: str, position: int, bad: str
) -> None:
    raw = digest[:position] + bad + digest[position + 1 :]
    assert normalize_value(kind, raw, None) is None


@given(decorated_emails(), st.sampled_from([str.lower, str.upper]))
def test_email_sha256_from_a_source_that_hashed_properly_equals_hash_of_normalised_email(
    sent: tuple[str, str], case
) -> None:
    raw, _ = sent
    # A source that hashes properly trims and lower-cases first, then may send upper-case hex.
    source_hash = case(sha256_hex(raw.strip().lower()))
    expected = sha256_hex(normalize_value(EMAIL, raw, None))
    assert normalize_value(IdentifierKind.EMAIL_SHA256, source_hash, None) == expected


@given(mobile_numbers(), st.sampled_from([str.lower, str.upper]))
def test_msisdn_sha256_from_a_source_that_hashed_properly_equals_hash_of_e164(
    drawn: tuple[str, phonenumbers.PhoneNumber], case
) -> None:
    region, number = drawn
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    expected = sha256_hex(normalize_value(MSISDN, national, region))
    source_hash = case(sha256_hex(e164(number)))
    assert normalize_value(IdentifierKind.MSISDN_SHA256, source_hash, None) == expected


# -- external_id / installation_id --------------------------------------------------------------

_visible = st.characters(categories=["L", "N", "P", "S"])


@given(
    st.sampled_from(VERBATIM),
    st.tuples(_visible, st.text(), _visible).map("".join),
    padding,
    padding,
)
def test_verbatim_ids_are_trimmed_with_their_content_unchanged(
    kind: IdentifierKind, inner: str, before: str, after: str
) -> None:
    # Case, inner spaces and punctuation are part of the id: "Ab 1" and "ab 1" are two users.
    assert normalize_value(kind, before + inner + after, "TR") == inner


# -- arrays -------------------------------------------------------------------------------------

_values = st.one_of(
    st.none(),
    st.text(max_size=20),
    decorated_emails().map(lambda pair: pair[0]),
    mobile_numbers().map(
        lambda drawn: phonenumbers.format_number(drawn[1], PhoneNumberFormat.NATIONAL)
    ),
    hex_digests.map(str.upper),
)


@settings(max_examples=60)
@given(
    st.sampled_from(list(IdentifierKind)),
    st.lists(_values, max_size=8).flatmap(
        # Repeat some values so the vectorised paths see duplicates next to nulls.
        lambda pool: st.lists(st.sampled_from(pool), max_size=12) if pool else st.just([])
    ),
    st.sampled_from([None, "TR", "DE"]),
)
def test_normalize_array_agrees_with_normalize_value_element_wise(
    kind: IdentifierKind, values: list[str | None], region: str | None
) -> None:
    result = normalize_array(kind, pa.array(values, pa.string()), region)
    assert result.type == pa.string()
    assert result.to_pylist() == [normalize_value(kind, v, region) for v in values]
