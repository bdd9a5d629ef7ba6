"""The reference CRM's bulk write (one transaction per batch, a savepoint per item),
through the contacts adapter, on SQLite and PostgreSQL.

The batch must answer exactly as one create/update call per record did: a refused
item fails alone, keys replay, the feed lists the changes in the order given, and a
CRM user's concurrent edit is never overwritten.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from connectors.protocols import WriteRequest, WriteResult
from models.contact import Contact
from models.errors import Fatal, NotFound, PreconditionFailed, ValidationRejected
from platforms.reference_crm import IdempotencyKeyReused, ReferenceCrmContacts, Rule, Violation, register_check
from platforms.reference_crm.mail_schema import person_emails
from platforms.reference_crm.service import MAX_BATCH, ContactWrite

ORG = "org_batch"


def person(given: str, family: str = "Doe", **kw) -> Contact:
    return Contact(given_name=given, family_name=family, **kw)


def feed(crm, cursor: int | None = None) -> tuple[list, int]:
    out, cur = [], cursor
    while True:
        page, cur2 = crm.changes_since(ORG, cur, 500)
        out += page
        if cur2 == cur or not page:
            return out, cur2
        cur = cur2


@pytest.fixture
def adapter(crm):
    return ReferenceCrmContacts(crm)


def ok(results: list[WriteResult]):
    assert [r.error for r in results] == [None] * len(results)
    return [r.record for r in results]


def test_one_refused_item_fails_alone_and_the_rest_commit(crm, adapter):
    crm.configure_rules(ORG, [Rule.required("company needed", "company")])
    a = crm.create_contact(ORG, person("Ann", company="Acme"), owner_id="u1")
    b = crm.create_contact(ORG, person("Bob", company="Acme"), owner_id="u1")
    _, cursor = feed(crm)
    results = adapter.upsert_many(ORG, [
        WriteRequest(key="new", content=person("Cid", company="Acme"), owner="u1"),
        WriteRequest(key="invalid", content=person("Dee", company=""), owner="u1"),
        WriteRequest(key="upd-a", external_id=a.id, content=person("Ann", company="Acme", notes="x"), etag="1"),
        WriteRequest(key="stale-b", external_id=b.id, content=person("Bob", company="Acme", notes="y"), etag="7"),
        WriteRequest(key="missing", external_id="crm_c_999999", content=person("Eve", company="Acme")),
        WriteRequest(key="bad-etag", external_id=b.id, content=person("Bob", company="Acme"), etag="W/abc"),
        WriteRequest(key="no-content", external_id=b.id),
        WriteRequest(key="new2", content=person("Fay", company="Acme"), owner="u1"),
    ])
    assert [r.key for r in results] == ["new", "invalid", "upd-a", "stale-b", "missing", "bad-etag", "no-content",
                                        "new2"]
    err = {r.key: r.error for r in results}
    assert isinstance(err["invalid"], ValidationRejected) and err["invalid"].rule == "company needed"
    assert isinstance(err["stale-b"], PreconditionFailed)
    assert isinstance(err["missing"], NotFound)
    assert isinstance(err["bad-etag"], PreconditionFailed)
    assert isinstance(err["no-content"], Fatal)
    assert [k for k, e in err.items() if e is None] == ["new", "upd-a", "new2"]
    assert sum(r.calls for r in results) == pytest.approx(1.0)

    changed, _ = feed(crm, cursor)
    assert [c.contact.given_name for c in changed] == ["Cid", "Ann", "Fay"]  # nothing of the refused items
    assert crm.get_contact(ORG, b.id).version == 1 and crm.get_contact(ORG, a.id).contact.notes == "x"
    # The refused item's key was not remembered: the same key lands once the rule allows it.
    crm.configure_rules(ORG, [])
    [again] = adapter.upsert_many(ORG, [WriteRequest(key="invalid", content=person("Dee", company=""), owner="u1")])
    assert again.error is None and again.record.content.given_name == "Dee"


def test_a_version_conflict_inside_the_batch_fails_alone(crm, adapter):
    """The second update of one record in a batch, still holding the first etag, is stale."""
    rec = crm.create_contact(ORG, person("Ann"), owner_id="u1")
    results = adapter.upsert_many(ORG, [
        WriteRequest(key="first", external_id=rec.id, content=person("Ann", job_title="CTO", emails=["a@one.example"]),
                     etag="1"),
        WriteRequest(key="second", external_id=rec.id, content=person("Ann", job_title="CEO"), etag="1"),
        WriteRequest(key="third", external_id=rec.id, content=person("Ann", job_title="CFO", emails=["a@two.example"]),
                     etag="2"),
    ])
    assert results[0].error is None and results[0].record.etag == "2"
    assert results[0].record.content.job_title == "CTO"  # the record as this item left it
    assert isinstance(results[1].error, PreconditionFailed)
    assert results[2].error is None and results[2].record.etag == "3"
    current = crm.get_contact(ORG, rec.id)
    assert (current.contact.job_title, current.version) == ("CFO", 3)
    assert email_index(crm, ORG) == {("a@two.example", "Ann")}  # the last write's addresses only


def test_a_batch_replayed_with_its_keys_returns_the_first_results_and_changes_nothing(crm, adapter):
    seed = crm.create_contact(ORG, person("Old"), owner_id="u1")
    batch = [WriteRequest(key=f"c{i}", content=person(f"P{i}", emails=[f"p{i}@x.example"]), owner="u1")
             for i in range(5)]
    batch.append(WriteRequest(key="u", external_id=seed.id, content=person("Old", notes="n"), etag="1"))
    first = ok(adapter.upsert_many(ORG, batch))
    _, head = feed(crm)
    crm.user_edit(ORG, first[0].external_id, job_title="edited by a user")  # later state must not leak in
    _, head_after_edit = feed(crm)

    replay = adapter.upsert_many(ORG, batch)
    assert ok(replay) == first
    assert feed(crm, head_after_edit)[0] == []  # no new change, no new record
    assert len(crm.list_contacts(ORG)) == 6 and head_after_edit == head + 1

    # A key reused with another request fails alone; the other items still replay.
    mixed = [WriteRequest(key="c0", content=person("Someone else"), owner="u1"), batch[1]]
    reused, replayed = adapter.upsert_many(ORG, mixed)
    assert isinstance(reused.error, IdempotencyKeyReused) and replayed.record == first[1]
    # The same key twice in one batch: the second is the first's replay, not a second record.
    twice = [WriteRequest(key="dup", content=person("Twin"), owner="u1")] * 2
    one, two = ok(adapter.upsert_many(ORG, twice))
    assert one == two and [c.contact.given_name for c in crm.list_contacts(ORG)].count("Twin") == 1


def test_the_feed_lists_a_batch_in_the_order_given(crm, adapter):
    a = crm.create_contact(ORG, person("A"), owner_id="u1")
    b = crm.create_contact(ORG, person("B"), owner_id="u1")
    _, cursor = feed(crm)
    results = ok(adapter.upsert_many(ORG, [
        WriteRequest(key="1", external_id=b.id, content=person("B", notes="1"), etag="1"),
        WriteRequest(key="2", content=person("C"), owner="u1"),
        WriteRequest(key="3", external_id=a.id, content=person("A", notes="3"), etag="1"),
        WriteRequest(key="4", content=person("D"), owner="u1"),
        WriteRequest(key="5", external_id=b.id, content=person("B", notes="5"), etag="2"),
    ]))
    changed, _ = feed(crm, cursor)
    # b changed twice: listed once, at its latest change, after everything before it.
    assert [c.contact.given_name for c in changed] == ["C", "A", "D", "B"]
    seqs = [c.change_seq for c in changed]
    assert seqs == sorted(seqs) and changed[-1].contact.notes == "5" and changed[-1].version == 3
    assert [r.etag for r in results] == ["2", "1", "2", "1", "3"]
    # A reader resuming inside the batch's numbers neither repeats nor skips.
    tail, _ = feed(crm, seqs[1])
    assert [c.contact.given_name for c in tail] == ["D", "B"]


def test_batches_larger_than_a_call_are_sent_in_chunks_and_answered_in_order(crm):
    adapter = ReferenceCrmContacts(crm, batch_size=3)
    requests = [WriteRequest(key=f"k{i}", content=person(f"P{i}"), owner="u1") for i in range(7)]
    records = ok(adapter.upsert_many(ORG, requests))
    assert [r.content.given_name for r in records] == [f"P{i}" for i in range(7)]
    assert adapter.calls_made == 3
    with pytest.raises(Fatal):
        crm.write_contacts(ORG, [ContactWrite(person("x"))] * (MAX_BATCH + 1))
    with pytest.raises(ValueError):
        ReferenceCrmContacts(crm, batch_size=MAX_BATCH + 1)


def test_the_batch_answers_as_one_call_per_record_did(crm):
    """Same requests through the bulk endpoint and through create/update calls (each in an
    organisation of its own): the same answers, account links included."""

    def script(adapter: ReferenceCrmContacts, org: str) -> list:
        crm.configure_rules(org, [Rule.max_length("short notes", "notes", 5)])
        crm.create_account(org, "ACME, Inc.", "acme.example")
        crm.create_account(org, "Acme Europe", "acme.example")  # a second account with that domain
        crm.create_account(org, "Initech LLC", None)
        base = crm.create_contact(org, person("Base"), owner_id="u0")
        results = adapter.upsert_many(org, [
            WriteRequest(key="1", content=person("A", emails=["a@ACME.example"]), owner="u1"),
            WriteRequest(key="2", content=person("B", company="initech", emails=["b@gmail.com"])),
            WriteRequest(key="3", content=person("C", notes="far too long")),
            WriteRequest(key="4", external_id=base.id, content=person("Base", notes="ok"), etag="1"),
            WriteRequest(key="5", external_id=base.id, content=person("Base", notes="ok"), etag="2"),
            WriteRequest(key="4", external_id=base.id, content=person("Base", notes="ok"), etag="1"),
            WriteRequest(key="6", content=person("D", company="Nobody Ltd")),
        ])
        # Two accounts share the domain: whichever the CRM picks, a single create picks it too.
        tie = crm.create_contact(org, person("Tie", emails=["t@acme.example"]), owner_id="u1").account_id
        out: list = [crm.get_contact(org, results[0].record.external_id).account_id == tie, email_index(crm, org)]
        for r in results:
            if r.error is not None:
                out.append(type(r.error).__name__)
            else:
                row = crm.get_contact(org, r.record.external_id)
                account = crm.get_account(org, row.account_id) if row.account_id else None
                out.append((r.record.content, r.record.etag, r.record.owner, account and account.name))
        return out

    batched = script(ReferenceCrmContacts(crm), "org_batched")
    single = script(ReferenceCrmContacts(crm, batch_size=0), "org_single")
    assert batched == single
    assert batched[0] is True
    assert batched[1] == {("a@acme.example", "A"), ("b@gmail.com", "B"), ("t@acme.example", "Tie")}
    batched, single = batched[2:], single[2:]
    assert batched[0][3] in {"ACME, Inc.", "Acme Europe"} and batched[1][3] == "Initech LLC"
    assert batched[2] == "ValidationRejected" and batched[6][3] is None
    assert batched[4][1] == "2" and batched[5] == batched[3]  # a no-op is no change; a key replays


def email_index(crm, org: str) -> set[tuple[str, str]]:
    """(address, given name) of the CRM's email index: what mail logging finds people by."""
    with crm.engine.connect() as conn:
        rows = conn.execute(sa.select(person_emails.c.email, person_emails.c.person_id)
                            .where(person_emails.c.org_id == org)).all()
    return {(email, crm.get_contact(org, pid).contact.given_name) for email, pid in rows}


_gate = {"entered": threading.Event(), "release": threading.Event()}


@register_check("batch_test_pause")
def _pause(contact: Contact, params: dict) -> Violation | None:
    """Holds a write inside its transaction (under the organisation's lock) until released."""
    if contact.notes == "pause":
        _gate["entered"].set()
        assert _gate["release"].wait(30), "the test never released the paused write"
    return None


def test_a_user_edit_racing_a_batch_is_never_overwritten(crm, adapter):
    """Both orders: an edit committed first makes the batch's item stale (that item fails
    alone); an edit read before the batch committed fails on the user's side, not ours."""
    a = crm.create_contact(ORG, person("Ann"), owner_id="u1")
    b = crm.create_contact(ORG, person("Bob"), owner_id="u1")
    [a_read, b_read] = adapter.get_many(ORG, [a.id, b.id])

    crm.user_edit(ORG, a.id, job_title="set by a user")  # committed before the batch
    crm.configure_rules(ORG, [Rule.custom("pause", "batch_test_pause")])
    _gate["entered"].clear()
    _gate["release"].clear()
    answers: list = []
    batch = threading.Thread(target=lambda: answers.extend(adapter.upsert_many(ORG, [
        WriteRequest(key="a", external_id=a.id, content=person("Ann", notes="from mail"), etag=a_read.etag),
        WriteRequest(key="b", external_id=b.id, content=person("Bob", notes="pause"), etag=b_read.etag),
    ])))
    batch.start()
    try:
        assert _gate["entered"].wait(30)
        # The user opened Bob before our batch committed and saves while it is in flight.
        user_view = crm.get_contact(ORG, b.id)
        assert user_view.version == 1
        user_error: list = []
        user = threading.Thread(target=lambda: _save_or_note(crm, b.id, user_view.version, user_error))
        user.start()
    finally:
        _gate["release"].set()
    batch.join(30)
    user.join(30)
    assert not batch.is_alive() and not user.is_alive()

    assert isinstance(answers[0].error, PreconditionFailed)  # Ann's user edit stands
    assert answers[1].error is None and answers[1].record.etag == "2"
    assert crm.get_contact(ORG, a.id).contact.job_title == "set by a user"
    assert len(user_error) == 1 and isinstance(user_error[0], PreconditionFailed)  # not a lost update
    assert crm.get_contact(ORG, b.id).contact.notes == "pause"


def _save_or_note(crm, contact_id: str, version: int, errors: list) -> None:
    try:
        crm.update_contact(ORG, contact_id, person("Bob", job_title="user"), expected_version=version,
                           actor="crm_user", enforce_rules=False)
    except PreconditionFailed as exc:
        errors.append(exc)


def test_a_rich_mapped_write_with_keep_lands_as_one_call_per_record_did(crm):
    """Typed emails and phones, every contact column, custom fields, an organisation's
    field mapping and kept fields: the bulk endpoint stores, links, indexes and answers
    exactly as create/update calls do. The kept emails link the account (the batch reads
    accounts once, so it must read them for what a write keeps too)."""
    from sync.fields import FieldMap
    from tests.test_contact_fields import RICH

    fmap = FieldMap.from_dict({"department": {"platform": "dept"}, "custom:tier": {"platform": "customer_tier"},
                               "birthday": {"platform": ""}, "notes": {"platform": "job_title"},
                               "job_title": {"platform": "notes"}})

    def script(batch_size: int, org: str) -> list:
        adapter = ReferenceCrmContacts(crm, field_maps=lambda o: fmap, batch_size=batch_size)
        crm.create_account(org, "Old Co", "old.example")
        crm.create_account(org, "Engines Ltd", "work.example")
        base = crm.create_contact(org, Contact(given_name="Ada", family_name="Old", emails=["ada@old.example"],
                                               job_title="kept note", custom=["customer_tier=platinum"]),
                                  owner_id="u0")
        _, cursor = crm.changes_since(org, None, 500)
        update = RICH.model_copy(update={"family_name": "King", "notes": "not this", "custom": ["tier=gold"]})
        results = adapter.upsert_many(org, [
            WriteRequest(key="c1", content=RICH, owner="u1"),
            WriteRequest(key="u1", external_id=base.id, content=update, etag="1",
                         keep=("emails", "notes", "custom:tier")),
            WriteRequest(key="c1", content=RICH, owner="u1"),  # a replay
        ])
        out: list = [email_index(crm, org)]
        for r in results:
            assert r.error is None
            row = crm.get_contact(org, r.record.external_id)
            account = crm.get_account(org, row.account_id) if row.account_id else None
            out.append((r.record.content, r.record.etag, r.record.owner, row.contact, account and account.name))
        changed, _ = crm.changes_since(org, cursor, 500)
        out.append([(c.contact, c.version) for c in changed])
        return out

    batched = script(MAX_BATCH, "org_rich_batched")
    single = script(0, "org_rich_single")
    assert batched == single

    index, made, kept_one, replay, changes = batched
    assert index == {("ada@work.example", "Ada"), ("ada@home.example", "Ada"), ("ada@old.example", "Ada")}
    answer, etag, owner, stored, account = made
    assert answer == RICH.model_copy(update={"birthday": ""}) and (etag, owner, account) == ("1", "u1", "Engines Ltd")
    assert stored.emails == RICH.emails and stored.phones == RICH.phones and stored.addresses == RICH.addresses
    assert stored.custom_fields() == {"dept": "Analytics", "customer_tier": "gold", "source": "fair"}
    assert (stored.notes, stored.job_title, stored.middle_name) == ("Analyst", "first programmer", "Augusta")
    answer, etag, owner, stored, account = kept_one
    assert (etag, owner, account) == ("2", "u0", "Old Co")  # linked by the emails it kept
    assert answer.email_addresses() == ("ada@old.example",) and answer.notes == "kept note"
    assert answer.family_name == "King" and answer.custom_fields() == {"tier": "platinum"}
    assert stored.job_title == "kept note" and stored.custom_fields()["customer_tier"] == "platinum"
    assert replay == made and len(changes) == 2
