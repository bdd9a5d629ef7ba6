"""The sync pipeline of one kind of data: thin glue between the store, the pure core
and the connectors, written once for every kind.

A `KindPipeline` is bound to one kind (its rules, its mailbox connectors, its
platform adapter) and exposes the cycle's steps as activities named after the
kind (`contacts.fetch_mailbox`, later `mail.fetch_mailbox`). Each activity loads
what it needs from the store by connection id, does its step, persists the result
and returns counts. Nothing returned carries content (DESIGN principle 1). Each is
idempotent (principle 2):

- fetch_*   stage changes; the cursor advances in the same transaction as the last
            page, so a retry re-stages (coalesced by item) and never skips.
- plan      decisions are stored as actions keyed by cycle and item, so a retry adds
            nothing twice; items with unfinished actions are not planned again.
- write     resumes actions from their recorded status (see activities/executor.py).
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, ValidationError
from temporalio import activity

from activities.errors import to_application_error
from activities.executor import Executor
from activities.memory import collector_paused
from activities.org import OrgReader, mailbox_cursor_stream
from activities.pacing import Pacer
from models.errors import ConnectorError, CursorExpired, Fatal
from connectors.protocols import MailboxSide, PlatformSide
from models.plan import Decision
from models.record import SideRecord
from models.workflow import (
    STATE_ID_LIMIT,
    CycleRef,
    FetchResult,
    OrgReadResult,
    PlanSummary,
    QuarantinedItem,
    RejectionSummary,
    Resolution,
    StoreSummary,
    WriteSummary,
)
from connectors import registry
from store import cycle, mirror, repo
from store import erase as store_erase
from sync.kinds import KindRules
from sync.planner import LinkState, PlanInput, Review, plan
from sync.policy import SyncSettings, mailbox_settings
from telemetry import activity_span


def mailbox_stream(kind: str) -> str:
    return f"{kind}:mailbox"


def mailbox_progress(kind: str) -> str:
    """A delta round in progress (see _Resume), kept beside the stream's cursor."""
    return f"{kind}:mailbox:round"


def platform_stream(kind: str) -> str:
    return f"{kind}:platform"


#: a mailbox reads the platform itself only when the organisation's reader has been
#: silent this long (its workflow is not running); otherwise it pulls the buffer
READER_SILENT_S = 900.0
PULL_PAGE = 500

OPEN_ITEM_STATUSES = ["pending", "conflict", "duplicate", "deferred"]
UNFINISHED_ACTIONS = ["planned", "platform_done", "mailbox_started", "rejected"]


@dataclass
class ConnectionInfo:
    """What a connector factory needs to build a mailbox client for one connection."""

    connection_id: str
    org_id: str
    user_id: str
    provider: str
    account_ref: str
    settings: dict


MailboxFactory = Callable[[ConnectionInfo], MailboxSide]


@dataclass
class _Batch:
    """One cycle's open items and their context, as loaded for planning."""

    info: ConnectionInfo
    settings: SyncSettings
    mailbox: dict[str, SideRecord]
    platform: dict[str, SideRecord]
    by_mailbox: dict[str, LinkState]
    by_platform: dict[str, LinkState]
    reviews: dict
    neighbours: dict[int, LinkState]
    link_count: int


class _Resume(BaseModel):
    """Where a delta round stands, stored with each staged page (in the same transaction).

    A failed attempt, a lost worker or a failed cycle resumes from the next page
    instead of page one. `cursor` is the round's starting cursor (None: a full
    listing); the stored cursor only moves after the last page, so progress recorded
    under the same stored cursor still describes the round in progress. `batch` is the
    round's staging batch: a full listing's "what did it list" is what that batch holds.
    """

    cursor: str | None = None
    page: str | None = None
    pages: int = 0
    fetched: int = 0
    resync: bool = False
    batch: str = ""

    @classmethod
    def load(cls, s, connection_id: str, kind: str, stored_cursor: str | None, batch: str) -> "_Resume":
        raw = repo.get_cursor(s, connection_id, mailbox_progress(kind))
        if raw:
            try:
                at = cls.model_validate_json(raw)
            except ValueError:
                at = None
            if at is not None and at.page and (at.cursor == stored_cursor or (at.resync and at.cursor is None)):
                return at
        return cls(cursor=stored_cursor, batch=batch)


def _staged(row, rules: KindRules) -> SideRecord:
    """A staged item as the planner sees it. One that no longer reads as a record (a
    store written by another version, a hand edit) is quarantined by the planner as
    malformed, naming the fields, instead of failing the whole batch's plan."""
    try:
        return rules.record.model_validate(row.record)
    except ValidationError as exc:
        where = sorted({".".join(str(p) for p in e["loc"]) or "record" for e in exc.errors()})
        return rules.record(side=row.side, external_id=row.external_id,
                            problems=tuple(f"staged record unreadable at {w}" for w in where[:5]))


def link_state(row, rules: KindRules) -> LinkState:
    return LinkState(
        link_id=int(row.id),
        mailbox_id=row.mailbox_id,
        platform_id=row.platform_id,
        snapshot=rules.model.model_validate(row.snapshot),
        mailbox_hash=row.mailbox_hash,
        platform_hash=row.platform_hash,
        mailbox_etag=row.mailbox_etag,
        platform_etag=row.platform_etag,
    )


def _heartbeat(*details) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


@contextmanager
def keep_alive(every_s: float = 2.0):
    """Heartbeat from a side thread while a long pure step (planning 10k items) runs,
    so a lost worker is noticed within the heartbeat timeout, not the 30-minute one."""
    if not activity.in_activity():
        yield
        return
    done = threading.Event()
    ctx = contextvars.copy_context()

    def beat() -> None:
        while not done.wait(every_s):
            try:
                ctx.run(activity.heartbeat)
            except Exception:  # the activity is finishing; nothing to keep alive
                return

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=every_s + 1)


def mailbox_holds_of(provider: str, settings: SyncSettings):
    """What this mailbox's contacts hold, as its provider's registry entry says (None: all)."""
    entry = registry.PROVIDERS.get(provider)
    return entry.contact_holds(settings.field_map) if entry is not None else None


class KindPipeline:
    """One kind's cycle steps, bound to one store, the kind's platform adapter and a way
    to reach its records in each mailbox."""

    #: carries the planned writes out (a kind may extend it: calendar claims meetings)
    executor_class: type[Executor] = Executor

    def __init__(self, session_factory, rules: KindRules, platform: PlatformSide, mailbox_for: MailboxFactory, *,
                 wait: Callable | None = None) -> None:
        self.sessions = session_factory
        self.rules = rules
        self.kind = rules.name
        self.platform = platform
        self.mailbox_for = mailbox_for
        self.reader = OrgReader(session_factory, rules, platform, wait=wait)
        #: how pacing waits (default: sleep, heartbeating); a test driving thousands of
        #: cycles passes one that returns at once
        self.wait = wait

    # -- helpers -------------------------------------------------------------
    def _connection(self, s, connection_id: str) -> tuple[ConnectionInfo, SyncSettings]:
        conn = repo.get_connection(s, connection_id)
        if conn is None:
            raise to_application_error(Fatal(f"unknown connection {connection_id}"))
        org = repo.get_org(s, conn.org_id)
        settings = SyncSettings.from_dict(mailbox_settings(org.settings, conn.settings), owner=conn.user_id)
        conn_settings = dict(conn.settings or {})
        # the organisation's custom fields as this mailbox names them (connectors.registry passes them on)
        provider = registry.PROVIDERS.get(conn.provider)
        key_field = provider.custom_key_field if provider is not None else ""
        conn_settings["custom_keys"] = {name: settings.field_map.mailbox_key(name, key_field)
                                        for name in settings.field_map.custom_names()}
        info = ConnectionInfo(conn.id, conn.org_id, conn.user_id, conn.provider, conn.account_ref, conn_settings)
        return info, settings

    # -- fetch ---------------------------------------------------------------
    def fetch_mailbox(self, ref: CycleRef) -> FetchResult:
        batch = f"{ref.cycle_id}:m"
        with self.sessions() as s:
            info, _ = self._connection(s, ref.connection_id)
            cursor = repo.get_cursor(s, ref.connection_id, mailbox_stream(self.kind))
            resume = _Resume.load(s, ref.connection_id, self.kind, cursor, batch)
        mailbox = self.mailbox_for(info)
        with activity_span(f"{self.kind}.fetch_mailbox", connection_id=ref.connection_id) as span:
            try:
                try:
                    result = self._drain_mailbox(ref, mailbox, resume)
                except CursorExpired:
                    # The provider forgot our place: list everything again. Links make
                    # the re-listed contacts echoes, not duplicates.
                    result = self._drain_mailbox(ref, mailbox, _Resume(cursor=None, resync=True, batch=batch))
            except ConnectorError as exc:
                raise to_application_error(exc) from None
            result.calls = mailbox.calls_made
            span.set(**{"fetched": result.fetched, "pages": result.pages,
                        "full_resync": result.full_resync, "calls": result.calls})
        return result

    def _drain_mailbox(self, ref: CycleRef, mailbox: MailboxSide, at: "_Resume") -> FetchResult:
        """Page through one delta round, staging each page as it comes.

        Progress is stored with each staged page, so whatever ends an attempt resumes
        from the next page instead of page one; rate limits are waited out here rather
        than spent as attempts.
        """
        batch_id = at.batch
        full = at.cursor is None
        result = FetchResult(stream=mailbox_stream(self.kind), pages=at.pages, fetched=at.fetched,
                             full_resync=at.resync)
        pacer = Pacer(lambda: (result.pages,), sleep=self.wait)
        while True:
            page = pacer.idempotent(mailbox.list_changes, at.cursor, at.page)
            result.pages += 1
            result.fetched += len(page.records)
            last = page.next_page is None
            at = at.model_copy(update={"page": page.next_page, "pages": result.pages, "fetched": result.fetched})
            with self.sessions.begin() as s:
                repo.stage_records(s, ref.connection_id, "mailbox", page.records, batch_id, kind=self.kind)
                if last:
                    if full:
                        result.vanished = self._stage_vanished(s, ref.connection_id, batch_id)
                    repo.set_cursor(s, ref.connection_id, mailbox_stream(self.kind), page.cursor, full_sync=full)
                repo.set_cursor(s, ref.connection_id, mailbox_progress(self.kind),
                                None if last else at.model_dump_json())
            if last:
                return result
            _heartbeat(result.pages)

    def _stage_vanished(self, s, connection_id: str, batch_id: str) -> int:
        """After a full listing, linked contacts it did not list were deleted meanwhile.

        What it listed is what this listing staged (its batch), whichever attempt read it.
        """
        seen = cycle.external_ids_in_batch(s, connection_id, "mailbox", batch_id, kind=self.kind)
        gone = [mid for mid in cycle.linked_mailbox_ids(s, connection_id, kind=self.kind) if mid not in seen]
        tombstones = [self.rules.record(side="mailbox", external_id=mid, deleted=True) for mid in gone]
        if tombstones:
            repo.stage_records(s, connection_id, "mailbox", tombstones, batch_id, kind=self.kind)
        return len(tombstones)

    def fetch_platform(self, ref: CycleRef) -> FetchResult:
        """This mailbox's share of the platform's changes, pulled from the organisation's
        buffer past this mailbox's own position: no platform read of its own, except to
        catch the feed up before the first load of its scope, or when the organisation's
        reader has fallen silent (then it reads for everyone; see activities/org.py)."""
        cid = ref.connection_id
        with self.sessions() as s:
            info, settings = self._connection(s, cid)
            feed = mirror.get_feed(s, info.org_id, self.kind)
            position = repo.get_cursor(s, cid, mailbox_cursor_stream(self.kind))
        result = FetchResult(stream=platform_stream(self.kind))
        calls_before = getattr(self.platform, "calls_made", 0)
        batch_id = f"{ref.cycle_id}:p"
        with activity_span(f"{self.kind}.fetch_platform", connection_id=cid) as span:
            try:
                # A first load reads the feed to its end first (with the organisation's
                # reader, if one is under way: each page is applied once), so it loads the
                # whole scope, not what a read in progress has mirrored so far.
                if position is None or feed is None or feed.updated_at < time.time() - READER_SILENT_S:
                    self.reader.read(info.org_id, heartbeat=_heartbeat)
                if position is None:
                    self._first_load(cid, info, settings, batch_id, result)
                else:
                    self._pull(cid, info, settings, int(position), batch_id, result)
            except ConnectorError as exc:
                raise to_application_error(exc) from None
            result.calls = getattr(self.platform, "calls_made", 0) - calls_before
            span.set(**{"fetched": result.fetched, "pages": result.pages})
        return result

    def _pull(self, cid: str, info: ConnectionInfo, settings: SyncSettings, position: int, batch_id: str,
              result: FetchResult) -> None:
        while True:
            with self.sessions.begin() as s:
                rows = mirror.changes_after(s, info.org_id, self.kind, position, limit=PULL_PAGE)
                if not rows:
                    return
                latest = {row.external_id: row for row in rows}  # the newest of each record in the page
                records = [self.rules.record.model_validate(row.record) for row in latest.values()]
                relevant = self._relevant_platform(s, cid, records, settings)
                repo.stage_records(s, cid, "platform", relevant, batch_id, kind=self.kind)
                position = int(rows[-1].seq)
                repo.set_cursor(s, cid, mailbox_cursor_stream(self.kind), str(position))
            result.pages += 1
            result.fetched += len(relevant)
            _heartbeat(result.pages)

    def _first_load(self, cid: str, info: ConnectionInfo, settings: SyncSettings, batch_id: str,
                    result: FetchResult) -> None:
        """Everything in this mailbox's scope, as the mirror knows it now: content from the
        buffer where it still holds it, from the platform otherwise. Changes after this
        point arrive through the buffer (the position is the head seen before reading)."""
        with self.sessions() as s:
            head = int(mirror.get_feed(s, info.org_id, self.kind).seq_head)
            owner = settings.owner if settings.platform_scope == "owned" else None
            ids = [] if settings.platform_scope == "linked" else mirror.in_scope(s, info.org_id, self.kind, owner)
            buffered = mirror.latest_buffered(s, info.org_id, self.kind, ids)
        records = [self.rules.record.model_validate(buffered[i]) for i in ids if i in buffered]
        missing = [i for i in ids if i not in buffered]
        pacer = Pacer(lambda: (result.pages,), sleep=self.wait)
        for i in range(0, len(missing), PULL_PAGE):
            records += pacer.idempotent(self.platform.get_many, info.org_id, missing[i:i + PULL_PAGE])
            _heartbeat(i)
        with self.sessions.begin() as s:
            repo.stage_records(s, cid, "platform", records, batch_id, kind=self.kind)
            repo.set_cursor(s, cid, mailbox_cursor_stream(self.kind), str(head))
        result.pages += 1
        result.fetched += len(records)

    def read_platform(self, org_id: str) -> OrgReadResult:
        """The organisation's read of this kind's feed (its workflow's step): which mailboxes to wake."""
        with activity_span(f"{self.kind}.read_platform", org_id=org_id) as span:
            try:
                read = self.reader.read(org_id, heartbeat=_heartbeat)
            except ConnectorError as exc:
                raise to_application_error(exc) from None
            span.set(changes=read.changes, pages=read.pages, calls=read.calls, woken=len(read.affected),
                     rekeyed_links=read.rekeyed.links, rekeyed_records=read.rekeyed.records,
                     reread_records=read.rekeyed.reread)
        with self.sessions() as s:
            # One waiting for re-consent still counts: it syncs again once reconnected. An
            # organisation with no mailbox row at all is not reported as ended (a store
            # being restored, rows being moved): only mailboxes that disconnected end it.
            conns = repo.list_connections(s, org_id=org_id)
            active = sum(1 for c in conns if c.status != "disconnected") if conns else None
        return OrgReadResult(changes=read.changes, pages=read.pages, calls=read.calls, woken=sorted(read.affected),
                             active_mailboxes=active,
                             rekeyed=read.rekeyed.links + read.rekeyed.records)

    def _relevant_platform(self, s, connection_id: str, records: list[SideRecord],
                           settings: SyncSettings) -> list[SideRecord]:
        """Platform changes this mailbox must see: its linked records and those in its scope.

        Everything else in the organisation's feed belongs to other mailboxes; they are
        still found as match candidates through the mirror.
        """
        if settings.platform_scope == "all":
            return list(records)
        linked = set(repo.get_links_by_platform_ids(s, connection_id, [r.external_id for r in records], kind=self.kind))
        keep = []
        for r in records:
            if r.external_id in linked:
                keep.append(r)
            elif settings.platform_scope == "owned" and r.owner == settings.owner:
                keep.append(r)
        return keep

    # -- plan ----------------------------------------------------------------
    def plan(self, ref: CycleRef, approve_mass_delete: bool = False) -> PlanSummary:
        with activity_span(f"{self.kind}.plan", connection_id=ref.connection_id) as span, keep_alive():
            b = self._load_batch(ref)
            erased = self._drop_erased(ref, b)
            candidates = self._candidates(b)
            result = plan(PlanInput(
                mailbox=b.mailbox, platform=b.platform, settings=b.settings, rules=self._rules_for(b.info),
                links_by_mailbox=b.by_mailbox, links_by_platform=b.by_platform, reviews=b.reviews,
                platform_candidates=candidates, neighbour_links=b.neighbours,
                link_count=b.link_count, approve_mass_delete=approve_mass_delete,
                mailbox_holds=mailbox_holds_of(b.info.provider, b.settings),
            ))
            result.decisions = self._adjust(result.decisions, b)
            summary = PlanSummary(planned=len(result.decisions) + erased, outcomes=result.counts(),
                                  guard_tripped=result.guard_tripped, held_deletes=result.held_deletes)
            if erased:
                summary.outcomes["skip"] = summary.outcomes.get("skip", 0) + erased
                summary.rules["erased_person"] = erased
            for d in result.decisions:
                summary.rules[d.rule] = summary.rules.get(d.rule, 0) + 1
            with self.sessions.begin() as s:
                self._persist_plan(s, ref, result.decisions, b.mailbox, {**candidates, **b.platform},
                                   b.by_mailbox, b.by_platform)
            span.set(**{"planned": summary.planned, **{f"outcome.{k}": v for k, v in summary.outcomes.items()}})
        return summary

    def _rules_for(self, info: ConnectionInfo) -> KindRules:
        """The rules this connection's plan runs by (a kind may see them per mailbox)."""
        return self.rules

    def _adjust(self, decisions: list[Decision], b: "_Batch") -> list[Decision]:
        """A kind's last word on the planner's decisions (the calendar's attendee copies)."""
        return decisions

    def _drop_erased(self, ref: CycleRef, b: "_Batch") -> int:
        """Unlinked mailbox records holding an address erased from this organisation (GDPR)
        are skipped, named, so a contact the erase left in the mailbox never brings the
        person back to the platform."""
        new = {mid: rec for mid, rec in b.mailbox.items()
               if mid not in b.by_mailbox and rec.content is not None and getattr(rec.content, "emails", ())}
        if not new:
            return 0
        with self.sessions.begin() as s:
            erased = store_erase.erased_among(s, b.info.org_id, {e for r in new.values() for e in r.content.email_addresses()})
            gone = [mid for mid, rec in new.items() if erased & set(rec.content.email_addresses())]
            cycle.set_item_outcomes_by_key(s, ref.connection_id, [
                {"side": "mailbox", "external_id": mid, "status": "skipped", "rule": "erased_person"} for mid in gone],
                kind=self.kind)
            # what the mailbox still holds of the person is not kept here either
            cycle.forget_records(s, ref.connection_id, "mailbox", gone, kind=self.kind)
        for mid in gone:
            del b.mailbox[mid]
        return len(gone)

    def _load_batch(self, ref: CycleRef) -> "_Batch":
        """Open items (minus those an unfinished action still holds) and what the store knows about them."""
        with self.sessions() as s:
            info, settings = self._connection(s, ref.connection_id)
            kind, rules, cid = self.kind, self.rules, ref.connection_id
            busy = cycle.items_with_unfinished_actions(s, cid, UNFINISHED_ACTIONS, kind=kind)
            rows = [r for r in repo.items_by_status(s, cid, OPEN_ITEM_STATUSES, kind=kind)
                    if (r.side, r.external_id) not in busy]
            mailbox = {r.external_id: _staged(r, rules) for r in rows if r.side == "mailbox"}
            platform = {r.external_id: _staged(r, rules) for r in rows if r.side == "platform"}
            mailbox_ids = set(mailbox) | {old for rec in mailbox.values() for old in rec.previous_ids}
            by_mailbox = {mid: link_state(row, rules)
                          for mid, row in repo.get_links_by_mailbox_ids(s, cid, mailbox_ids, kind=kind).items()}
            by_platform = {pid: link_state(row, rules)
                           for pid, row in repo.get_links_by_platform_ids(s, cid, list(platform), kind=kind).items()}
            # Links whose snapshot is like a new platform record: a platform-side duplicate
            # must not become a second record in the mailbox.
            new_platform = [r for pid, r in platform.items() if pid not in by_platform and r.content]
            keyed = rules.for_settings(settings)
            keys = set().union(*(keyed.keys(r.content) for r in new_platform)) if new_platform else set()
            neighbours = ({int(row.id): link_state(row, rules)
                           for row in repo.links_sharing_keys(s, cid, keys, kind=kind)} if keys else {})
            return _Batch(info, settings, mailbox, platform, by_mailbox, by_platform,
                          self._reviews(s, cid), neighbours, repo.count_links(s, cid, kind=kind))

    def _candidates(self, b: "_Batch") -> dict[str, SideRecord]:
        """Platform records a new mailbox contact may be: found by blocking key, plus any a
        review already names; those already linked here are marked, as duplicates not matches."""
        new_mailbox = [r for mid, r in b.mailbox.items() if mid not in b.by_mailbox and r.content and not r.deleted]
        candidates = self._platform_candidates(b.info.org_id, new_mailbox, exclude=set(b.platform),
                                               settings=b.settings)
        held = {r.candidate_id for (side, ext), r in b.reviews.items()
                if side == "mailbox" and ext in b.mailbox and r.kind == "duplicate" and r.candidate_id
                and r.candidate_id not in candidates and r.candidate_id not in b.platform}
        if held:
            try:
                for rec in self.platform.get_many(b.info.org_id, sorted(held)):
                    if not rec.deleted:
                        candidates[rec.external_id] = rec
            except ConnectorError as exc:
                raise to_application_error(exc) from None
        if candidates:
            with self.sessions() as s:
                for pid, row in repo.get_links_by_platform_ids(s, b.info.connection_id, list(candidates),
                                                               kind=self.kind).items():
                    b.by_platform.setdefault(pid, link_state(row, self.rules))
        return candidates

    def _reviews(self, s, connection_id: str) -> dict:
        rows = cycle.active_reviews(s, connection_id, kind=self.kind)
        # A mailbox twin's candidate is another mailbox contact; the planner compares
        # with platform records, so name the platform record that twin is linked to.
        twins = [(row.detail or {}).get("candidate_id") for row in rows
                 if (row.detail or {}).get("candidate_side") == "mailbox" and row.mailbox_id]
        twin_links = (repo.get_links_by_mailbox_ids(s, connection_id, [t for t in twins if t], kind=self.kind)
                      if twins else {})
        out: dict = {}
        for row in rows:
            detail = row.detail or {}
            candidate = detail.get("candidate_id")
            if detail.get("candidate_side") == "mailbox" and row.mailbox_id:
                link = twin_links.get(candidate)
                candidate = link.platform_id if link is not None else None
            review = Review(int(row.id), row.kind, row.mailbox_id, row.platform_id,
                            row.resolution if row.status == "resolved" else None, candidate_id=candidate)
            if row.mailbox_id:
                out[("mailbox", row.mailbox_id)] = review
            if row.platform_id:
                out[("platform", row.platform_id)] = review
        return out

    def _platform_candidates(self, org_id: str, new_mailbox: list[SideRecord], exclude: set[str],
                             settings: SyncSettings | None = None) -> dict[str, SideRecord]:
        """Live platform records sharing a blocking key with a new mailbox record, found on
        the mirror (the platform keeps none of Concord's keys); their content comes from
        the buffer where it still is, from the platform otherwise."""
        rules = self.rules.for_settings(settings) if settings is not None else self.rules
        with self.sessions() as s:
            if not new_mailbox or mirror.all_live_among(s, org_id, self.kind, exclude):
                return {}
            keys = set().union(*(rules.keys(r.content) for r in new_mailbox))
            ids = sorted(mirror.candidates(s, org_id, self.kind, keys) - exclude)
            buffered = mirror.latest_buffered(s, org_id, self.kind, ids)
        found = [self.rules.record.model_validate(buffered[i]) for i in ids if i in buffered]
        missing = [i for i in ids if i not in buffered]
        try:
            for i in range(0, len(missing), PULL_PAGE):
                found += self.platform.get_many(org_id, missing[i:i + PULL_PAGE])
                _heartbeat(i)
        except ConnectorError as exc:
            raise to_application_error(exc) from None
        return {r.external_id: r for r in found if not r.deleted and r.external_id not in exclude}

    def _persist_plan(self, s, ref: CycleRef, decisions: list[Decision], mailbox: dict, platform: dict,
                      by_mailbox: dict, by_platform: dict) -> None:
        actions = []
        outcomes: list[dict] = []
        for d in decisions:
            items = d.item_keys()
            if d.outcome == "apply":
                key = self._action_key(ref, d)
                actions.append({"item_mailbox_id": d.mailbox_id,
                                "item_platform_id": d.platform_id, "link_id": d.link_id,
                                "decision": d.model_dump(mode="json"), "idempotency_key": key})
                continue
            review_id = d.review_id
            if d.outcome in ("conflict", "duplicate"):
                detail = self._review_detail(d, mailbox, platform, by_mailbox, by_platform)
                if review_id is None:
                    review_id = repo.open_review(
                        s, connection_id=ref.connection_id, kind=d.outcome, link_id=d.link_id,
                        mailbox_id=d.mailbox_id, platform_id=d.platform_id, fields=d.fields, detail=detail,
                        item_kind=self.kind)
                else:
                    cycle.update_review(s, review_id, fields=d.fields, detail=detail)
            elif review_id is not None:
                repo.set_review_status(s, review_id, "superseded")
                review_id = None
            status = {"skip": "skipped", "held": "deferred", "quarantine": "quarantined"}.get(d.outcome, d.outcome)
            error_code = "malformed_input" if d.outcome == "quarantine" else None
            message = "; ".join(d.problems) if d.problems else None
            outcomes += [{"side": side, "external_id": ext, "status": status, "rule": d.rule,
                          "error_code": error_code, "error_message": message, "review_id": review_id}
                         for side, ext in items]
        cycle.set_item_outcomes_by_key(s, ref.connection_id, outcomes, kind=self.kind)
        if actions:
            repo.add_actions(s, ref.connection_id, ref.cycle_id, actions, kind=self.kind)

    def _action_key(self, ref: CycleRef, d: Decision) -> str:
        """Unique across connections, kinds and cycles; a retried plan reuses it (no action twice)."""
        return f"{ref.connection_id}:{self.kind}:{ref.cycle_id}:{d.link_id}:{d.mailbox_id}:{d.platform_id}"

    @staticmethod
    def _review_detail(d: Decision, mailbox: dict, platform: dict, by_mailbox: dict, by_platform: dict) -> dict:
        """What a reviewer needs to decide; stored in the store, never in history.

        A conflict shows both sides' values as they stand: the side that did not change
        this cycle holds what the link last synced. A conflict on a first link (two
        similar records that disagree) has no common base, and says so.
        """
        def content_of(rec: SideRecord | None):
            return rec.content.model_dump(mode="json") if rec and rec.content else None
        detail: dict = {"rule": d.rule}
        if d.outcome == "conflict":
            link = by_mailbox.get(d.mailbox_id or "") or by_platform.get(d.platform_id or "")
            base = link.snapshot.model_dump(mode="json") if link else None
            detail.update(mailbox=content_of(mailbox.get(d.mailbox_id or "")) or base,
                          platform=content_of(platform.get(d.platform_id or "")) or base,
                          base=base, first_link=link is None)
        else:
            detail.update(candidate_side=d.candidate_side, candidate_id=d.candidate_id, score=d.score)
        return detail

    # -- write ---------------------------------------------------------------
    def write(self, ref: CycleRef) -> WriteSummary:
        return self._with_executor(ref, "write", lambda ex: ex.run(heartbeat=_heartbeat))

    def handle_rejections(self, ref: CycleRef) -> RejectionSummary:
        return self._with_executor(ref, "handle_rejections",
                                   lambda ex: ex.handle_rejections(heartbeat=_heartbeat))

    def _with_executor(self, ref: CycleRef, name: str, step):
        with self.sessions() as s:
            info, settings = self._connection(s, ref.connection_id)
        executor = self.executor_class(self.sessions, self.rules, self.platform, self.mailbox_for(info), info,
                                       settings, ref.cycle_id, wait=self.wait)
        with activity_span(f"{self.kind}.{name}", connection_id=ref.connection_id) as span:
            try:
                summary = step(executor)
            except ConnectorError as exc:
                raise to_application_error(exc) from None
            counts = summary.model_dump()
            span.set(**{k: v for k, v in counts.items() if isinstance(v, int)})
        return summary

    # -- maintenance and state -------------------------------------------------
    def retry_quarantined(self, connection_id: str) -> int:
        with self.sessions.begin() as s:
            return repo.restage_quarantined(s, connection_id, kind=self.kind)

    def summarize(self, connection_id: str) -> StoreSummary:
        """Counts, and the first STATE_ID_LIMIT ids of each list: this crosses history."""
        return summarize_kind(self.sessions, connection_id, self.kind)

    def activities(self) -> list:
        """The steps as Temporal activities, named after the kind (`contacts.plan`)."""
        steps = (self.fetch_mailbox, self.fetch_platform, self.plan, self.write, self.handle_rejections,
                 self.retry_quarantined, self.summarize, self.read_platform)
        return [as_activity(f"{self.kind}.{step.__name__}", step) for step in steps]


def summarize_kind(sessions, connection_id: str, kind: str) -> StoreSummary:
    with sessions() as s:
        raw = repo.sync_state_summary(s, connection_id, quarantined_limit=STATE_ID_LIMIT, kind=kind)
        first = {q: repo.open_review_ids(s, connection_id, q, limit=STATE_ID_LIMIT, item_kind=kind)
                 for q in ("conflict", "duplicate")}
    return StoreSummary(
        items=raw["items"],
        links=raw["links"],
        open_conflicts=first["conflict"],
        open_duplicates=first["duplicate"],
        open_conflict_count=raw["open_reviews"].get("conflict", 0),
        open_duplicate_count=raw["open_reviews"].get("duplicate", 0),
        quarantined=[QuarantinedItem(item_id=int(q["item_id"]), side=q["side"], error_code=q["error_code"] or "")
                     for q in raw["quarantined"]],
        quarantined_count=raw["quarantined_total"],
        quarantined_by_code=raw["quarantined_by_code"],
        skipped_by_rule=raw["skipped_by_rule"],
        open_association_count=raw["open_reviews"].get("association", 0),
    )


def as_activity(name: str, fn: Callable) -> Callable:
    """`fn` (a bound method) as a Temporal activity called `name`. The wrapper keeps its
    signature and annotations, which Temporal reads to convert arguments, and runs it
    with the cyclic collector paused (see activities/memory.py)."""

    @functools.wraps(fn)
    def run(*args):
        with collector_paused():
            return fn(*args)

    return activity.defn(run, name=name)
