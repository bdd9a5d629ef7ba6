"""Stored blocking keys brought to today's code, once per organisation and kind.

Candidate search (the mirror's and the links') only meets keys computed the way it
computes them. Keys stored by an earlier release, or in another phone region, would
hide duplicates until each record happened to change; so when the stamp recorded for
the organisation's kind (store/rekey.py) is not `KindRules.keys_stamp` of its settings,
the organisation's platform read first recomputes them: link keys from each link's
snapshot (the store holds it), mirror keys from the buffered record when it is the one
mirrored, otherwise from the record read again from the platform (`get_many`, a page
at a time). Each page commits with its progress; a killed worker resumes from there.

The common case costs one primary-key read per platform read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from pydantic import ValidationError

from activities.pacing import Pacer
from connectors.protocols import PlatformSide
from store import mirror, repo
from store import rekey as store
from sync.kinds import KindRules
from sync.policy import SyncSettings, mailbox_settings

PAGE = 500
#: how long to let a cycle holding the next link finish its write
HELD_WAIT_S = 0.2


@dataclass
class Rekeyed:
    #: links whose keys were recomputed
    links: int = 0
    #: mirrored platform records whose keys were recomputed
    records: int = 0
    #: of those, records read again from the platform (not buffered as mirrored)
    reread: int = 0


class Rekeyer:
    def __init__(self, sessions, rules: KindRules, platform: PlatformSide, *, page: int = PAGE,
                 wait: Callable | None = None) -> None:
        self.sessions = sessions
        self.rules = rules
        self.kind = rules.name
        self.platform = platform
        self.page = page
        self.wait = wait

    def run(self, org_id: str, heartbeat: Callable = lambda *a: None) -> Rekeyed:
        """Re-key the organisation's kind if its stored keys follow other code or settings."""
        out = Rekeyed()
        with self.sessions.begin() as s:
            org = repo.get_org(s, org_id)
            org_settings = (org.settings or {}) if org is not None else {}
            target = self.rules.keys_stamp(SyncSettings.from_dict(org_settings))
            row = store.get(s, org_id, self.kind)
            if row is not None and row.stamp == target and row.target is None:
                return out
            if row is None or row.target != target:
                # None before: keys from a release that recorded no version, re-keyed too
                store.start(s, org_id, self.kind, target)
        if not self._links(org_id, target, org_settings, out, heartbeat):
            return out
        if not self._mirror(org_id, target, org_settings, out, heartbeat):
            return out
        with self.sessions.begin() as s:
            store.finish(s, org_id, self.kind, target)
        return out

    # -- links ---------------------------------------------------------------
    def _links(self, org_id: str, target: str, org_settings: dict, out: Rekeyed, heartbeat: Callable) -> bool:
        """Link keys from each link's snapshot, with its connection's settings (as the
        executor computed them). False: another re-key's target took over."""
        by_connection: dict[str, KindRules] = {}
        while True:
            key_sets: dict[int, set[str]] = {}
            with self.sessions.begin() as s:
                row = store.get(s, org_id, self.kind, lock=True)
                if row is None or row.target != target:
                    return False
                after = int(row.links_after)
                page = store.links_page(s, org_id, self.kind, after, self.page)
                left = bool(page) or store.links_left(s, org_id, self.kind, after)
                for link in page:
                    rules = by_connection.get(link.connection_id)
                    if rules is None:
                        rules = by_connection[link.connection_id] = self._connection_rules(s, link.connection_id,
                                                                                           org_settings)
                    try:
                        content = self.rules.model.model_validate(link.snapshot)
                    except ValidationError:
                        continue  # a snapshot the model no longer reads: keys left as they are
                    key_sets[int(link.id)] = rules.keys(content)
                if page:
                    store.set_link_keys(s, key_sets)
                    store.advance(s, org_id, self.kind, links_after=int(page[-1].id))
            if not left:
                return True
            if not page:
                # the next link is being written by a cycle (with today's keys): let it finish
                time.sleep(HELD_WAIT_S)
            out.links += len(key_sets)
            heartbeat(f"rekey:links:{out.links}")

    def _connection_rules(self, s, connection_id: str, org_settings: dict) -> KindRules:
        conn = repo.get_connection(s, connection_id)
        return self.rules.for_settings(SyncSettings.from_dict(
            mailbox_settings(org_settings, conn.settings if conn is not None else None)))

    # -- mirror --------------------------------------------------------------
    def _mirror(self, org_id: str, target: str, org_settings: dict, out: Rekeyed, heartbeat: Callable) -> bool:
        """Mirror keys in the organisation's settings (as its reader computes them)."""
        rules = self.rules.for_settings(SyncSettings.from_dict(org_settings))
        pacer = Pacer(lambda: (out.records,), sleep=self.wait)
        #: keys already computed, by external id, with the mirror's updated_at they are of
        #: (a page retried after waiting for a held record reads nothing twice)
        known: dict[str, tuple[float, set[str]]] = {}
        while True:
            with self.sessions() as s:
                row = store.get(s, org_id, self.kind)
                if row is None or row.target != target:
                    return False
                after = row.mirror_after
                page = store.mirror_page(s, org_id, self.kind, after, self.page)
                if not page:
                    return True
                todo = [r for r in page if known.get(r.external_id, (None,))[0] != r.updated_at]
                buffered = mirror.latest_buffered(s, org_id, self.kind, [r.external_id for r in todo])
            contents: dict = {}
            missing: list[str] = []
            for r in todo:
                rec = buffered.get(r.external_id)
                rec = self.rules.record.model_validate(rec) if rec is not None else None
                # The buffer may hold an older version than a mailbox's later write mirrored.
                if rec is not None and rec.content is not None and self.rules.hash(rec.content) == r.hash:
                    contents[r.external_id] = rec.content
                else:
                    missing.append(r.external_id)
            if missing:
                for rec in pacer.idempotent(self.platform.get_many, org_id, missing):
                    # gone on the platform: no keys (the feed brings its deletion)
                    contents[rec.external_id] = None if rec.deleted else rec.content
                out.reread += len(missing)
            seen = {r.external_id: r.updated_at for r in page}
            for i, c in contents.items():
                if i in seen:
                    known[i] = (seen[i], rules.keys(c) if c is not None else set())
            keys = {r.external_id: known[r.external_id][1] for r in page if r.external_id in known}
            with self.sessions.begin() as s:
                row = store.get(s, org_id, self.kind, lock=True)
                if row is None or row.target != target:
                    return False
                if row.mirror_after != after:
                    continue  # another reader re-keyed this page meanwhile
                done, through = store.set_mirror_keys(s, org_id, self.kind, [r.external_id for r in page], keys, seen)
                if through is not None:
                    store.advance(s, org_id, self.kind, mirror_after=through)
            out.records += done
            if through is None:
                # the next record is being written (with today's keys): let that finish
                time.sleep(HELD_WAIT_S)
            else:
                known.clear()
            heartbeat(f"rekey:mirror:{out.records}")
