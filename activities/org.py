"""The platform read once per organisation and kind, for all its mailboxes.

Each mailbox used to read the organisation's whole change feed with a cursor of its
own and drop what was not its business: fifty mailboxes, fifty reads of every
change. Here one reader per (organisation, kind) reads the feed, keeps the mirror
(hash, etag, owner, blocking keys: what matching and echo detection need), buffers
each change with its content, and says which mailboxes it concerns: those linked to
the record, and those whose user owns it (or that see all records). Those mailboxes,
and only those, are woken; each pulls from the buffer past its own number.

The organisation's workflow reads after a platform webhook or its poll timer; a
mailbox whose organisation reader has fallen silent reads for it (the compare-and-set
on the cursor keeps the read single).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sqlalchemy as sa

from activities.pacing import Pacer
from activities.rekey import Rekeyed, Rekeyer
from models.errors import CursorExpired
from connectors.protocols import PlatformSide
from store import mirror, repo
from store.schema import connections, cursors, links
from sync.kinds import KindRules
from sync.policy import SyncSettings, mailbox_settings

PAGE = 500


def mailbox_cursor_stream(kind: str) -> str:
    """How far a mailbox has pulled the organisation's buffer of this kind."""
    return f"{kind}:mirror"


@dataclass
class OrgRead:
    changes: int = 0
    pages: int = 0
    calls: int = 0
    #: full listings after the platform refused the stored cursor
    resyncs: int = 0
    #: connections the changes concern (to wake)
    affected: set[str] = field(default_factory=set)
    #: stored keys brought to today's code and settings before reading (activities/rekey.py)
    rekeyed: Rekeyed = field(default_factory=Rekeyed)


class OrgReader:
    def __init__(self, sessions, rules: KindRules, platform: PlatformSide, *, wait: Callable | None = None) -> None:
        self.sessions = sessions
        self.rules = rules
        self.kind = rules.name
        self.platform = platform
        self.wait = wait
        self.rekeyer = Rekeyer(sessions, rules, platform, wait=wait)

    def read(self, org_id: str, heartbeat: Callable = lambda *a: None) -> OrgRead:
        """Read the feed to its end; mirror, buffer and route what changed."""
        out = OrgRead()
        calls0 = getattr(self.platform, "calls_made", 0)
        pacer = Pacer(lambda: (out.pages,), sleep=self.wait)
        with self.sessions.begin() as s:
            mirror.ensure_feed(s, org_id, self.kind)
            org = repo.get_org(s, org_id)
            # Keys in the organisation's phone region, as its connections look them up.
            rules = self.rules.for_settings(SyncSettings.from_dict(org.settings if org is not None else None))
        # Keys stored by other code or settings first, so what this read mirrors and what
        # was mirrored before are found by the same candidate search.
        out.rekeyed = self.rekeyer.run(org_id, heartbeat)
        while True:
            with self.sessions() as s:
                cursor = mirror.get_feed(s, org_id, self.kind).value
            try:
                page = pacer.idempotent(self.platform.changes_since, org_id, cursor, limit=PAGE)
            except CursorExpired:
                # The platform no longer knows our place: list it all again. What the mirror
                # already holds unchanged is no change; the rest is numbered and delivered.
                with self.sessions.begin() as s:
                    mirror.advance(s, org_id, self.kind, cursor, None)
                out.resyncs += 1
                if out.resyncs > 1:
                    raise
                continue
            out.pages += 1
            with self.sessions.begin() as s:
                head = mirror.advance(s, org_id, self.kind, cursor, page.cursor if page.cursor is not None else cursor)
                if head is None:
                    continue  # another reader took this page first: read on from where it left
                changed = mirror.apply(s, org_id, self.kind, [self._entry(r, rules) for r in page.records], head)
                out.changes += len(changed)
                out.affected |= self._concerned(s, org_id, changed)
            heartbeat(out.pages)
            if page.next_page is None or not page.records:
                break  # the feed's end (a full page says "call again")
        with self.sessions.begin() as s:
            mirror.prune(s, org_id, self.kind, self._pulled_by_all(s, org_id))
        out.calls = getattr(self.platform, "calls_made", 0) - calls0
        return out

    def _entry(self, rec, rules: KindRules | None = None) -> mirror.MirrorEntry:
        rules = rules or self.rules
        content = rec.content
        return mirror.MirrorEntry(
            external_id=rec.external_id,
            hash=self.rules.hash(content) if content is not None else None,
            etag=rec.etag, owner=rec.owner, deleted=rec.deleted or content is None,
            keys=frozenset(rules.keys(content)) if content is not None else frozenset(),
            record=rec.model_dump(mode="json"),
        )

    def _concerned(self, s, org_id: str, changed: list[mirror.MirrorEntry]) -> set[str]:
        """Mailboxes a batch of changes concerns, and that have not pulled them yet.

        A change concerns a mailbox linked to the record, or in whose scope the record
        is (its user owns it, or it sees all records), unless it is the echo of that
        mailbox's own write (the record's hash is the one its link holds). A mailbox
        that has not loaded yet (no position) takes everything on its first load, and
        one already past the change's number has it: neither is woken.
        """
        if not changed:
            return set()
        conns = repo.list_connections(s, org_id=org_id, status="active")
        if not conns:
            return set()
        org = repo.get_org(s, org_id)
        scope: dict[str, SyncSettings] = {
            c.id: SyncSettings.from_dict(mailbox_settings(org.settings, c.settings), owner=c.user_id)
            for c in conns}
        owner_of = {c.id: c.user_id for c in conns}
        positions = {cid: int(v) for cid, v in s.execute(sa.select(cursors.c.connection_id, cursors.c.value).where(
            cursors.c.connection_id.in_(list(scope)), cursors.c.stream == mailbox_cursor_stream(self.kind))).all()
            if v is not None}
        linked: dict[str, dict[str, str]] = {}  # platform id -> connection -> hash its link holds
        ids = [e.external_id for e in changed]
        for chunk in range(0, len(ids), 1000):
            for cid, pid, h in s.execute(sa.select(links.c.connection_id, links.c.platform_id, links.c.platform_hash)
                                         .where(links.c.org_id == org_id, links.c.kind == self.kind,
                                                links.c.platform_id.in_(ids[chunk:chunk + 1000]))).all():
                linked.setdefault(pid, {})[cid] = h
        out: set[str] = set()
        for e in changed:
            links_of = linked.get(e.external_id, {})
            for cid, settings in scope.items():
                if cid in out or cid not in positions or positions[cid] >= e.seq:
                    continue
                if cid in links_of:
                    if e.deleted or links_of[cid] != e.hash:
                        out.add(cid)
                elif settings.platform_scope == "all" or (
                        settings.platform_scope == "owned" and e.owner == owner_of[cid]):
                    out.add(cid)
        return out

    def _pulled_by_all(self, s, org_id: str) -> int:
        """The buffer position every loaded mailbox of the organisation has passed (0: keep all)."""
        values = s.execute(sa.select(cursors.c.value).select_from(
            cursors.join(connections, connections.c.id == cursors.c.connection_id)).where(
            connections.c.org_id == org_id, connections.c.status == "active",
            cursors.c.stream == mailbox_cursor_stream(self.kind))).scalars().all()
        numbers = [int(v) for v in values if v is not None]
        return min(numbers) if numbers else 0
