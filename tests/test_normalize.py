"""Normalisation: the forms under which two spellings of one person compare equal."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.people_data import _phone, make_people
from models.contact import Contact
from sync.normalize import (
    FREE_MAIL_DOMAINS,
    blocking_keys,
    company_key,
    contact_problems,
    email_domain,
    email_problem,
    fold_text,
    name_parts,
    normalize_email,
    normalize_phone,
)

# --- emails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("John.Smith@Gmail.com", "johnsmith@gmail.com"),
        ("  j.o.h.n.smith+crm@googlemail.com ", "johnsmith@gmail.com"),
        ("JohnSmith+news+more@gmail.com", "johnsmith@gmail.com"),
        ("ann+tag@outlook.com", "ann@outlook.com"),
        ("ann+tag@icloud.com", "ann@icloud.com"),
        ("Ann.Lee@Acme.com", "ann.lee@acme.com"),  # dots matter outside Gmail
        ("ann+tag@acme.com", "ann+tag@acme.com"),  # a company's own domain may route "+" elsewhere
        ("ann-tag@yahoo.com", "ann-tag@yahoo.com"),  # Yahoo uses "-" and a base name, not "+"
        ("mailto:Ann@Example.org", "ann@example.org"),
        ("<ann@example.org>", "ann@example.org"),
        ("ann@example.org.", "ann@example.org"),
        ("ann@xn--bcher-kva.de", "ann@bücher.de"),
        ("ANN@BÜCHER.DE", "ann@bücher.de"),
        ("+tag@gmail.com", "+tag@gmail.com"),  # nothing before the tag: keep it rather than invent ""
    ],
)
def test_normalize_email_examples(raw, expected):
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "john", "john@", "@gmail.com", "john@localhost", "a@b@c.com", "john smith@x.com", "a@.com", "a@x..com", None, 42],
)
def test_normalize_email_rejects_non_addresses(raw):
    assert normalize_email(raw) is None


def test_email_domain_and_free_domains():
    assert email_domain("A.B+x@googlemail.com") == "gmail.com"
    assert email_domain("ann@Acme.COM") == "acme.com"
    assert email_domain("nonsense") is None
    for domain in ("gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com"):
        assert domain in FREE_MAIL_DOMAINS
    assert "acme.com" not in FREE_MAIL_DOMAINS


def test_email_problem_messages():
    assert email_problem("ann@example.com") is None
    assert email_problem("ann@mailinator.com") is None  # deliverability is not checked
    assert "period" in email_problem("a..b@example.com")
    assert "@" in email_problem("no-at-sign.example.com")
    assert email_problem("") == "The email address is empty."
    assert email_problem("ann@bad_domain.com") is not None


_local = st.text(alphabet=string.ascii_letters + string.digits + ".+-_", min_size=1, max_size=20)
_domain = st.sampled_from(["gmail.com", "GoogleMail.com", "outlook.com", "acme.co.uk", "bücher.de", "xn--bcher-kva.de", "yahoo.com"])


@given(local=_local, domain=_domain)
def test_normalize_email_idempotent_on_addresses(local, domain):
    once = normalize_email(f"{local}@{domain}")
    if once is not None:
        assert normalize_email(once) == once


@given(st.text(max_size=40))
def test_normalize_email_idempotent_on_any_text(text):
    once = normalize_email(text)
    if once is not None:
        assert normalize_email(once) == once
        assert once.count("@") == 1


@given(local=st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12), data=st.data())
def test_gmail_variants_collapse(local, data):
    """Any dotting, casing or plus tag of a Gmail address is the same mailbox."""
    dotted = "".join(ch + ("." if data.draw(st.booleans()) else "") for ch in local).rstrip(".")
    tag = data.draw(st.sampled_from(["", "+crm", "+a.b"]))
    domain = data.draw(st.sampled_from(["gmail.com", "GMAIL.com", "googlemail.com"]))
    variant = data.draw(st.sampled_from([str.upper, str.lower, str.title]))(dotted) + tag + "@" + domain
    assert normalize_email(variant) == f"{local}@gmail.com"


# --- phones ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["(415) 555-0134", "415.555.0134", "+1 415 555 0134", "1 (415) 555-0134", "+1-415-555-0134", "4155550134", "415-555-0134 ext. 12"],
)
def test_normalize_phone_us_formats(raw):
    assert normalize_phone(raw) == "+14155550134"


def test_normalize_phone_international_and_region():
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"
    assert normalize_phone("0044 20 7946 0958", "DE") == "+442079460958"
    assert normalize_phone("020 7946 0958", "GB") == "+442079460958"
    assert normalize_phone("+49 (0)30 1234567") == "+49301234567"
    assert normalize_phone("030 1234567", "DE") == "+49301234567"


@pytest.mark.parametrize("raw", ["", "n/a", "12", "+1 12", "call me", None])
def test_normalize_phone_rejects(raw):
    assert normalize_phone(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0044 20 7946 0958", "+442079460958"),  # "00": how most of the world dials abroad
        ("0044 2079460958", "+442079460958"),
        ("0049 301234567", "+49301234567"),
        ("0033 612345678", "+33612345678"),
        ("(0044) 20 7946 0958", "+442079460958"),
        ("001 415 555 0134", "+14155550134"),
        ("011 44 20 7946 0958", "+442079460958"),  # the North American prefix
    ],
)
def test_normalize_phone_international_prefixes(raw, expected):
    assert normalize_phone(raw) == expected


def test_international_prefix_fallback_leaves_national_numbers_alone():
    # 0114 is Sheffield's area code, not "011" + 4...: a possible national number wins.
    assert normalize_phone("0114 496 0123", "GB") == "+441144960123"
    assert normalize_phone("00", "US") is None and normalize_phone("0011", "US") is None


@settings(max_examples=300)
@given(st.randoms(use_true_random=False))
def test_every_phone_the_people_generator_writes_normalises_to_its_number(rng):
    country, national, rendered = _phone(rng)
    assert normalize_phone(rendered) == f"+{country}{national}"


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32))
def test_generated_people_have_only_normalisable_phones(seed):
    for person in make_people(30, seed):
        for phone in person.phone_numbers():
            assert (normalize_phone(phone) or "").startswith("+")


@given(st.text(alphabet="0123456789 +-().x", max_size=25))
def test_normalize_phone_idempotent(raw):
    once = normalize_phone(raw)
    if once is not None:
        assert once.startswith("+")
        assert normalize_phone(once) == once


# --- names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "family", "expected"),
    [
        ("José", "García", ("jose", "garcia")),
        ("JOSÉ", "GARCÍA", ("jose", "garcia")),
        ("Søren", "Østergaard", ("soren", "ostergaard")),
        ("Łukasz", "Wójcik", ("lukasz", "wojcik")),
        ("Jürgen", "Weiß", ("jurgen", "weiss")),
        ("Conan", "O'Brien", ("conan", "obrien")),
        ("Jean-Luc", "Picard", ("jean luc", "picard")),
        ("Smith, John", "", ("john", "smith")),
        ("John Smith", "", ("john", "smith")),
        ("Dr. John Q. Smith Jr.", "", ("john", "smith")),
        ("Vega, María de la", "", ("maria", "de la vega")),
        ("Madonna", "", ("madonna", "")),
        ("", "Smith", ("", "smith")),
        ("", "", ("", "")),
    ],
)
def test_name_parts(given, family, expected):
    assert name_parts(given, family) == expected


def test_nicknames_are_not_equated():
    # Documented non-goal: Bob is not Robert. Matching relies on identifiers for those.
    assert name_parts("Bob", "Smith") != name_parts("Robert", "Smith")


@given(st.text(max_size=30))
def test_fold_text_idempotent(text):
    once = fold_text(text)
    assert fold_text(once) == once


@given(st.text(max_size=30), st.text(max_size=30))
def test_name_parts_idempotent(given_name, family_name):
    first, last = name_parts(given_name, family_name)
    assert name_parts(first, last) == (first, last) or not last
    assert fold_text(first) == first and fold_text(last) == last


def test_company_key_drops_legal_forms():
    assert company_key("ACME, Inc.") == company_key("Acme") == "acme"
    assert company_key("Müller GmbH") == "muller"
    assert company_key("Co") == "co"  # a name made only of a suffix keeps it


# --- blocking keys --------------------------------------------------------------


def test_blocking_keys_shape():
    c = Contact(given_name="John", family_name="Smith", emails=["John.Smith@acme.com", "j.smith+x@gmail.com"],
                phones=["(415) 555-0134"], birthday="1984-03-17",
                addresses=[{"street": "12 Elm Street", "postal_code": "62704"}])
    keys = blocking_keys(c)
    assert {"e:john.smith@acme.com", "e:jsmith@gmail.com", "p:+14155550134", "d:acme.com|smith",
            "a:62704|12", "b:1984-03-17", "bm:03-17|j",
            "n:smith|jo", "n:smith|hn", "n:john|sm", "n:john|th", "i:smith|j", "k:smith|john", "k:john|smith",
            "m:JN SM0"} <= keys
    assert {k for k in keys if k.startswith("k:smith|")} <= {f"k:smith|{f}" for f in ("john", "ian", "ivan", "johann",
            "johannes", "johnathan", "johnathon", "jonathan", "jonathon", "jack", "jock", "jon")}
    assert len(keys) <= 25


@pytest.mark.parametrize(
    "variant",
    [("Smith", "John"), ("Smith, John", ""), ("Jon", "Smyth"), ("Jonh", "Smith"), ("John", "Smtih"), ("J.", "Smith"),
     ("Johnny", "Smith"), ("JOHN", "SMITH"), ("John Q.", "Smith")],
    ids=["swapped", "one-field", "sounds-alike", "typo-given", "typo-family", "initial", "nickname", "case", "middle"],
)
def test_blocking_keys_shared_by_variants(variant):
    a = Contact(given_name="John", family_name="Smith")
    assert blocking_keys(a) & blocking_keys(Contact(given_name=variant[0], family_name=variant[1]))


def test_blocking_keys_not_shared_by_other_people():
    a = Contact(given_name="John", family_name="Smith")
    assert not blocking_keys(a) & blocking_keys(Contact(given_name="Mary", family_name="Jones"))


def test_nickname_keys_meet():
    bob, robert = Contact(given_name="Bob", family_name="Smith"), Contact(given_name="Robert", family_name="Smith")
    assert "k:smith|robert" in blocking_keys(bob) & blocking_keys(robert)


def test_blocking_keys_ignore_free_mail_domains_and_garbage():
    keys = blocking_keys(Contact(family_name="Lee", emails=["ann@gmail.com", "not an address"], phones=["n/a"]))
    assert keys == {"e:ann@gmail.com"}
    assert blocking_keys(Contact()) == set()


# --- malformed input ------------------------------------------------------------


def test_contact_problems_clean_contact():
    c = Contact(given_name="Ann", family_name="Lee", emails=["ann@example.com"], phones=["+1 415 555 0134"], notes="line 1\nline 2")
    assert contact_problems(c) == []


def test_contact_problems_name_fields_not_content():
    c = Contact(
        given_name="An\udc80n",  # lone surrogate: broken UTF-8 decoded with surrogateescape
        family_name="Le\x00e",
        company="x" * 2000,
        job_title="caf\ufffd",
        emails=["secret-person@@example.com", "fine@example.com"],
        phones=["n/a"],
    )
    problems = contact_problems(c)
    text = " | ".join(problems)
    assert any(p.startswith("given_name") and "lone surrogate" in p for p in problems)
    assert any(p.startswith("family_name") and "control character" in p for p in problems)
    assert any(p.startswith("company") and "too long" in p for p in problems)
    assert any(p.startswith("job_title") and "U+FFFD" in p for p in problems)
    assert any(p.startswith("emails[1]") and "not a valid email" in p for p in problems)
    assert any(p.startswith("phones[0]") for p in problems)
    assert not any(p.startswith("emails[0]") for p in problems)  # "fine@..." sorts first
    for content in ("secret-person", "xxxxxxxx", "caf"):
        assert content not in text


@pytest.mark.parametrize("control", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"])
@pytest.mark.parametrize("field", ["given_name", "family_name", "company", "job_title"])
def test_contact_problems_report_bidi_controls_by_field(field, control):
    c = Contact(**{"given_name": "Ann", "emails": ["ann@example.com"], field: f"evil{control}txt.exe"})
    problems = contact_problems(c)
    assert [p for p in problems if p.startswith(field)] == [
        f"{field} contains a bidirectional control character (U+{ord(control):04X})"
    ]
    assert not any("evil" in p or "txt" in p for p in problems)


def test_bidi_controls_in_emails_and_phones_are_problems_but_notes_may_hold_them():
    c = Contact(given_name="Ann", emails=["a\u202enn@example.com"], phones=["+1 415\u2066 555 0134"])
    problems = contact_problems(c)
    assert any(p.startswith("emails[0] contains a bidirectional control") for p in problems)
    assert any(p.startswith("phones[0] contains a bidirectional control") for p in problems)
    # Right-to-left text pasted into free-text notes legitimately carries embeddings.
    assert contact_problems(Contact(given_name="Ann", notes="\u202bשלום\u202c world")) == []


def test_contact_problems_empty_and_limits():
    assert contact_problems(Contact()) == ["the contact is empty: no name, email, phone or company"]
    assert contact_problems(Contact(notes="only a note")) == ["the contact has no name, email, phone or company to identify it"]
    assert contact_problems(Contact(given_name="Ann", notes="n" * 50), max_field_len=10) == [
        "notes is too long (50 characters; the limit is 10)"
    ]
    assert contact_problems(Contact(given_name="Ann\nLee")) != []  # newline only allowed in notes


@settings(max_examples=200)
@given(st.builds(Contact, given_name=st.text(max_size=20), family_name=st.text(max_size=20), emails=st.lists(st.text(max_size=20), max_size=3), phones=st.lists(st.text(max_size=15), max_size=2), company=st.text(max_size=20), notes=st.text(max_size=20)))
def test_contact_problems_and_keys_never_crash(contact):
    problems = contact_problems(contact)
    assert all(isinstance(p, str) and p for p in problems)
    assert isinstance(blocking_keys(contact), set)


_PLAINISH = st.from_regex(
    r"\A[A-Za-z0-9_%+.-]{1,70}@([A-Za-z0-9-]{1,64}\.){1,3}([A-Za-z]{1,64}|test|local|invalid|onion|arpa|localhost)\Z")


@settings(max_examples=400, deadline=None)
@given(st.one_of(_PLAINISH, st.text(max_size=80)))
def test_the_fast_path_for_plain_addresses_never_accepts_what_email_validator_refuses(value):
    from email_validator import EmailNotValidError, validate_email

    from sync.normalize import _plain_email

    if _plain_email(value):
        try:
            validate_email(value, check_deliverability=False)
        except EmailNotValidError as exc:  # pragma: no cover - the failure this test exists for
            raise AssertionError(f"fast path accepted {value!r}: {exc}") from None
