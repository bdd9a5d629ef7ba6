"""Every contact field through Google People, Microsoft Graph and the reference platform.

Real client libraries (google-api-python-client, httpx) against the emulators on real
ports; the platform on SQLite and the real PostgreSQL. Also: a write leaves untouched
what it keeps, and what a side cannot hold is neither written nor lost; the field
mapping change goes through the guard in the real store.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from connectors.google_people import GooglePeopleContacts
from connectors.graph_contacts import CUSTOM_PROPERTY_PREFIX, GraphContacts
from connectors.protocols import WriteRequest
from emulators.google_people import PeopleState
from emulators.google_people import create_app as people_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import serve
from models.contact import Contact
from platforms.reference_crm import ReferenceCrm
from platforms.reference_crm.adapter import ReferenceCrmContacts
from sync.fields import FieldMap, graph_holds, restore
from tests.test_contact_fields import RICH

ORG = "org-fields"


# --- Google People ------------------------------------------------------------------------


@pytest.fixture
def people():
    state = PeopleState()
    server = serve(people_app(state))
    yield state, GooglePeopleContacts.for_emulator(server.base_url, token="emulator-token", custom_keys={"tier": "Customer tier"})
    server.stop()


def test_people_round_trips_every_field(people):
    state, conn = people
    [made] = conn.create_many([WriteRequest(key="c", content=RICH, marker="m")])
    assert made.error is None and made.record.content == RICH
    got = conn.get(made.record.external_id)
    assert got.content == RICH
    raw = state.person(made.record.external_id)
    assert raw["names"][0]["honorificPrefix"] == "Countess" and raw["names"][0]["honorificSuffix"] == "FRS"
    assert raw["birthdays"] == [{"date": {"year": 1815, "month": 12, "day": 10}, "metadata": raw["birthdays"][0]["metadata"]}]
    assert {(u["key"], u["value"]) for u in raw["userDefined"]} == {("Customer tier", "gold"), ("source", "fair")}
    assert {(e["value"], e.get("type"), e.get("displayName")) for e in raw["emailAddresses"]} == {
        ("ada@work.example", "work", "Ada L."), ("ada@home.example", "home", None)}
    # a year-less birthday is People's too
    [res] = conn.update_many([WriteRequest(key="u", external_id=got.external_id, etag=got.etag,
                                           content=RICH.model_copy(update={"birthday": "--12-10"}))])
    assert res.error is None and conn.get(got.external_id).content.birthday == "--12-10"


def test_people_keeps_its_own_labels_and_the_fields_a_write_keeps(people):
    state, conn = people
    [iid] = state.seed([{
        "names": [{"givenName": "Ann", "familyName": "Lee"}],
        "phoneNumbers": [{"value": "+1 415 555 0100", "type": "workMobile"}, {"value": "+1 415 555 0101", "type": "pager"}],
        "emailAddresses": [{"value": "ann@school.example", "type": "school"}],
        "birthdays": [{"date": {"year": 1990, "month": 5, "day": 17}}],
        "addresses": [{"type": "home", "streetAddress": "1 Main St", "city": "Springfield", "poBox": "42"}],
    }])
    rec = conn.get(iid)
    assert [(p.number, p.type) for p in rec.content.phones] == [("+1 415 555 0100", "mobile"), ("+1 415 555 0101", "other")]
    assert [(e.address, e.type) for e in rec.content.emails] == [("ann@school.example", "other")]
    # an edit of the name only; the birthday is kept (as the merge says when it did not change)
    edited = rec.content.model_copy(update={"given_name": "Anne", "birthday": ""})
    [res] = conn.update_many([WriteRequest(key="u", external_id=iid, etag=rec.etag, content=edited, keep=("birthday",))])
    assert res.error is None
    raw = state.person(iid)
    assert [p["type"] for p in raw["phoneNumbers"]] == ["workMobile", "pager"]  # People's labels survive
    assert raw["emailAddresses"][0]["type"] == "school"
    assert raw["birthdays"][0]["date"] == {"year": 1990, "month": 5, "day": 17}
    assert raw["addresses"][0]["poBox"] == "42"  # what we do not map stays
    # a type changed on the other side is written
    retyped = res.record.content.model_copy(update={"phones": [{"number": "+1 415 555 0100", "type": "home"}]})
    [res] = conn.update_many([WriteRequest(key="u2", external_id=iid, etag=res.record.etag, content=retyped)])
    assert [(p["value"], p["type"]) for p in state.person(iid)["phoneNumbers"]] == [("+1 415 555 0100", "home")]


# --- Microsoft Graph ------------------------------------------------------------------------


@pytest.fixture
def graph():
    state = GraphState(tokens={"t"}, seed=5)
    server = serve(graph_app(state))
    conn = GraphContacts(server.base_url, lambda: "t", custom_keys={"tier": "concordTier"})
    yield state, conn
    conn.close()
    server.stop()


GRAPH_HOLDS = graph_holds(FieldMap.from_dict({"custom:tier": {}}))


def test_graph_round_trips_what_it_holds_and_restore_gives_back_the_rest(graph):
    state, conn = graph
    [made] = conn.create_many([WriteRequest(key="c", content=RICH, marker="m")])
    assert made.error is None
    got = conn.get(made.record.external_id)
    c = got.content
    assert (c.prefix, c.middle_name, c.suffix, c.nickname, c.department, c.birthday) == (
        "Countess", "Augusta", "FRS", "Ada", "Analytics", "1815-12-10")
    assert c.custom == ("tier=gold",) and c.websites == ("https://ada.example",)
    assert {(e.address, e.name) for e in c.emails} == {("ada@work.example", "Ada L."), ("ada@home.example", "")}
    assert [(p.number, p.type) for p in c.phones if p.type == "mobile"] == [("+44 20 7946 0001", "mobile")]
    assert len(c.addresses) == 3
    # what Graph could not hold comes back from the snapshot: nothing reads as deleted
    assert restore(c, RICH, GRAPH_HOLDS) == RICH
    raw = state.contact(made.record.external_id)
    assert raw["businessAddress"] == {"street": "2 Fleet St", "city": "London"}
    assert raw["birthday"] == "1815-12-10T00:00:00Z" and raw["generation"] == "FRS" and raw["title"] == "Countess"
    ids = set(state.properties(made.record.external_id))
    assert CUSTOM_PROPERTY_PREFIX + "concordTier" in ids and CUSTOM_PROPERTY_PREFIX + "source" not in ids
    # the delta listing reads custom fields too (one $batch for the properties)
    records, _ = conn.read_round(None)
    assert [r.content.custom for r in records] == [("tier=gold",)]


def test_graph_write_leaves_kept_and_unheld_fields_untouched(graph):
    state, conn = graph
    [iid] = state.seed([{"givenName": "M", "homeAddress": {"street": "9 Elm", "city": "Leeds"},
                         "businessPhones": ["+1 555 7000", "+1 555 7001"], "categories": ["Kim"],
                         "birthday": "1990-05-17T00:00:00Z"}])
    rec = conn.get(iid)
    # the platform knows a year-less birthday (Graph cannot hold it) and no address change (kept)
    content = rec.content.model_copy(update={"given_name": "Max", "birthday": "--05-17", "addresses": []})
    [res] = conn.update_many([WriteRequest(key="u", external_id=iid, etag=rec.etag, content=content,
                                           keep=("addresses",))])
    assert res.error is None
    raw = state.contact(iid)
    assert raw["givenName"] == "Max" and raw["homeAddress"] == {"street": "9 Elm", "city": "Leeds"}
    assert raw["birthday"] == "1990-05-17T00:00:00Z"  # not erased for a value it cannot hold
    assert raw["categories"] == ["Kim"] and raw["businessPhones"] == ["+1 555 7000", "+1 555 7001"]
    # a third business number has no slot: the two held stay, nothing fails
    more = res.record.content.model_copy(update={"phones": list(res.record.content.phones) + [
        {"number": "+1 555 7002", "type": "work"}]})
    [res] = conn.update_many([WriteRequest(key="u2", external_id=iid, etag=res.record.etag, content=more)])
    assert res.error is None and state.contact(iid)["businessPhones"] == ["+1 555 7000", "+1 555 7001"]
    assert restore(res.record.content, more, GRAPH_HOLDS).phones == more.phones


# --- the reference platform (SQLite and PostgreSQL) -------------------------------------------


def test_platform_round_trips_every_field(crm):
    adapter = ReferenceCrmContacts(crm)
    [made] = adapter.upsert_many(ORG, [WriteRequest(key="c", content=RICH, owner="u")])
    assert made.error is None and made.record.content == RICH
    [got] = adapter.get_many(ORG, [made.record.external_id])
    assert got.content == RICH
    page = adapter.changes_since(ORG, None)
    assert [r.content for r in page.records] == [RICH]


def test_platform_mapping_renames_and_leaves_out_fields(crm):
    fmap = FieldMap.from_dict({"department": {"platform": "dept"}, "custom:tier": {"platform": "customer_tier"},
                               "birthday": {"platform": ""}, "notes": {"platform": "job_title"},
                               "job_title": {"platform": "notes"}})
    adapter = ReferenceCrmContacts(crm, field_maps=lambda org: fmap)
    [made] = adapter.upsert_many(ORG, [WriteRequest(key="c", content=RICH, owner="u")])
    assert made.error is None
    stored = crm.get_contact(ORG, made.record.external_id).contact
    assert stored.custom_fields() == {"dept": "Analytics", "customer_tier": "gold", "source": "fair"}
    assert stored.department == "" and stored.birthday == ""
    assert (stored.notes, stored.job_title) == ("Analyst", "first programmer")  # swapped columns
    # canonical again on the way back; the birthday the platform does not hold reads empty
    assert made.record.content == RICH.model_copy(update={"birthday": ""})


def test_platform_update_keeps_what_the_write_keeps(crm):
    adapter = ReferenceCrmContacts(crm)
    [made] = adapter.upsert_many(ORG, [WriteRequest(key="c", content=RICH, owner="u")])
    crm.user_edit(ORG, made.record.external_id, enforce_rules=False, notes="edited in the CRM",
                  custom=["tier=platinum"])
    current = crm.get_contact(ORG, made.record.external_id)
    new = RICH.model_copy(update={"family_name": "King", "notes": "", "custom": ["tier=gold"]})
    [res] = adapter.upsert_many(ORG, [WriteRequest(key="u", external_id=made.record.external_id, content=new,
                                                   etag=str(current.version), keep=("notes", "custom:tier"))])
    assert res.error is None
    after = crm.get_contact(ORG, made.record.external_id).contact
    assert after.family_name == "King" and after.notes == "edited in the CRM"
    assert after.custom_fields() == {"tier": "platinum"}


def test_platform_adds_new_columns_to_an_older_table(db_url):
    engine = sa.create_engine(db_url)
    old = sa.MetaData()
    sa.Table("crm_contacts", old, *[sa.Column(n, t) for n, t in (
        ("id", sa.String(64)), ("org_id", sa.String(64)), ("owner_id", sa.String(128)), ("given_name", sa.Text),
        ("family_name", sa.Text), ("emails", sa.JSON), ("phones", sa.JSON), ("company", sa.Text),
        ("job_title", sa.Text), ("notes", sa.Text), ("account_id", sa.String(64)), ("deleted", sa.Boolean),
        ("version", sa.Integer), ("updated_at", sa.Float), ("change_seq", sa.BigInteger))])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["crm_contacts"].insert().values(
            id="crm_c_old", org_id=ORG, owner_id="u", given_name="Old", family_name="Row", emails=["o@x.example"],
            phones=[], company="", job_title="", notes="", account_id=None, deleted=False, version=1,
            updated_at=1.0, change_seq=1))
    engine.dispose()
    crm = ReferenceCrm(db_url)
    try:
        cols = {c["name"] for c in sa.inspect(crm.engine).get_columns("crm_contacts")}
        assert {"birthday", "addresses", "custom_fields", "department"} <= cols
        old_row = crm.get_contact(ORG, "crm_c_old").contact
        assert old_row == Contact(given_name="Old", family_name="Row", emails=["o@x.example"])
        assert old_row.canonical_hash() == Contact(given_name="Old", family_name="Row", emails=["o@x.example"]).canonical_hash()
        rec = crm.update_contact(ORG, "crm_c_old", RICH, enforce_rules=False)
        assert rec.contact == RICH
    finally:
        crm.engine.dispose()


# --- the mapping change under the guard, in the real store ----------------------------------


@pytest.fixture
def store(db_url):
    from store import repo
    from store.db import make_engine, migrate, session_factory

    migrate(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        repo.create_org(s, "o1", "Org", {"mass_delete_min": 3, "mass_delete_ratio": 0.5})
        repo.create_connection(s, id="c1", org_id="o1", user_id="u1", provider="google", account_ref="a")
        specs = []
        for i in range(10):
            snap = Contact(given_name=f"P{i}", department="Sales" if i < 8 else "", emails=[f"p{i}@x.example"])
            h = snap.canonical_hash()
            specs.append(dict(org_id="o1", connection_id="c1", kind="contacts", mailbox_id=f"m{i}",
                              platform_id=f"p{i}", snapshot=snap, mailbox_hash=h, platform_hash=h))
        repo.save_links(s, specs)
    yield sessions
    engine.dispose()


def test_a_mapping_change_past_the_guard_is_held_until_approved(store):
    from store import field_map, repo
    from store.schema import links

    moved = {"department": {"platform": "dept"}}
    with store.begin() as s:
        held = field_map.change_field_map(s, "o1", moved)
    assert (held.outcome, held.impact, held.links, held.changed) == ("held", 8, 10, ["department"])
    with store() as s:
        org = repo.get_org(s, "o1")
        assert "field_map" not in org.settings and org.settings["pending_field_map"]["department"]["platform"] == "dept"
        assert all(json.dumps(r.snapshot).count("Sales") == 1 for r in s.execute(sa.select(links)).all()[:8])
    with store.begin() as s:
        done = field_map.change_field_map(s, "o1", None, approve=True)
    assert (done.outcome, done.rebased) == ("applied", 8)
    with store() as s:
        org = repo.get_org(s, "o1")
        assert org.settings["field_map"]["department"]["platform"] == "dept" and "pending_field_map" not in org.settings
        # the links forgot the moved field's value: the new, empty platform field is no deletion
        snaps = [Contact.model_validate(r.snapshot) for r in s.execute(sa.select(links)).all()]
        assert all(c.department == "" for c in snaps) and all(c.emails for c in snaps)


def test_a_small_mapping_change_applies_at_once_and_a_direction_change_rewrites_nothing(store):
    from store import field_map
    from store.schema import links

    with store.begin() as s:
        res = field_map.change_field_map(s, "o1", {"nickname": {"direction": "platform_to_mailbox"}})
    assert (res.outcome, res.impact, res.rebased) == ("applied", 0, 0)
    with store.begin() as s:
        res = field_map.change_field_map(s, "o1", {"nickname": {"direction": "platform_to_mailbox"},
                                                    "department": {"direction": "mailbox_to_platform"}})
    assert res.outcome == "held" and res.impact == 8
    with store.begin() as s:
        res = field_map.change_field_map(s, "o1", {"nickname": {"direction": "platform_to_mailbox"},
                                                    "department": {"direction": "mailbox_to_platform"}}, approve=True)
    assert (res.outcome, res.rebased) == ("applied", 0)  # a direction moves no data: snapshots stay
    with store() as s:
        assert sum("Sales" in json.dumps(r.snapshot) for r in s.execute(sa.select(links)).all()) == 8


def test_cli_field_map_holds_then_approves(store, db_url, capsys):
    from workers.cli import run

    code = run(["field-map", "o1", "--set", "department", "dept", "two_way", "--store-url", db_url])
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["change"]["outcome"] == "held" and out["field_map"] == {}
    code = run(["field-map", "o1", "--approve", "--store-url", db_url])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["field_map"]["department"] == {"platform": "dept", "direction": "two_way"}
    assert run(["field-map", "o1", "--set", "emails", "mail", "two_way", "--store-url", db_url]) == 1
    assert "multi-valued" in capsys.readouterr().err
