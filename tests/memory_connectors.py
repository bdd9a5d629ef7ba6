"""In-memory `MailboxContacts` and `PlatformContacts` that keep the protocols' promises.

They exist so the real planner and executor can be driven fast and exhaustively
(a hypothesis state machine, a test-only kind) with the same behaviour the real
connectors show, which the shared contract suites (tests/test_contract_*.py)
check for every implementation alike:

- delta cursors that pin a round (a change made mid-round moves to the next one)
  and can be expired (`expire_cursors`), raising CursorExpired;
- etags that change on every write, PreconditionFailed on a stale one;
- markers on created contacts, found again by `find_by_markers`;
- one result per request in order, per-item errors never raised; a delete of a
  missing item counts as deleted;
- the platform's idempotency by key (a retried write returns its first result),
  and validation rules (`platforms.reference_crm.rules`) rejecting single items
  (no candidate search: the platform keeps none of Concord's keys);
- fault injection: whole calls failing (429 as RateLimited, 503 as Transient) and
  single items failing with any error; `calls_made` counting calls.

Deterministic: ids, etags and cursors come from counters, and `updated_at` from an
injectable clock (by default the change counter). Thread-safe: one lock per
instance guards every call, as the executor may write from several threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from models.errors import (
    ConnectorError,
    CursorExpired,
    Fatal,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Transient,
)
from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from models.contact import Contact, ContactRecord
from models.record import SideRecord
from platforms.reference_crm.rules import Rule, first_violation
from platforms.reference_crm.service import IdempotencyKeyReused

ErrorFactory = Callable[[], ConnectorError]


def rate_limited(retry_after: float = 1.0) -> ErrorFactory:
    """A 429 with Retry-After, as the connectors translate it."""
    return lambda: RateLimited("injected 429", retry_after=retry_after)


def unavailable() -> ErrorFactory:
    """A 503 without Retry-After."""
    return lambda: Transient("injected 503")


@dataclass
class _Fault:
    error: ErrorFactory
    op: str
    remaining: int
    where: Callable[[WriteRequest], bool] | None = None


class Faults:
    """Scripted failures: whole calls (`call`) or single write items (`item`).

    `op` is a protocol verb ("list", "get", "find", "create", "update", "delete",
    "changes", "get_many", "upsert") or "any".
    """

    def __init__(self) -> None:
        self._calls: list[_Fault] = []
        self._items: list[_Fault] = []

    def fail_calls(self, error: ErrorFactory, *, op: str = "any", count: int = 1) -> None:
        self._calls.append(_Fault(error, op, count))

    def fail_items(
        self, error: ErrorFactory, *, op: str = "any", count: int = 1, where: Callable[[WriteRequest], bool] | None = None
    ) -> None:
        self._items.append(_Fault(error, op, count, where))

    def clear(self) -> None:
        self._calls.clear()
        self._items.clear()

    def for_call(self, op: str) -> ConnectorError | None:
        return self._take(self._calls, op, None)

    def for_item(self, op: str, request: WriteRequest) -> ConnectorError | None:
        return self._take(self._items, op, request)

    @staticmethod
    def _take(faults: list[_Fault], op: str, request: WriteRequest | None) -> ConnectorError | None:
        for f in faults:
            if f.remaining > 0 and f.op in (op, "any") and (f.where is None or (request is not None and f.where(request))):
                f.remaining -= 1
                return f.error()
        return None


def _parse_cursor(value: str, parts: int) -> list[int] | None:
    try:
        numbers = [int(p) for p in value.split(".")]
    except (AttributeError, ValueError):
        return None
    return numbers if len(numbers) == parts and all(n >= 0 for n in numbers) else None


# ----------------------------------------------------------------------------- mailbox


@dataclass
class _Contact:
    contact: Contact | None
    seq: int
    updated_at: float
    marker: str | None = None
    problems: tuple[str, ...] = ()
    deleted: bool = False


class MemoryMailbox:
    """One mailbox's contacts. Whole-call faults on reads raise; on writes they become
    every item's error (as both real connectors do). Deletes honour an etag when one
    is given (as Graph does; People has none on delete)."""

    provider = "memory"

    def __init__(self, *, page_size: int = 100, id_prefix: str = "mem", clock: Callable[[], float] | None = None,
                 record: type[SideRecord] = ContactRecord) -> None:
        """`record`: the kind's `SideRecord[Model]` (contacts by default; a test-only kind passes its own)."""
        self.record = record
        self.page_size = page_size
        self._prefix = id_prefix
        self._clock = clock
        self._lock = threading.RLock()
        self._items: dict[str, _Contact] = {}
        self._seq = 0
        self._ids = 0
        self._generation = 0
        self._calls = 0
        self.faults = Faults()

    # ---- what the mailbox's user does (not part of the protocol) ------------------------

    def user_create(self, contact: Contact, *, marker: str | None = None) -> str:
        with self._lock:
            return self._create(contact, marker)

    def user_create_malformed(self, problems: Sequence[str]) -> str:
        """A contact the connector could not translate: it reads as problems, no contact."""
        with self._lock:
            iid = self._create(None, None)
            self._items[iid].problems = tuple(problems)
            return iid

    def user_edit(self, external_id: str, contact: Contact) -> None:
        with self._lock:
            item = self._live(external_id)
            if item is None:
                raise KeyError(external_id)
            self._write(item, contact)

    def user_delete(self, external_id: str) -> None:
        with self._lock:
            item = self._live(external_id)
            if item is None:
                raise KeyError(external_id)
            self._bump(item)
            item.deleted = True

    def expire_cursors(self) -> None:
        """Every cursor and page token handed out so far is refused from now on."""
        with self._lock:
            self._generation += 1

    def contacts(self) -> dict[str, Contact]:
        with self._lock:
            return {i: it.contact for i, it in self._items.items() if not it.deleted and it.contact is not None}

    def marker_of(self, external_id: str) -> str | None:
        with self._lock:
            return self._items[external_id].marker

    # ---- MailboxContacts --------------------------------------------------------------

    @property
    def calls_made(self) -> int:
        return self._calls

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        """A round is pinned at its start (`bound`); a page token carries the round and
        the last change served, so a contact changed mid-round moves to the next round."""
        with self._lock:
            self._call("list")
            if page_token is not None:
                parsed = _parse_cursor(page_token, 4)
                if parsed is None:
                    raise Fatal("page token was not produced by this mailbox")
                generation, full, bound, after = parsed
            elif cursor is not None:
                parsed = _parse_cursor(cursor, 2)
                if parsed is None or parsed[1] > self._seq:
                    raise CursorExpired("cursor not recognised")
                (generation, after), full, bound = parsed, 0, self._seq
            else:
                generation, full, bound, after = self._generation, 1, self._seq, 0
            if generation != self._generation:
                raise CursorExpired("cursor expired")
            changed = sorted(
                ((i, it) for i, it in self._items.items() if after < it.seq <= bound and not (full and it.deleted)),
                key=lambda pair: pair[1].seq,
            )
            page = changed[: self.page_size]
            records = [self._record(i, it) for i, it in page]
            if len(changed) > self.page_size:
                return DeltaPage(records, next_page=f"{generation}.{full}.{bound}.{page[-1][1].seq}")
            return DeltaPage(records, cursor=f"{generation}.{bound}")

    def get(self, external_id: str) -> SideRecord:
        with self._lock:
            self._call("get")
            item = self._live(external_id)
            if item is None:
                raise NotFound("contact not found")
            return self._record(external_id, item)

    def find_by_markers(self, markers: Sequence[str], heartbeat: Callable[[], None] = lambda: None) -> dict[str, SideRecord]:
        """One listing: a call per page of live contacts, a heartbeat per page."""
        with self._lock:
            live = [(i, it) for i, it in self._items.items() if not it.deleted]
            pages = max(1, -(-len(live) // self.page_size))
            for _ in range(pages):
                self._call("find")
                heartbeat()
            wanted = set(markers)
            return {it.marker: self._record(i, it) for i, it in live if it.marker in wanted}  # type: ignore[misc]

    def find_by_marker(self, marker: str) -> SideRecord | None:
        return self.find_by_markers([marker]).get(marker)

    def create_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._writes("create", requests, self._create_one)

    def update_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._writes("update", requests, self._update_one)

    def delete_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._writes("delete", requests, self._delete_one)

    # ---- internals (the lock is held) ----------------------------------------------------

    def _call(self, op: str) -> None:
        self._calls += 1
        err = self.faults.for_call(op)
        if err is not None:
            raise err

    def _writes(self, op: str, requests: Sequence[WriteRequest], one: Callable[[WriteRequest], SideRecord]) -> list[WriteResult]:
        with self._lock:
            share = 1.0 / max(len(requests), 1)
            try:
                self._call(op)
            except ConnectorError as exc:  # the whole call failed: each item reports it
                return [WriteResult(key=r.key, error=exc, calls=share) for r in requests]
            results = []
            for r in requests:
                err = r.malformed(op) or self.faults.for_item(op, r)
                if err is None:
                    try:
                        results.append(WriteResult(key=r.key, record=one(r), calls=share))
                        continue
                    except ConnectorError as exc:
                        err = exc
                results.append(WriteResult(key=r.key, error=err, calls=share))
            return results

    def _create_one(self, r: WriteRequest) -> SideRecord:
        iid = self._create(r.content, r.marker)
        return self._record(iid, self._items[iid])

    def _update_one(self, r: WriteRequest) -> SideRecord:
        item = self._require(r)
        self._write(item, r.content)  # type: ignore[arg-type]
        if r.marker is not None:
            item.marker = r.marker
        return self._record(r.external_id, item)  # type: ignore[arg-type]

    def _delete_one(self, r: WriteRequest) -> SideRecord:
        if self._live(r.external_id) is not None:  # type: ignore[arg-type]
            item = self._require(r)
            self._bump(item)
            item.deleted = True
        return self.record(side="mailbox", external_id=r.external_id or "", deleted=True)

    def _require(self, r: WriteRequest) -> _Contact:
        item = self._live(r.external_id or "")
        if item is None:
            raise NotFound("contact not found")
        if r.etag is not None and r.etag != self._etag(item):
            raise PreconditionFailed("contact changed since it was read")
        return item

    def _live(self, external_id: str) -> _Contact | None:
        item = self._items.get(external_id)
        return None if item is None or item.deleted else item

    def _create(self, contact: Contact | None, marker: str | None) -> str:
        self._ids += 1
        iid = f"{self._prefix}-{self._ids}"
        item = _Contact(contact=contact, seq=0, updated_at=0.0, marker=marker)
        self._items[iid] = item
        self._bump(item)
        return iid

    def _write(self, item: _Contact, contact: Contact) -> None:
        item.contact = contact
        item.problems = ()
        self._bump(item)

    def _bump(self, item: _Contact) -> None:
        self._seq += 1
        item.seq = self._seq
        item.updated_at = self._clock() if self._clock else float(self._seq)

    @staticmethod
    def _etag(item: _Contact) -> str:
        return f'"{item.seq}"'

    def _record(self, iid: str, item: _Contact) -> SideRecord:
        if item.deleted:
            return self.record(side="mailbox", external_id=iid, deleted=True)
        return self.record(side="mailbox", external_id=iid, content=item.contact, etag=self._etag(item),
                          updated_at=item.updated_at, problems=item.problems)


# ----------------------------------------------------------------------------- platform


@dataclass
class _Record:
    contact: Contact
    owner: str | None
    version: int
    seq: int
    updated_at: float
    deleted: bool = False


@dataclass
class _Org:
    records: dict[str, _Record] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    done: dict[str, tuple[str, SideRecord]] = field(default_factory=dict)  # idempotency key -> (fingerprint, result)


def _fingerprint(**parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8", "surrogatepass")).hexdigest()


class MemoryPlatform:
    """A business platform's contacts, per organisation, as the reference CRM behaves.

    Soft deletes: the feed and `get_many` report deleted records as tombstones. A
    write whose content and owner are unchanged is no change (no new version, no
    feed entry). Whole-call faults raise (the platform is down); item
    faults and rule violations are per item.
    """

    provider = "memory"

    def __init__(self, *, clock: Callable[[], float] | None = None, record: type[SideRecord] = ContactRecord) -> None:
        """`record`: the kind's `SideRecord[Model]` (contacts by default)."""
        self.record = record
        self._clock = clock
        self._lock = threading.RLock()
        self._orgs: dict[str, _Org] = {}
        self._seq = 0
        self._ids = 0
        self._generation = 0
        self._calls = 0
        self.faults = Faults()

    # ---- what the platform's users do (not part of the protocol) --------------------------

    def configure_rules(self, org_id: str, rules: Sequence[Rule]) -> None:
        with self._lock:
            self._org(org_id).rules = list(rules)

    def user_create(self, org_id: str, contact: Contact, *, owner: str | None = None) -> str:
        with self._lock:
            return self._create(self._org(org_id), contact, owner)

    def user_edit(self, org_id: str, external_id: str, contact: Contact) -> None:
        with self._lock:
            rec = self._org(org_id).records.get(external_id)
            if rec is None or rec.deleted:
                raise KeyError(external_id)
            self._save(rec, contact, rec.owner)

    def user_delete(self, org_id: str, external_id: str) -> None:
        with self._lock:
            rec = self._org(org_id).records.get(external_id)
            if rec is None or rec.deleted:
                raise KeyError(external_id)
            self._delete(rec)

    def expire_cursors(self) -> None:
        """Every cursor handed out so far is refused from now on (a platform that resets its feed)."""
        with self._lock:
            self._generation += 1

    def contacts(self, org_id: str) -> dict[str, Contact]:
        with self._lock:
            return {i: r.contact for i, r in self._org(org_id).records.items() if not r.deleted}

    # ---- PlatformContacts -------------------------------------------------------------

    @property
    def calls_made(self) -> int:
        return self._calls

    def changes_since(self, org_id: str, cursor: str | None, limit: int = 500) -> DeltaPage:
        """Like the reference CRM: `cursor` always set; `next_page` repeats it when the page was full."""
        with self._lock:
            self._call("changes")
            after = 0
            if cursor is not None:
                parsed = _parse_cursor(cursor, 2)
                if parsed is None or parsed[0] != self._generation or parsed[1] > self._seq:
                    raise CursorExpired("cursor not recognised")
                after = parsed[1]
            org = self._org(org_id)
            changed = sorted(((i, r) for i, r in org.records.items() if r.seq > after), key=lambda p: p[1].seq)[:limit]
            token = f"{self._generation}.{changed[-1][1].seq if changed else after}"
            return DeltaPage(
                records=[self._side(i, r) for i, r in changed],
                next_page=token if len(changed) >= limit else None,
                cursor=token,
            )

    def get_many(self, org_id: str, external_ids: Sequence[str]) -> list[SideRecord]:
        with self._lock:
            self._call("get_many")
            records = self._org(org_id).records
            return [
                self._side(i, records[i]) if i in records else self.record(side="platform", external_id=i, deleted=True)
                for i in external_ids
            ]

    def upsert_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        with self._lock:
            self._call("upsert")
            org = self._org(org_id)
            return [self._item(org, r, "upsert", lambda r=r: self._upsert_one(org, r), len(requests)) for r in requests]

    def delete_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        with self._lock:
            self._call("delete")
            org = self._org(org_id)
            return [self._item(org, r, "delete", lambda r=r: self._delete_one(org, r), len(requests)) for r in requests]

    # ---- internals (the lock is held) ----------------------------------------------------

    def _call(self, op: str) -> None:
        self._calls += 1
        err = self.faults.for_call(op)
        if err is not None:
            raise err

    def _org(self, org_id: str) -> _Org:
        return self._orgs.setdefault(org_id, _Org())

    def _item(self, org: _Org, r: WriteRequest, op: str, run: Callable[[], SideRecord], n: int) -> WriteResult:
        """One write with its idempotency key: a retry with the same request returns the first result."""
        share = 1.0 / max(n, 1)
        fp = _fingerprint(op=op, id=r.external_id, etag=r.etag, owner=r.owner,
                          content=r.content.model_dump(mode="json") if r.content is not None else None)
        if op == "delete":
            malformed = r.malformed("delete")
        else:
            malformed = Fatal("upsert without content") if r.content is None else None
        try:
            if malformed is not None:
                raise malformed
            if r.key in org.done:
                first_fp, first = org.done[r.key]
                if first_fp != fp:
                    raise IdempotencyKeyReused("idempotency key reused with a different request")
                return WriteResult(key=r.key, record=first, calls=share)
            err = self.faults.for_item(op, r)
            if err is not None:
                raise err
            record = run()
        except ConnectorError as exc:  # failures are not remembered: a retry tries again
            return WriteResult(key=r.key, error=exc, calls=share)
        org.done[r.key] = (fp, record)
        return WriteResult(key=r.key, record=record, calls=share)

    def _upsert_one(self, org: _Org, r: WriteRequest) -> SideRecord:
        contact = r.content
        assert contact is not None
        if r.external_id is None:
            self._check_rules(org, contact)
            iid = self._create(org, contact, r.owner)
            return self._side(iid, org.records[iid])
        rec = org.records.get(r.external_id)
        if rec is None or rec.deleted:
            raise NotFound("contact not found")
        self._check_version(rec, r.etag)
        self._check_rules(org, contact)
        self._save(rec, contact, r.owner if r.owner is not None else rec.owner)
        return self._side(r.external_id, rec)

    def _delete_one(self, org: _Org, r: WriteRequest) -> SideRecord:
        rec = org.records.get(r.external_id or "")
        if rec is None:
            return self.record(side="platform", external_id=r.external_id or "", deleted=True)
        if not rec.deleted:
            self._check_version(rec, r.etag)
            self._delete(rec)
        return self._side(r.external_id or "", rec)

    @staticmethod
    def _check_rules(org: _Org, contact: Contact) -> None:
        err = first_violation(org.rules, contact)
        if err is not None:
            raise err

    @staticmethod
    def _check_version(rec: _Record, etag: str | None) -> None:
        if etag is not None and etag != str(rec.version):
            raise PreconditionFailed("record changed since it was read")

    def _create(self, org: _Org, contact: Contact, owner: str | None) -> str:
        self._ids += 1
        iid = f"mp-{self._ids}"
        org.records[iid] = _Record(contact=contact, owner=owner, version=1, seq=0, updated_at=0.0)
        self._save(org.records[iid], contact, owner, force=True)
        return iid

    def _save(self, rec: _Record, contact: Contact, owner: str | None, *, force: bool = False) -> None:
        if not force and rec.contact == contact and rec.owner == owner:
            return  # a no-op save is not a change
        if not force:
            rec.version += 1
        rec.contact, rec.owner = contact, owner
        self._stamp(rec)

    def _delete(self, rec: _Record) -> None:
        rec.deleted = True
        rec.version += 1
        self._stamp(rec)

    def _stamp(self, rec: _Record) -> None:
        self._seq += 1
        rec.seq = self._seq
        rec.updated_at = self._clock() if self._clock else float(self._seq)

    def _side(self, iid: str, rec: _Record) -> SideRecord:
        return self.record(side="platform", external_id=iid, content=None if rec.deleted else rec.contact,
                          deleted=rec.deleted, etag=str(rec.version), updated_at=rec.updated_at, owner=rec.owner)
