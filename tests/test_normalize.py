"""Normalisation rules per identifier kind (DESIGN.md "Matching"), by example and by property.

`normalize_value` / `normalize_array` decide what "the same identifier" means on the source side;
Netmera's side is compared as stored (already normalised), so every rule here is a rule for
whether a source user can be found at all.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import idna
import phonenumbers
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from include.config.segments import IdentifierKind
from include.matching.normalize import idna_domain, normalize_array, normalize_value, to_e164
from include.matching.phones import e164_array

EMAIL = IdentifierKind.EMAIL
MSISDN = IdentifierKind.MSISDN
HASHED = (IdentifierKind.EMAIL_SHA256, IdentifierKind.MSISDN_SHA256)
VERBATIM = (IdentifierKind.EXTERNAL_ID, IdentifierKind.INSTALLATION_ID)
REGIONS = ("TR", "DE", "GB", "US", "FR", "IN", "BR", "JP")
HEX_DIGITS = "0123456789abcdefABCDEF"

# Whitespace a CSV export or a hand-edited sheet puts around values (ASCII and Unicode).
padding = st.text(alphabet=" \t\r\n\u00a0\u3000", max_size=3)
hex_digests = st.binary(min_size=1, max_size=32).map(lambda b: hashlib.sha256(b).hexdigest())


@pytest.fixture(autouse=True, scope="module")
def _loaded() -> None:
    """idna's tables and phonenumbers' metadata load on first use (~0.3 s): not inside a
    hypothesis example, where it would count against the deadline."""
    normalize_value(EMAIL, "a@münchen.de", None)
    normalize_value(MSISDN, "+90 532 CAR 45 67", "TR")


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


# -- email: one address, its wrappers removed -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("mailto:alice@example.com", "alice@example.com"),
        ("MAILTO:Alice@Example.com", "alice@example.com"),
        ("MailTo:alice@example.com", "alice@example.com"),
        ("<alice@example.com>", "alice@example.com"),
        ("  <Alice@Example.COM>\t", "alice@example.com"),
        ("<mailto:alice@example.com>", "alice@example.com"),
        ("alice@example.com.", "alice@example.com"),  # the root dot of a fully qualified name
        ("<mailto:Alice@Example.com.>", "alice@example.com"),
    ],
)
def test_mailto_one_pair_of_angle_brackets_and_the_root_dot_are_removed(raw, expected) -> None:
    assert normalize_value(EMAIL, raw, None) == expected


@given(
    decorated_emails(),
    st.sampled_from([("", ""), ("<", ">"), ("mailto:", ""), ("<mailto:", ">")]),
    st.sampled_from([str.lower, str.upper, str.title]),
    st.booleans(),
)
def test_a_wrapped_address_normalises_as_the_bare_one(sent, wrapper, case, root_dot) -> None:
    raw, canonical = sent
    before, after = wrapper
    wrapped = case(before) + raw.strip() + ("." if root_dot else "") + after
    assert normalize_value(EMAIL, wrapped, None) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "mailto:<alice@example.com>",  # not a URI, not an address
        "<alice@example.com",
        "alice@example.com>",
        "<<alice@example.com>>",  # one pair only
        "mailto:mailto:alice@example.com",
        "< alice@example.com >",  # no second trim inside
        "Alice <alice@example.com>",  # a display name: not one bare address
        '"Alice" <alice@example.com>',
        "alice@example.com..",  # one root dot only
        "alice@example..com",
        "alice@example.com?subject=hi",  # a mailto URI's query
        '"alice"@example.com',  # quoted local parts are not supported
        "alice(comment)@example.com",
        "alice@[192.0.2.1]",  # address literals are not supported
    ],
)
def test_wrappers_other_than_the_one_allowed_make_an_email_invalid(raw: str) -> None:
    assert normalize_value(EMAIL, raw, None) is None


@given(
    decorated_emails(),
    decorated_emails(),
    st.sampled_from([",", ", ", ";", "; ", " ", "\t", " / ", "|", "@"]),
)
def test_two_addresses_in_one_value_are_invalid(first, second, separator: str) -> None:
    raw = first[1] + separator + second[1]
    assert normalize_value(EMAIL, raw, None) is None
    assert normalize_value(EMAIL, f"<{first[1]}>{separator}<{second[1]}>", None) is None


@pytest.mark.parametrize(
    "raw",
    [
        "alice,bob@example.com",
        "alice;bob@example.com",
        "alice:bob@example.com",
        "alice<bob@example.com",
        "alice\\bob@example.com",
        "alice[1]@example.com",
    ],
)
def test_list_and_display_name_characters_in_the_local_part_are_invalid(raw: str) -> None:
    assert normalize_value(EMAIL, raw, None) is None


# -- email: length --------------------------------------------------------------------------------


def address_of_length(size: int, domain: str = "example.com") -> str:
    return "x" * (size - len(domain) - 1) + "@" + domain


@pytest.mark.parametrize("size", [254, 255, 256, 1000])
def test_an_address_is_at_most_254_characters_after_normalisation(size: int) -> None:
    address = address_of_length(size)
    assert len(address) == size
    expected = address if size <= 254 else None
    assert normalize_value(EMAIL, address, None) == expected
    # Measured after normalisation: wrappers do not count, an A-label's length does.
    assert normalize_value(EMAIL, f"<MAILTO:{address.upper()}.>", None) == expected


def test_the_length_limit_applies_to_the_domain_in_its_ascii_form() -> None:
    unicode_form = address_of_length(254, "münchen.de")  # 254 as written, 262 as A-labels
    assert normalize_value(EMAIL, unicode_form, None) is None
    ascii_form = address_of_length(254, "xn--mnchen-3ya.de")
    assert normalize_value(EMAIL, ascii_form, None) == ascii_form


@pytest.mark.parametrize("size", [10_240, 100_000])
@pytest.mark.parametrize("shape", ["{x}@example.com", "a@{x}.com", "a@b.{x}", "{x}", "<{x}>"])
def test_huge_values_are_invalid(size: int, shape: str) -> None:
    for filler in ("x", "ü", "x."):
        raw = shape.format(x=(filler * size)[:size])
        assert normalize_value(EMAIL, raw, None) is None


# -- email: the domain in one form (IDNA) ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "user@münchen.de",
        "User@MÜNCHEN.DE",
        "user@mu\u0308nchen.de",  # decomposed (NFD) ü
        "user@xn--mnchen-3ya.de",
        "USER@XN--MNCHEN-3YA.DE",
        "<mailto:user@münchen.de.>",
        "user@münchen\u3002de",  # ideographic full stop
        "user@münchen\uff0ede",  # full-width full stop
        "user@ｍüｎｃｈｅｎ.de",  # full-width letters
        "user@mün\u00adchen.de",  # soft hyphen: ignored by UTS #46
    ],
)
def test_an_international_domain_normalises_to_its_a_labels(raw: str) -> None:
    assert normalize_value(EMAIL, raw, None) == "user@xn--mnchen-3ya.de"


# Letters of several scripts that IDNA 2008 allows in labels (PVALID), lower-case.
_IDN_LETTERS = (
    "abcxyz019äöüßçğ\u0131şéèñøåæœ" + "абвгдежзийклмнопрстуфхцчшщыэюя" + "αβγδεζηθ" + "日本語中文"
)


@settings(max_examples=150)
@given(
    st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True),
    st.lists(st.text(alphabet=_IDN_LETTERS, min_size=1, max_size=12), min_size=1, max_size=3),
    st.sampled_from(["com", "de", "рф", "中国", "xn--p1ai"]),
)
def test_unicode_and_ascii_spellings_of_a_domain_normalise_to_one_value(
    local: str, labels: list[str], tld: str
) -> None:
    unicode_domain = ".".join([*labels, tld])
    try:
        a_labels = idna.encode(unicode_domain, uts46=True, std3_rules=True).decode()
    except idna.IDNAError:
        assume(False)
    found = normalize_value(EMAIL, f"{local}@{unicode_domain}", None)
    assert found == f"{local}@{a_labels}"
    assert found.isascii()
    assert normalize_value(EMAIL, f"{local}@{a_labels.upper()}", None) == found
    upper = f"{local}@{unicode_domain}".upper()
    if upper.lower() == f"{local}@{unicode_domain}":  # not for ß (SS) or dotless i (I)
        assert normalize_value(EMAIL, upper, None) == found


@pytest.mark.parametrize(
    "domain",
    [
        "ab--cd.com",  # hyphens 3rd and 4th: reserved for A-labels
        "xn--abc.com",  # not Punycode of a valid label
        "xn---bbk.com",  # a non-canonical spelling of another label
        "xn--.com",
        "-abc.com",
        "abc-.com",
        "exa_mple.com",
        "exa*mple.com",
        "☃.com",  # IDNA 2003 allowed symbols; IDNA 2008 does not
        "a\u200cb.com",  # a joiner outside the scripts that need one
        "\u202eexample.com",  # a right-to-left override
        "exa\u0007mple.com",
        "x" * 64 + ".com",  # a label of 64
        "example",  # one label
        "localhost.",
        ".com",
    ],
)
def test_a_domain_idna_refuses_makes_the_email_invalid(domain: str) -> None:
    assert normalize_value(EMAIL, f"user@{domain}", None) is None


def test_a_label_of_63_is_accepted() -> None:
    address = "user@" + "x" * 63 + ".com"
    assert normalize_value(EMAIL, address, None) == address


def test_turkish_capitals_lower_case_before_idna_as_in_the_local_part() -> None:
    # Lower-casing comes first, for the whole address (Unicode simple case mapping): "İ" is
    # "i", so a CRM that upper-cased in a Turkish locale still finds the address.
    assert normalize_value(EMAIL, "ALİ@GMAİL.COM", None) == "ali@gmail.com"


@given(st.text(max_size=40))
def test_idna_domain_never_raises(text: str) -> None:
    found = idna_domain(text.lower())
    assert found is None or (found.isascii() and "." in found and found == found.lower())


# -- email: look-alikes are other addresses -------------------------------------------------------

# Latin letter → a letter of another script that looks the same (Unicode confusables).
CONFUSABLES = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441"}
CONFUSABLES |= {"x": "\u0445", "i": "\u0456", "s": "\u0455", "j": "\u0458"}
CONFUSABLES |= {"o": "\u03bf", "v": "\u03bd"}  # Greek omicron, nu


@given(
    st.from_regex(r"[a-z]{1,10}", fullmatch=True).filter(lambda t: set(t) & set(CONFUSABLES)),
    st.data(),
)
def test_a_look_alike_letter_makes_another_address(local: str, data) -> None:
    positions = [i for i, c in enumerate(local) if c in CONFUSABLES]
    at = data.draw(st.sampled_from(positions))
    spoofed = local[:at] + CONFUSABLES[local[at]] + local[at + 1 :]
    latin = normalize_value(EMAIL, f"{local}@example.com", None)
    look_alike = normalize_value(EMAIL, f"{spoofed}@example.com", None)
    assert look_alike is not None  # a valid address (RFC 6531 allows any script) ...
    assert look_alike != latin  # ... and not the Latin one
    # In a domain too: IDNA encodes the look-alike label, it does not fold it into Latin.
    domain = normalize_value(EMAIL, f"user@{local}.com", None)
    assert normalize_value(EMAIL, f"user@{spoofed}.com", None) not in (domain, None)


def test_a_cyrillic_a_is_not_a_latin_a() -> None:
    assert normalize_value(EMAIL, "\u0430lice@example.com", None) == "\u0430lice@example.com"
    assert normalize_value(EMAIL, "alice@ex\u0430mple.com", None) == "alice@xn--exmple-4nf.com"


# -- email: the whole rule, against a plain statement of it ---------------------------------------

_SPECIALS = set('<>()[]\\,;:"')


def reference_email(raw: str) -> str | None:
    """DESIGN.md's email rule in plain Python, as the lead would read it: the oracle for the
    vectorised implementation (trimming and lower-casing by Arrow's kernels, as for every kind).
    """
    import pyarrow.compute as pc

    text = pc.utf8_lower(pc.utf8_trim_whitespace(pa.scalar(raw, pa.string()))).as_py()
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        text = text[1:-1]
    text = text.removeprefix("mailto:")
    if text.count("@") != 1:
        return None
    local, domain = text.split("@")
    if not local or any(
        c in _SPECIALS or unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Zs", "Zl", "Zp")
        for c in local
    ):
        return None
    if not domain or any(c in "<>" or unicodedata.category(c)[0] == "Z" for c in domain):
        return None
    try:
        ascii_domain = idna.encode(domain, uts46=True, std3_rules=True).decode()
    except idna.IDNAError:
        return None
    ascii_domain = ascii_domain.removesuffix(".")
    if "." not in ascii_domain:
        return None
    address = f"{local}@{ascii_domain}"
    return address if len(address) <= 254 else None


_LOCAL_GOOD = ["a", "Z", "0", ".", "-", "_", "+", "'", "!", "ü", "Ü", "\u0430", "İ", "ab"]
_LOCAL_ODD = [",", ";", ":", "<", ">", '"', "(", "\\", " ", "\t", "\x07", "\u200b", "\u00a0"]
_DOMAIN_GOOD = ["a", "B", "7", "ü", "\u0430", "日", "münchen", "xn--mnchen-3ya", "a-b"]
_DOMAIN_ODD = ["-", "--", "xn--", ".", "_", "ß", "İ", "\u3002", "\uff0e", "\u00ad", "\u200b"]
_DOMAIN_ODD += ["\u0308", "☃", " ", "\x07", ">", "@", "x" * 60]


@st.composite
def spoiled(draw: st.DrawFn, good: list[str], odd: list[str], max_size: int) -> str:
    """Good pieces, now and then one odd piece among them."""
    pieces = draw(st.lists(st.sampled_from(good), min_size=1, max_size=max_size))
    if draw(st.integers(0, 3)) == 0:
        pieces.insert(draw(st.integers(0, len(pieces))), draw(st.sampled_from(odd)))
    return "".join(pieces)


@st.composite
def email_like(draw: st.DrawFn) -> str:
    """Values near the rule's edges: wrappers, odd characters, labels, lengths, dots."""
    before, after = draw(
        st.sampled_from(
            [("", ""), ("", ""), ("<", ">"), ("mailto:", ""), ("<MailTo:", ">"), ("<", "")]
        )
    )
    local = draw(spoiled(_LOCAL_GOOD, _LOCAL_ODD, 6))
    local += "x" * draw(st.sampled_from([0, 0, 0, 200, 230, 240, 245]))
    labels = draw(st.lists(spoiled(_DOMAIN_GOOD, _DOMAIN_ODD, 3), min_size=1, max_size=3))
    labels += draw(st.sampled_from([["com"], ["COM"], ["de"], ["xn--p1ai"], ["рф"], []]))
    root = draw(st.sampled_from(["", "", ".", "..", "\u3002"]))
    at = draw(st.sampled_from(["@", "@", "@", "@", "", "@@"]))
    return before + local + at + ".".join(labels) + root + after


@settings(max_examples=400)
@given(st.lists(email_like(), min_size=1, max_size=12))
def test_email_normalisation_follows_the_rule_as_stated(values: list[str]) -> None:
    found = normalize_array(EMAIL, pa.array(values, pa.string()), None).to_pylist()
    assert found == [reference_email(v) for v in values]


@settings(max_examples=200)
@given(st.lists(st.text(max_size=80), max_size=10))
def test_email_of_any_text_is_a_bounded_single_address_or_none(values: list[str]) -> None:
    for found in normalize_array(EMAIL, pa.array(values, pa.string()), None).to_pylist():
        if found is not None:
            _, domain = found.split("@")  # exactly one "@"
            assert len(found) <= 254 and domain.isascii() and domain == domain.lower()
            assert normalize_value(EMAIL, found, None) == found


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


# -- msisdn: the international-first reading and odd spellings ------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("905321234567", "TR", "+905321234567"),  # DESIGN.md's example
        ("90 532 123 45 67", "TR", "+905321234567"),
        ("4915123456789", "DE", "+4915123456789"),
        (
            "\u0664\u0669\u0661\u0665\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
            "DE",
            "+4915123456789",
        ),  # the same digits, Arabic-Indic
        ("0532 123 45 67", "TR", "+905321234567"),  # a trunk prefix: national
    ],
)
def test_digits_starting_with_the_calling_code_are_read_as_international_first(
    raw: str, region: str, expected: str
) -> None:
    assert normalize_value(MSISDN, raw, region) == expected


def test_the_international_first_reading_matters() -> None:
    # Read as national, these digits are a valid number too, but another one.
    national = phonenumbers.parse("4915123456789", "DE")
    assert phonenumbers.is_valid_number(national)
    assert e164(national) != "+4915123456789"


# Decimal digits of several scripts, zero first: sources in Arabic, Persian, Hindi locales,
# and full-width digits from East Asian input methods.
DIGIT_ZEROS = {"ascii": "0", "arabic-indic": "\u0660", "persian": "\u06f0"}
DIGIT_ZEROS |= {"devanagari": "\u0966", "bengali": "\u09e6", "full-width": "\uff10"}


def in_script(text: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in text)


@given(
    mobile_numbers(),
    st.sampled_from(sorted(DIGIT_ZEROS)),
    st.sampled_from(["E164", "NATIONAL", "digits"]),
)
def test_digits_of_any_script_read_as_ascii_digits(drawn, script: str, fmt: str) -> None:
    region, number = drawn
    if fmt == "digits":
        written = e164(number).removeprefix("+")
    else:
        written = phonenumbers.format_number(number, FORMATS[fmt])
    assert normalize_value(MSISDN, in_script(written, DIGIT_ZEROS[script]), region) == e164(number)


@pytest.mark.parametrize(
    "raw",
    [
        "+90 532 123 45 67",
        "+90.532.123.45.67",
        "+90-532-123-45-67",
        "(0532) 123 45 67",
        "0532.123.45.67",
        "+90 (532) 123-4567",
        "(+90) 532 123 45 67",
        "0090 532 123 45 67",
        "00 90 532 123 45 67",
        "tel:+90-532-123-45-67",
        "TEL:+905321234567",
        "tel:+90-532-123-45-67;ext=12",
        "+90 532 123 45 67 ext. 12",
        "+90 532 123 45 67 x12",
        "+90 532 123 45 67 #12",
        "905321234567 ext 12",
        "+90\u00a0532\u00a0123\u00a045\u00a067",  # no-break spaces
        "\uff0b\uff19\uff10\uff15\uff13\uff12\uff11\uff12\uff13\uff14\uff15\uff16\uff17",
    ],
)
def test_odd_spellings_of_one_number_all_normalise_to_it(raw: str) -> None:
    assert normalize_value(MSISDN, raw, "TR") == "+905321234567"


@pytest.mark.parametrize(
    "raw",
    [
        "0532 CAR 45 67",  # phonenumbers alone reads +905322274567: somebody else's number
        "+90 532 1OO OO 34",  # letter O for zero
        "+1 800 FLOWERS",
        "1-800-FLOWERS",
        "0532 123 45 67 call me",
        "+905321234567, +905321234568",  # two numbers
        "+90 532 123 45 67 / 0532 765 43 21",
        "+90 532\x07123 45 67",  # a control character inside
        "' OR 1=1 --",
        "../../etc/passwd",
        "\u00b2\u2079\u2070\u2075\u00b3\u00b2",  # superscripts are not decimal digits
        "\u2460\u2461\u2462\u2463\u2464\u2465\u2466\u2467\u2468\u2469",  # circled digits
    ],
)
def test_letters_and_junk_never_become_a_number(raw: str) -> None:
    assert normalize_value(MSISDN, raw, "TR") is None


def test_letters_are_refused_only_when_read_as_digits() -> None:
    spelled = "0532 CAR 45 67"
    assert phonenumbers.is_valid_number(phonenumbers.parse(spelled, "TR"))  # what we refuse
    assert to_e164.__wrapped__(spelled, "TR") is None
    assert to_e164.__wrapped__("tel:0532 227 45 67;ext=1", "TR") == "+905322274567"


def test_a_phone_value_is_at_most_250_characters_on_both_readings() -> None:
    def spaced(size: int) -> str:
        return "+90" + " " * (size - 13) + "5321234567"

    # Without "+": the international-first reading alone would find +905321234567 in it.
    unsigned = "90" + " " * 239 + "5321234567"
    values = [spaced(250), spaced(251), unsigned, "9" * 10_240, "+90 532 123 45 67 " + "x" * 9999]
    assert [len(v) for v in values[:3]] == [250, 251, 251]
    expected = ["+905321234567", None, None, None, None]
    assert normalize_array(MSISDN, pa.array(values), "TR").to_pylist() == expected
    assert [to_e164.__wrapped__(v, "TR") for v in values] == expected
    _, decided = e164_array(pa.array(values[1:]), "TR")
    assert decided.all()  # too long is decided without phonenumbers


_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.text(alphabet="0123456789 +-().#xt:el;\u0660\u0669\uff10\uff0b", max_size=30),
        ),
        max_size=10,
    ),
    st.sampled_from([None, "TR", "DE", "US"]),
)
def test_msisdn_of_any_text_is_a_valid_e164_number_or_none(values, region) -> None:
    for found in normalize_array(MSISDN, pa.array(values, pa.string()), region).to_pylist():
        if found is not None:
            assert _E164.fullmatch(found)
            assert phonenumbers.is_valid_number(phonenumbers.parse(found))
            assert normalize_value(MSISDN, found, region) == found


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


def test_an_email_hash_must_be_of_the_normalised_address() -> None:
    # email_sha256 values come hashed: matched as given (lower-cased hex), so the source must
    # hash the normalised address, A-label domain included; a hash of another spelling is
    # another value.
    normalised = normalize_value(EMAIL, "<MAILTO:User@München.de.>", None)
    assert normalised == "user@xn--mnchen-3ya.de"
    right, wrong = sha256_hex(normalised), sha256_hex("user@münchen.de")
    assert normalize_value(IdentifierKind.EMAIL_SHA256, right.upper(), None) == right
    assert normalize_value(IdentifierKind.EMAIL_SHA256, wrong, None) == wrong != right


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
