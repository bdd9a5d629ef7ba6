"""The reference CRM's mail objects and its PlatformMail adapter, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from connectors.protocols import PlatformMail, WriteRequest
from models.errors import CursorExpired, ValidationRejected
from models.mail_log import Association, EmailLog, LoggedEmail, NewPerson, Person
from platforms.reference_crm import MailRule, ReferenceCrm, ReferenceCrmMail
from platforms.reference_crm import schema as t

ORG, OTHER = "org_a", "org_b"


@pytest.fixture
def adapter(crm) -> ReferenceCrmMail:
    return ReferenceCrmMail(crm)


def log(key: str, *, users=("u1",), visibility="full", subject="Quote", body="Hello", assoc=(), **kw) -> EmailLog:
    return EmailLog(key=key, thread_key=f"t-{key}", visibility=visibility, subject=subject, body_text=body,
                    sender="pat@prospect.example", recipients=("me@acme.example",), users=tuple(users),
                    associations=tuple(Association(object_type=o, object_id=i) for o, i in assoc), **kw)


def logged(adapter, *logs, org=ORG) -> list[LoggedEmail]:
    results = adapter.log_emails(org, list(logs))
    assert all(r.error is None for r in results), [r.error for r in results]
    return [r.record.content for r in results]


def test_adapter_satisfies_the_protocol(adapter):
    assert isinstance(adapter, ReferenceCrmMail)
    for name in [n for n in dir(PlatformMail) if not n.startswith("_")]:
        assert callable(getattr(adapter, name)), name


# ------------------------------------------------------------------ lookups


def test_people_found_by_any_address_case_insensitively(adapter, crm):
    c = crm.user_create(ORG, "u1", given_name="Ann", family_name="Lee", emails=["ann@acme.example", "Ann.Lee@Home.example"])
    lead = crm.mail.create_lead(ORG, emails=["pat@prospect.example", "PAT@old.example"], given_name="Pat",
                                company="Prospect", owner_id="u2")
    crm.user_create(OTHER, "u9", given_name="Other", emails=["ann@acme.example"])
    found = adapter.people_by_email(ORG, ["ann.lee@home.example", "Pat@Old.Example", "nobody@x.example"])
    assert set(found) == {"ann.lee@home.example", "Pat@Old.Example"}
    [ann] = found["ann.lee@home.example"]
    assert ann.id == c.id and ann.kind == "contact" and "ann@acme.example" in ann.emails and ann.owner == "u1"
    [pat] = found["Pat@Old.Example"]
    assert pat == Person(id=lead.id, kind="lead", emails=("pat@prospect.example", "pat@old.example"),
                         name="Pat", owner="u2")


def test_address_index_follows_edits_and_deletes(adapter, crm):
    c = crm.user_create(ORG, "u1", given_name="Ann", emails=["a@one.example", "b@one.example"])
    crm.user_edit(ORG, c.id, emails=["b@one.example", "c@one.example"])
    found = adapter.people_by_email(ORG, ["a@one.example", "b@one.example", "c@one.example"])
    assert set(found) == {"b@one.example", "c@one.example"}
    crm.user_delete(ORG, c.id)
    assert adapter.people_by_email(ORG, ["b@one.example", "c@one.example"]) == {}


def test_shared_address_lists_contacts_before_leads(adapter, crm):
    lead = crm.mail.create_lead(ORG, emails=["info@shared.example"], company="S")
    c = crm.user_create(ORG, "u1", given_name="Sam", emails=["info@shared.example"])
    [first, second] = adapter.people_by_email(ORG, ["info@shared.example"])["info@shared.example"]
    assert (first.id, first.kind, second.id, second.kind) == (c.id, "contact", lead.id, "lead")


def test_accounts_by_domain_and_open_opportunities(adapter, crm):
    acme = crm.create_account(ORG, "Acme", "Acme.example")
    crm.create_account(OTHER, "Acme elsewhere", "acme.example")
    ann = crm.user_create(ORG, "u1", given_name="Ann", emails=["ann@acme.example"])
    bob = crm.user_create(ORG, "u1", given_name="Bob", emails=["bob@acme.example"])
    deal = crm.mail.create_opportunity(ORG, "Big deal", account_id=acme.id,
                                       contact_roles={ann.id: "buyer", bob.id: "champion"})
    lost = crm.mail.create_opportunity(ORG, "Old deal", account_id=acme.id, contact_roles=[ann.id])
    crm.mail.set_opportunity_stage(ORG, lost.id, "lost")

    accounts = adapter.accounts_by_domain(ORG, ["ACME.example", "none.example"])
    assert list(accounts) == ["acme.example"]
    assert [(a.id, a.domain) for a in accounts["acme.example"]] == [(acme.id, "acme.example")]

    opps = adapter.open_opportunities(ORG, [ann.id, bob.id, "crm_c_missing"])
    assert set(opps) == {ann.id, bob.id}
    [o] = opps[ann.id]
    assert o.id == deal.id and o.account_id == acme.id and set(o.contact_ids) == {ann.id, bob.id}


def test_custom_associations_default_empty_and_pluggable(crm):
    assert ReferenceCrmMail(crm).custom_associations(ORG, object(), []) == []
    hooked = ReferenceCrmMail(crm, custom_associations=lambda org, msg, people: [
        {"object_type": "ticket", "object_id": f"{org}-T1"}])
    assert hooked.custom_associations(ORG, object(), []) == [Association(object_type="ticket", object_id="org_a-T1")]


# ------------------------------------------------------------------ people capture


def test_create_people_is_idempotent_and_never_duplicates_an_address(adapter, crm):
    req = WriteRequest(key="cap-1", content=NewPerson(email="New@Prospect.example", given_name="Nia", company="P"))
    [r1] = adapter.create_people(ORG, [req])
    [r2] = adapter.create_people(ORG, [req])
    assert r1.error is None and r2.error is None
    assert r1.record.external_id == r2.record.external_id and r1.record.etag == "created"
    assert r1.record.content.kind == "lead" and r1.record.content.emails == ("new@prospect.example",)
    assert len(crm.mail.list_leads(ORG)) == 1

    existing = crm.user_create(ORG, "u1", given_name="Ann", emails=["ann@acme.example", "ann@home.example"])
    [dup, contact] = adapter.create_people(ORG, [
        WriteRequest(key="cap-2", content=NewPerson(email="ANN@home.example")),
        WriteRequest(key="cap-3", content=NewPerson(kind="contact", email="zed@z.example", given_name="Zed"),
                     owner="u7"),
    ])
    assert dup.record.external_id == existing.id and dup.record.etag == "existing"
    assert dup.record.content.kind == "contact"
    assert contact.record.content.kind == "contact" and contact.record.content.owner == "u7"
    assert crm.get_contact(ORG, contact.record.external_id).contact.emails == ("zed@z.example",)
    assert len(crm.mail.list_leads(ORG)) == 1
    assert adapter.calls_made == 3


def test_create_people_rejection_fails_only_its_item(adapter, crm):
    crm.mail.configure_rules(ORG, [MailRule.required("lead.company required", "lead", "company")])
    results = adapter.create_people(ORG, [
        WriteRequest(key="a", content=NewPerson(email="secret.person@x.example")),
        WriteRequest(key="b", content=NewPerson(email="ok@x.example", company="X")),
    ])
    err = results[0].error
    assert isinstance(err, ValidationRejected) and err.field == "company" and err.rule == "lead.company required"
    assert "secret.person" not in str(err)
    assert results[1].error is None and results[1].record.content.kind == "lead"


def test_lead_creation_and_conversion_draw_feed_numbers(crm):
    lead = crm.mail.create_lead(ORG, emails=["l@x.example"], company="X")
    conv = crm.mail.convert_lead(ORG, lead.id)
    with crm.engine.connect() as conn:
        ops = [(r.op, r.record_id) for r in conn.execute(
            sa.select(t.change_log).where(t.change_log.c.org_id == ORG).order_by(t.change_log.c.seq))]
    assert ops == [("lead_create", lead.id), ("create", conv.contact_id), ("lead_convert", lead.id)]
    assert crm.mail.get_lead(ORG, lead.id).change_seq > lead.change_seq


# ------------------------------------------------------------------ email activities


def test_log_emails_is_idempotent_and_extends_by_key(adapter, crm):
    first = logged(adapter, log("m1", users=["u1"], assoc=[("contact", "c1")]))[0]
    again = logged(adapter, log("m1", users=["u1"], assoc=[("contact", "c1")]))[0]
    more = logged(adapter, log("m1", users=["u2"], assoc=[("account", "a1")]))[0]
    assert first.created and not again.created and not more.created
    assert first.activity_id == again.activity_id == more.activity_id
    [act] = crm.mail.list_email_activities(ORG)
    assert act.users == ("u1", "u2")
    assert {(a.object_type, a.object_id) for a in act.associations} == {("contact", "c1"), ("account", "a1")}
    assert act.subject == "Quote" and act.body_text == "Hello" and act.visibility == "full"
    assert crm.mail.list_email_activities(ORG, object_type="account", object_id="a1") == [act]
    assert crm.mail.list_email_activities(ORG, user_id="u3") == []
    # same key in another organisation is another activity
    other = logged(adapter, log("m1"), org=OTHER)[0]
    assert other.created and other.activity_id != first.activity_id


def test_lowered_visibility_erases_what_it_hides(adapter, crm):
    logged(adapter, log("full", visibility="full"), log("subj", visibility="full"), log("meta", visibility="subject"))
    [to_subject] = logged(adapter, log("subj", visibility="subject", users=["u2"]))
    [to_private] = logged(adapter, log("full", visibility="private", subject=None, body=None, users=["u2"]))
    [to_meta] = logged(adapter, log("meta", visibility="metadata", users=["u2"]))
    assert (to_subject.visibility, to_private.visibility, to_meta.visibility) == ("subject", "private", "metadata")
    s = crm.mail.get_activity_by_key(ORG, "subj")
    assert (s.subject, s.body_text) == ("Quote", None)
    p = crm.mail.get_activity_by_key(ORG, "full")
    assert (p.subject, p.body_text, p.visibility) == (None, None, "private")
    m = crm.mail.get_activity_by_key(ORG, "meta")
    assert (m.subject, m.body_text) == (None, None)
    # a later, more open log never raises the level back nor restores what was erased
    [back] = logged(adapter, log("full", visibility="full", users=["u3"]))
    assert back.visibility == "private"
    p = crm.mail.get_activity_by_key(ORG, "full")
    assert (p.subject, p.body_text, p.users) == (None, None, ("u1", "u2", "u3"))


def test_the_first_log_is_cut_to_its_own_level(adapter, crm):
    logged(adapter, log("m", visibility="metadata", subject="Should not be kept", body="nor this"))
    act = crm.mail.get_activity_by_key(ORG, "m")
    assert (act.subject, act.body_text, act.visibility) == (None, None, "metadata")


def test_rejected_log_fails_alone(adapter, crm):
    crm.mail.configure_rules(ORG, [
        MailRule.max_length("subject max", "email_activity", "subject", 10),
        MailRule.max_count("few associations", "email_activity", "associations", 2),
    ])
    logged(adapter, log("keep", assoc=[("contact", "c1"), ("account", "a1")]))
    results = adapter.log_emails(ORG, [
        log("long", subject="A very private and long subject"),
        log("ok", subject="Short"),
        log("keep", users=["u2"], assoc=[("opportunity", "o1")]),  # a third association
    ])
    assert isinstance(results[0].error, ValidationRejected) and results[0].error.field == "subject"
    assert "private" not in str(results[0].error)
    assert results[1].error is None and results[1].record.content.created
    assert isinstance(results[2].error, ValidationRejected) and results[2].error.rule == "few associations"
    assert crm.mail.get_activity_by_key(ORG, "long") is None
    keep = crm.mail.get_activity_by_key(ORG, "keep")
    assert keep.users == ("u1",) and len(keep.associations) == 2  # the refused extension left it as it was


def test_remove_emails_is_idempotent(adapter, crm):
    [a] = logged(adapter, log("gone", assoc=[("contact", "c1")]))
    [r1, r2] = adapter.remove_emails(ORG, ["gone", "never"])
    assert r1.error is None and r1.record.deleted and r1.record.external_id == a.activity_id
    assert r2.error is None and r2.record.deleted
    assert adapter.remove_emails(ORG, ["gone"])[0].record.deleted
    assert crm.mail.list_email_activities(ORG) == []
    with crm.engine.connect() as conn:
        from platforms.reference_crm import mail_schema as m
        assert conn.execute(sa.select(sa.func.count()).select_from(m.activity_associations)).scalar() == 0


# ------------------------------------------------------------------ conversions


def test_conversion_feed_and_move_emails(adapter, crm):
    acme = crm.create_account(ORG, "Prospect", "prospect.example")
    lead = crm.mail.create_lead(ORG, emails=["pat@prospect.example", "pat@home.example"], given_name="Pat",
                                company="Prospect", owner_id="u1")
    other = crm.mail.create_lead(ORG, emails=["kim@k.example"], company="K")
    logged(adapter, log("m1", assoc=[("lead", lead.id)]), log("m2", assoc=[("lead", lead.id), ("account", acme.id)]),
           log("m3", assoc=[("lead", other.id)]))
    convs, cursor = adapter.conversions_since(ORG, None)
    assert convs == [] and cursor == "0"

    conv = crm.mail.convert_lead(ORG, lead.id, create_opportunity="First order", actor="crm_user")
    assert crm.mail.convert_lead(ORG, lead.id) == conv  # a second click is not a second conversion
    contact = crm.get_contact(ORG, conv.contact_id)
    assert set(contact.contact.emails) == {"pat@prospect.example", "pat@home.example"}
    assert conv.account_id == acme.id == contact.account_id and conv.opportunity_id
    assert crm.mail.get_lead(ORG, lead.id).status == "converted"
    # the converted lead no longer receives mail; the contact does, by either address
    [p] = adapter.people_by_email(ORG, ["pat@home.example"])["pat@home.example"]
    assert (p.id, p.kind) == (conv.contact_id, "contact")
    assert [o.id for o in adapter.open_opportunities(ORG, [conv.contact_id])[conv.contact_id]] == [conv.opportunity_id]

    convs, cursor2 = adapter.conversions_since(ORG, cursor)
    assert convs == [conv] and cursor2 == str(conv.seq)
    conv2 = crm.mail.convert_lead(ORG, other.id)
    assert adapter.conversions_since(ORG, cursor2) == ([conv2], str(conv2.seq))
    assert conv2.seq == conv.seq + 1
    page, _ = adapter.conversions_since(ORG, None, limit=1)
    assert page == [conv]
    assert adapter.conversions_since(OTHER, None) == ([], "0")

    # the platform left the mail on the lead; Concord moves it
    assert {a.key for a in crm.mail.list_email_activities(ORG, object_type="lead", object_id=lead.id)} == {"m1", "m2"}
    to = [Association(object_type="contact", object_id=conv.contact_id),
          Association(object_type="account", object_id=acme.id)]
    assert adapter.move_emails(ORG, lead.id, to) == 2
    assert adapter.move_emails(ORG, lead.id, to) == 0
    assert crm.mail.list_email_activities(ORG, object_type="lead", object_id=lead.id) == []
    m2 = crm.mail.get_activity_by_key(ORG, "m2")
    assert {(a.object_type, a.object_id) for a in m2.associations} == {("contact", conv.contact_id),
                                                                       ("account", acme.id)}
    assert [a.key for a in crm.mail.list_email_activities(ORG, object_type="lead", object_id=other.id)] == ["m3"]


@pytest.mark.parametrize("bad", ["not-a-cursor", "-1", "99"])
def test_conversions_cursor_never_issued_is_expired(adapter, crm, bad):
    lead = crm.mail.create_lead(ORG, emails=["l@x.example"], company="X")
    crm.mail.convert_lead(ORG, lead.id)
    with pytest.raises(CursorExpired):
        adapter.conversions_since(ORG, bad)
    assert adapter.conversions_since(ORG, "1") == ([], "1")


# ------------------------------------------------------------------ concurrency (PostgreSQL)


def test_concurrent_logs_of_one_key_make_one_activity(pg_url):
    """Ten mailboxes log the same message at once: the UNIQUE key, not a prior read, keeps it to one."""
    crm = ReferenceCrm(pg_url)
    try:
        barrier = threading.Barrier(10)
        results: list = [None] * 10
        errors: list = []

        def run(i: int) -> None:
            adapter = ReferenceCrmMail(crm)
            barrier.wait()
            try:
                [results[i]] = adapter.log_emails(ORG, [log("same", users=[f"u{i}"],
                                                            assoc=[("contact", f"c{i % 3}")])])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        assert all(r.error is None for r in results), [r.error for r in results]
        assert len({r.record.external_id for r in results}) == 1
        assert sum(r.record.content.created for r in results) == 1
        [act] = crm.mail.list_email_activities(ORG)
        assert act.users == tuple(sorted(f"u{i}" for i in range(10)))
        assert {a.object_id for a in act.associations} == {"c0", "c1", "c2"}
    finally:
        crm.engine.dispose()


def test_concurrent_captures_of_one_address_make_one_person(pg_url):
    """Two mailboxes capturing the same unknown participant get the same lead, not two."""
    crm = ReferenceCrm(pg_url)
    try:
        barrier = threading.Barrier(6)
        ids: list = [None] * 6

        def run(i: int) -> None:
            barrier.wait()
            [res] = ReferenceCrmMail(crm).create_people(ORG, [
                WriteRequest(key=f"cap-{i}", content=NewPerson(email="Pat@Prospect.example", company="P"))])
            ids[i] = res.record.external_id if res.error is None else res.error

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(set(ids)) == 1 and str(ids[0]).startswith("crm_l_")
        assert len(crm.mail.list_leads(ORG)) == 1
    finally:
        crm.engine.dispose()


def test_malformed_requests_fail_per_item(adapter):
    [none, ok] = adapter.create_people(ORG, [WriteRequest(key="x"),
                                             WriteRequest(key="y", content=NewPerson(email="y@y.example"))])
    assert none.error is not None and none.error.code == "fatal" and ok.error is None
    [bad] = adapter.create_people(ORG, [WriteRequest(key="z", content=NewPerson(email="not an address"))])
    assert isinstance(bad.error, ValidationRejected) and bad.error.field == "email"
