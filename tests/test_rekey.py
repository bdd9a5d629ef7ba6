"""Stored blocking keys follow the code (activities/rekey.py, store/rekey.py).

A store upgraded from a release with other key formats holds link keys and mirror keys
that today's candidate search never meets. Each test builds that store for real (SQLite
and PostgreSQL), with keys in an old format, and checks that one read of the
organisation's platform feed re-keys it: new-key candidate search finds the links and
records again; a changed phone region re-keys; a second read does nothing; a re-key
killed half way resumes where it stopped.
"""

from __future__ import annotations

import sqlalchemy as sa
import pytest

from activities.org import OrgReader
from activities.rekey import Rekeyer
from models.contact import Contact
from store import mirror, repo
from store import rekey as rekey_store
from store.db import make_engine, migrate, session_factory
from store.schema import key_versions, mirror_keys
from sync.kinds.contacts import CONTACTS
from sync.policy import SyncSettings
from tests.memory_connectors import MemoryPlatform

ORG = "org-k"
OLD_STAMP = "contacts:1;region=US"


PEOPLE = [("Grace", "Hopper"), ("Ada", "Lovelace"), ("Alan", "Turing"), ("Emmy", "Noether"), ("Marie", "Curie")]


def _person(i: int, phone: str | None = None) -> Contact:
    given, family = PEOPLE[i]
    return Contact(given_name=given, family_name=family, emails=(f"{given.lower()}@example.com",),
                   phones=(phone,) if phone else ())


def _old_keys(c: Contact) -> set[str]:
    """Keys as an earlier release wrote them: the same email keys, names in the old
    formats ("t:" and single "n:"), which today's code never computes."""
    return ({k for k in CONTACTS.keys(c) if k.startswith("e:")}
            | {f"t:{c.given_name} {c.family_name}".lower(), f"n:{c.family_name}".lower()})


def _probe(i: int, settings: SyncSettings | None = None) -> set[str]:
    """The keys a new mailbox contact for the same person (another address) is searched by."""
    rules = CONTACTS.for_settings(settings or SyncSettings())
    given, family = PEOPLE[i]
    return rules.keys(Contact(given_name=given, family_name=family, emails=(f"x{i}@elsewhere.org",)))


class _Store:
    def __init__(self, url: str, org_settings: dict | None = None) -> None:
        migrate(url)
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)
        self.platform = MemoryPlatform()
        with self.sessions.begin() as s:
            repo.create_org(s, ORG, "Org", org_settings or {})
            repo.create_connection(s, id="c1", org_id=ORG, user_id="u1", provider="google", account_ref="acct-1",
                                   settings={"sync": {}})

    def reader(self) -> OrgReader:
        """A new reader per read, as the worker builds one per activity."""
        return OrgReader(self.sessions, CONTACTS, self.platform)

    def upgraded(self, n: int, *, stamp: str | None = OLD_STAMP, phone=lambda i: None) -> dict[int, str]:
        """n platform records and n links, their keys as the previous release left them.

        The records are mirrored by a read, then their keys put back in the old format
        and the recorded version set to `stamp` (None: no row, a store migrated from
        before versions were recorded)."""
        ids = {i: self.platform.user_create(ORG, _person(i, phone(i)), owner="u1") for i in range(n)}
        self.reader().read(ORG)
        with self.sessions.begin() as s:
            s.execute(sa.delete(mirror_keys).where(mirror_keys.c.org_id == ORG))
            s.execute(sa.insert(mirror_keys), [{"org_id": ORG, "kind": "contacts", "key": k, "external_id": ids[i]}
                                               for i in ids for k in _old_keys(_person(i, phone(i)))])
            for i, pid in ids.items():
                c = _person(i, phone(i))
                repo.save_link(s, org_id=ORG, connection_id="c1", kind="contacts", mailbox_id=f"m{i}",
                               platform_id=pid, snapshot=c, mailbox_hash=CONTACTS.hash(c),
                               platform_hash=CONTACTS.hash(c), keys=_old_keys(c))
            s.execute(sa.delete(key_versions).where(key_versions.c.org_id == ORG))
            if stamp is not None:
                rekey_store.start(s, ORG, "contacts", stamp)
                rekey_store.finish(s, ORG, "contacts", stamp)
        return ids

    def found(self, i: int, settings: SyncSettings | None = None) -> tuple[set[str], set[str]]:
        """(mirrored record ids, linked platform ids) new-key candidate search finds for person i."""
        keys = _probe(i, settings)
        with self.sessions() as s:
            return (mirror.candidates(s, ORG, "contacts", keys),
                    {r.platform_id for r in repo.links_sharing_keys(s, "c1", keys, kind="contacts")})

    def stamp(self):
        with self.sessions() as s:
            return rekey_store.get(s, ORG, "contacts")


@pytest.fixture
def store(db_url):
    st = _Store(db_url)
    yield st
    st.engine.dispose()


@pytest.mark.parametrize("stamp", [OLD_STAMP, None], ids=["old-version", "no-version"])
def test_one_read_rekeys_links_and_mirror_for_new_key_search(store, stamp):
    ids = store.upgraded(3, stamp=stamp)
    assert store.found(1) == (set(), set())  # the old keys: duplicates would be missed

    read = store.reader().read(ORG)

    assert (read.rekeyed.links, read.rekeyed.records) == (3, 3)
    for i, pid in ids.items():
        assert store.found(i) == ({pid}, {pid})
    row = store.stamp()
    assert row.stamp == CONTACTS.keys_stamp(SyncSettings()) and row.target is None
    # keys are replaced, not added to: the old formats are gone
    with store.sessions() as s:
        held = set(s.execute(sa.select(mirror_keys.c.key).where(mirror_keys.c.org_id == ORG)).scalars())
        assert not any(k.startswith("t:") for k in held)
        assert repo.link_keys_for(s, [1, 2, 3]) and not any(
            k.startswith("t:") for keys in repo.link_keys_for(s, [1, 2, 3]).values() for k in keys)


def test_a_second_read_does_nothing(store):
    store.upgraded(3)
    store.reader().read(ORG)
    calls = store.platform.calls_made

    again = store.reader().read(ORG)

    assert (again.rekeyed.links, again.rekeyed.records, again.rekeyed.reread) == (0, 0, 0)
    assert store.platform.calls_made - calls == 1  # the feed read only, no record read again


def test_records_the_buffer_no_longer_holds_are_read_again_from_the_platform(store):
    ids = store.upgraded(4)
    with store.sessions.begin() as s:
        mirror.prune(s, ORG, "contacts", 10**9)  # every mailbox pulled them: the buffer is empty

    read = store.reader().read(ORG)

    assert read.rekeyed.records == 4 and read.rekeyed.reread == 4
    for i, pid in ids.items():
        assert store.found(i)[0] == {pid}


def test_a_record_written_since_its_buffered_copy_is_keyed_from_the_platform(store):
    """The buffer holds the record as the feed brought it; a mailbox wrote it since (the
    mirror holds the new hash): keys from the buffered copy would be the old person's."""
    ids = store.upgraded(1)
    renamed = Contact(given_name="Amazing", family_name="Grace", emails=("grace@example.com",))
    store.platform.user_edit(ORG, ids[0], renamed)
    with store.sessions.begin() as s:
        mirror.note_written(s, ORG, "contacts", [mirror.MirrorEntry(
            external_id=ids[0], hash=CONTACTS.hash(renamed), etag=None, owner=None, deleted=False,
            keys=frozenset(_old_keys(renamed)), record={})])

    done = Rekeyer(store.sessions, CONTACTS, store.platform).run(ORG)

    assert done.reread == 1
    with store.sessions() as s:
        assert mirror.candidates(s, ORG, "contacts", CONTACTS.keys(renamed)) == {ids[0]}
        assert mirror.candidates(s, ORG, "contacts", _probe(0)) == set()  # not the buffered Grace Hopper


def test_a_changed_phone_region_rekeys(store):
    """A national number is a key only in its region: after the organisation moves to GB,
    its stored keys must hold the number as GB reads it."""
    ids = store.upgraded(2, stamp=None, phone=lambda i: f"020 7946 095{i}")
    store.reader().read(ORG)  # keys follow today's code, in the default region (US)
    uk = SyncSettings.from_dict({"phone_region": "GB"})
    number = {k for k in CONTACTS.for_settings(uk).keys(_person(0, "020 7946 0950")) if k.startswith("p:")}
    assert number and store.found(0)[0] == {ids[0]}
    with store.sessions() as s:
        assert mirror.candidates(s, ORG, "contacts", number) == set()
    with store.sessions.begin() as s:
        repo.set_org_settings(s, ORG, {"phone_region": "GB"})

    read = store.reader().read(ORG)

    assert (read.rekeyed.links, read.rekeyed.records) == (2, 2)
    with store.sessions() as s:
        assert mirror.candidates(s, ORG, "contacts", number) == {ids[0]}
        assert {r.platform_id for r in repo.links_sharing_keys(s, "c1", number, kind="contacts")} == {ids[0]}
    assert store.stamp().stamp == CONTACTS.keys_stamp(uk)
    assert store.reader().read(ORG).rekeyed.records == 0


class _Killed(Exception):
    pass


def test_an_interrupted_rekey_resumes_where_it_stopped(store):
    ids = store.upgraded(5)
    beats = []

    def dies(*details):
        beats.append(details)
        if len(beats) == 2:  # the worker dies after its second committed page
            raise _Killed

    first = store.reader()
    first.rekeyer.page = 2
    with pytest.raises(_Killed):
        first.read(ORG, heartbeat=dies)
    assert store.stamp().links_after > 0 and store.stamp().target is not None
    assert sum(1 for i in ids if store.found(i)[1]) == 4  # two pages of links done

    second = store.reader()
    second.rekeyer.page = 2
    read = second.read(ORG)

    assert (read.rekeyed.links, read.rekeyed.records) == (1, 5)  # the rest only
    for i, pid in ids.items():
        assert store.found(i) == ({pid}, {pid})
    assert store.stamp().target is None


def _rekey_behind(st, holder, detail: str) -> list:
    """Run the re-key in a thread until its heartbeat says `detail` (it reached what
    `holder`'s open transaction holds), then commit the holder and let it finish.
    Returns the re-key's result in a list (empty if it did not finish)."""
    import threading

    waiting = threading.Event()
    done: list = []

    def beat(seen):
        if seen == detail:
            waiting.set()

    worker = threading.Thread(target=lambda: done.append(Rekeyer(st.sessions, CONTACTS, st.platform).run(
        ORG, heartbeat=beat)), daemon=True)
    worker.start()
    assert waiting.wait(30)
    holder.commit()
    holder.close()
    worker.join(30)
    return done


def test_a_link_a_cycle_is_writing_is_waited_for_not_deadlocked(pg_url):
    """PostgreSQL: a cycle's transaction holds a link; the re-key neither takes links
    out of order (two writers would deadlock) nor skips it: it waits, then keys the
    link as the cycle left it."""
    st = _Store(pg_url)
    holder = st.sessions()
    try:
        ids = st.upgraded(3)
        renamed = Contact(given_name="Amazing", family_name="Grace", emails=("grace@example.com",))
        with st.sessions() as s:
            first = min(r.id for r in repo.links_sharing_keys(s, "c1", {"e:grace@example.com"}, kind="contacts"))
        holder.begin()
        repo.save_link(holder, id=first, snapshot=renamed, mailbox_hash=CONTACTS.hash(renamed),
                       platform_hash=CONTACTS.hash(renamed), keys=_old_keys(renamed))
        done = _rekey_behind(st, holder, "rekey:links:0")  # it sees the held link and waits for it

        assert done and done[0].links == 3
        with st.sessions() as s:
            held = repo.link_keys_for(s, [first])[first]
        assert held == CONTACTS.keys(renamed)  # today's keys of what the cycle wrote
        for i in (1, 2):
            assert st.found(i)[1] == {ids[i]}
    finally:
        holder.close()  # a failed wait must not leave the re-key blocked behind it
        st.engine.dispose()


def test_a_record_a_mailbox_is_mirroring_is_waited_for_and_keeps_its_new_keys(pg_url):
    """PostgreSQL: a mailbox's write holds a mirrored record (note_written, today's keys);
    the re-key waits for it and then leaves it as written, not keyed from older content."""
    st = _Store(pg_url)
    holder = st.sessions()
    try:
        ids = st.upgraded(3)
        first = min(ids.values())
        renamed = Contact(given_name="Amazing", family_name="Grace", emails=("grace@example.com",))
        st.platform.user_edit(ORG, first, renamed)  # the mailbox's write, mirrored before the feed has it
        holder.begin()
        mirror.note_written(holder, ORG, "contacts", [mirror.MirrorEntry(
            external_id=first, hash=CONTACTS.hash(renamed), etag=None, owner=None, deleted=False,
            keys=frozenset(CONTACTS.keys(renamed)), record={})])
        done = _rekey_behind(st, holder, "rekey:mirror:0")

        # keyed as written (by the writer, or again from the platform once it committed), never
        # from the buffered copy of the record as it was before the write
        assert done and done[0].records >= 2
        with st.sessions() as s:
            assert mirror.candidates(s, ORG, "contacts", CONTACTS.keys(renamed)) >= {first}
            assert first not in mirror.candidates(s, ORG, "contacts", _probe(0))
        for i in (1, 2):
            assert st.found(i)[0] == {ids[i]}
        assert st.stamp().target is None
    finally:
        holder.close()  # a failed wait must not leave the re-key blocked behind it
        st.engine.dispose()
