"""store.mirror.note_written, one statement per chunk, on SQLite and PostgreSQL: what a
mailbox just wrote to the platform is mirrored at once, as the per-record upserts did."""

from __future__ import annotations

import sqlalchemy as sa

from store import mirror
from store.db import make_engine, migrate, session_factory
from store.schema import platform_mirror

ORG = "org_m"


def entry(ext: str, *, hash: str, owner: str | None, deleted: bool = False, keys=("k",)) -> mirror.MirrorEntry:
    return mirror.MirrorEntry(external_id=ext, hash=hash, etag="ignored", owner=owner, deleted=deleted,
                              keys=frozenset(keys), record={})


def rows(sessions) -> dict[str, tuple]:
    with sessions() as s:
        return {r.external_id: (r.hash, r.etag, r.owner, bool(r.deleted), int(r.seq))
                for r in s.execute(sa.select(platform_mirror).where(platform_mirror.c.org_id == ORG))}


def test_written_records_are_mirrored_in_one_go(db_url):
    migrate(db_url)
    sessions = session_factory(make_engine(db_url))
    with sessions.begin() as s:  # records the feed already numbered
        mirror.note_written(s, ORG, "contacts", [entry("a", hash="h0", owner="u1"), entry("b", hash="h0", owner="u1")])
        s.execute(sa.update(platform_mirror).values(seq=7, etag="3"))
    with sessions.begin() as s:
        mirror.note_written(s, ORG, "contacts", [
            entry("a", hash="h1", owner=None),  # the writer does not know the owner: kept
            entry("b", hash="h1", owner="u2"),  # a new owner replaces the old one
            entry("c", hash="h1", owner="u3", keys=("x", "y")),
            entry("d", hash="h1", owner="u4"),
            entry("d", hash="h2", owner=None, deleted=True),  # written twice in the chunk: the last write wins
        ])
    assert rows(sessions) == {
        "a": ("h1", None, "u1", False, 7),  # etag unknown until the feed brings it; its number kept
        "b": ("h1", None, "u2", False, 7),
        "c": ("h1", None, "u3", False, 0),
        "d": ("h2", None, "u4", True, 0),
    }
    with sessions() as s:
        assert mirror.candidates(s, ORG, "contacts", ["x"]) == {"c"}
        assert mirror.candidates(s, ORG, "contacts", ["k"]) == {"a", "b"}  # d is deleted: no keys
    with sessions.begin() as s:
        mirror.note_written(s, ORG, "contacts", [])  # nothing written: nothing to do
    assert len(rows(sessions)) == 4


def test_a_search_is_needed_only_while_a_live_record_is_left_out(db_url):
    migrate(db_url)
    sessions = session_factory(make_engine(db_url))
    with sessions.begin() as s:
        mirror.note_written(s, ORG, "contacts", [entry("a", hash="h", owner="u1"), entry("b", hash="h", owner="u2"),
                                                 entry("c", hash="h", owner="u1", deleted=True)])
        mirror.note_written(s, "other_org", "contacts", [entry("z", hash="h", owner="u1")])
    with sessions() as s:
        assert mirror.all_live_among(s, ORG, "contacts", {"a", "b"})
        assert mirror.all_live_among(s, ORG, "contacts", {"a", "b", "c", "gone"})  # deleted and unknown ids aside
        assert not mirror.all_live_among(s, ORG, "contacts", {"a"})
        assert not mirror.all_live_among(s, ORG, "contacts", {"a", "c", "x"})  # as many ids, not the same ones
        assert mirror.all_live_among(s, ORG, "calendar", set())  # another kind holds nothing
