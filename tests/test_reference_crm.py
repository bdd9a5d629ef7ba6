"""The reference CRM and its PlatformContacts adapter, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from models.errors import CursorExpired, Fatal, NotFound, PreconditionFailed, ValidationRejected
from connectors.protocols import WriteRequest
from models.contact import Contact
from platforms.reference_crm import (
    IdempotencyKeyReused,
    ReferenceCrm,
    ReferenceCrmContacts,
    Rule,
    Violation,
    register_check,
)
from platforms.reference_crm.seed import seed_organisation

ORG, OTHER = "org_a", "org_b"


@pytest.fixture
def adapter(crm):
    return ReferenceCrmContacts(crm)


def person(given: str, family: str = "Doe", **kw) -> Contact:
    return Contact(given_name=given, family_name=family, **kw)


def create(adapter, key: str, contact: Contact, owner: str = "user_1", org: str = ORG):
    [res] = adapter.upsert_many(org, [WriteRequest(key=key, content=contact, owner=owner)])
    assert res.error is None, res.error
    return res.record


def drain(adapter, org: str, cursor: str | None, limit: int = 500):
    records = []
    while True:
        page = adapter.changes_since(org, cursor, limit)
        records += page.records
        cursor = page.cursor
        if not page.next_page:
            return records, cursor


# ------------------------------------------------------------------ change feed


def test_feed_orders_by_last_change_and_reports_deletes_as_tombstones(adapter):
    a = create(adapter, "k1", person("Ann", emails=["ann@x.example"]))
    b = create(adapter, "k2", person("Bob"))
    c = create(adapter, "k3", person("Cid"), owner="user_2")
    [upd] = adapter.upsert_many(ORG, [WriteRequest(key="k4", external_id=a.external_id,
                                                   content=person("Ann", "Smith"), etag=a.etag)])
    assert upd.error is None and upd.record.etag == "2"
    [dele] = adapter.delete_many(ORG, [WriteRequest(key="k5", external_id=b.external_id)])
    assert dele.error is None and dele.record.deleted

    page = adapter.changes_since(ORG, None)
    assert [r.external_id for r in page.records] == [c.external_id, a.external_id, b.external_id]
    by_id = {r.external_id: r for r in page.records}
    assert by_id[a.external_id].content.family_name == "Smith"
    assert by_id[a.external_id].etag == "2"
    tomb = by_id[b.external_id]
    assert tomb.deleted and tomb.content is None and tomb.side == "platform"
    assert by_id[c.external_id].owner == "user_2"
    assert isinstance(by_id[c.external_id].updated_at, float)
    assert page.cursor is not None and page.next_page is None


def test_cursor_resumes_exactly_and_pages(adapter, crm):
    ids = [create(adapter, f"c{i}", person(f"P{i}")).external_id for i in range(5)]
    first = adapter.changes_since(ORG, None, limit=2)
    assert [r.external_id for r in first.records] == ids[:2]
    assert first.next_page == first.cursor  # full page: more may follow
    rest, cursor = drain(adapter, ORG, first.next_page, limit=2)
    assert [r.external_id for r in rest] == ids[2:]

    quiet = adapter.changes_since(ORG, cursor)
    assert quiet.records == [] and quiet.cursor == cursor and quiet.next_page is None

    crm.user_edit(ORG, ids[1], job_title="CTO")
    crm.user_delete(ORG, ids[3])
    later, cursor2 = drain(adapter, ORG, cursor)
    assert [(r.external_id, r.deleted) for r in later] == [(ids[1], False), (ids[3], True)]
    assert later[0].content.job_title == "CTO" and later[0].etag == "2"
    assert adapter.changes_since(ORG, cursor2).records == []


def test_feed_is_per_organisation_and_rejects_foreign_cursors(adapter):
    create(adapter, "k", person("Ann"))
    create(adapter, "k", person("Zed"), org=OTHER)  # same key, other org: independent
    assert [r.content.given_name for r in adapter.changes_since(ORG, None).records] == ["Ann"]
    assert [r.content.given_name for r in adapter.changes_since(OTHER, None).records] == ["Zed"]
    with pytest.raises(CursorExpired):
        adapter.changes_since(ORG, "not-a-cursor")


# ------------------------------------------------------------------ idempotency and concurrency


def test_create_retried_with_same_key_returns_first_result(adapter, crm):
    req = WriteRequest(key="act-1", content=person("Ann", emails=["ann@x.example"]), owner="user_1")
    [r1] = adapter.upsert_many(ORG, [req])
    [r2] = adapter.upsert_many(ORG, [req])
    assert r1.error is None and r2.error is None
    assert r2.record == r1.record
    assert len(crm.list_contacts(ORG)) == 1
    assert len(adapter.changes_since(ORG, None).records) == 1

    [r3] = adapter.upsert_many(ORG, [WriteRequest(key="act-1", content=person("Other"), owner="user_1")])
    assert isinstance(r3.error, IdempotencyKeyReused) and isinstance(r3.error, Fatal)
    assert len(crm.list_contacts(ORG)) == 1


def test_update_retry_returns_first_result_even_after_later_changes(adapter, crm):
    rec = create(adapter, "c", person("Ann"))
    upd = WriteRequest(key="u1", external_id=rec.external_id, content=person("Ann", "Lee"), etag=rec.etag)
    [first] = adapter.upsert_many(ORG, [upd])
    crm.user_edit(ORG, rec.external_id, notes="called")
    [again] = adapter.upsert_many(ORG, [upd])  # stale etag, but it is a retry: no precondition check
    assert again.error is None and again.record == first.record
    current = crm.get_contact(ORG, rec.external_id)
    assert current.version == 3 and current.contact.notes == "called" and current.contact.family_name == "Lee"


def test_stale_etag_and_missing_record(adapter):
    rec = create(adapter, "c", person("Ann"))
    [ok] = adapter.upsert_many(ORG, [WriteRequest(key="u1", external_id=rec.external_id,
                                                  content=person("Ann", "B"), etag=rec.etag)])
    assert ok.error is None
    [stale] = adapter.upsert_many(ORG, [WriteRequest(key="u2", external_id=rec.external_id,
                                                     content=person("Ann", "C"), etag=rec.etag)])
    assert isinstance(stale.error, PreconditionFailed)
    [gone] = adapter.upsert_many(ORG, [WriteRequest(key="u3", external_id="crm_c_999999", content=person("X"))])
    assert isinstance(gone.error, NotFound)


def test_delete_is_idempotent_and_missing_counts_as_deleted(adapter, crm):
    rec = create(adapter, "c", person("Ann"))
    [d1] = adapter.delete_many(ORG, [WriteRequest(key="d1", external_id=rec.external_id)])
    [d2] = adapter.delete_many(ORG, [WriteRequest(key="d2", external_id=rec.external_id)])
    [d3] = adapter.delete_many(ORG, [WriteRequest(key="d3", external_id="crm_c_424242")])
    assert all(r.error is None and r.record.deleted for r in (d1, d2, d3))
    assert d1.record.etag == d2.record.etag == "2"  # the second delete changed nothing
    assert crm.get_contact(ORG, rec.external_id) is None
    assert len(adapter.changes_since(ORG, None).records) == 1


def test_get_many_keeps_order_and_hides_other_organisations(adapter):
    a = create(adapter, "a", person("Ann"))
    b = create(adapter, "b", person("Bob"), org=OTHER)
    got = adapter.get_many(ORG, [b.external_id, a.external_id, "crm_c_0"])
    assert [g.external_id for g in got] == [b.external_id, a.external_id, "crm_c_0"]
    assert got[0].deleted and got[0].content is None  # other org's record is not visible
    assert got[1].content.given_name == "Ann" and not got[1].deleted
    assert got[2].deleted
    assert adapter.calls_made >= 3


def test_concurrent_writers_never_make_the_feed_skip_a_committed_change(db_url):
    crm = ReferenceCrm(db_url)
    adapter = ReferenceCrmContacts(crm)
    try:
        seeds = [crm.create_contact(ORG, person(f"S{i}"), owner_id="u").id for i in range(6)]
        errors: list[BaseException] = []

        def writer(tag: str) -> None:
            try:
                for i in range(60):
                    if i % 3 == 0:
                        crm.create_contact(ORG, person(f"{tag}{i}"), owner_id=tag)
                    else:
                        target = seeds[(i + len(tag)) % len(seeds)]
                        crm.update_contact(ORG, target, person(f"{tag}{i}", notes=tag))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        seen: dict[str, str] = {}
        cursor: str | None = None

        def follow() -> None:
            nonlocal cursor
            page = adapter.changes_since(ORG, cursor, limit=7)
            for r in page.records:
                seen[r.external_id] = r.etag
            cursor = page.cursor

        threads = [threading.Thread(target=writer, args=(t,)) for t in ("w1", "w2x")]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            follow()
        for th in threads:
            th.join()
        assert not errors, errors
        while True:
            before = cursor
            follow()
            if cursor == before:
                break
        final = {c.id: str(c.version) for c in crm.list_contacts(ORG, include_deleted=True)}
        assert len(final) == 6 + 2 * 20
        assert seen == final
    finally:
        crm.engine.dispose()


# ------------------------------------------------------------------ validation rules

RULE_CASES = [
    (Rule.required("need_family", "family_name"), person("Ann", ""), person("Ann", "Lee"), "family_name"),
    (Rule.required("need_email", "emails"), person("Ann"), person("Ann", emails=["a@b.example"]), "emails"),
    (Rule.format("phone_fmt", "phones", r"\+[0-9 ]{6,}"), person("Ann", phones=["call me"]),
     person("Ann", phones=["+44 20 7946 0000"]), "phones"),
    (Rule.max_length("short_title", "job_title", 10), person("Ann", job_title="Senior Vice President"),
     person("Ann", job_title="CTO"), "job_title"),
    (Rule.allowed_values("title_pick", "job_title", ["CTO", "CEO"]), person("Ann", job_title="Secret Agent"),
     person("Ann", job_title="CEO"), "job_title"),
]


@pytest.mark.parametrize("rule,bad,good,field", RULE_CASES, ids=[c[0].kind for c in RULE_CASES])
def test_each_rule_kind_rejects_by_name_without_echoing_values(adapter, crm, rule, bad, good, field):
    crm.configure_rules(ORG, [Rule.max_length("notes_cap", "notes", 100), rule])
    results = adapter.upsert_many(ORG, [WriteRequest(key="bad", content=bad, owner="u"),
                                        WriteRequest(key="good", content=good, owner="u")])
    err = results[0].error
    assert isinstance(err, ValidationRejected)
    assert err.rule == rule.name and err.field == field and rule.name in err.message
    for value in (bad.family_name, bad.job_title, *bad.phone_numbers(), *bad.email_addresses()):
        if value:
            assert value not in err.message
    assert results[1].error is None  # the batch goes on
    assert [c.contact for c in crm.list_contacts(ORG)] == [good]
    # Updates are checked too.
    rec = results[1].record
    [upd] = adapter.upsert_many(ORG, [WriteRequest(key="upd", external_id=rec.external_id, content=bad)])
    assert isinstance(upd.error, ValidationRejected) and upd.error.rule == rule.name
    # Rules belong to the organisation that configured them.
    assert adapter.upsert_many(OTHER, [WriteRequest(key="bad", content=bad, owner="u")])[0].error is None


def test_builtin_custom_rule_phone_or_allowed_domain(adapter, crm):
    crm.configure_rules(ORG, [Rule.custom("reachable", "phone_or_email_domain", domains=["acme.example"])])
    cases = {
        "free": (person("A", emails=["a@gmail.com"]), "reachable"),
        "domain": (person("B", emails=["b@ACME.example"]), None),
        "phone": (person("C", phones=["+1 555 0100"]), None),
        "nothing": (person("D"), "reachable"),
    }
    results = adapter.upsert_many(ORG, [WriteRequest(key=k, content=c, owner="u") for k, (c, _) in cases.items()])
    for (key, (_, expected)), res in zip(cases.items(), results):
        assert res.key == key
        assert (res.error.rule if res.error else None) == expected, key
        if res.error:
            assert res.error.field == "emails" and "gmail" not in res.error.message


def test_registered_custom_rule_and_misconfiguration(crm):
    @register_check("no_competitor_staff")
    def _no_competitor(contact: Contact, params: dict) -> Violation | None:
        if contact.company.casefold() in {c.casefold() for c in params["competitors"]}:
            return Violation("company", "competitors' staff are not tracked")
        return None

    crm.configure_rules(ORG, [Rule.custom("competitors", "no_competitor_staff", competitors=["Globex"])])
    with pytest.raises(ValidationRejected) as info:
        crm.create_contact(ORG, person("Hank", company="globex"), owner_id="u")
    assert info.value.rule == "competitors" and info.value.field == "company"
    assert crm.create_contact(ORG, person("Hank", company="Initech"), owner_id="u").version == 1
    assert [r.name for r in crm.get_rules(ORG)] == ["competitors"]

    with pytest.raises(Fatal):
        crm.configure_rules(ORG, [Rule.custom("x", "no_such_check")])
    with pytest.raises(Fatal):
        crm.configure_rules(ORG, [Rule.required("x", "shoe_size")])
    assert [r.name for r in crm.get_rules(ORG)] == ["competitors"]  # a bad config changes nothing


# ------------------------------------------------------------------ matching support and accounts


def test_account_linking_by_domain_and_company(crm):
    acme = crm.create_account(ORG, "ACME, Inc.", "acme.example")
    free = crm.create_account(ORG, "Google", "gmail.com")
    by_domain = crm.create_contact(ORG, person("A", emails=["a@acme.example"]), owner_id="u")
    by_company = crm.create_contact(ORG, person("B", company="acme", emails=["b@gmail.com"]), owner_id="u")
    by_free_mail = crm.create_contact(ORG, person("C", emails=["c@gmail.com"]), owner_id="u")
    assert by_domain.account_id == acme.id
    assert by_company.account_id == acme.id
    assert by_free_mail.account_id is None  # a free-mail domain says nothing about an employer
    assert free.domain == "gmail.com"
    assert crm.create_contact(OTHER, person("D", emails=["d@acme.example"]), owner_id="u").account_id is None

    # An account created later picks up existing contacts, and that is a change in the feed.
    early = crm.create_contact(ORG, person("E", emails=["e@initech.example"]), owner_id="u")
    _, cursor = crm.changes_since(ORG, None)
    initech = crm.create_account(ORG, "Initech", "initech.example")
    changed, _ = crm.changes_since(ORG, cursor)
    assert [(c.id, c.account_id, c.version) for c in changed] == [(early.id, initech.id, 2)]
    assert [a.id for a in crm.accounts_by_domain(ORG, "INITECH.example")] == [initech.id]

    crm.delete_account(ORG, acme.id)
    assert crm.get_contact(ORG, by_domain.id).account_id is None
    with pytest.raises(NotFound):
        crm.delete_account(ORG, acme.id)


def test_optimistic_concurrency_in_the_service(crm):
    rec = crm.create_contact(ORG, person("Ann"), owner_id="u")
    crm.update_contact(ORG, rec.id, person("Ann", "B"), expected_version=1)
    with pytest.raises(PreconditionFailed):
        crm.update_contact(ORG, rec.id, person("Ann", "C"), expected_version=1)
    same = crm.update_contact(ORG, rec.id, person("Ann", "B"))
    assert same.version == 2  # a save that changes nothing is not a change


# ------------------------------------------------------------------ seed


def test_seed_is_deterministic_and_plants_one_rule_breaker(db_url):
    mailbox = [person("Grace", "Hopper", emails=["grace@navy.example"], phones=["+1 555 010 2000"]),
               person("Alan", "Turing", emails=["alan@gmail.com"])]
    crm = ReferenceCrm(db_url)
    try:
        r1 = seed_organisation(crm, ORG, n=20, seed=7, mailbox_contacts=mailbox, owner_ids=("u1", "u2"))
        r2 = seed_organisation(crm, OTHER, n=20, seed=7, mailbox_contacts=mailbox, owner_ids=("u1", "u2"))

        def content(org):
            return [(c.owner_id, c.contact) for c in crm.list_contacts(org)]

        assert len(r1.contact_ids) == 20 and content(ORG) == content(OTHER)
        assert set(r1.near_duplicates) == {0, 1}
        assert len(crm.list_accounts(ORG)) == len(r1.account_ids) >= 3
        assert any(c.account_id for c in crm.list_contacts(ORG))
        breakers = [c.id for c in crm.list_contacts(ORG) if crm.check_rules(ORG, c.contact) is not None]
        assert breakers == [r1.invalid_contact_id]
        assert crm.check_rules(ORG, crm.get_contact(ORG, r1.invalid_contact_id).contact).rule == r1.invalid_rule
        with pytest.raises(ValidationRejected):
            crm.user_edit(ORG, r1.invalid_contact_id, notes="touched")
    finally:
        crm.engine.dispose()



def test_unreachable_database_is_transient():
    from models.errors import Transient

    crm = ReferenceCrm("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", create_schema=False)
    with pytest.raises(Transient):
        crm.get_contact(ORG, "crm_c_1")
    with pytest.raises(Transient):
        ReferenceCrmContacts(crm).upsert_many(ORG, [WriteRequest(key="k", content=person("Ann"))])
