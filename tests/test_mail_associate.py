"""sync/mail/associate: certain associations attached, every ambiguity accounted for."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.mail import Address, MailMessage
from models.mail_log import AccountRef, Association, OpportunityRef, Person
from sync.mail.associate import AMBIGUITY_REASONS, Ambiguity, associate
from sync.mail.policy import MailPolicy

OWN = "us.example"
ME = Address(email=f"me@{OWN}")


def A(kind: str, id: str) -> Association:
    return Association(object_type=kind, object_id=id)


def contact(id, *emails, account=None):
    return Person(id=id, kind="contact", emails=emails, account_id=account)


def lead(id, *emails):
    return Person(id=id, kind="lead", emails=emails)


def index(*persons: Person) -> dict[str, list[Person]]:
    out: dict[str, list[Person]] = {}
    for p in persons:
        for e in p.emails:
            out.setdefault(e, []).append(p)
    return out


def msg(*emails: str) -> MailMessage:
    return MailMessage(message_id="<m@x>", sender=ME, to=tuple(Address(email=e) for e in emails), direction="sent")


def run(m, persons=(), accounts=None, opps=None, ambiguity="ask", **pol):
    policy = MailPolicy(own_domains=(OWN,), ambiguity=ambiguity, **pol)
    return associate(m, people=index(*persons), accounts=accounts or {}, opportunities=opps or {}, policy=policy,
                     own_emails={ME.email})


def test_contact_with_its_account_and_opportunity():
    r = run(msg("jane@acme.com"), [contact("c1", "jane@acme.com", account="a1")],
            opps={"c1": [OpportunityRef(id="o1", contact_ids=("c1",))]})
    assert r.chosen == (A("contact", "c1"), A("account", "a1"), A("opportunity", "o1"))
    assert (r.ambiguities, r.attached_all, r.dropped) == ((), 0, 0)


def test_every_address_of_a_person_matches():
    r = run(msg("j.doe@acme.com"), [contact("c1", "jane@acme.com", "j.doe@acme.com")])
    assert r.chosen == (A("contact", "c1"),)


def test_idna_spellings_match():
    r = run(msg("hans@xn--bcher-kva.de"), [contact("c1", "hans@bücher.de")])
    assert r.chosen == (A("contact", "c1"),)


def test_contact_preferred_over_lead_with_the_same_address():
    r = run(msg("jane@acme.com"), [lead("l1", "jane@acme.com"), contact("c1", "jane@acme.com")])
    assert r.chosen == (A("contact", "c1"),) and r.ambiguities == ()


def test_single_lead():
    assert run(msg("jane@acme.com"), [lead("l1", "jane@acme.com")]).chosen == (A("lead", "l1"),)


def test_two_contacts_share_an_address():
    r = run(msg("jane@acme.com"), [contact("c1", "jane@acme.com"), contact("c2", "jane@acme.com")])
    assert r.chosen == ()
    assert r.ambiguities == (Ambiguity(reason="address_shared_by_contacts", about="jane@acme.com",
                                       options=(A("contact", "c1"), A("contact", "c2"))),)


def test_two_leads_share_an_address():
    r = run(msg("jane@acme.com"), [lead("l1", "jane@acme.com"), lead("l2", "jane@acme.com")])
    assert [a.reason for a in r.ambiguities] == ["address_shared_by_leads"]


def test_account_by_domain_only_without_a_person():
    accounts = {"acme.com": [AccountRef(id="a9", domain="acme.com")]}
    assert run(msg("bob@acme.com"), accounts=accounts).chosen == (A("account", "a9"),)
    r = run(msg("jane@acme.com"), [contact("c1", "jane@acme.com")], accounts=accounts)
    assert r.chosen == (A("contact", "c1"),)  # a contact without an account: no domain guess
    assert run(msg("bob@acme.com"), [lead("l1", "bob@acme.com")], accounts=accounts).chosen == (A("lead", "l1"),)


def test_never_an_account_from_a_free_mail_domain():
    accounts = {"gmail.com": [AccountRef(id="a1", domain="gmail.com")]}
    assert run(msg("bob@gmail.com"), accounts=accounts).chosen == ()


def test_two_accounts_share_a_domain_reported_once():
    accounts = {"acme.com": [AccountRef(id="a1"), AccountRef(id="a2")]}
    r = run(msg("bob@acme.com", "eve@acme.com"), accounts=accounts)
    assert r.chosen == ()
    assert r.ambiguities == (Ambiguity(reason="domain_shared_by_accounts", about="acme.com",
                                       options=(A("account", "a1"), A("account", "a2"))),)


def test_opportunities_never_from_domain_alone():
    accounts = {"acme.com": [AccountRef(id="a1")]}
    opps = {"a1": [OpportunityRef(id="o1", account_id="a1")]}
    assert run(msg("bob@acme.com"), accounts=accounts, opps=opps).chosen == (A("account", "a1"),)


def test_leads_are_not_followed_to_opportunities():
    opps = {"l1": [OpportunityRef(id="o1")]}
    assert run(msg("bob@acme.com"), [lead("l1", "bob@acme.com")], opps=opps).chosen == (A("lead", "l1"),)


def test_contact_in_two_open_opportunities():
    opps = {"c1": [OpportunityRef(id="o1"), OpportunityRef(id="o2")]}
    r = run(msg("jane@acme.com"), [contact("c1", "jane@acme.com", account="a1")], opps=opps)
    assert r.chosen == (A("contact", "c1"), A("account", "a1"))
    assert r.ambiguities == (Ambiguity(reason="contact_in_several_opportunities", about="c1",
                                       options=(A("opportunity", "o1"), A("opportunity", "o2"))),)


def _two_contacts_case(ambiguity):
    persons = [contact("c1", "jane@acme.com", account="a1"), contact("c2", "jane@acme.com", account="a2"),
               contact("c3", "bob@beta.io", account="a3")]
    return run(msg("jane@acme.com", "bob@beta.io"), persons, ambiguity=ambiguity)


def test_policy_all_attaches_every_option_and_follows_them():
    r = _two_contacts_case("all")
    assert set(r.chosen) == {A("contact", "c1"), A("contact", "c2"), A("contact", "c3"), A("account", "a1"),
                             A("account", "a2"), A("account", "a3")}
    assert (r.ambiguities, r.attached_all, r.dropped) == ((), 1, 0)


def test_policy_none_attaches_only_the_certain_and_counts_the_rest():
    r = _two_contacts_case("none")
    assert r.chosen == (A("contact", "c3"), A("account", "a3"))
    assert (r.ambiguities, r.attached_all, r.dropped) == ((), 0, 1)


def test_policy_ask_attaches_the_certain_and_returns_the_rest():
    r = _two_contacts_case("ask")
    assert r.chosen == (A("contact", "c3"), A("account", "a3"))
    assert [a.reason for a in r.ambiguities] == ["address_shared_by_contacts"]


@pytest.mark.parametrize("email,pol", [(ME.email, {}), (f"col@{OWN}", {}), ("jane@acme.com", {"blocklist": ("acme.com",)})])
def test_own_and_blocklisted_participants_are_not_associated(email, pol):
    assert run(msg(email), [contact("c1", email)], **pol).chosen == ()


# --- property: nothing is guessed silently -------------------------------------------------

EMAILS = ("jane@acme.com", "bob@acme.com", "eve@beta.io", "x@gmail.com")
ids = st.sampled_from(("1", "2", "3"))


@st.composite
def worlds(draw):
    persons = draw(st.lists(st.builds(lambda k, i, es, acc: Person(id=f"{k[0]}{i}", kind=k, emails=tuple(es),
                                                                     account_id=acc),
                                      st.sampled_from(("contact", "lead")), ids,
                                      st.lists(st.sampled_from(EMAILS), min_size=1, max_size=2, unique=True),
                                      st.one_of(st.none(), st.sampled_from(("a1", "a2")))), max_size=5))
    persons = list({p.id: p for p in persons}.values())
    accounts = {d: [AccountRef(id=i) for i in draw(st.lists(st.sampled_from(("a1", "a2", "a3")), max_size=2,
                                                            unique=True))]
                for d in ("acme.com", "beta.io", "gmail.com")}
    opps = {f"c{i}": [OpportunityRef(id=o) for o in draw(st.lists(st.sampled_from(("o1", "o2")), max_size=2,
                                                                   unique=True))]
            for i in ("1", "2", "3")}
    to = draw(st.lists(st.sampled_from(EMAILS), min_size=1, max_size=4, unique=True))
    return msg(*to), persons, accounts, opps


@settings(max_examples=300, deadline=None)
@given(world=worlds())
def test_every_ambiguity_is_attached_dropped_or_returned(world):
    m, persons, accounts, opps = world
    ask, none, all_ = (run(m, persons, accounts, opps, ambiguity=a) for a in ("ask", "none", "all"))
    assert ask.chosen == none.chosen
    assert none.dropped == len(ask.ambiguities) and none.ambiguities == ()
    assert all_.ambiguities == () and all_.attached_all >= len(ask.ambiguities)
    assert set(ask.chosen) <= set(all_.chosen)
    for amb in ask.ambiguities:
        assert amb.reason in AMBIGUITY_REASONS and len(amb.options) >= 2
        assert set(amb.options) <= set(all_.chosen)
    assert not any(a.object_type == "account" and a.object_id not in {"a1", "a2", "a3"} for a in all_.chosen)
    assert len(set(all_.chosen)) == len(all_.chosen)
    # never an account from the free-mail domain, never an opportunity without a contact
    if not any(p.account_id for p in persons):
        gm = {a.id for a in accounts["gmail.com"]} - {a.id for d in ("acme.com", "beta.io") for a in accounts[d]}
        assert not {a.object_id for a in all_.chosen if a.object_type == "account"} & gm
    if not any(p.kind == "contact" for p in persons):
        assert not any(a.object_type == "opportunity" for a in all_.chosen)
