"""The richer contact, pure: typed emails and phones, what each side holds, and directions.

No I/O: the model, `sync.fields` and the planner (one case per direction rule goes
through `sync.planner.plan`). Round trips through the providers and the platform are
in tests/test_contact_fields_roundtrip.py.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from models.contact import Contact, EmailAddress, PhoneNumber, PostalAddress
from models.record import content_hash
from sync import fields
from sync.fields import FieldMap, align, graph_holds, keep_for, outbound, restore
from sync.kinds.contacts import CONTACTS
from sync.merge import merge_sets
from sync.planner import LinkState, PlanInput, plan
from sync.policy import SyncSettings

RICH = Contact(
    given_name="Ada", family_name="Lovelace", middle_name="Augusta", prefix="Countess", suffix="FRS",
    nickname="Ada", department="Analytics", job_title="Analyst", company="Engines Ltd", notes="first programmer",
    birthday="1815-12-10",
    emails=[{"address": "ada@work.example", "type": "work", "name": "Ada L."}, {"address": "ada@home.example", "type": "home"}],
    phones=[{"number": "+44 20 7946 0001", "type": "mobile"}, {"number": "+44 20 7946 0002", "type": "mobile"},
            {"number": "+44 20 7946 0003", "type": "work"}, {"number": "+44 20 7946 0004", "type": "home"},
            {"number": "+44 20 7946 0005", "type": "other"}],
    addresses=[PostalAddress(type="home", street="1 St James's Sq", city="London", country="UK"),
               PostalAddress(type="work", street="2 Fleet St", city="London"),
               PostalAddress(type="work", street="3 Strand", city="London"),
               PostalAddress(type="other", city="Ockham")],
    websites=["https://ada.example", "https://engines.example"],
    custom=["tier=gold", "source=fair"],
)


# --- the model --------------------------------------------------------------------------


def test_an_untyped_contact_keeps_the_hash_it_had_before_types():
    # computed with the model before typed emails and phones (main at a23ce92)
    old = Contact(given_name="A", emails=["b@x.com", "a@x.com", "A@x.com"], phones=["+1 555 1234"])
    assert old.canonical_hash() == "d293cf2ae74d18e22a6e3fdaaa5d1654"
    assert old.model_dump(mode="json", exclude_defaults=True)["emails"] == ["A@x.com", "b@x.com"]


def test_typed_values_round_trip_through_json_and_accessors_stay_plain():
    back = Contact.model_validate(json.loads(json.dumps(RICH.model_dump(mode="json"))))
    assert back == RICH and back.canonical_hash() == RICH.canonical_hash()
    assert RICH.email_addresses() == ("ada@home.example", "ada@work.example")
    assert all(isinstance(p, str) for p in RICH.phone_numbers())
    assert RICH.custom_fields() == {"source": "fair", "tier": "gold"}


def test_one_entry_per_address_or_number_and_the_typed_one_wins():
    c = Contact(emails=["ann@x.example", {"address": "ANN@x.example", "type": "work"}],
                phones=["+1 (415) 555-0100", {"number": "+1 415 555 0100", "type": "mobile"}])
    assert [(e.address, e.type) for e in c.emails] == [("ANN@x.example", "work")]
    assert [(p.number, p.type) for p in c.phones] == [("+1 415 555 0100", "mobile")]


def test_a_provider_type_we_do_not_know_folds_to_other():
    assert PhoneNumber(number="1", type="pager").type == "other"
    assert EmailAddress(address="a@b", type="WORK").type == "work"


emails = st.builds(EmailAddress, address=st.from_regex(r"[a-c]{1,3}@[a-c]\.example", fullmatch=True),
                   type=st.sampled_from(["", "work", "home", "other"]), name=st.sampled_from(["", "N"]))


@given(st.lists(emails, max_size=4), st.lists(emails, max_size=4), st.lists(emails, max_size=4))
@hsettings(max_examples=60, deadline=None)
def test_typed_sets_merge_like_plain_sets(base, mine, theirs):
    merged = merge_sets(tuple(sorted(set(base))), tuple(sorted(set(mine))), tuple(sorted(set(theirs))))
    assert list(merged) == sorted(merged)
    assert Contact(emails=merged) == Contact(emails=list(merged))  # hashable, orderable, valid


# --- what a side holds ------------------------------------------------------------------


GRAPH = graph_holds(FieldMap.from_dict({"custom:tier": {}}))


def _as_graph_holds(c: Contact) -> Contact:
    return Contact.model_validate({**dict(c), **{n: GRAPH.project(n, getattr(c, n)) for n in GRAPH.projections}})


def test_graph_holds_less_and_restore_gives_back_everything():
    held = _as_graph_holds(RICH)
    assert len(held.addresses) == 3 and "https://engines.example" not in held.websites
    assert held.custom == ("tier=gold",)  # an unmapped custom field has no property to live in
    # one mobile, two business (the second mobile and the work number), one home: the
    # "other" number finds no business slot left
    assert {p.type for p in held.phones} == {"mobile", "work", "home"} and len(held.phones) == 4
    assert "+44 20 7946 0005" not in held.phone_numbers()
    assert [p.number for p in held.phones if p.type == "mobile"] == ["+44 20 7946 0001"]
    assert all(not e.type for e in held.emails)
    assert restore(held, RICH, GRAPH) == RICH


def test_graph_phone_slots_overflow_is_not_held():
    many = Contact(phones=[{"number": f"+1 415 555 01{i:02d}", "type": "work"} for i in range(4)])
    held = GRAPH.project("phones", many.phones)
    assert len(held) == 2
    assert restore(Contact(phones=held), many, GRAPH) == many


def test_graph_email_slots_overflow_is_not_held():
    many = Contact(emails=[{"address": f"ada{i}@example.org", "type": "work"} for i in range(5)])
    held = GRAPH.project("emails", many.emails)
    assert [e.address for e in held] == ["ada0@example.org", "ada1@example.org", "ada2@example.org"]
    assert restore(Contact(emails=held), many, GRAPH) == many
    # removing a held one in Outlook is still a removal; the unheld two stay
    fewer = Contact(emails=held[1:])
    assert restore(fewer, many, GRAPH).email_addresses() == tuple(f"ada{i}@example.org" for i in (1, 2, 3, 4))


def test_a_yearless_birthday_is_not_a_deletion_in_graph():
    c = Contact(given_name="A", birthday="--12-10")
    assert GRAPH.project("birthday", c.birthday) == ""
    assert restore(Contact(given_name="A"), c, GRAPH) == c
    # a real change Graph reports is kept
    assert restore(Contact(given_name="A", birthday="1990-01-02"), c, GRAPH).birthday == "1990-01-02"


def test_removing_a_held_value_is_still_a_removal():
    held = _as_graph_holds(RICH)
    without = held.model_copy(update={"emails": [e for e in held.emails if e.address != "ada@home.example"]})
    assert restore(without, RICH, GRAPH).email_addresses() == ("ada@work.example",)


addresses = st.builds(PostalAddress, type=st.sampled_from(["home", "work", "other"]),
                      street=st.sampled_from(["", "1 A St", "2 B St"]), city=st.sampled_from(["X", "Y"]))
phones = st.builds(PhoneNumber, number=st.from_regex(r"\+1 415 555 0[0-9]{3}", fullmatch=True),
                   type=st.sampled_from(["", "work", "home", "mobile", "other"]))


@given(st.lists(emails, max_size=6), st.lists(phones, max_size=7), st.lists(addresses, max_size=5),
       st.lists(st.sampled_from(["https://a.example", "https://b.example"]), max_size=2),
       st.sampled_from(["", "1990-01-02", "--03-04"]))
@hsettings(max_examples=80, deadline=None)
def test_what_graph_cannot_hold_is_never_read_as_a_deletion(es, ps, adds, webs, bday):
    c = Contact(given_name="P", emails=es, phones=ps, addresses=adds, websites=webs, birthday=bday)
    assert restore(_as_graph_holds(c), c, GRAPH) == c


# --- the mapping ----------------------------------------------------------------------------


def test_field_map_parses_and_refuses_what_it_cannot_mean():
    fmap = FieldMap.from_dict({"birthday": {"platform": "dob", "direction": "mailbox_to_platform"},
                               "custom:tier": {"platform": "customer_tier", "people_key": "Tier",
                                               "graph_property": "concordTier"}})
    assert fmap.platform_name("birthday") == "dob" and fmap.platform_name("company") == "company"
    assert fmap.direction("birthday") == "mailbox_to_platform" and fmap.direction("notes") == "two_way"
    assert fmap.mailbox_key("tier", "people_key") == "Tier" and fmap.mailbox_key("tier", "graph_property") == "concordTier"
    assert fmap.mailbox_key("source", "people_key") == "source"
    assert FieldMap.from_dict(fmap.to_dict()) == fmap
    with pytest.raises(ValueError):
        FieldMap.from_dict({"shoe_size": {}})
    with pytest.raises(ValueError):
        FieldMap.from_dict({"notes": {"direction": "sideways"}})
    assert SyncSettings.from_dict({"field_map": fmap.to_dict()}).field_map == fmap


# --- directions, pure ------------------------------------------------------------------------

BASE = Contact(given_name="Ada", family_name="Lovelace", emails=["ada@x.example"], department="Analytics",
               custom=["tier=gold"])
NO = fields.Holds()


def _align(fmap: dict, base, m, p):
    return align(base, m, p, FieldMap.from_dict(fmap), mailbox_holds=NO, platform_holds_=NO)


@pytest.mark.parametrize("direction, mailbox_flows, platform_flows", [
    ("two_way", True, True), ("platform_to_mailbox", False, True),
    ("mailbox_to_platform", True, False), ("none", False, False),
])
def test_a_direction_masks_exactly_the_changes_it_blocks(direction, mailbox_flows, platform_flows):
    fmap = {"department": {"direction": direction}}
    m = BASE.model_copy(update={"department": "Engines"})
    a = _align(fmap, BASE, m, BASE)
    assert (a.mailbox.department == "Engines") is mailbox_flows
    assert ("department" in a.blocked) is (not mailbox_flows)
    p = BASE.model_copy(update={"department": "Sales"})
    a = _align(fmap, BASE, BASE, p)
    assert (a.platform.department == "Sales") is platform_flows
    assert ("department" in a.blocked) is (not platform_flows)


def test_a_custom_field_has_a_direction_of_its_own():
    fmap = {"custom:tier": {"direction": "platform_to_mailbox"}}
    m = BASE.model_copy(update={"custom": ["tier=silver", "source=web"]})
    a = _align(fmap, BASE, m, BASE)
    assert a.mailbox.custom_fields() == {"tier": "gold", "source": "web"} and a.blocked == ("custom:tier",)


def test_on_first_link_the_source_side_gives_a_directed_field():
    fmap = FieldMap.from_dict({"department": {"direction": "platform_to_mailbox"}})
    m, p = BASE.model_copy(update={"department": "Mine"}), BASE.model_copy(update={"department": "Theirs"})
    a = align(None, m, p, fmap, mailbox_holds=NO, platform_holds_=NO)
    assert a.mailbox.department == a.platform.department == "Theirs" and a.blocked == ("department",)


def test_writes_keep_what_does_not_flow_there_and_what_did_not_change():
    fmap = FieldMap.from_dict({"department": {"direction": "mailbox_to_platform"}})
    merged = BASE.model_copy(update={"notes": "new"})
    assert "department" in keep_for("mailbox", BASE, merged, fmap)
    assert "notes" not in keep_for("platform", BASE, merged, fmap)
    assert "given_name" in keep_for("platform", BASE, merged, fmap)
    assert keep_for("platform", None, merged, fmap) == ()
    assert outbound(BASE, "mailbox", fmap).department == "" and outbound(BASE, "platform", fmap) == BASE


# --- through the planner ------------------------------------------------------------------


def _linked(m=None, p=None, fmap=None, holds=None, snapshot=BASE):
    lk = LinkState(1, "m1", "p1", snapshot, content_hash(snapshot), content_hash(snapshot))
    recs = lambda side, c: {f"{side[0]}1": CONTACTS.record(side=side, external_id=f"{side[0]}1", content=c)} if c else {}  # noqa: E731
    return PlanInput(rules=CONTACTS, mailbox=recs("mailbox", m), platform=recs("platform", p),
                     settings=SyncSettings(owner="u1", field_map=FieldMap.from_dict(fmap or {})),
                     links_by_mailbox={"m1": lk}, links_by_platform={"p1": lk}, link_count=1,
                     mailbox_holds=holds(FieldMap.from_dict(fmap or {})) if holds else None)


def test_planner_a_blocked_change_alone_is_named_and_writes_nothing():
    m = BASE.model_copy(update={"department": "Engines"})
    [d] = plan(_linked(m=m, fmap={"department": {"direction": "platform_to_mailbox"}})).decisions
    assert (d.outcome, d.rule, d.writes, d.blocked) == ("apply", "direction_blocked", [], ["department"])
    assert d.snapshot.department == "Analytics"


def test_planner_a_blocked_field_rides_along_untouched_with_an_allowed_change():
    m = BASE.model_copy(update={"department": "Engines", "family_name": "King"})
    [d] = plan(_linked(m=m, fmap={"department": {"direction": "platform_to_mailbox"}})).decisions
    assert d.rule == "mailbox_change" and d.blocked == ["department"]
    [w] = d.writes
    assert w.side == "platform" and w.content.family_name == "King" and "department" in w.keep


def test_planner_the_source_side_still_flows_and_overrides_the_blocked_side():
    p = BASE.model_copy(update={"department": "Sales"})
    [d] = plan(_linked(p=p, fmap={"department": {"direction": "platform_to_mailbox"}})).decisions
    assert d.rule == "platform_change" and [(w.side, w.content.department) for w in d.writes] == [("mailbox", "Sales")]
    assert "department" not in d.writes[0].keep


def test_planner_what_graph_cannot_hold_erases_nothing_on_the_platform():
    rich = RICH
    lk_input = _linked(m=_as_graph_holds(rich), holds=graph_holds, snapshot=rich,
                       fmap={"custom:tier": {}})
    [d] = plan(lk_input).decisions
    assert d.writes == [] and d.snapshot == rich
    # a real edit in Graph goes through, and the platform keeps what Graph cannot hold
    edited = _as_graph_holds(rich).model_copy(update={"job_title": "Countess"})
    [d] = plan(_linked(m=edited, holds=graph_holds, snapshot=rich, fmap={"custom:tier": {}})).decisions
    [w] = d.writes
    assert w.side == "platform" and w.content == rich.model_copy(update={"job_title": "Countess"})


def test_planner_a_create_leaves_out_what_does_not_flow_there():
    from sync.planner import plan as run
    inp = PlanInput(rules=CONTACTS, mailbox={}, platform={"p9": CONTACTS.record(
        side="platform", external_id="p9", content=BASE, owner="u1")},
        settings=SyncSettings(owner="u1", field_map=FieldMap.from_dict({"department": {"direction": "mailbox_to_platform"}})))
    [d] = run(inp).decisions
    [w] = d.writes
    assert d.rule == "created_in_mailbox" and w.content.department == "" and d.snapshot == w.content


# --- every generated person through both providers' translations ----------------------------


@given(st.integers(0, 2**32))
@hsettings(max_examples=15, deadline=None)
def test_rich_people_survive_both_providers_translations(seed):
    from connectors.google_people import contact_to_person, person_to_record
    from connectors.graph_contacts import contact_to_item, item_to_record
    from emulators.people_data import make_rich_people

    holds = graph_holds(FieldMap.from_dict({"custom:tier": {}}))
    for p in make_rich_people(20, seed):
        assert person_to_record({"resourceName": "people/c1", **contact_to_person(p)}).content == p
        item = {"id": "x", **contact_to_item(p, custom_keys={"tier": "tier"})}
        read = item_to_record(item, {"tier": "tier"}).content
        assert restore(read, p, holds) == p


def test_a_custom_field_the_platform_does_not_map_is_not_a_deletion_there():
    fmap = FieldMap.from_dict({"custom:source": {"platform": ""}, "birthday": {"platform": ""}})
    holds = fields.platform_holds(fmap)
    on_platform = BASE.model_copy(update={"custom": ["tier=gold"]})
    base = BASE.model_copy(update={"custom": ["tier=gold", "source=fair"], "birthday": "1990-01-02"})
    assert restore(on_platform, base, holds) == base
    assert restore(on_platform.model_copy(update={"custom": []}), base, holds).custom_fields() == {"source": "fair"}


def test_a_birthday_no_side_can_hold_is_a_named_problem():
    from sync.normalize import contact_problems

    assert contact_problems(BASE.model_copy(update={"birthday": "--12-10"})) == []
    [problem] = contact_problems(BASE.model_copy(update={"birthday": "10/12/1815"}))
    assert problem.startswith("birthday") and "10/12" not in problem


# --- remembered set validation --------------------------------------------------------

_text = st.text(alphabet="aAbB1 2-+@.\u00e9", max_size=8)
_entry = st.one_of(_text, st.fixed_dictionaries({"address": _text}, optional={"type": st.sampled_from(
    ["", "work", "Home", "pager", None]), "name": st.one_of(_text, st.none())}))
_phone_entry = st.one_of(_text, st.fixed_dictionaries({"number": _text}, optional={"type": st.sampled_from(
    ["", "mobile", "WORK", "fax", None])}))


@given(st.lists(_entry, max_size=5), st.lists(_phone_entry, max_size=5))
@hsettings(max_examples=300, deadline=None)
def test_remembered_emails_and_phones_validate_as_the_long_way(emails, phones):
    """The memo behind Contact's set fields returns what validating them afresh does,
    the first time and every time after (the cache key is the stored form)."""
    from models import contact as m

    fresh = (m._unique_typed(emails, EmailAddress, text=lambda e: e.address, key=str.casefold),
             m._unique_typed(phones, PhoneNumber, text=lambda p: p.number, key=m._digits))
    for _ in range(2):
        got = Contact.model_validate({"emails": emails, "phones": phones})
        assert [e._order() for e in got.emails] == [e._order() for e in fresh[0]]
        assert [p._order() for p in got.phones] == [p._order() for p in fresh[1]]


def test_a_remembered_set_is_not_changed_by_the_callers_dict():
    raw = [{"address": "ada@example.com", "type": "work"}]
    first = Contact.model_validate({"emails": raw})
    raw[0]["type"] = "home"  # the caller reuses its dict: the memo must not have kept it
    again = Contact.model_validate({"emails": [{"address": "ada@example.com", "type": "work"}]})
    assert first.emails[0].type == again.emails[0].type == "work"
    assert Contact.model_validate({"emails": raw}).emails[0].type == "home"
