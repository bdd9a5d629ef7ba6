"""The organisation level of the store: one reader of the platform's change feed per
organisation and kind, the mirror it keeps, and the buffer mailboxes pull from.

Every function takes a Session and never commits (the caller owns the transaction).
A reader advances the feed cursor with compare-and-set (`advance`), so two readers
racing (the organisation's workflow and a mailbox catching up) never both apply a
page: the loser's page is dropped and it reads again from the new cursor.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import sqlalchemy as sa
from sqlalchemy.orm import Session

from store.repo import _chunks, _insert, insert_rows
from store.schema import mirror_keys, org_cursors, platform_changes, platform_mirror


def feed_stream(kind: str) -> str:
    return f"{kind}:platform"


@dataclass(frozen=True)
class MirrorEntry:
    """What one platform record is, as far as matching and echo detection need."""

    external_id: str
    hash: str | None
    etag: str | None
    owner: str | None
    deleted: bool
    keys: frozenset[str]
    #: the record as read (JSON), delivered to the mailboxes it concerns
    record: dict
    #: its number in the buffer, once `apply` has numbered it
    seq: int = 0


def get_feed(s: Session, org_id: str, kind: str):
    """(value, seq_head, updated_at) of the organisation's reader, or None before its first read."""
    return s.execute(sa.select(org_cursors).where(org_cursors.c.org_id == org_id,
                                                  org_cursors.c.stream == feed_stream(kind))).first()


def ensure_feed(s: Session, org_id: str, kind: str) -> None:
    s.execute(_insert(s, org_cursors).values(org_id=org_id, stream=feed_stream(kind), value=None, seq_head=0,
                                             updated_at=0.0).on_conflict_do_nothing())


def advance(s: Session, org_id: str, kind: str, expected: str | None, new: str | None) -> int | None:
    """Move the feed cursor from `expected` to `new`; the seq head to number changes from,
    or None when another reader moved it first (drop this page)."""
    stream = feed_stream(kind)
    cond = org_cursors.c.value.is_(None) if expected is None else org_cursors.c.value == expected
    res = s.execute(sa.update(org_cursors)
                    .where(org_cursors.c.org_id == org_id, org_cursors.c.stream == stream, cond)
                    .values(value=new, updated_at=time.time()))
    if res.rowcount != 1:
        return None
    return int(s.execute(sa.select(org_cursors.c.seq_head).where(
        org_cursors.c.org_id == org_id, org_cursors.c.stream == stream)).scalar_one())


def touch(s: Session, org_id: str, kind: str) -> None:
    """The feed was read and had nothing new: the reader is alive (for staleness checks)."""
    s.execute(sa.update(org_cursors).where(org_cursors.c.org_id == org_id, org_cursors.c.stream == feed_stream(kind))
              .values(updated_at=time.time()))


def apply(s: Session, org_id: str, kind: str, entries: Sequence[MirrorEntry], seq_head: int) -> list[MirrorEntry]:
    """Mirror a page; number and buffer what changed. A record read back with the same
    hash, etag, owner and deletion is no change (nothing to deliver). Returns the changes."""
    now = time.time()
    current = {r.external_id: r for r in _mirror_rows(s, org_id, kind, [e.external_id for e in entries])}
    changed: list[MirrorEntry] = []
    seq = seq_head
    latest: dict[str, MirrorEntry] = {e.external_id: e for e in entries}  # a page may repeat an id
    rows: list[dict] = []
    buffered: list[dict] = []
    for e in latest.values():
        row = current.get(e.external_id)
        if row is not None and (row.hash, row.etag, row.owner, bool(row.deleted)) == (e.hash, e.etag, e.owner,
                                                                                      e.deleted):
            continue
        seq += 1
        rows.append(dict(org_id=org_id, kind=kind, external_id=e.external_id, hash=e.hash, etag=e.etag,
                         owner=e.owner, deleted=e.deleted, seq=seq, updated_at=now))
        buffered.append(dict(org_id=org_id, kind=kind, seq=seq, external_id=e.external_id, record=e.record,
                             owner=e.owner, at=now))
        changed.append(replace(e, seq=seq))
    if rows:
        # One statement each for the page (per record, they were the feed read's largest cost).
        stmt = _insert(s, platform_mirror)
        new = stmt.excluded
        s.execute(stmt.on_conflict_do_update(
            index_elements=[platform_mirror.c.org_id, platform_mirror.c.kind, platform_mirror.c.external_id],
            set_={c: getattr(new, c) for c in ("hash", "etag", "owner", "deleted", "seq", "updated_at")}), rows)
        s.execute(sa.insert(platform_changes), buffered)
    _replace_keys(s, org_id, kind, changed)
    s.execute(sa.update(org_cursors).where(org_cursors.c.org_id == org_id, org_cursors.c.stream == feed_stream(kind))
              .values(seq_head=seq))
    return changed


def note_written(s: Session, org_id: str, kind: str, entries: Sequence[MirrorEntry]) -> None:
    """What a mailbox just wrote to the platform, mirrored before the feed shows it, so
    the next mailbox's candidate search finds a record created a moment ago by another
    (the feed is read later, by the organisation's workflow).

    The etag is left unknown: when the feed brings the record, it differs from what is
    mirrored, so the change is still numbered and delivered to the other mailboxes in
    its scope (the writer's own link holds its hash: it is not woken for its echo).
    """
    now = time.time()
    rows: dict[str, dict] = {}  # one row per record (one statement cannot upsert a row twice)
    for e in entries:
        earlier = rows.get(e.external_id)
        owner = e.owner if e.owner is not None or earlier is None else earlier["owner"]
        rows[e.external_id] = dict(org_id=org_id, kind=kind, external_id=e.external_id, seq=0, hash=e.hash,
                                   etag=None, owner=owner, deleted=e.deleted, updated_at=now)
    if rows:
        # One statement for the whole chunk: built per record, it was the write phase's
        # largest cost after the platform's own writes.
        stmt = _insert(s, platform_mirror)
        new = stmt.excluded
        s.execute(stmt.on_conflict_do_update(
            index_elements=[platform_mirror.c.org_id, platform_mirror.c.kind, platform_mirror.c.external_id],
            # An update keeps the owner the record has (None: not known to the writer).
            set_={"hash": new.hash, "etag": new.etag, "deleted": new.deleted, "updated_at": new.updated_at,
                  "owner": sa.func.coalesce(new.owner, platform_mirror.c.owner)}),
            list(rows.values()))
    _replace_keys(s, org_id, kind, list({e.external_id: e for e in entries}.values()))  # the last write's keys


def _replace_keys(s: Session, org_id: str, kind: str, entries: Sequence[MirrorEntry]) -> None:
    """The blocking keys candidate search finds these records by: their current ones only."""
    ids = [e.external_id for e in entries]
    for chunk in _chunks(ids):
        s.execute(sa.delete(mirror_keys).where(mirror_keys.c.org_id == org_id, mirror_keys.c.kind == kind,
                                               mirror_keys.c.external_id.in_(chunk)))
    insert_rows(s, mirror_keys, ("org_id", "kind", "key", "external_id"),
                [(org_id, kind, k, e.external_id) for e in entries if not e.deleted for k in sorted(e.keys)])


def _mirror_rows(s: Session, org_id: str, kind: str, ids: Iterable[str]) -> list:
    out = []
    for chunk in _chunks(list(dict.fromkeys(ids))):
        out += s.execute(sa.select(platform_mirror).where(
            platform_mirror.c.org_id == org_id, platform_mirror.c.kind == kind,
            platform_mirror.c.external_id.in_(chunk))).all()
    return out


def changes_after(s: Session, org_id: str, kind: str, after: int, limit: int = 1000) -> list:
    """Buffered changes past `after`, oldest first."""
    return s.execute(sa.select(platform_changes).where(
        platform_changes.c.org_id == org_id, platform_changes.c.kind == kind, platform_changes.c.seq > after)
        .order_by(platform_changes.c.seq).limit(limit)).all()


def in_scope(s: Session, org_id: str, kind: str, owner: str | None) -> list[str]:
    """Live records a mailbox's user owns (every live record when `owner` is None)."""
    q = sa.select(platform_mirror.c.external_id).where(
        platform_mirror.c.org_id == org_id, platform_mirror.c.kind == kind, platform_mirror.c.deleted.is_(False))
    if owner is not None:
        q = q.where(platform_mirror.c.owner == owner)
    return list(s.execute(q.order_by(platform_mirror.c.external_id)).scalars())


def all_live_among(s: Session, org_id: str, kind: str, ids: set[str]) -> bool:
    """Whether every live mirrored record is one of `ids`: then a candidate search can
    find nothing else (a mailbox's first cycle stages every record it may match)."""
    live = s.execute(sa.select(sa.func.count()).select_from(platform_mirror).where(
        platform_mirror.c.org_id == org_id, platform_mirror.c.kind == kind,
        platform_mirror.c.deleted.is_(False))).scalar_one()
    return live <= len(ids) and set(in_scope(s, org_id, kind, None)) <= ids


def latest_buffered(s: Session, org_id: str, kind: str, ids: Iterable[str]) -> dict[str, dict]:
    """The newest buffered record of each id that still has one."""
    out: dict[str, tuple[int, dict]] = {}
    for chunk in _chunks(list(dict.fromkeys(ids))):
        for row in s.execute(sa.select(platform_changes.c.external_id, platform_changes.c.seq,
                                       platform_changes.c.record).where(
                platform_changes.c.org_id == org_id, platform_changes.c.kind == kind,
                platform_changes.c.external_id.in_(chunk))):
            if row.external_id not in out or row.seq > out[row.external_id][0]:
                out[row.external_id] = (row.seq, row.record)
    return {k: v for k, (_, v) in out.items()}


def candidates(s: Session, org_id: str, kind: str, keys: Iterable[str]) -> set[str]:
    """Live records sharing a blocking key: candidate search on the mirror, not the platform."""
    found: set[str] = set()
    for chunk in _chunks(sorted(set(keys))):
        found.update(s.execute(sa.select(mirror_keys.c.external_id).where(
            mirror_keys.c.org_id == org_id, mirror_keys.c.kind == kind, mirror_keys.c.key.in_(chunk))).scalars())
    return found


def prune(s: Session, org_id: str, kind: str, up_to: int) -> int:
    """Drop buffered changes every loaded mailbox has pulled."""
    return s.execute(sa.delete(platform_changes).where(
        platform_changes.c.org_id == org_id, platform_changes.c.kind == kind,
        platform_changes.c.seq <= up_to)).rowcount
