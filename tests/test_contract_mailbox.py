"""The `MailboxContacts` contract, run against every implementation alike.

Like vdirsyncer's storage tests: one set of tests, parametrised over Google People
(against its emulator), Microsoft Graph (against its emulator) and the in-memory
mailbox (tests/memory_connectors.py). A driver per implementation does what the
mailbox's user does (add, edit, delete contacts), expires cursors and injects
throttling; the tests only use the protocol. Where providers really differ the test
says so, with its PROVIDERS.md section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from models.errors import CursorExpired, Fatal, NotFound, PreconditionFailed, RateLimited
from connectors.google_people import GooglePeopleContacts, contact_to_person
from connectors.graph_contacts import GraphContacts, contact_to_item
from connectors.protocols import MailboxContacts, WriteRequest
from emulators.google_people import PeopleState
from emulators.google_people import create_app as people_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import serve
from models.contact import Contact
from models.record import SideRecord
from tests.memory_connectors import MemoryMailbox, rate_limited

PAGE = 2  # small pages, so every round spans several


@dataclass
class Driver:
    """One implementation under test, and what its user and the test harness can do to it."""

    name: str
    #: A new connector instance, as each Temporal activity makes one.
    connect: Callable[[], MailboxContacts]
    seed: Callable[[list[Contact]], list[str]]
    edit: Callable[[str, Contact], None]
    delete: Callable[[str], None]
    expire_cursors: Callable[[], None]
    throttle_next_call: Callable[[], None]
    #: An id shaped like this provider's ids that names no contact.
    missing_id: str


def _google() -> tuple[Driver, Callable[[], None]]:
    state = PeopleState()
    server = serve(people_app(state))
    fields = ("names", "emailAddresses", "phoneNumbers", "organizations", "biographies")

    def edit(iid: str, contact: Contact) -> None:
        person = contact_to_person(contact)
        state.user_edit(iid, {k: person.get(k, []) for k in fields})

    driver = Driver(
        name="google",
        connect=lambda: GooglePeopleContacts.for_emulator(server.base_url, token="emulator-token", page_size=PAGE),
        seed=lambda contacts: state.seed([contact_to_person(c) for c in contacts]),
        edit=edit,
        delete=state.user_delete,
        expire_cursors=state.expire_sync_tokens,
        throttle_next_call=lambda: state.inject_fault("429", retry_after=3),
        missing_id="people/c1",
    )
    return driver, server.stop


def _microsoft() -> tuple[Driver, Callable[[], None]]:
    state = GraphState(tokens={"t"}, seed=3)
    server = serve(graph_app(state))
    driver = Driver(
        name="microsoft",
        connect=lambda: GraphContacts(server.base_url, lambda: "t", page_size=PAGE),
        seed=lambda contacts: state.seed([contact_to_item(c) for c in contacts]),
        edit=lambda iid, contact: state.user_edit(iid, contact_to_item(contact, state.contact(iid))),
        delete=state.user_delete,
        expire_cursors=state.expire_delta_tokens,
        throttle_next_call=lambda: state.inject_fault(429, retry_after=3),
        missing_id="AAkALgnothere",
    )
    return driver, server.stop


def _memory() -> tuple[Driver, Callable[[], None]]:
    mailbox = MemoryMailbox(page_size=PAGE)
    driver = Driver(
        name="memory",
        connect=lambda: mailbox,  # one shared instance: it is the mailbox
        seed=lambda contacts: [mailbox.user_create(c) for c in contacts],
        edit=mailbox.user_edit,
        delete=mailbox.user_delete,
        expire_cursors=mailbox.expire_cursors,
        throttle_next_call=lambda: mailbox.faults.fail_calls(rate_limited(3)),
        missing_id="mem-404",
    )
    return driver, lambda: None


@pytest.fixture(params=["google", "microsoft", "memory"])
def mailbox(request):
    driver, stop = {"google": _google, "microsoft": _microsoft, "memory": _memory}[request.param]()
    yield driver
    stop()


def person(n: int, **fields) -> Contact:
    # a typed phone: every mailbox holds a work number as one (Graph in businessPhones)
    base = dict(given_name=f"Given{n}", family_name=f"Family{n}", emails=[f"p{n}@example.test"],
                phones=[{"number": f"+1 415 555 01{n:02d}", "type": "work"}], company="Acme", job_title="Buyer")
    return Contact(**{**base, **fields})


def round_of(conn: MailboxContacts | Driver, cursor: str | None) -> tuple[list[SideRecord], str]:
    """A whole round; given a driver, every page is read by a fresh connector instance."""
    records, page = [], None
    while True:
        result = (conn.connect() if isinstance(conn, Driver) else conn).list_changes(cursor, page)
        records.extend(result.records)
        if result.next_page is None:
            assert result.cursor, "the last page of a round carries the next cursor"
            return records, result.cursor
        page = result.next_page


def by_id(records: list[SideRecord]) -> dict[str, SideRecord]:
    # Graph may also replay an item on a later page of a round (PROVIDERS.md D); its
    # connector collapses replays per page, and test_graph_contacts covers that case.
    ids = [r.external_id for r in records]
    assert len(ids) == len(set(ids)), "a change reaches the caller once per round"
    return {r.external_id: r for r in records}


# ------------------------------------------------------------------------------ delta


def test_full_listing_then_delta_sees_each_change_once_last_state_wins(mailbox):
    a, b, c = mailbox.seed([person(1), person(2), person(3)])
    full, cursor = round_of(mailbox, None)
    listed = by_id(full)
    assert set(listed) == {a, b, c} and not any(r.deleted for r in full)
    assert listed[b].content == person(2)
    assert all(r.etag and r.updated_at is not None for r in full)  # for If-Match and newest-wins

    mailbox.edit(a, person(1, job_title="CTO"))
    mailbox.edit(a, person(1, job_title="CEO"))
    mailbox.delete(b)
    [d] = mailbox.seed([person(4)])
    [e] = mailbox.seed([person(5)])
    mailbox.delete(e)
    delta, cursor2 = round_of(mailbox, cursor)  # fresh instances resume cursor and pages
    changed = by_id(delta)
    assert changed[a].content.job_title == "CEO" and changed[a].updated_at >= listed[a].updated_at
    assert changed[b].deleted and changed[b].content is None
    assert changed[d].content == person(4)
    assert set(changed) - {a, b, d} <= {e} and (e not in changed or changed[e].deleted)
    assert c not in changed

    quiet, cursor3 = round_of(mailbox.connect(), cursor2)
    assert quiet == [] and cursor3


def test_our_own_writes_come_back_in_the_next_delta(mailbox):
    conn = mailbox.connect()
    _, cursor = round_of(conn, None)
    [made] = conn.create_many([WriteRequest(key="c", content=person(1))])
    changes, _ = round_of(mailbox.connect(), cursor)
    assert [(r.external_id, r.content) for r in changes] == [(made.record.external_id, person(1))]
    assert changes[0].etag == made.record.etag


def test_an_expired_cursor_raises_and_a_full_listing_recovers(mailbox):
    ids = mailbox.seed([person(n) for n in range(5)])
    conn = mailbox.connect()
    first_page = conn.list_changes(None)
    assert first_page.next_page
    _, cursor = round_of(conn, None)
    mailbox.expire_cursors()
    with pytest.raises(CursorExpired):
        conn.list_changes(cursor)
    full, fresh = round_of(conn, None)
    assert set(by_id(full)) == set(ids) and fresh


# ------------------------------------------------------------------------------ reads


def test_get_reads_the_current_state_and_a_missing_id_is_not_found(mailbox):
    [iid] = mailbox.seed([person(1)])
    conn = mailbox.connect()
    [listed], _ = round_of(conn, None)
    got = conn.get(iid)
    assert got.external_id == iid and got.content == person(1) and got.etag == listed.etag
    with pytest.raises(NotFound):
        conn.get(mailbox.missing_id)
    mailbox.delete(iid)
    with pytest.raises(NotFound):
        conn.get(iid)


def test_find_by_markers_finds_created_records_by_marker_and_nothing_else(mailbox):
    mailbox.seed([person(n) for n in range(4)])
    conn = mailbox.connect()
    made = conn.create_many([
        WriteRequest(key="a", content=person(10), marker="concord:a"),
        WriteRequest(key="b", content=person(11)),
        WriteRequest(key="c", content=person(12), marker="concord:c"),
    ])
    beats: list[int] = []
    found = mailbox.connect().find_by_markers(["concord:a", "concord:c", "concord:never"], heartbeat=lambda: beats.append(1))
    assert {m: r.external_id for m, r in found.items()} == {
        "concord:a": made[0].record.external_id,
        "concord:c": made[2].record.external_id,
    }
    assert found["concord:c"].content == person(12) and beats
    assert conn.find_by_marker("concord:a").external_id == made[0].record.external_id
    assert conn.find_by_marker("concord:b") is None
    # The marker survives an update that does not mention it; a deleted contact is not found.
    conn.update_many([WriteRequest(key="u", external_id=made[0].record.external_id, content=person(10, job_title="CTO"))])
    assert conn.find_by_marker("concord:a").content.job_title == "CTO"
    mailbox.delete(made[2].record.external_id)
    assert mailbox.connect().find_by_markers(["concord:c"]) == {}


def test_a_throttled_read_raises_rate_limited_with_its_delay(mailbox):
    conn = mailbox.connect()
    mailbox.throttle_next_call()
    with pytest.raises(RateLimited) as info:
        conn.list_changes(None)
    assert info.value.retry_after == 3
    assert conn.list_changes(None).cursor is not None or conn.list_changes(None).next_page


# ------------------------------------------------------------------------------ writes


def test_created_contacts_round_trip_and_calls_are_counted(mailbox):
    conn = mailbox.connect()
    before = conn.calls_made
    requests = [WriteRequest(key=f"k{n}", content=person(n), marker=f"m{n}") for n in range(3)]
    results = conn.create_many(requests[:1] + [WriteRequest(key="malformed")] + requests[1:])
    assert [r.key for r in results] == ["k0", "malformed", "k1", "k2"] and isinstance(results.pop(1).error, Fatal)
    assert all(r.error is None for r in results)
    assert [conn.get(r.record.external_id).content for r in results] == [person(0), person(1), person(2)]
    assert [r.record.content for r in results] == [person(0), person(1), person(2)]
    assert conn.calls_made > before and sum(r.calls for r in results) > 0


def test_writes_answer_each_request_in_order_and_item_errors_stay_per_item(mailbox):
    ok1, stale, gone, ok2 = mailbox.seed([person(1), person(2), person(3), person(4)])
    conn = mailbox.connect()
    etags = {r.external_id: r.etag for r in round_of(conn, None)[0]}
    mailbox.edit(stale, person(2, job_title="changed by the user"))
    mailbox.delete(gone)
    results = conn.update_many([
        WriteRequest(key="ok1", external_id=ok1, content=person(1, company="One"), etag=etags[ok1]),
        WriteRequest(key="stale", external_id=stale, content=person(2, company="Two"), etag=etags[stale]),
        WriteRequest(key="gone", external_id=gone, content=person(3, company="Three"), etag=etags[gone]),
        WriteRequest(key="malformed", external_id=ok2),
        WriteRequest(key="missing", external_id=mailbox.missing_id, content=person(5)),
        WriteRequest(key="ok2", external_id=ok2, content=person(4, company="Four")),
    ])
    assert [r.key for r in results] == ["ok1", "stale", "gone", "malformed", "missing", "ok2"]
    errors = {r.key: r.error for r in results}
    assert errors["ok1"] is None and errors["ok2"] is None
    assert isinstance(errors["stale"], PreconditionFailed)
    assert isinstance(errors["gone"], NotFound) and isinstance(errors["missing"], NotFound)
    assert isinstance(errors["malformed"], Fatal)
    assert conn.get(ok1).content.company == "One" and conn.get(ok2).content.company == "Four"
    assert conn.get(stale).content.job_title == "changed by the user"


def test_an_update_with_the_current_etag_lands_and_changes_the_etag(mailbox):
    [iid] = mailbox.seed([person(1)])
    conn = mailbox.connect()
    current = conn.get(iid)
    [res] = conn.update_many([WriteRequest(key="u", external_id=iid, content=person(1, notes="met at the fair"), etag=current.etag)])
    assert res.error is None and res.record.content.notes == "met at the fair"
    assert res.record.etag != current.etag and conn.get(iid).etag == res.record.etag
    [again] = conn.update_many([WriteRequest(key="u2", external_id=iid, content=person(1), etag=current.etag)])
    assert isinstance(again.error, PreconditionFailed)


def test_deleting_an_already_missing_contact_counts_as_deleted(mailbox):
    a, b = mailbox.seed([person(1), person(2)])
    mailbox.delete(b)
    conn = mailbox.connect()
    results = conn.delete_many([
        WriteRequest(key="live", external_id=a),
        WriteRequest(key="gone", external_id=b),
        WriteRequest(key="never", external_id=mailbox.missing_id),
        WriteRequest(key="twice", external_id=a),
        WriteRequest(key="malformed"),
    ])
    assert [r.key for r in results] == ["live", "gone", "never", "twice", "malformed"]
    for r in results[:4]:
        assert r.error is None and r.record.deleted
    assert isinstance(results[4].error, Fatal)
    with pytest.raises(NotFound):
        conn.get(a)


def test_a_throttled_write_is_every_items_error_not_raised(mailbox):
    conn = mailbox.connect()
    mailbox.throttle_next_call()
    results = conn.create_many([WriteRequest(key=f"k{n}", content=person(n)) for n in range(3)])
    assert [r.key for r in results] == ["k0", "k1", "k2"]
    assert all(isinstance(r.error, RateLimited) and r.error.retry_after == 3 for r in results)
    assert round_of(conn, None)[0] == []  # nothing was written


def test_a_delete_with_a_stale_etag(mailbox):
    """Graph honours If-Match on DELETE (412, like its PATCH); People's deleteContact takes
    no etag at all (PROVIDERS.md B lists the etag only for updateContact), so there the
    delete lands. The in-memory mailbox is strict, like Graph."""
    [iid] = mailbox.seed([person(1)])
    conn = mailbox.connect()
    old = conn.get(iid).etag
    mailbox.edit(iid, person(1, job_title="changed by the user"))
    [res] = conn.delete_many([WriteRequest(key="d", external_id=iid, etag=old)])
    if mailbox.name == "google":
        assert res.error is None and res.record.deleted
    else:
        assert isinstance(res.error, PreconditionFailed)
        assert conn.get(iid).content.job_title == "changed by the user"


def test_concurrent_writers_lose_nothing(mailbox):
    import threading

    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            conn = mailbox.connect()  # one per thread: the Google client is not thread-safe
            for n in range(5):
                [res] = conn.create_many([WriteRequest(key=f"t{t}-{n}", content=person(10 * t + n), marker=f"t{t}-{n}")])
                assert res.error is None
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    full, _ = round_of(mailbox, None)
    assert sorted(r.content.given_name for r in full) == sorted(f"Given{10 * t + n}" for t in range(4) for n in range(5))


def test_the_memory_mailbox_is_deterministic():
    def script() -> list[object]:
        mailbox = MemoryMailbox(page_size=2)
        ids = [mailbox.user_create(person(n)) for n in range(3)]
        first = mailbox.list_changes(None)
        made = mailbox.create_many([WriteRequest(key="k", content=person(9), marker="m")])
        mailbox.user_edit(ids[0], person(0, job_title="CTO"))
        return [ids, first, made[0].record, round_of(mailbox, None)]

    assert script() == script()
