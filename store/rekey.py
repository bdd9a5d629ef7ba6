"""Which code an organisation's stored blocking keys were computed by, and a re-key's
progress towards today's.

Link keys and mirror keys are written once, when their record changes; candidate
search probes them with keys computed now. After a release that changes key formats,
or a change of the organisation's phone region, the stored keys never meet the new
ones and duplicates are missed without a sign. `key_versions` holds, per organisation
and kind, the stamp the stored keys follow; a re-key to a new stamp walks the links
(by id) and then the mirror (by external id), each page committed with its progress,
so a worker killed half way resumes where it stopped.

Every function takes a Session and never commits (the caller owns the transaction).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from store.repo import _chunks, _insert, _replace_link_keys, insert_rows
from store.schema import key_versions, links, mirror_keys, platform_mirror


def get(s: Session, org_id: str, kind: str, *, lock: bool = False):
    """(stamp, target, links_after, mirror_after, ...) or None before the first check.

    `lock` holds the row to the end of the transaction (PostgreSQL), so two re-keys of
    one organisation never both write a page: the second sees the first's progress."""
    q = sa.select(key_versions).where(key_versions.c.org_id == org_id, key_versions.c.kind == kind)
    return s.execute(q.with_for_update() if lock else q).first()


def start(s: Session, org_id: str, kind: str, target: str) -> None:
    """Begin (or begin again) bringing the keys to `target`, from the first link and record."""
    values = dict(target=target, links_after=0, mirror_after="", updated_at=time.time())
    s.execute(_insert(s, key_versions).values(org_id=org_id, kind=kind, stamp=None, **values)
              .on_conflict_do_update(index_elements=[key_versions.c.org_id, key_versions.c.kind], set_=values))


def advance(s: Session, org_id: str, kind: str, *, links_after: int | None = None,
            mirror_after: str | None = None) -> None:
    values: dict = {"updated_at": time.time()}
    if links_after is not None:
        values["links_after"] = links_after
    if mirror_after is not None:
        values["mirror_after"] = mirror_after
    s.execute(sa.update(key_versions).where(key_versions.c.org_id == org_id, key_versions.c.kind == kind)
              .values(**values))


def finish(s: Session, org_id: str, kind: str, target: str) -> bool:
    """Every stored key follows `target` now (False: another re-key's target took over)."""
    return s.execute(sa.update(key_versions).where(
        key_versions.c.org_id == org_id, key_versions.c.kind == kind, key_versions.c.target == target)
        .values(stamp=target, target=None, updated_at=time.time())).rowcount == 1


def links_page(s: Session, org_id: str, kind: str, after: int, limit: int) -> list:
    """The organisation's links of this kind past id `after`, held against a concurrent
    write until the transaction ends (a cycle writing one waits, then writes its own keys).

    Links a cycle holds now are not waited for (two transactions taking links in other
    orders would deadlock): the page stops before the first of them, and the caller
    comes back for it. An empty page with links left says the first one is held."""
    locked = s.execute(sa.select(links.c.id, links.c.connection_id, links.c.snapshot).where(
        links.c.org_id == org_id, links.c.kind == kind, links.c.id > after)
        .order_by(links.c.id).limit(limit).with_for_update(skip_locked=True)).all()
    if not locked:
        return []
    every = s.execute(sa.select(links.c.id).where(
        links.c.org_id == org_id, links.c.kind == kind, links.c.id > after, links.c.id <= locked[-1].id)
        .order_by(links.c.id)).scalars().all()
    prefix = []
    for row, link_id in zip(locked, every):
        if row.id != link_id:
            break
        prefix.append(row)
    return prefix


def links_left(s: Session, org_id: str, kind: str, after: int) -> bool:
    return s.execute(sa.select(links.c.id).where(links.c.org_id == org_id, links.c.kind == kind, links.c.id > after)
                     .limit(1)).first() is not None


def set_link_keys(s: Session, key_sets: Mapping[int, Iterable[str]]) -> None:
    _replace_link_keys(s, {link_id: sorted(set(keys)) for link_id, keys in key_sets.items()})


def mirror_page(s: Session, org_id: str, kind: str, after: str, limit: int) -> list:
    """Live mirrored records past external id `after`: (external_id, hash, updated_at)."""
    return s.execute(sa.select(platform_mirror.c.external_id, platform_mirror.c.hash, platform_mirror.c.updated_at)
                     .where(platform_mirror.c.org_id == org_id, platform_mirror.c.kind == kind,
                            platform_mirror.c.deleted.is_(False), platform_mirror.c.external_id > after)
                     .order_by(platform_mirror.c.external_id).limit(limit)).all()


def set_mirror_keys(s: Session, org_id: str, kind: str, order: Sequence[str], keys: Mapping[str, Iterable[str]],
                    seen: Mapping[str, float]) -> tuple[int, str | None]:
    """Re-key a page of mirrored records (`order`: their ids, ascending) that are still
    as they were when their content was taken (`seen`: id -> updated_at then).

    One changed since was mirrored again by today's code, keys included: left as it is.
    One a writer holds now is not waited for (writers take records in other orders):
    the page stops before it. Returns (records re-keyed, the last id of the page done;
    None: the first is held)."""
    locked: dict[str, tuple[float, bool]] = {}
    present: set[str] = set()
    for chunk in _chunks(list(order)):
        where = (platform_mirror.c.org_id == org_id, platform_mirror.c.kind == kind,
                 platform_mirror.c.external_id.in_(chunk))
        for i, at, deleted in s.execute(sa.select(platform_mirror.c.external_id, platform_mirror.c.updated_at,
                                                  platform_mirror.c.deleted).where(*where)
                                        .with_for_update(skip_locked=True)).tuples():
            locked[i] = (at, bool(deleted))
        present.update(s.execute(sa.select(platform_mirror.c.external_id).where(*where)).scalars())
    done: list[str] = []
    through = None
    for i in order:
        if i in present and i not in locked:
            break  # held by a writer: the page ends here
        through = i
        if i in locked and i in keys and not locked[i][1] and locked[i][0] == seen.get(i):
            done.append(i)
    for chunk in _chunks(done):
        s.execute(sa.delete(mirror_keys).where(mirror_keys.c.org_id == org_id, mirror_keys.c.kind == kind,
                                               mirror_keys.c.external_id.in_(chunk)))
    insert_rows(s, mirror_keys, ("org_id", "kind", "key", "external_id"),
                [(org_id, kind, k, i) for i in done for k in sorted(set(keys[i]))])
    return len(done), through
