"""sync/mail/capture: who becomes a lead or contact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.mail import Address, MailMessage
from models.mail_log import NewPerson
from sync.mail.addresses import domain_of, in_domains, is_blocklisted, is_role_address
from sync.mail.capture import capture, company_from_domain, person_name
from sync.mail.policy import MailPolicy
from tests.mail_strategies import OWN, messages

ME = Address(email=f"me@{OWN}")
POLICY = MailPolicy(own_domains=(OWN,), blocklist=("spam.net", "ex@acme.com"))


def sent(*to: Address, **kw) -> MailMessage:
    return MailMessage(message_id="<m@us.example>", sender=ME, to=to, direction="sent", **kw)


def run(m, policy=POLICY, known=(), owner="u1"):
    return capture(m, policy, known=set(known), own_user_emails={ME.email}, owner=owner)


def test_sent_mail_creates_a_lead_owned_by_the_user():
    assert run(sent(Address(email="jane.doe@acme-corp.co.uk", name=""))) == [
        NewPerson(kind="lead", email="jane.doe@acme-corp.co.uk", given_name="Jane", family_name="Doe",
                  company="Acme Corp", owner="u1")]


def test_create_kind_contact():
    p = MailPolicy(own_domains=(OWN,), create_kind="contact")
    assert [n.kind for n in run(sent(Address(email="bob@beta.io")), p)] == ["contact"]


def test_received_mail_only_with_sent_and_received():
    m = MailMessage(message_id="<m@x>", sender=Address(email="bob@beta.io"), to=(ME,), direction="received")
    assert run(m) == []
    p = MailPolicy(own_domains=(OWN,), auto_create="sent_and_received")
    assert [n.email for n in run(m, p)] == ["bob@beta.io"]


def test_never():
    assert run(sent(Address(email="bob@beta.io")), MailPolicy(auto_create="never")) == []


@pytest.mark.parametrize("who", [f"col@{OWN}", f"x@eu.{OWN}", "info@beta.io", "noreply@beta.io",
                                 "a@spam.net", "ex@acme.com", "known@beta.io", "not-an-address", "me@us.example"])
def test_excluded_addresses(who):
    assert run(sent(Address(email=who)), known={"KNOWN@beta.io"}) == []


@pytest.mark.parametrize("kw", [dict(list_unsubscribe=True), dict(precedence="bulk"), dict(auto_submitted="auto-replied")])
def test_bulk_and_automated_mail_creates_nobody(kw):
    assert run(sent(Address(email="bob@beta.io"), **kw)) == []


def test_free_mail_gives_no_company():
    (n,) = run(sent(Address(email="bob.smith@gmail.com")))
    assert (n.given_name, n.family_name, n.company) == ("Bob", "Smith", "")


@pytest.mark.parametrize("name,email,expected", [
    ("Doe, Jane", "x@a.com", ("Jane", "Doe")),
    ("Dr. Jane Doe", "x@a.com", ("Jane", "Doe")),
    ("JANE DOE", "x@a.com", ("Jane", "Doe")),
    ("Jane Q. Doe", "x@a.com", ("Jane Q.", "Doe")),
    ('"Doe, Jane"', "x@a.com", ("Jane", "Doe")),
    ("", "jane.doe@a.com", ("Jane", "Doe")),
    ("jane.doe@a.com", "jane.doe@a.com", ("Jane", "Doe")),
    ("", "anna_maria-lopez@a.com", ("Anna Maria", "Lopez")),
    ("", "jdoe42@a.com", ("Jdoe", "")),
    ("", "bob+news@a.com", ("Bob", "")),
])
def test_person_name(name, email, expected):
    assert person_name(Address(email=email, name=name)) == expected


@pytest.mark.parametrize("domain,company", [
    ("acme-corp.co.uk", "Acme Corp"), ("mail.acme.com", "Acme"), ("acme.com.au", "Acme"), ("sony.co.jp", "Sony"),
    ("beta.io", "Beta"), ("xn--bcher-kva.de", "Bücher"), ("gmail.com", ""), ("gmx.at", ""), ("localhost", ""),
    ("co.uk", ""),
])
def test_company_from_domain(domain, company):
    assert company_from_domain(domain, MailPolicy().free_mail_domains) == company


# --- properties -------------------------------------------------------------------------

auto = st.sampled_from(("never", "sent", "sent_and_received"))


@settings(max_examples=300, deadline=None)
@given(m=messages(), mode=auto, known=st.sets(st.sampled_from(("jane@acme.com", "bob@beta.io"))))
def test_capture_never_takes_what_it_must_not(m, mode, known):
    p = MailPolicy(own_domains=(OWN,), blocklist=("spam.net",), auto_create=mode)
    out = capture(m, p, known=known, own_user_emails={f"me@{OWN}"}, owner="u1")
    if mode == "never" or (mode == "sent" and m.direction != "sent"):
        assert out == []
    if m.list_unsubscribe or m.precedence in ("bulk", "list", "junk") or m.auto_submitted not in ("", "no"):
        assert out == []
    for n in out:
        d = domain_of(n.email)
        assert not in_domains(d, p.own_domains)
        assert not is_role_address(n.email, p.role_addresses)
        assert not is_blocklisted(n.email, p.blocklist)
        assert n.email not in known and n.email != f"me@{OWN}"
        if d in p.free_mail_domains:
            assert n.company == ""
        assert n.owner == "u1" and n.kind == "lead"
    assert len({n.email for n in out}) == len(out)
    assert out == capture(m, p, known=known, own_user_emails={f"me@{OWN}"}, owner="u1")
