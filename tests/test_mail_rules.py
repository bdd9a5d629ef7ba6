"""sync/mail/rules and policy: one named rule per message, in the documented order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.mail import Address, MailMessage
from sync.mail import rules
from sync.mail.addresses import domain_of, is_blocklisted, is_role_address
from sync.mail.policy import DAY, MailPolicy
from tests.mail_strategies import OWN, messages

NOW = 1_700_000_000.0
CONNECTED = NOW - 10 * DAY
ME = Address(email=f"me@{OWN}", name="Me")
JANE = Address(email="jane@acme.com", name="Jane Doe")
KNOWN = {"jane@acme.com"}


def msg(**kw) -> MailMessage:
    base = dict(message_id="<m1@acme.com>", subject="Quote", sender=JANE, to=(ME,), sent_at=NOW - DAY)
    base.update(kw)
    return MailMessage(**base)


def verdict(m: MailMessage, policy: MailPolicy | None = None, **kw) -> rules.Verdict:
    policy = policy or MailPolicy(own_domains=(OWN,))
    kw.setdefault("known", KNOWN)
    return rules.classify(m, policy, now=NOW, connected_at=CONNECTED, **kw)


# --- policy ---------------------------------------------------------------------


def test_policy_defaults_are_restrictive():
    p = MailPolicy()
    assert (p.visibility, p.bodies, p.attachments, p.auto_create, p.create_kind, p.ambiguity, p.on_delete) == (
        "metadata", False, False, "sent", "lead", "ask", "keep")
    assert "noreply" in p.role_addresses and "gmail.com" in p.free_mail_domains and "gmx.at" in p.free_mail_domains


def test_bodies_only_with_full_visibility():
    assert MailPolicy(visibility="full").bodies
    assert not any(MailPolicy(visibility=v).bodies for v in ("private", "metadata", "subject"))


def test_for_user_merges_and_user_blocklist_adds():
    p = MailPolicy.for_user({"own_domains": ["Us.Example"], "blocklist": ["spam.net"], "visibility": "subject"},
                            {"visibility": "full", "blocklist": ["ex@acme.com"], "capture": "label"})
    assert p.own_domains == ("us.example",)
    assert p.blocklist == ("spam.net", "ex@acme.com")
    assert (p.visibility, p.capture) == ("full", "label")


@pytest.mark.parametrize("org,user,named", [
    ({"colour": "red"}, {}, "colour"),
    ({}, {"nonsense": 1}, "nonsense"),
    ({}, {"own_domains": ["x.com"]}, "own_domains"),
    ({}, {"bodies": True}, "bodies"),
    ({"capture": "everything"}, {}, "capture"),
])
def test_for_user_refuses_unknown_or_org_only_keys_by_name(org, user, named):
    with pytest.raises(ValueError, match=named):
        MailPolicy.for_user(org, user)


def test_window_start():
    c, n = 1000.0 * DAY, 1010.0 * DAY
    assert MailPolicy().window_start(c, n) is None
    assert MailPolicy(new_only=True).window_start(c, n) == c
    assert MailPolicy(backfill_days=30).window_start(c, n) == c - 30 * DAY
    assert MailPolicy(backfill_days=30, new_only=True).window_start(c, n) == c - 30 * DAY
    assert MailPolicy(new_only=True).window_start(n + DAY, n) == n  # never in the future


# --- address helpers --------------------------------------------------------------


def test_domain_of_uses_idna():
    assert domain_of("a@Bücher.DE") == domain_of("a@xn--bcher-kva.de") == "xn--bcher-kva.de"
    assert domain_of("no-at-sign") == ""


@pytest.mark.parametrize("email,role", [
    ("noreply@x.com", True), ("no-reply@x.com", True), ("noreply-billing@x.com", True), ("Info+eu@x.com", True),
    ("mailer-daemon@x.com", True), ("jane@x.com", False), ("information.desk.jane@x.com", False),
])
def test_role_addresses(email, role):
    assert is_role_address(email, MailPolicy().role_addresses) is role


def test_blocklist_matches_address_domain_and_subdomain():
    bl = ("ex@acme.com", "@spam.net", "bücher.de")
    assert is_blocklisted("EX@acme.com", bl)
    assert not is_blocklisted("jane@acme.com", bl)
    assert is_blocklisted("a@mx.spam.net", bl)
    assert is_blocklisted("a@xn--bcher-kva.de", bl)


# --- each named rule ----------------------------------------------------------------


def test_logged_known():
    assert verdict(msg()) == rules.Verdict(log=True, rule="logged_known", action="log")


def test_no_known_participant():
    assert verdict(msg(), known=set()).rule == "no_known_participant"
    assert verdict(msg(), known=lambda e: e == "jane@acme.com").rule == "logged_known"


def test_known_participant_must_be_external():
    m = msg(sender=ME, to=(JANE, Address(email=f"col@{OWN}")))
    assert verdict(m, known={f"col@{OWN}"}).rule == "no_known_participant"


def test_calendar_invite():
    assert verdict(msg(calendar_invite=True)).rule == "calendar_invite"


@pytest.mark.parametrize("value,rule", [("auto-replied", "automated"), ("auto-generated", "automated"),
                                        ("no", "logged_known"), ("", "logged_known")])
def test_automated(value, rule):
    assert verdict(msg(auto_submitted=value)).rule == rule


@pytest.mark.parametrize("kw", [dict(list_unsubscribe=True), dict(precedence="bulk"), dict(precedence="List"),
                                dict(precedence="junk")])
def test_bulk(kw):
    assert verdict(msg(**kw)).rule == "bulk"


def test_outside_window():
    p = MailPolicy(own_domains=(OWN,), backfill_days=5)
    assert verdict(msg(sent_at=CONNECTED - 6 * DAY), p).rule == "outside_window"
    assert verdict(msg(sent_at=CONNECTED - 4 * DAY), p).rule == "logged_known"
    p = MailPolicy(own_domains=(OWN,), new_only=True)
    assert verdict(msg(sent_at=CONNECTED - 1), p).rule == "outside_window"
    assert verdict(msg(sent_at=None, received_at=CONNECTED - 1), p).rule == "outside_window"


def test_blocklisted_sender_or_every_external():
    p = MailPolicy(own_domains=(OWN,), blocklist=("acme.com",))
    assert verdict(msg(), p).rule == "blocklisted"
    other = Address(email="bob@beta.io")
    assert verdict(msg(sender=ME, to=(JANE, other)), p, known={"bob@beta.io"}).rule == "logged_known"
    assert verdict(msg(sender=ME, to=(JANE,)), p).rule == "blocklisted"


def test_internal_only():
    m = msg(sender=ME, to=(Address(email=f"col@{OWN}"), Address(email=f"x@eu.{OWN}")))
    assert verdict(m).rule == "internal_only"


def test_label_mode():
    p = MailPolicy(own_domains=(OWN,), capture="label")
    assert verdict(msg(), p).rule == "no_label"
    assert verdict(msg(labels=("crm",)), p, known=set()).rule == "logged_label"
    assert verdict(msg(labels=("Deals",)), MailPolicy(own_domains=(OWN,), capture="label", label="Deals")).log


def test_sent_mode():
    p = MailPolicy(own_domains=(OWN,), capture="sent")
    assert verdict(msg(), p).rule == "not_sent"
    assert verdict(msg(sender=ME, to=(JANE,), direction="sent"), p, known=set()).rule == "logged_sent"


@pytest.mark.parametrize("on_removed,action", [("keep", "keep"), ("remove", "remove")])
def test_label_removed(on_removed, action):
    p = MailPolicy(own_domains=(OWN,), capture="label", on_label_removed=on_removed)
    v = verdict(msg(), p, previously_logged=True, label_removed=True)
    assert (v.log, v.rule, v.action) == (False, "label_removed", action)
    # never logged: nothing to take back
    assert verdict(msg(), p, label_removed=True).rule == "no_label"
    # the label is back on it: the flag is stale
    assert verdict(msg(labels=("CRM",)), p, previously_logged=True, label_removed=True).rule == "logged_label"


def test_label_removed_only_matters_in_label_mode():
    assert verdict(msg(), previously_logged=True, label_removed=True).rule == "logged_known"


def test_precedence_hygiene_before_mode():
    p = MailPolicy(own_domains=(OWN,), capture="label")
    assert verdict(msg(labels=("CRM",), list_unsubscribe=True), p).rule == "bulk"
    assert verdict(msg(calendar_invite=True, list_unsubscribe=True, auto_submitted="auto-generated")).rule == (
        "calendar_invite")


def test_rule_names_are_the_named_constants():
    assert len(set(rules.RULES)) == 13
    assert set(rules.LOG_RULES) == {"logged_known", "logged_label", "logged_sent"}


# --- property -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(m=messages(), capture=st.sampled_from(("known", "label", "sent")), prev=st.booleans(), removed=st.booleans(),
       on_removed=st.sampled_from(("keep", "remove")), backfill=st.one_of(st.none(), st.integers(0, 400)),
       new_only=st.booleans(), known=st.sets(st.sampled_from(("jane@acme.com", "bob@beta.io", "jane@gmail.com"))))
def test_every_message_gets_exactly_one_named_rule(m, capture, prev, removed, on_removed, backfill, new_only, known):
    p = MailPolicy(own_domains=(OWN,), blocklist=("spam.net",), capture=capture, on_label_removed=on_removed,
                   backfill_days=backfill, new_only=new_only)
    v = rules.classify(m, p, known=known, now=NOW, connected_at=CONNECTED, previously_logged=prev,
                       label_removed=removed)
    assert v.rule in rules.RULES
    assert v.log == (v.rule in rules.LOG_RULES) == (v.action == "log")
    if v.rule != "label_removed":
        assert v.action in ("log", "skip")
    assert v == rules.classify(m, p, known=known, now=NOW, connected_at=CONNECTED, previously_logged=prev,
                               label_removed=removed)
