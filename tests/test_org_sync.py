"""The platform read once per organisation.

Part one drives the organisation's reader (activities/org.py) against the in-memory
platform and a real store: each change is numbered once however many readers race,
it is routed only to the mailboxes it concerns, and a mailbox's own write is no news
to it. Part two runs the real organisation and mailbox workflows on the dev server:
three mailboxes of one organisation on one CRM, a platform webhook that wakes the
organisation (not the mailboxes), one read, and only the concerned mailbox woken.
"""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest

from activities.org import OrgReader, mailbox_cursor_stream
from api.app import build_webhooks, create_app
from api.webhooks import platform_headers, temporal_org_signal, temporal_signal
from emulators.server import serve
from models.contact import Contact
from store import mirror, repo
from store.db import make_engine, migrate, session_factory
from sync.kinds.contacts import CONTACTS
from tests.e2e_rig import Rig, throwaway_keyring
from tests.memory_connectors import MemoryPlatform
from workers import client as api
from workers.scenario import build_scenario, connect_mailbox, make_mailbox
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker

ORG = "org-r"


def _store(url: str, connections: dict[str, dict]):
    """A store with one organisation and its connections (id -> user and sync settings)."""
    migrate(url)
    sessions = session_factory(make_engine(url))
    with sessions.begin() as s:
        repo.create_org(s, ORG, "Org", {})
        for cid, spec in connections.items():
            repo.create_connection(s, id=cid, org_id=ORG, user_id=spec["user"], provider="google",
                                   account_ref=f"acct-{cid}", settings={"sync": spec.get("sync", {})})
    return sessions


def _loaded(sessions, cid: str, position: int = 0) -> None:
    """The connection has pulled the buffer up to `position` (its first load is done)."""
    with sessions.begin() as s:
        repo.set_cursor(s, cid, mailbox_cursor_stream("contacts"), str(position))


def _person(i: int, **kw) -> Contact:
    return Contact(given_name=f"Ada{i}", family_name="Lovelace", emails=(f"ada{i}@example.com",), **kw)


def test_racing_readers_number_each_change_once(db_url):
    """Readers racing (the organisation's workflow, a mailbox catching up) never both apply
    a page: the compare-and-set on the feed cursor drops the loser's copy."""
    sessions = _store(db_url, {"c1": {"user": "u1"}})
    platform = MemoryPlatform()
    for i in range(1200):  # three pages of the reader
        platform.user_create(ORG, _person(i), owner="u1")
    # A new reader (and new sessions) per activity, as the worker builds them.
    readers = [OrgReader(session_factory(make_engine(db_url)), CONTACTS, platform) for _ in range(4)]
    results, errors = [], []

    def run(reader):
        try:
            results.append(reader.read(ORG))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(r.changes for r in results) == 1200
    with sessions() as s:
        rows = mirror.changes_after(s, ORG, "contacts", 0, limit=5000)
        assert sorted(int(r.seq) for r in rows) == list(range(1, 1201))
        assert len({r.external_id for r in rows}) == 1200
    # Nothing new: a read changes nothing and numbers nothing.
    assert readers[0].read(ORG).changes == 0


def test_a_change_wakes_only_the_mailboxes_it_concerns(sqlite_url):
    sessions = _store(sqlite_url, {
        "mine": {"user": "u1"},                                  # owns the record
        "other": {"user": "u2"},                                 # neither owns nor links it
        "everyone": {"user": "u3", "sync": {"platform_scope": "all"}},
        "linked-only": {"user": "u4", "sync": {"platform_scope": "linked"}},
        "new": {"user": "u5", "sync": {"platform_scope": "all"}},  # no first load yet
    })
    platform = MemoryPlatform()
    reader = OrgReader(sessions, CONTACTS, platform)
    pid = platform.user_create(ORG, _person(1), owner="u1")
    platform.user_create(ORG, _person(2), owner="u2")
    reader.read(ORG)
    for cid in ("mine", "other", "everyone", "linked-only"):
        _loaded(sessions, cid, 2)

    platform.user_edit(ORG, pid, _person(1, job_title="CTO"))
    read = reader.read(ORG)
    assert read.changes == 1 and read.calls >= 1
    # Not "other" (not its record), not "linked-only" (no link to it), not "new" (its first
    # load will take the record as it is): the owner, and the one that sees everything.
    assert read.affected == {"mine", "everyone"}

    # "linked-only" links the record: now the record's next change concerns it too.
    with sessions.begin() as s:
        repo.save_links(s, [dict(org_id=ORG, connection_id="linked-only", kind="contacts", mailbox_id="m1",
                                 platform_id=pid, snapshot=_person(1).model_dump(mode="json"), mailbox_hash="h",
                                 platform_hash="stale", mailbox_etag=None, platform_etag=None, keys=[])])
    platform.user_edit(ORG, pid, _person(1, job_title="CEO"))
    assert reader.read(ORG).affected == {"mine", "everyone", "linked-only"}

    # A mailbox that has already pulled past the change is not woken for it.
    platform.user_edit(ORG, pid, _person(1, job_title="Chair"))
    _loaded(sessions, "everyone", 10_000)
    assert reader.read(ORG).affected == {"mine", "linked-only"}


def test_a_mailbox_is_not_woken_by_the_echo_of_its_own_write(sqlite_url):
    """The record as this mailbox wrote it comes back in the feed: its link holds that hash,
    so it is no news to it; another mailbox in the record's scope still gets the change."""
    sessions = _store(sqlite_url, {"writer": {"user": "u1"}, "everyone": {"user": "u3",
                                                                          "sync": {"platform_scope": "all"}}})
    platform = MemoryPlatform()
    reader = OrgReader(sessions, CONTACTS, platform)
    reader.read(ORG)
    _loaded(sessions, "writer")
    _loaded(sessions, "everyone")
    content = _person(7)
    pid = platform.user_create(ORG, content, owner="u1")  # what the writer's cycle created
    with sessions.begin() as s:
        repo.save_links(s, [dict(org_id=ORG, connection_id="writer", kind="contacts", mailbox_id="m7",
                                 platform_id=pid, snapshot=content.model_dump(mode="json"),
                                 mailbox_hash=CONTACTS.hash(content), platform_hash=CONTACTS.hash(content),
                                 mailbox_etag=None, platform_etag=None, keys=sorted(CONTACTS.keys(content)))])
    read = reader.read(ORG)
    assert read.changes == 1 and read.affected == {"everyone"}


def test_a_record_written_a_moment_ago_is_a_candidate_before_the_feed_is_read(sqlite_url):
    """Candidate search runs on the mirror. A record another mailbox has just created is
    mirrored by that write, so a second mailbox finds it even before the next feed read."""
    sessions = _store(sqlite_url, {"c1": {"user": "u1"}})
    content = _person(3)
    with sessions.begin() as s:
        mirror.note_written(s, ORG, "contacts", [mirror.MirrorEntry(
            external_id="p-new", hash=CONTACTS.hash(content), etag=None, owner="u1", deleted=False,
            keys=frozenset(CONTACTS.keys(content)), record={})])
    with sessions() as s:
        assert mirror.candidates(s, ORG, "contacts", CONTACTS.keys(content)) == {"p-new"}
    # When the feed brings it, it is still numbered (other mailboxes in its scope need it).
    platform = MemoryPlatform()
    platform.user_create(ORG, content, owner="u1")
    assert OrgReader(sessions, CONTACTS, platform).read(ORG).changes == 1


# ---------------------------------------------------------------- the workflows, for real


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{tmp_path / 'crm.db'}"


async def test_a_platform_webhook_reads_once_and_wakes_only_the_concerned_mailbox(temporal_env, urls):
    store_url, crm_url = urls
    org_id = f"org-{uuid.uuid4().hex[:6]}"
    sc = build_scenario(store_url, crm_url, org_id=org_id, connection_id=f"a-{uuid.uuid4().hex[:6]}", n_mailbox=8,
                        n_crm=12, near_duplicates=2)
    others = []
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    master_key = b"k" * 32
    try:
        async with make_worker(temporal_env.client, build_activities(store_url, crm_url, keyring=throwaway_keyring()),
                               task_queue=tq):
            ra = Rig(temporal_env, sc, tq)
            await ra.start()
            rigs = [ra]
            for user, provider in (("user_2", "google"), ("user_3", "microsoft")):
                mb = make_mailbox(provider)
                others.append(mb)
                mb.seed([Contact(given_name=f"Only{user}", family_name="Mine", emails=(f"{user}@example.org",))])
                cid = f"{user[-1]}-{uuid.uuid4().hex[:6]}"
                connect_mailbox(sc.sessions, org_id=org_id, connection_id=cid, user_id=user, mailbox=mb)
                await api.start_sync(temporal_env.client, cid, org_id, provider, poll_interval_s=3600,
                                     task_queue=tq)
                r = Rig(temporal_env, sc, tq)
                r.cid = cid
                await r.wait_cycles(1)
                rigs.append(r)
            states = [await r.settle(0) for r in rigs]

            # A CRM user edits a record linked to mailbox A (owned by user_1); the CRM's
            # webhook reaches the organisation's workflow.
            links = ra.links()
            mid, pid = next(iter(links.items()))
            sc.crm.user_edit(org_id, pid, job_title="Head of Platform", enforce_rules=False)
            signals = dict(task_queue=tq, poll_interval_s=3600)
            router, deps = build_webhooks(sc.sessions, temporal_signal(temporal_env.client, **signals),
                                          org_signal=temporal_org_signal(temporal_env.client, **signals),
                                          platform_master_key=master_key)
            org_before = await api.org_state(temporal_env.client, org_id)
            server = serve(create_app([router]))
            try:
                body = json.dumps({"record_ids": [pid]}).encode()
                secret = deps.platform_secret(org_id)
                async with httpx.AsyncClient(timeout=10) as http:
                    resp = await http.post(server.base_url + f"webhooks/platform/{org_id}", content=body,
                                           headers={**platform_headers(secret, body),
                                                    "content-type": "application/json"})
                assert resp.status_code == 202 and resp.json() == {"organisation": 1}
                org_after = await api.wait_for_org_cycles(temporal_env.client, org_id, org_before.cycles + 1)
            finally:
                server.stop()
            ks_before = org_before.kinds["contacts"]
            ks = org_after.kinds["contacts"]
            assert ks.reads == ks_before.reads + 1, "one read of the platform for the whole organisation"
            assert ks.changes - ks_before.changes == 1 and ks.last_woken == 1
            assert ks.last_error is None
            # The signals are sent before the organisation's cycle is counted, and a query
            # sees every delivered signal: B and C have nothing running or asked for.
            for r, before in zip(rigs[1:], states[1:]):
                st = await r.state()
                assert (st.cycles, st.cycle_running, st.wakeups_pending) == (before.cycles, False, 0)
            st = await ra.settle(states[0].cycles)
            assert st.last_error is None
            assert sc.mailbox.contacts()[mid].job_title == "Head of Platform"

            # Mailbox A's own edit reaches the CRM; the feed then shows it, and the read that
            # follows wakes nobody: it is A's echo, and the record is not B's or C's.
            sc.mailbox.edit(mid, job_title="Head of Everything")
            st = await ra.cycle()
            assert sc.crm.get_contact(org_id, pid).contact.job_title == "Head of Everything"
            before = [await r.state() for r in rigs]
            o = await api.org_state(temporal_env.client, org_id)
            await api.wake_org(temporal_env.client, org_id, "test")
            o = await api.wait_for_org_cycles(temporal_env.client, org_id, o.cycles + 1)
            assert o.kinds["contacts"].last_woken == 0
            for r, b in zip(rigs, before):
                st = await r.state()
                assert (st.cycles, st.wakeups_pending) == (b.cycles, 0)
    finally:
        for mb in others:
            mb.server.stop()
        sc.close()


async def test_the_organisation_workflow_survives_a_worker_restart(temporal_env, urls):
    store_url, crm_url = urls
    org_id = f"org-{uuid.uuid4().hex[:6]}"
    sc = build_scenario(store_url, crm_url, org_id=org_id, connection_id=f"r-{uuid.uuid4().hex[:6]}", n_mailbox=4,
                        n_crm=4, near_duplicates=0)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(temporal_env.client, build_activities(store_url, crm_url, keyring=throwaway_keyring()),
                               task_queue=tq):
            r = Rig(temporal_env, sc, tq)
            settled = await r.start()
            first = await api.org_state(temporal_env.client, org_id)
        # The worker is gone; the CRM changes and says so (its webhook: signal-with-start of
        # the organisation's workflow, which is running); a new worker picks both workflows up.
        mid, pid = next(iter(r.links().items()))
        sc.crm.user_edit(org_id, pid, job_title="After the restart", enforce_rules=False)
        await api.start_org_sync(temporal_env.client, org_id, task_queue=tq, reason="webhook")
        async with make_worker(temporal_env.client, build_activities(store_url, crm_url, keyring=throwaway_keyring()),
                               task_queue=tq):
            st = await api.wait_for_org_cycles(temporal_env.client, org_id, first.cycles + 1)
            assert st.kinds["contacts"].last_error is None
            assert st.kinds["contacts"].last_woken == 1, "the mailbox linked to the edited record"
            mst = await r.settle(settled.cycles)
        assert mst.last_error is None
        assert sc.mailbox.contacts()[mid].job_title == "After the restart"
    finally:
        sc.close()


def test_an_expired_feed_cursor_is_listed_again_without_numbering_what_did_not_change(sqlite_url):
    sessions = _store(sqlite_url, {"mine": {"user": "u1"}})
    platform = MemoryPlatform()
    reader = OrgReader(sessions, CONTACTS, platform)
    pids = [platform.user_create(ORG, _person(i), owner="u1") for i in range(3)]
    assert reader.read(ORG).changes == 3
    _loaded(sessions, "mine", 3)
    platform.expire_cursors()
    platform.user_edit(ORG, pids[1], _person(1, job_title="CFO"))
    read = reader.read(ORG)
    assert read.resyncs == 1
    assert read.changes == 1 and read.affected == {"mine"}
    with sessions() as s:
        assert [r.external_id for r in mirror.changes_after(s, ORG, "contacts", 3)] == [pids[1]]
    assert reader.read(ORG).changes == 0  # and the new cursor works


async def test_the_organisation_workflow_ends_when_its_last_mailbox_disconnects(temporal_env, urls):
    store_url, crm_url = urls
    sc = build_scenario(store_url, crm_url, connection_id=f"d-{uuid.uuid4().hex[:6]}", n_mailbox=3, n_crm=3,
                        near_duplicates=0)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(temporal_env.client, build_activities(store_url, crm_url, keyring=throwaway_keyring()),
                               task_queue=tq):
            r = Rig(temporal_env, sc, tq)
            await r.start()
            await api.disconnect(temporal_env.client, sc.connection_id)
            await temporal_env.client.get_workflow_handle(f"mailbox-sync/{sc.connection_id}").result()
            org = temporal_env.client.get_workflow_handle(f"org-sync/{sc.org_id}")
            await api.wake_org(temporal_env.client, sc.org_id, "test")
            await org.result()  # it ends instead of polling a platform nobody syncs with
            assert (await api.org_state(temporal_env.client, sc.org_id)).ended
            # A mailbox connecting again starts it anew (signal-with-start).
            with sc.sessions.begin() as s:
                repo.set_connection_status(s, sc.connection_id, "active")
            await api.start_sync(temporal_env.client, sc.connection_id, sc.org_id, sc.mailbox.provider,
                                 poll_interval_s=3600, task_queue=tq)
            st = await api.wait_for_org_cycles(temporal_env.client, sc.org_id, 1)
            assert not st.ended
    finally:
        sc.close()


def test_a_first_load_takes_the_whole_scope_even_while_the_feed_is_being_read(sqlite_url):
    """The organisation's reader has mirrored part of the feed (a read in progress, or a
    webhook not yet acted on): a mailbox's first load catches the feed up first, so its
    first cycle sees every record in its scope, not the part mirrored so far."""
    from activities.pipeline import KindPipeline
    from models.workflow import CycleRef

    sessions = _store(sqlite_url, {"new": {"user": "u1"}})
    platform = MemoryPlatform()
    for i in range(300):
        platform.user_create(ORG, _person(i), owner="u1" if i % 2 else "u2")
    OrgReader(sessions, CONTACTS, platform).read(ORG)
    for i in range(300, 600):
        platform.user_create(ORG, _person(i), owner="u1" if i % 2 else "u2")
    pipeline = KindPipeline(sessions, CONTACTS, platform, lambda info: None)
    result = pipeline.fetch_platform(CycleRef(connection_id="new", cycle_id="c1"))
    assert result.fetched == 300  # all of u1's records, from both halves
    with sessions() as s:
        staged = repo.items_by_status(s, "new", ["pending"])
    assert len({r.external_id for r in staged if r.side == "platform"}) == 300
