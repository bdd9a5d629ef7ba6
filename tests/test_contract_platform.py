"""The `PlatformContacts` contract, run against every implementation alike.

Parametrised over the reference CRM adapter on SQLite and on PostgreSQL and the
in-memory platform (tests/memory_connectors.py). A driver per implementation does
what the platform's own users do (add, edit, delete records, configure validation
rules); the tests only use the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from models.errors import CursorExpired, Fatal, NotFound, PreconditionFailed, ValidationRejected
from connectors.protocols import PlatformContacts, WriteRequest
from models.contact import Contact
from models.record import SideRecord
from platforms.reference_crm import ReferenceCrm, ReferenceCrmContacts, Rule
from sync.normalize import blocking_keys
from tests.memory_connectors import MemoryPlatform

ORG, OTHER = "org_a", "org_b"


@dataclass
class Driver:
    name: str
    adapter: PlatformContacts
    user_create: Callable[[str, Contact, str | None], str]
    user_edit: Callable[[str, str, Contact], None]
    user_delete: Callable[[str, str], None]
    configure_rules: Callable[[str, list[Rule]], None]
    #: Make the platform stop accepting `cursor`; returns the cursor to present then.
    expire: Callable[[str], str]


def _crm(url: str) -> tuple[Driver, Callable[[], None]]:
    crm = ReferenceCrm(url)

    def create(org: str, contact: Contact, owner: str | None) -> str:
        return crm.create_contact(org, contact, owner_id=owner, actor="crm_user").id

    driver = Driver(
        name="crm",
        adapter=ReferenceCrmContacts(crm),
        user_create=create,
        user_edit=lambda org, iid, contact: crm.update_contact(org, iid, contact, actor="crm_user") and None,
        user_delete=lambda org, iid: crm.delete_contact(org, iid, actor="crm_user") and None,
        configure_rules=crm.configure_rules,
        # The CRM's feed never expires a cursor it issued; one it never issued is the
        # case to survive (a store that outlived the CRM's database).
        expire=lambda cursor: str(int(cursor) + 1_000_000),
    )
    return driver, crm.engine.dispose


def _memory() -> tuple[Driver, Callable[[], None]]:
    platform = MemoryPlatform()

    def expire(cursor: str) -> str:
        platform.expire_cursors()
        return cursor

    driver = Driver(
        name="memory",
        adapter=platform,
        user_create=lambda org, contact, owner: platform.user_create(org, contact, owner=owner),
        user_edit=platform.user_edit,
        user_delete=platform.user_delete,
        configure_rules=platform.configure_rules,
        expire=expire,
    )
    return driver, lambda: None


@pytest.fixture(params=["crm-sqlite", "crm-postgres", "memory"])
def platform(request, tmp_path):
    if request.param == "crm-sqlite":
        driver, stop = _crm(f"sqlite:///{tmp_path / 'crm.db'}")
    elif request.param == "crm-postgres":
        driver, stop = _crm(request.getfixturevalue("pg_url"))
    else:
        driver, stop = _memory()
    yield driver
    stop()


def person(n: int, **fields) -> Contact:
    base = dict(given_name=f"Given{n}", family_name=f"Family{n}", emails=[f"p{n}@example.test"],
                phones=[f"+1 415 555 01{n:02d}"], company="Acme")
    return Contact(**{**base, **fields})


def feed(adapter: PlatformContacts, org: str, cursor: str | None, limit: int = 500) -> tuple[list[SideRecord], str]:
    records: list[SideRecord] = []
    while True:
        page = adapter.changes_since(org, cursor, limit)
        assert page.cursor, "every page carries the cursor to resume from"
        records += page.records
        cursor = page.cursor
        if not page.next_page:
            return records, cursor


def upsert(adapter: PlatformContacts, key: str, contact: Contact, **kw) -> SideRecord:
    [res] = adapter.upsert_many(ORG, [WriteRequest(key=key, content=contact, **kw)])
    assert res.error is None, res.error
    return res.record


# ------------------------------------------------------------------------------ feed


def test_full_feed_then_delta_sees_each_change_once_last_state_wins(platform):
    a, b, c = (platform.user_create(ORG, person(n), "u1") for n in (1, 2, 3))
    platform.user_create(OTHER, person(9), "u9")
    full, cursor = feed(platform.adapter, ORG, None)
    assert {r.external_id for r in full if not r.deleted} == {a, b, c}
    assert {r.external_id: r.content for r in full}[b] == person(2)

    platform.user_edit(ORG, a, person(1, job_title="CTO"))
    platform.user_edit(ORG, a, person(1, job_title="CEO"))
    platform.user_delete(ORG, b)
    d = platform.user_create(ORG, person(4), "u1")
    delta, cursor2 = feed(platform.adapter, ORG, cursor)
    ids = [r.external_id for r in delta]
    assert sorted(ids) == sorted({a, b, d}) and len(ids) == len(set(ids))
    changed = {r.external_id: r for r in delta}
    assert changed[a].content.job_title == "CEO" and changed[a].owner == "u1"
    assert changed[b].deleted and changed[b].content is None
    assert changed[d].content == person(4)
    assert feed(platform.adapter, ORG, cursor2)[0] == []


def test_feed_pages_resume_exactly(platform):
    ids = [platform.user_create(ORG, person(n), None) for n in range(5)]
    seen, cursor = [], None
    while True:
        page = platform.adapter.changes_since(ORG, cursor, limit=2)
        seen += [r.external_id for r in page.records]
        cursor = page.cursor
        assert (page.next_page is not None) == (len(page.records) == 2)
        if page.next_page is None:
            break
    assert seen == ids  # oldest change first, none repeated, none skipped


def test_a_cursor_the_platform_does_not_accept_raises_and_a_full_feed_recovers(platform):
    ids = [platform.user_create(ORG, person(n), None) for n in range(3)]
    _, cursor = feed(platform.adapter, ORG, None)
    refused = platform.expire(cursor)
    with pytest.raises(CursorExpired):
        platform.adapter.changes_since(ORG, refused)
    for garbage in ("not-a-cursor", "-1"):
        with pytest.raises(CursorExpired):
            platform.adapter.changes_since(ORG, garbage)
    full, fresh = feed(platform.adapter, ORG, None)
    assert {r.external_id for r in full} == set(ids) and fresh


# ------------------------------------------------------------------------------ reads


def test_get_many_keeps_order_and_reports_missing_and_deleted_as_tombstones(platform):
    a, b = (platform.user_create(ORG, person(n), None) for n in (1, 2))
    foreign = platform.user_create(OTHER, person(3), None)
    platform.user_delete(ORG, b)
    got = platform.adapter.get_many(ORG, [b, "never-was", a, foreign])
    assert [r.external_id for r in got] == [b, "never-was", a, foreign]
    assert [r.deleted for r in got] == [True, True, False, True]
    assert got[2].content == person(1) and got[0].content is None and got[3].content is None


def test_candidates_come_from_concord_s_mirror_of_the_feed_not_from_the_platform(platform, sqlite_url):
    """The platform keeps none of Concord's keys: the organisation's reader mirrors what the
    feed says, and candidate search runs there (live records of this organisation only)."""
    from activities.org import OrgReader
    from store import mirror, repo
    from store.db import make_engine, migrate, session_factory
    from sync.kinds.contacts import CONTACTS

    migrate(sqlite_url)
    sessions = session_factory(make_engine(sqlite_url))
    with sessions.begin() as s:
        repo.create_org(s, ORG, "Org", {})
    a = platform.user_create(ORG, person(1), None)
    b = platform.user_create(ORG, person(2, emails=["shared@example.test"]), None)
    gone = platform.user_create(ORG, person(3, emails=["shared@example.test"]), None)
    platform.user_delete(ORG, gone)
    platform.user_create(OTHER, person(4, emails=["shared@example.test"]), None)
    OrgReader(sessions, CONTACTS, platform.adapter).read(ORG)
    probe = Contact(given_name="Someone", emails=["Shared@Example.test"], phones=["(415) 555-0101"])
    with sessions() as s:
        found = mirror.candidates(s, ORG, "contacts", blocking_keys(probe))
        assert found == {a, b}  # a by phone, b by email
        assert mirror.candidates(s, ORG, "contacts", {"e:nobody@example.test"}) == set()
    # Keys follow the record's current content once the feed shows the edit.
    platform.user_edit(ORG, b, person(2, emails=["moved@example.test"]))
    OrgReader(sessions, CONTACTS, platform.adapter).read(ORG)
    with sessions() as s:
        assert mirror.candidates(s, ORG, "contacts", blocking_keys(probe)) == {a}


# ------------------------------------------------------------------------------ writes


def test_upsert_answers_each_request_in_order_and_item_errors_stay_per_item(platform):
    platform.configure_rules(ORG, [Rule.required("company needed", "company")])
    live = platform.user_create(ORG, person(1), "u1")
    stale = platform.user_create(ORG, person(2), "u1")
    [stale_rec] = platform.adapter.get_many(ORG, [stale])
    platform.user_edit(ORG, stale, person(2, job_title="changed by a CRM user"))
    results = platform.adapter.upsert_many(ORG, [
        WriteRequest(key="new", content=person(3), owner="u1"),
        WriteRequest(key="invalid", content=person(4, company="")),
        WriteRequest(key="stale", external_id=stale, content=person(2, notes="x"), etag=stale_rec.etag),
        WriteRequest(key="missing", external_id="never-was", content=person(5)),
        WriteRequest(key="malformed", external_id=live),
        WriteRequest(key="update", external_id=live, content=person(1, notes="met at the fair")),
    ])
    assert [r.key for r in results] == ["new", "invalid", "stale", "missing", "malformed", "update"]
    errors = {r.key: r.error for r in results}
    assert errors["new"] is None and errors["update"] is None
    err = errors["invalid"]
    assert isinstance(err, ValidationRejected) and err.field == "company" and err.rule == "company needed"
    assert isinstance(errors["stale"], PreconditionFailed)
    assert isinstance(errors["missing"], NotFound)
    assert isinstance(errors["malformed"], Fatal)
    new = results[0].record
    assert new.content == person(3) and new.owner == "u1" and new.etag
    assert results[5].record.content.notes == "met at the fair" and results[5].record.owner == "u1"  # owner kept
    current = {r.external_id: r.content for r in platform.adapter.get_many(ORG, [stale, new.external_id])}
    assert current[stale].job_title == "changed by a CRM user" and current[new.external_id] == person(3)


def test_a_write_retried_with_its_key_returns_the_first_result(platform):
    first = upsert(platform.adapter, "k1", person(1), owner="u1")
    platform.user_edit(ORG, first.external_id, person(1, job_title="later"))
    again = upsert(platform.adapter, "k1", person(1), owner="u1")
    assert again == first  # not a second record, not the later state
    assert [r.external_id for r in feed(platform.adapter, ORG, None)[0]] == [first.external_id]
    [reused] = platform.adapter.upsert_many(ORG, [WriteRequest(key="k1", content=person(2), owner="u1")])
    assert isinstance(reused.error, Fatal)


def test_a_rejected_write_is_not_remembered_under_its_key(platform):
    platform.configure_rules(ORG, [Rule.required("company needed", "company")])
    [res] = platform.adapter.upsert_many(ORG, [WriteRequest(key="k", content=person(1, company=""))])
    assert isinstance(res.error, ValidationRejected)
    platform.configure_rules(ORG, [])
    assert upsert(platform.adapter, "k", person(1, company="")).content.company == ""


def test_an_update_with_the_current_etag_lands_and_changes_the_etag(platform):
    rec = upsert(platform.adapter, "c", person(1))
    updated = upsert(platform.adapter, "u", person(1, job_title="CTO"), external_id=rec.external_id, etag=rec.etag)
    assert updated.etag != rec.etag and updated.content.job_title == "CTO"
    [again] = platform.adapter.upsert_many(
        ORG, [WriteRequest(key="u2", external_id=rec.external_id, content=person(1), etag=rec.etag)]
    )
    assert isinstance(again.error, PreconditionFailed)


def test_deletes_are_idempotent_and_a_missing_record_counts_as_deleted(platform):
    a, b, stale = (platform.user_create(ORG, person(n), None) for n in (1, 2, 3))
    [old] = platform.adapter.get_many(ORG, [stale])
    platform.user_edit(ORG, stale, person(3, job_title="changed"))
    platform.user_delete(ORG, b)
    results = platform.adapter.delete_many(ORG, [
        WriteRequest(key="d1", external_id=a),
        WriteRequest(key="d2", external_id=b),
        WriteRequest(key="d3", external_id="never-was"),
        WriteRequest(key="d4", external_id=stale, etag=old.etag),
        WriteRequest(key="d5"),
    ])
    assert [r.key for r in results] == ["d1", "d2", "d3", "d4", "d5"]
    assert all(r.error is None and r.record.deleted for r in results[:3])
    assert isinstance(results[3].error, PreconditionFailed) and isinstance(results[4].error, Fatal)
    [retry] = platform.adapter.delete_many(ORG, [WriteRequest(key="d1", external_id=a)])
    assert retry.error is None and retry.record == results[0].record
    assert [r.deleted for r in platform.adapter.get_many(ORG, [a, stale])] == [True, False]


def test_concurrent_writers_lose_nothing(platform):
    import threading

    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for n in range(10):
                upsert(platform.adapter, f"t{t}-{n}", person(10 * t + n))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    records, _ = feed(platform.adapter, ORG, None, limit=7)
    ids = [r.external_id for r in records]
    assert len(ids) == len(set(ids)) == 40


def test_the_memory_platform_is_deterministic():
    def script() -> list[object]:
        platform = MemoryPlatform()
        a = platform.user_create(ORG, person(1), owner="u1")
        made = platform.upsert_many(ORG, [WriteRequest(key="k", content=person(2))])
        platform.user_edit(ORG, a, person(1, job_title="CTO"))
        return [a, made[0].record, feed(platform, ORG, None, limit=1)]

    assert script() == script()
