"""Erasing a person from Concord's store (GDPR): every row that holds their address.

`find` says what the store holds of the person (links whose snapshot carries the
address, items whose record does, and the records those links join); `purge` deletes
those rows and every row that names those records or quotes the address (reviews,
actions, the platform buffer and mirror, blocking keys), and redacts audit details that
quote it. Both take a Session and never commit. Matching is on the address casefolded,
anywhere in a row's JSON, so a note or a review detail quoting it is found too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from store.schema import (actions, audit_log, connections, items, link_keys, links, mirror_keys, platform_changes,
                          platform_mirror, reviews)

CHUNK = 500
REDACTED = {"redacted": "erased"}


def _holds(value, needle: str) -> bool:
    return needle in json.dumps(value, ensure_ascii=False, default=str).casefold()


def _emails_of(content) -> list[str]:
    if not isinstance(content, dict):
        return []
    return [str(e.get("address") if isinstance(e, dict) else e).casefold() for e in (content.get("emails") or [])]


@dataclass
class Found:
    #: link id -> (connection id, kind, mailbox id, platform id)
    links: dict[int, tuple[str, str, str, str]] = field(default_factory=dict)
    #: item ids
    items: set[int] = field(default_factory=set)
    #: (connection id, kind, side) -> external ids of the person's records
    records: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)

    def add(self, cid: str, kind: str, side: str, ext: str) -> None:
        self.records.setdefault((cid, kind, side), set()).add(ext)

    def ids(self, side: str, kind: str | None = None) -> set[str]:
        return {e for (c, k, sd), ids in self.records.items() if sd == side and kind in (None, k) for e in ids}


def connection_ids(s: Session, org_id: str) -> list[str]:
    return list(s.execute(sa.select(connections.c.id).where(connections.c.org_id == org_id)).scalars())


def find(s: Session, org_id: str, address: str) -> Found:
    needle = address.strip().casefold()
    out = Found()
    for row in s.execute(sa.select(links).where(links.c.org_id == org_id).execution_options(yield_per=CHUNK)):
        if needle in _emails_of(row.snapshot) or _holds(row.snapshot, needle):
            out.links[int(row.id)] = (row.connection_id, row.kind, row.mailbox_id, row.platform_id)
            out.add(row.connection_id, row.kind, "mailbox", row.mailbox_id)
            out.add(row.connection_id, row.kind, "platform", row.platform_id)
    cids = connection_ids(s, org_id)
    if cids:
        q = sa.select(items).where(items.c.connection_id.in_(cids)).execution_options(yield_per=CHUNK)
        for row in s.execute(q):
            content = (row.record or {}).get("content") or (row.record or {}).get("contact")
            if _holds(row.record, needle):
                out.items.add(int(row.id))
                if needle in _emails_of(content):
                    out.add(row.connection_id, row.kind, row.side, row.external_id)
        # items of the person's records whose staged record no longer quotes the address
        for (cid, kind, side), ids in list(out.records.items()):
            for i in range(0, len(ids), CHUNK):
                chunk = sorted(ids)[i:i + CHUNK]
                out.items.update(int(x) for x in s.execute(sa.select(items.c.id).where(
                    items.c.connection_id == cid, items.c.kind == kind, items.c.side == side,
                    items.c.external_id.in_(chunk))).scalars())
    return out


def purge(s: Session, org_id: str, address: str, found: Found, platform_ids: set[str] = frozenset()) -> dict[str, int]:
    """Delete what `find` found and every row naming those records or quoting the address.

    `platform_ids`: more platform records of the person (found on the platform itself),
    whose mirror and buffer rows go too. Returns counts per table."""
    needle = address.strip().casefold()
    counts: dict[str, int] = {}
    cids = connection_ids(s, org_id)

    def bump(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + max(int(n or 0), 0)

    link_ids = sorted(found.links)
    for i in range(0, len(link_ids), CHUNK):
        chunk = link_ids[i:i + CHUNK]
        s.execute(sa.delete(link_keys).where(link_keys.c.link_id.in_(chunk)))
        bump("links", s.execute(sa.delete(links).where(links.c.id.in_(chunk))).rowcount)
    # blocking keys quoting the address (e:<address>) on links of anyone else
    bump("link_keys", s.execute(sa.delete(link_keys).where(sa.func.lower(link_keys.c.key).contains(needle))).rowcount)

    item_ids = sorted(found.items)
    for i in range(0, len(item_ids), CHUNK):
        bump("items", s.execute(sa.delete(items).where(items.c.id.in_(item_ids[i:i + CHUNK]))).rowcount)

    mailbox_ids = found.ids("mailbox")
    all_platform = found.ids("platform") | set(platform_ids)
    if cids:
        gone = []
        for row in s.execute(sa.select(reviews).where(reviews.c.connection_id.in_(cids))):
            if (row.mailbox_id in mailbox_ids or row.platform_id in all_platform
                    or (row.link_id is not None and int(row.link_id) in found.links)
                    or _holds(row.detail, needle) or _holds(row.resolution, needle)):
                gone.append(int(row.id))
        for i in range(0, len(gone), CHUNK):
            bump("reviews", s.execute(sa.delete(reviews).where(reviews.c.id.in_(gone[i:i + CHUNK]))).rowcount)
        gone = []
        for row in s.execute(sa.select(actions.c.id, actions.c.item_mailbox_id, actions.c.item_platform_id,
                                       actions.c.link_id, actions.c.decision, actions.c.result)
                             .where(actions.c.connection_id.in_(cids))):
            if (row.item_mailbox_id in mailbox_ids or row.item_platform_id in all_platform
                    or (row.link_id is not None and int(row.link_id) in found.links)
                    or _holds(row.decision, needle) or _holds(row.result, needle)):
                gone.append(int(row.id))
        for i in range(0, len(gone), CHUNK):
            bump("actions", s.execute(sa.delete(actions).where(actions.c.id.in_(gone[i:i + CHUNK]))).rowcount)

    pids = sorted(all_platform)
    for i in range(0, len(pids), CHUNK):
        chunk = pids[i:i + CHUNK]
        bump("platform_changes", s.execute(sa.delete(platform_changes).where(
            platform_changes.c.org_id == org_id, platform_changes.c.external_id.in_(chunk))).rowcount)
        bump("platform_mirror", s.execute(sa.delete(platform_mirror).where(
            platform_mirror.c.org_id == org_id, platform_mirror.c.external_id.in_(chunk))).rowcount)
        bump("mirror_keys", s.execute(sa.delete(mirror_keys).where(
            mirror_keys.c.org_id == org_id, mirror_keys.c.external_id.in_(chunk))).rowcount)
    # buffered changes and keys that quote the address under another record's id
    quoting = [(r.kind, r.seq) for r in s.execute(sa.select(platform_changes.c.kind, platform_changes.c.seq,
                                                             platform_changes.c.record)
                                                   .where(platform_changes.c.org_id == org_id))
               if _holds(r.record, needle)]
    for kind, seq in quoting:
        bump("platform_changes", s.execute(sa.delete(platform_changes).where(
            platform_changes.c.org_id == org_id, platform_changes.c.kind == kind,
            platform_changes.c.seq == seq)).rowcount)
    bump("mirror_keys", s.execute(sa.delete(mirror_keys).where(
        mirror_keys.c.org_id == org_id, sa.func.lower(mirror_keys.c.key).contains(needle))).rowcount)

    redact = [int(r.id) for r in s.execute(sa.select(audit_log.c.id, audit_log.c.detail)
                                           .where(audit_log.c.org_id == org_id)) if _holds(r.detail, needle)]
    for i in range(0, len(redact), CHUNK):
        bump("audit_redacted", s.execute(sa.update(audit_log).where(audit_log.c.id.in_(redact[i:i + CHUNK]))
                                         .values(detail=REDACTED)).rowcount)
    return counts


def address_hash(org_id: str, address: str) -> str:
    """The only trace of an erased address: an HMAC keyed by the organisation."""
    import hashlib
    import hmac

    return hmac.new(org_id.encode(), address.strip().casefold().encode(), hashlib.sha256).hexdigest()


def remember(s: Session, org_id: str, digest: str) -> None:
    from store.repo import _insert
    from store.schema import erased_addresses

    s.execute(_insert(s, erased_addresses).values(org_id=org_id, address_hash=digest, at=time.time())
              .on_conflict_do_nothing(index_elements=[erased_addresses.c.org_id, erased_addresses.c.address_hash]))


def erased_among(s: Session, org_id: str, addresses) -> set[str]:
    """The addresses among these that were erased in this organisation."""
    from store.schema import erased_addresses

    by_hash = {address_hash(org_id, a): a for a in addresses if a}
    if not by_hash:
        return set()
    found = s.execute(sa.select(erased_addresses.c.address_hash).where(
        erased_addresses.c.org_id == org_id, erased_addresses.c.address_hash.in_(list(by_hash)))).scalars()
    return {by_hash[h] for h in found}
