"""A Microsoft Graph v1.0 emulator for the contacts, mail and calendar surfaces of a mailbox.

It reproduces the behaviours a Graph connector must survive (PROVIDERS.md section D)
rather than a happy path: opaque `$skiptoken`/`$deltatoken` links, replays and empty
pages inside a delta round, expired sync state (410 / 400 / 404, `syncStateNotFound`
or `resyncRequired`), ids that change on a move unless `Prefer: IdType="ImmutableId"`,
`If-Match` concurrency, JSON `$batch` (20 max, shuffled answers, `dependsOn` -> 424,
per-item 429), throttling (injected, a request budget, and the 4-concurrent-requests
rule per mailbox), 401 for unknown tokens, and subscriptions with the validation
handshake and change notifications.

Mail (folders, messages, messages delta, subscriptions on messages) lives in
`emulators.graph_mail`, mounted here as `GraphState.mail`: one server, one set of
faults, throttling rules, request log and stats for both surfaces. Calendars (several
users, series, calendarView delta) live in `emulators.graph_calendar`, mounted the same
way as `GraphState.calendar`.

Everything a test needs to steer is on `GraphState` (Python) and mirrored under
`/_emulator/` (HTTP) for out-of-process tools.

Our sync marker lives in a single-value extended property whose id is
`MARKER_PROPERTY_ID` (a string property in a private GUID namespace, named
`concordMarker`). The emulator supports exactly the `$filter` Graph documents for
finding an item by such a property:
`singleValueExtendedProperties/Any(ep: ep/id eq '<id>' and ep/value eq '<value>')`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from emulators.json_response import EscapedJSONResponse

#: The extended property that carries our marker (crash recovery of creates).
MARKER_PROPERTY_ID = "String {5b8f3c1e-7a2d-4e69-9c4b-2f1d6a8e0c37} Name concordMarker"

DEFAULT_FOLDER_ID = "AQMkADefaultContactsFolder"
USER_ID = "00000000-0000-0000-0000-0000000000aa"
TENANT_ID = "00000000-0000-0000-0000-0000000000bb"
CONTACTS_MAX_SUBSCRIPTION_MINUTES = 10_080
BATCH_MAX = 20

WRITABLE_FIELDS = {
    "givenName",
    "surname",
    "middleName",
    "displayName",
    "nickName",
    "title",
    "emailAddresses",
    "businessPhones",
    "mobilePhone",
    "homePhones",
    "companyName",
    "jobTitle",
    "department",
    "personalNotes",
    "birthday",
    "categories",
    "singleValueExtendedProperties",
    "generation",
    "homeAddress",
    "businessAddress",
    "otherAddress",
    "businessHomePage",
}
#: physicalAddress: the parts Graph keeps
ADDRESS_FIELDS = ("homeAddress", "businessAddress", "otherAddress")
ADDRESS_PARTS = {"street", "city", "state", "countryOrRegion", "postalCode"}
LIST_FIELDS = {"emailAddresses", "businessPhones", "homePhones", "categories"}
#: Outlook's slots: more is refused with a 400 (microsoftgraph/microsoft-graph-docs#15276)
MULTI_VALUE_LIMITS = {"emailAddresses": 3, "businessPhones": 2, "homePhones": 2}
READ_ONLY_FIELDS = {
    "id",
    "changeKey",
    "createdDateTime",
    "lastModifiedDateTime",
    "parentFolderId",
    "@odata.etag",
    "@odata.type",
    "@odata.context",
}

_MARKER_FILTER = re.compile(
    r"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+'((?:[^']|'')*)'\s+and\s+"
    r"\1/value\s+eq\s+'((?:[^']|'')*)'\s*\)\s*$",
    re.IGNORECASE,
)
_EXPAND_PROP = re.compile(
    r"^\s*singleValueExtendedProperties\(\s*\$filter\s*=\s*((?:id\s+eq\s+'(?:[^']|'')*'\s*(?:\s+or\s+)?)+)\)\s*$",
    re.IGNORECASE,
)
_EXPAND_ID = re.compile(r"id\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str) -> datetime:
    v = value.strip()
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def _new_id(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


def _new_change_key() -> str:
    return base64.b64encode(secrets.token_bytes(12)).decode()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> "SubResponse":
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"date": _iso(_now()), "request-id": secrets.token_hex(8)},
        }
    }
    return SubResponse(status, dict(headers or {}), body)


def _etag_value(header: str) -> str:
    v = header.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"')


def _prefers_immutable(headers: dict[str, str]) -> bool:
    prefer = headers.get("prefer", "")
    return bool(re.search(r'idtype\s*=\s*"?immutableid"?', prefer, re.IGNORECASE))


def _max_page_size(headers: dict[str, str]) -> int | None:
    m = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", headers.get("prefer", ""), re.IGNORECASE)
    return int(m.group(1)) if m else None


@dataclass
class SubRequest:
    method: str
    path: str  # after /v1.0, e.g. "/me/contacts"
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any
    base_url: str  # e.g. "http://127.0.0.1:1234"
    in_batch: bool = False
    #: the body as sent when it is not JSON (a MIME message posted as text/plain)
    raw: bytes = b""


@dataclass
class SubResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass
class Fault:
    """A scripted failure; `count` requests matching method/path/where get it."""

    status: int | None = 429
    count: int = 1
    retry_after: int | None = None
    code: str | None = None
    method: str | None = None
    path: str | None = None  # regex searched in the request path (after /v1.0)
    where: str = "request"  # "request" (a whole HTTP call) or "batch_item"
    delay: float = 0.0  # seconds to stall before answering (timeouts)

    def matches(self, method: str, path: str, where: str) -> bool:
        if self.count <= 0 or self.where != where:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path and not re.search(self.path, path):
            return False
        return True


_DEFAULT_CODES = {
    429: "ApplicationThrottled",
    401: "InvalidAuthenticationToken",
    403: "ErrorAccessDenied",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass
class _Item:
    immutable_id: str
    rest_id: str
    folder_id: str
    data: dict[str, Any]
    change_key: str
    created: datetime
    modified: datetime
    deleted: bool = False


@dataclass
class _Event:
    seq: int
    kind: str  # "upsert" | "delete" | "move"
    immutable_id: str
    folder_before: str | None
    folder_after: str | None
    snapshot: dict[str, Any]  # the item as rendered state at that moment


@dataclass
class _Round:
    scope: str
    pages: list[list[dict]]
    end_seq: int
    select: list[str] | None
    page_size: int
    generation: int


class GraphState:
    """One mailbox, thread-safe: the uvicorn thread serves it while a test steers it."""

    def __init__(self, *, tokens: set[str] | None = None, seed: int | None = None) -> None:
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        #: Bearer tokens accepted; None accepts any non-empty token.
        self.accepted_tokens: set[str] | None = set(tokens) if tokens is not None else {"emulator-token"}
        #: Optional extra check (e.g. wired to the OAuth emulator); False -> 401.
        self.token_validator: Callable[[str], bool] | None = None

        # knobs
        self.latency: float = 0.0
        self.default_page_size: int = 10
        self.max_page_size: int = 1000
        self.delta_replays: int = 0  # entries repeated per round
        self.replay_mode: str = "adjacent"  # "adjacent" (same page) or "end" (a later page)
        self.delta_empty_pages: int = 0  # empty pages (still with a nextLink) per round
        self.coalesce: bool = True  # False: one entry per change event, in order
        self.max_concurrent: int = 4
        self.request_budget: tuple[int, float] | None = None  # (requests, window seconds)
        self.shuffle_batch: bool = True
        self.etag_mismatch_status: int = 412
        self.validate_subscriptions: bool = True
        #: Replaces the HTTP validation handshake: (url, token) -> True when valid.
        self.handshake: Callable[[str, str], bool] | None = None
        self.require_https_notification_url: bool = False
        #: Graph refuses a request body over 4 MB (the reason attachments go through
        #: upload sessions); None lifts the limit
        self.max_request_bytes: int | None = 4 * 1024 * 1024

        # data
        self.folders: dict[str, str] = {DEFAULT_FOLDER_ID: "Contacts"}
        self._items: dict[str, _Item] = {}  # by immutable id
        self._rest_index: dict[str, str] = {}  # current rest id -> immutable id
        self._events: list[_Event] = []
        self._seq = 0
        self._generation = 0
        self._delta_tokens: dict[str, tuple[str, int, list[str] | None, int, int]] = {}
        self._skip_tokens: dict[str, tuple[str, int]] = {}
        self._rounds: dict[str, _Round] = {}
        self._expired: dict[str, tuple[int, str]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.faults: list[Fault] = []

        # counters
        self.requests_total = 0
        self.batch_items = 0
        self.throttled = 0
        self.by_route: dict[str, int] = {}
        self.in_flight = 0
        self.peak_concurrency = 0
        self._budget_times: deque[float] = deque()
        self.notifications_sent: list[dict[str, Any]] = []
        #: every request served (method, path, query, Prefer), $batch items included, so a
        #: test can prove what a connector asked for (e.g. never a message body)
        self.request_log: deque[dict[str, Any]] = deque(maxlen=5000)
        #: subscription id -> created with `Prefer: IdType="ImmutableId"` (notification ids follow it)
        self.subscription_immutable: dict[str, bool] = {}

        from emulators.graph_mail import MailStore  # the mail surface shares this state

        self.mail = MailStore(self)

        from emulators.graph_calendar import CalendarStore  # the calendar surface, every user's

        self.calendar = CalendarStore(self)

    # ------------------------------------------------------------------ admin API

    def add_folder(self, name: str) -> str:
        with self.lock:
            fid = _new_id("AQMkFolder")
            self.folders[fid] = name
            return fid

    def seed(self, contacts: list[dict[str, Any]], folder_id: str | None = None) -> list[str]:
        """Create contacts as if the user made them; returns their immutable ids."""
        with self.lock:
            return [self._create(dict(c), folder_id or DEFAULT_FOLDER_ID).immutable_id for c in contacts]

    def user_edit(self, item_id: str, changes: dict[str, Any]) -> None:
        with self.lock:
            item = self._require(item_id)
            self._apply_patch(item, changes)
            self._touch(item, "upsert", item.folder_id, item.folder_id)

    def user_delete(self, item_id: str) -> None:
        with self.lock:
            item = self._require(item_id)
            self._delete(item)

    def move(self, item_id: str, folder_id: str) -> str:
        """Move to another folder: the regular id changes, the immutable id does not."""
        with self.lock:
            item = self._require(item_id)
            if folder_id not in self.folders:
                raise KeyError("unknown folder")
            before = item.folder_id
            self._rest_index.pop(item.rest_id, None)
            item.rest_id = _new_id("AAMkA")
            self._rest_index[item.rest_id] = item.immutable_id
            item.folder_id = folder_id
            item.modified = _now()
            self._touch(item, "move", before, folder_id, new_change_key=False)
            return item.rest_id

    def ids_of(self, item_id: str) -> dict[str, str]:
        with self.lock:
            item = self._require(item_id)
            return {"immutable_id": item.immutable_id, "rest_id": item.rest_id, "folder_id": item.folder_id}

    def contact(self, item_id: str) -> dict[str, Any] | None:
        """The stored item as a client with ImmutableId would read it (None if gone)."""
        with self.lock:
            item = self._lookup(item_id)
            return None if item is None else self._render(item, immutable=True)

    def properties(self, item_id: str) -> dict[str, Any]:
        """The item's single-value extended properties, id -> value (our marker, custom fields)."""
        with self.lock:
            item = self._require(item_id)
            return {p["id"]: p.get("value") for p in item.data.get("singleValueExtendedProperties") or []}

    def live_count(self, folder_id: str | None = None) -> int:
        with self.lock:
            return sum(1 for i in self._items.values() if not i.deleted and (folder_id is None or i.folder_id == folder_id))

    def expire_delta_tokens(self, status: int = 410, code: str = "syncStateNotFound") -> int:
        """Invalidate every delta and skip token issued so far (as a mailbox reset does)."""
        with self.lock:
            n = 0
            for tok in list(self._delta_tokens) + list(self._skip_tokens):
                self._expired[tok] = (status, code)
                n += 1
            self._delta_tokens.clear()
            self._skip_tokens.clear()
            self._rounds.clear()
            self._generation += 1
            return n + self.mail.expire_delta_tokens(status, code) + self.calendar.expire_delta_tokens(status, code)

    def inject_fault(self, status: int | None = 429, count: int = 1, **kwargs: Any) -> Fault:
        fault = Fault(status=status, count=count, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests_total,
                "batch_items": self.batch_items,
                "throttled": self.throttled,
                "in_flight": self.in_flight,
                "peak_concurrency": self.peak_concurrency,
                "by_route": dict(self.by_route),
                "live_contacts": self.live_count(),
                "live_messages": self.mail.live_count(),
                "live_events": self.calendar.live_count(),
                "subscriptions": len(self.subscriptions),
            }

    def reset_stats(self) -> None:
        with self.lock:
            self.requests_total = self.batch_items = self.throttled = 0
            self.by_route.clear()
            self.peak_concurrency = self.in_flight

    # -------------------------------------------------------------- notifications

    def fire_notification(
        self,
        subscription_id: str,
        contact_id: str | None = None,
        change_type: str = "updated",
        *,
        timeout: float = 3.0,
    ) -> int:
        """POST one change notification to the subscription's notificationUrl; returns the status."""
        with self.lock:
            sub = self.subscriptions.get(subscription_id)
            if sub is None:
                raise KeyError("unknown subscription")
            item = self._lookup(contact_id) if contact_id else None
            rid = contact_id or _new_id("AAkALg")
            etag = None
            if item is not None:
                rid = item.immutable_id
                etag = f'W/"{item.change_key}"'
            resource = f"Users/{USER_ID}/Contacts/{rid}"
            note = {
                "subscriptionId": sub["id"],
                "subscriptionExpirationDateTime": sub["expirationDateTime"],
                "clientState": sub.get("clientState"),
                "changeType": change_type,
                "resource": resource,
                "tenantId": TENANT_ID,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Contact",
                    "@odata.id": resource,
                    "@odata.etag": etag,
                    "id": rid,
                },
            }
            url = sub["notificationUrl"]
            self.notifications_sent.append(note)
        resp = httpx.post(url, json={"value": [note]}, timeout=timeout)
        return resp.status_code

    def fire_lifecycle(self, subscription_id: str, event: str = "reauthorizationRequired", *, timeout: float = 3.0) -> int:
        """POST a lifecycle notification (reauthorizationRequired | subscriptionRemoved | missed)."""
        with self.lock:
            sub = self.subscriptions.get(subscription_id)
            if sub is None:
                raise KeyError("unknown subscription")
            url = sub.get("lifecycleNotificationUrl") or sub["notificationUrl"]
            note = {
                "subscriptionId": sub["id"],
                "subscriptionExpirationDateTime": sub["expirationDateTime"],
                "tenantId": TENANT_ID,
                "clientState": sub.get("clientState"),
                "lifecycleEvent": event,
            }
        resp = httpx.post(url, json={"value": [note]}, timeout=timeout)
        return resp.status_code

    # ---------------------------------------------------------------- internals

    def _require(self, item_id: str) -> _Item:
        item = self._lookup(item_id)
        if item is None:
            raise KeyError("unknown contact")
        return item

    def _lookup(self, item_id: str | None) -> _Item | None:
        if not item_id:
            return None
        item = self._items.get(item_id)
        if item is None:
            imm = self._rest_index.get(item_id)
            item = self._items.get(imm) if imm else None
        if item is None or item.deleted:
            return None
        return item

    def _create(self, body: dict[str, Any], folder_id: str) -> _Item:
        now = _now()
        item = _Item(
            immutable_id=_new_id("AAkALg"),
            rest_id=_new_id("AAMkA"),
            folder_id=folder_id,
            data={},
            change_key=_new_change_key(),
            created=now,
            modified=now,
        )
        self._apply_patch(item, body)
        self._items[item.immutable_id] = item
        self._rest_index[item.rest_id] = item.immutable_id
        self._touch(item, "upsert", None, folder_id, new_change_key=False)
        return item

    def _apply_patch(self, item: _Item, body: dict[str, Any]) -> None:
        for key, value in body.items():
            if key in READ_ONLY_FIELDS:
                continue
            if key == "singleValueExtendedProperties":
                props = {p["id"]: p for p in item.data.get(key, [])}
                for p in value or []:
                    props[p["id"]] = {"id": p["id"], "value": p.get("value")}
                item.data[key] = list(props.values())
            elif value is None and key in LIST_FIELDS:
                item.data[key] = []
            else:
                item.data[key] = copy.deepcopy(value)

    def _touch(self, item: _Item, kind: str, before: str | None, after: str | None, new_change_key: bool = True) -> None:
        if new_change_key:
            item.change_key = _new_change_key()
            item.modified = _now()
        self._seq += 1
        self._events.append(_Event(self._seq, kind, item.immutable_id, before, after, self._snapshot(item)))

    def _delete(self, item: _Item) -> None:
        item.deleted = True
        self._rest_index.pop(item.rest_id, None)
        self._seq += 1
        self._events.append(
            _Event(self._seq, "delete", item.immutable_id, item.folder_id, None, self._snapshot(item))
        )

    def _snapshot(self, item: _Item) -> dict[str, Any]:
        return {
            "immutable_id": item.immutable_id,
            "rest_id": item.rest_id,
            "folder_id": item.folder_id,
            "body": self._render(item, immutable=True, with_props=False),
        }

    def _render(
        self,
        item: _Item,
        *,
        immutable: bool,
        select: list[str] | None = None,
        expand_prop: str | None = None,
        with_props: bool = False,
    ) -> dict[str, Any]:
        d = item.data
        given, surname = d.get("givenName") or "", d.get("surname") or ""
        out: dict[str, Any] = {
            "@odata.etag": f'W/"{item.change_key}"',
            "id": item.immutable_id if immutable else item.rest_id,
            "createdDateTime": _iso(item.created),
            "lastModifiedDateTime": _iso(item.modified),
            "changeKey": item.change_key,
            "categories": list(d.get("categories") or []),
            "parentFolderId": item.folder_id,
            "birthday": d.get("birthday"),
            "generation": d.get("generation"),
            "businessHomePage": d.get("businessHomePage"),
            "homeAddress": copy.deepcopy(d.get("homeAddress") or {}),
            "businessAddress": copy.deepcopy(d.get("businessAddress") or {}),
            "otherAddress": copy.deepcopy(d.get("otherAddress") or {}),
            "displayName": d.get("displayName") or " ".join(p for p in (given, surname) if p),
            "givenName": d.get("givenName"),
            "middleName": d.get("middleName"),
            "nickName": d.get("nickName"),
            "surname": d.get("surname"),
            "title": d.get("title"),
            "jobTitle": d.get("jobTitle"),
            "companyName": d.get("companyName"),
            "department": d.get("department"),
            "mobilePhone": d.get("mobilePhone"),
            "personalNotes": d.get("personalNotes"),
            "businessPhones": list(d.get("businessPhones") or []),
            "homePhones": list(d.get("homePhones") or []),
            "emailAddresses": copy.deepcopy(d.get("emailAddresses") or []),
        }
        if select:
            keep = set(select) | {"id", "@odata.etag"}
            out = {k: v for k, v in out.items() if k in keep}
        props = d.get("singleValueExtendedProperties") or []
        if with_props and props:
            out["singleValueExtendedProperties"] = copy.deepcopy(props)
        elif expand_prop:
            wanted = {e.lower() for e in expand_prop.split("\n")}
            hit = [p for p in props if p["id"].lower() in wanted]
            if hit:
                out["singleValueExtendedProperties"] = copy.deepcopy(hit)
        return out

    # -------------------------------------------------------------- dispatching

    def dispatch(self, req: SubRequest) -> SubResponse:
        path = re.sub(r"^/users/[^/]+", "/me", "/" + req.path.lstrip("/"))
        path = path.rstrip("/") or "/"
        m = req.method.upper()
        try:
            if self.mail.handles(path):
                return self.mail.dispatch(req, path)
            if self.calendar.handles(path):
                return self.calendar.dispatch(req, path)
            if path == "/me/contacts/delta" and m == "GET":
                return self._delta(req, DEFAULT_FOLDER_ID)
            if (mm := re.fullmatch(r"/me/contactFolders/([^/]+)/contacts/delta", path)) and m == "GET":
                return self._delta(req, mm.group(1))
            if path == "/me/contacts":
                return self._collection(req, DEFAULT_FOLDER_ID)
            if mm := re.fullmatch(r"/me/contactFolders/([^/]+)/contacts", path):
                return self._collection(req, mm.group(1))
            if mm := re.fullmatch(r"/me/(?:contactFolders/[^/]+/)?contacts/([^/]+)", path):
                return self._item(req, mm.group(1))
            if path == "/me/contactFolders" and m == "GET":
                return SubResponse(
                    200, {}, {"value": [{"id": k, "displayName": v} for k, v in self.folders.items()]}
                )
            if path == "/me/contactFolders" and m == "POST":
                name = (req.body or {}).get("displayName") if isinstance(req.body, dict) else None
                if not name:
                    return _error(400, "ErrorInvalidRequest", "displayName is required.")
                fid = self.add_folder(name)
                return SubResponse(201, {}, {"id": fid, "displayName": name})
            if path == "/subscriptions":
                return self._subscriptions(req)
            if mm := re.fullmatch(r"/subscriptions/([^/]+)", path):
                return self._subscription(req, mm.group(1))
        except _BadBody as exc:
            return _error(400, "RequestBodyRead", str(exc))
        return _error(400, "BadRequest", f"Unsupported request: {m} {path}")

    # delta ----------------------------------------------------------------

    def _delta(self, req: SubRequest, scope: str) -> SubResponse:
        q = req.query
        immutable = _prefers_immutable(req.headers)
        with self.lock:
            if scope not in self.folders:
                return _error(404, "ErrorItemNotFound", "The specified folder could not be found in the store.")
            for key in ("$skiptoken", "$deltatoken"):
                tok = q.get(key)
                if tok and tok in self._expired:
                    status, code = self._expired[tok]
                    return _error(status, code, "Sync state generation is not found or has expired. Resync required.")
            if "$skiptoken" in q:
                ref = self._skip_tokens.get(q["$skiptoken"])
                if ref is None:
                    return _error(400, "SyncStateInvalid", "Invalid skip token.")
                round_id, page_index = ref
                rnd = self._rounds.get(round_id)
                if rnd is None or rnd.scope != scope:
                    return _error(400, "SyncStateInvalid", "Invalid skip token.")
                return self._serve_page(req, round_id, rnd, page_index, immutable)
            if "$deltatoken" in q:
                ref = self._delta_tokens.get(q["$deltatoken"])
                if ref is None:
                    return _error(410, "syncStateNotFound", "Sync state generation is not found. Resync required.")
                tscope, since, select, page_size, _gen = ref
                if tscope != scope:
                    return _error(400, "SyncStateInvalid", "Delta token does not belong to this folder.")
                entries = self._changes_since(scope, since)
            else:
                select = [s.strip() for s in q["$select"].split(",")] if q.get("$select") else None
                page_size = _max_page_size(req.headers) or (int(q["$top"]) if q.get("$top", "").isdigit() else 0)
                page_size = min(page_size or self.default_page_size, self.max_page_size)
                entries = [
                    {"kind": "item", "snap": self._snapshot(i)}
                    for i in sorted(self._items.values(), key=lambda i: i.created)
                    if not i.deleted and i.folder_id == scope
                ]
            entries = self._add_replays(entries)
            pages = [entries[i : i + page_size] for i in range(0, len(entries), page_size)] or [[]]
            for _ in range(self.delta_empty_pages):
                pages.insert(min(1, len(pages)), [])
            round_id = secrets.token_urlsafe(12)
            rnd = _Round(scope, pages, self._seq, select, page_size, self._generation)
            self._rounds[round_id] = rnd
            return self._serve_page(req, round_id, rnd, 0, immutable)

    def _changes_since(self, scope: str, since: int) -> list[dict]:
        events = [e for e in self._events if e.seq > since and scope in (e.folder_before, e.folder_after)]
        if not self.coalesce:
            return [self._entry_for(e, scope) for e in events]
        last: dict[str, _Event] = {}
        for e in events:
            last.pop(e.immutable_id, None)
            last[e.immutable_id] = e
        out = []
        for iid, e in last.items():
            item = self._items[iid]
            if not item.deleted and item.folder_id == scope:
                out.append({"kind": "item", "snap": self._snapshot(item)})
            else:
                out.append(self._entry_for(e, scope))
        return out

    @staticmethod
    def _entry_for(e: _Event, scope: str) -> dict:
        if e.kind == "delete":
            return {"kind": "removed", "reason": "deleted", "snap": e.snapshot}
        if e.folder_after != scope:  # moved out of this folder
            return {"kind": "removed", "reason": "changed", "snap": e.snapshot}
        return {"kind": "item", "snap": e.snapshot}

    def _add_replays(self, entries: list[dict]) -> list[dict]:
        n = min(self.delta_replays, len(entries))
        if not n:
            return entries
        picks = sorted(self._rng.sample(range(len(entries)), n))
        if self.replay_mode == "end":
            return entries + [entries[i] for i in picks]
        out = []
        for i, e in enumerate(entries):
            out.append(e)
            if i in picks:
                out.append(e)
        return out

    def _serve_page(self, req: SubRequest, round_id: str, rnd: _Round, index: int, immutable: bool) -> SubResponse:
        page = rnd.pages[index] if index < len(rnd.pages) else []
        value = []
        for entry in page:
            snap = entry["snap"]
            rid = snap["immutable_id"] if immutable else snap["rest_id"]
            if entry["kind"] == "removed":
                value.append({"@odata.type": "#microsoft.graph.contact", "id": rid, "@removed": {"reason": entry["reason"]}})
                continue
            body = dict(snap["body"])
            body["id"] = rid
            if rnd.select:
                keep = set(rnd.select) | {"id", "@odata.etag"}
                body = {k: v for k, v in body.items() if k in keep}
            body["@odata.type"] = "#microsoft.graph.contact"
            value.append(body)
        link_path = (
            "/v1.0/me/contacts/delta"
            if rnd.scope == DEFAULT_FOLDER_ID
            else f"/v1.0/me/contactFolders/{quote(rnd.scope, safe='')}/contacts/delta"
        )
        out: dict[str, Any] = {"@odata.context": f"{req.base_url}/v1.0/$metadata#Collection(contact)", "value": value}
        if index + 1 < len(rnd.pages):
            tok = secrets.token_urlsafe(24)
            self._skip_tokens[tok] = (round_id, index + 1)
            out["@odata.nextLink"] = f"{req.base_url}{link_path}?$skiptoken={tok}"
        else:
            tok = secrets.token_urlsafe(24)
            self._delta_tokens[tok] = (rnd.scope, rnd.end_seq, rnd.select, rnd.page_size, rnd.generation)
            out["@odata.deltaLink"] = f"{req.base_url}{link_path}?$deltatoken={tok}"
        headers = {}
        if rnd.page_size != self.default_page_size:
            headers["Preference-Applied"] = f"odata.maxpagesize={rnd.page_size}"
        return SubResponse(200, headers, out)

    # contacts ---------------------------------------------------------------

    def _collection(self, req: SubRequest, folder_id: str) -> SubResponse:
        immutable = _prefers_immutable(req.headers)
        with self.lock:
            if folder_id not in self.folders:
                return _error(404, "ErrorItemNotFound", "The specified folder could not be found in the store.")
            if req.method.upper() == "POST":
                body = _require_object(req.body)
                bad = _validate_body(body)
                if bad:
                    return bad
                item = self._create(body, folder_id)
                return SubResponse(201, {}, self._render(item, immutable=immutable, with_props=True))
            if req.method.upper() != "GET":
                return _error(405, "ErrorInvalidRequest", "Method not allowed.")
            items = [i for i in sorted(self._items.values(), key=lambda i: i.created) if not i.deleted and i.folder_id == folder_id]
            flt = req.query.get("$filter")
            if flt:
                mm = _MARKER_FILTER.match(flt)
                if not mm:
                    return _error(400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
                pid, pval = mm.group(2).replace("''", "'"), mm.group(3).replace("''", "'")
                items = [
                    i
                    for i in items
                    if any(
                        p["id"].lower() == pid.lower() and p.get("value") == pval
                        for p in i.data.get("singleValueExtendedProperties") or []
                    )
                ]
            expand = self._expand(req)
            if isinstance(expand, SubResponse):
                return expand
            select = [s.strip() for s in req.query["$select"].split(",")] if req.query.get("$select") else None
            top = int(req.query.get("$top", self.default_page_size) or self.default_page_size)
            skip = int(req.query.get("$skip", 0) or 0)
            chunk = items[skip : skip + top]
            out: dict[str, Any] = {
                "@odata.context": f"{req.base_url}/v1.0/$metadata#users('{USER_ID}')/contacts",
                "value": [self._render(i, immutable=immutable, select=select, expand_prop=expand) for i in chunk],
            }
            if skip + top < len(items):
                params = {k: v for k, v in req.query.items() if k not in ("$skip",)}
                params["$skip"] = str(skip + top)
                qs = "&".join(f"{k}={quote(v, safe='$,()')}" for k, v in params.items())
                base_path = "/v1.0" + ("/me/contacts" if folder_id == DEFAULT_FOLDER_ID else f"/me/contactFolders/{folder_id}/contacts")
                out["@odata.nextLink"] = f"{req.base_url}{base_path}?{qs}"
            return SubResponse(200, {}, out)

    def _expand(self, req: SubRequest) -> str | None | SubResponse:
        exp = req.query.get("$expand")
        if not exp:
            return None
        mm = _EXPAND_PROP.match(exp)
        if not mm:
            return _error(400, "BadRequest", "Unsupported $expand.")
        # one id, or several joined with "or" (Graph's filter on extended property ids)
        return "\n".join(i.replace("''", "'") for i in _EXPAND_ID.findall(mm.group(1)))

    def _item(self, req: SubRequest, item_id: str) -> SubResponse:
        immutable = _prefers_immutable(req.headers)
        method = req.method.upper()
        with self.lock:
            item = self._lookup(item_id)
            if item is None:
                return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            if method in ("PATCH", "DELETE"):
                if_match = req.headers.get("if-match")
                if if_match and if_match.strip() != "*" and _etag_value(if_match) != item.change_key:
                    return _error(
                        self.etag_mismatch_status,
                        "ErrorIrresolvableConflict",
                        "The send or update operation could not be performed because the change key passed "
                        "in the request does not match the current change key for the item.",
                    )
            if method == "GET":
                expand = self._expand(req)
                if isinstance(expand, SubResponse):
                    return expand
                select = [s.strip() for s in req.query["$select"].split(",")] if req.query.get("$select") else None
                return SubResponse(200, {}, self._render(item, immutable=immutable, select=select, expand_prop=expand))
            if method == "PATCH":
                body = _require_object(req.body)
                bad = _validate_body(body)
                if bad:
                    return bad
                self._apply_patch(item, body)
                self._touch(item, "upsert", item.folder_id, item.folder_id)
                return SubResponse(200, {}, self._render(item, immutable=immutable, with_props=True))
            if method == "DELETE":
                self._delete(item)
                return SubResponse(204, {}, None)
        return _error(405, "ErrorInvalidRequest", "Method not allowed.")

    # subscriptions ------------------------------------------------------------

    def _check_resource(self, resource: str) -> bool:
        r = resource.strip().lstrip("/")
        r = re.sub(r"^users/[^/]+", "me", r, flags=re.IGNORECASE)
        if r.lower() == "me/contacts":
            return True
        if self.mail.accepts_resource(r) or self.calendar.accepts_resource(r):
            return True
        mm = re.fullmatch(r"me/contactFolders/([^/]+)/contacts", r, re.IGNORECASE)
        return bool(mm and mm.group(1) in self.folders)

    def _expiry_error(self, value: Any) -> SubResponse | None:
        try:
            exp = _parse_iso(str(value))
        except ValueError:
            return _error(400, "ValidationError", "expirationDateTime is not a valid date.")
        now = _now()
        if exp <= now:
            return _error(400, "ValidationError", "Subscription expiration can only be in the future.")
        if exp > now + timedelta(minutes=CONTACTS_MAX_SUBSCRIPTION_MINUTES):
            return _error(
                400,
                "ValidationError",
                f"Subscription expiration can only be {CONTACTS_MAX_SUBSCRIPTION_MINUTES} minutes in the future.",
            )
        return None

    def _handshake_ok(self, url: str) -> bool:
        token = "Validation: Testing client application reachability for subscription Request-Id: " + secrets.token_hex(8)
        if self.handshake is not None:
            return bool(self.handshake(url, token))
        sep = "&" if urlsplit(url).query else "?"
        try:
            resp = httpx.post(f"{url}{sep}validationToken={quote(token)}", headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=10.0)
        except httpx.HTTPError:
            return False
        ctype = resp.headers.get("content-type", "")
        return resp.status_code == 200 and ctype.startswith("text/plain") and resp.text == token

    def _subscriptions(self, req: SubRequest) -> SubResponse:
        method = req.method.upper()
        if method == "GET":
            with self.lock:
                return SubResponse(200, {}, {"value": [dict(s) for s in self.subscriptions.values()]})
        if method != "POST":
            return _error(405, "ErrorInvalidRequest", "Method not allowed.")
        body = _require_object(req.body)
        for key in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(key):
                return _error(400, "ValidationError", f"{key} is required.")
        kinds = {c.strip() for c in str(body["changeType"]).split(",")}
        if not kinds <= {"created", "updated", "deleted"}:
            return _error(400, "ValidationError", "Invalid changeType.")
        if not self._check_resource(str(body["resource"])):
            return _error(400, "ExtensionError", "Resource not found or not supported for subscriptions.")
        if (cs := body.get("clientState")) is not None and len(str(cs)) > 128:
            return _error(400, "ValidationError", "clientState must be at most 128 characters.")
        if bad := self._expiry_error(body["expirationDateTime"]):
            return bad
        urls = [body["notificationUrl"]] + ([body["lifecycleNotificationUrl"]] if body.get("lifecycleNotificationUrl") else [])
        for url in urls:
            if self.require_https_notification_url and not str(url).startswith("https://"):
                return _error(400, "ValidationError", "The notification endpoint must use https.")
            if self.validate_subscriptions and not self._handshake_ok(str(url)):
                return _error(
                    400,
                    "ValidationError",
                    "Subscription validation request failed. Response must exactly match validationToken query parameter.",
                )
        sub = {
            "@odata.context": f"{req.base_url}/v1.0/$metadata#subscriptions/$entity",
            "id": str(uuid.uuid4()),
            "resource": body["resource"],
            "applicationId": "00000000-0000-0000-0000-0000000000cc",
            "changeType": body["changeType"],
            "clientState": body.get("clientState"),
            "notificationUrl": body["notificationUrl"],
            "lifecycleNotificationUrl": body.get("lifecycleNotificationUrl"),
            "expirationDateTime": _iso(_parse_iso(str(body["expirationDateTime"]))),
            "creatorId": USER_ID,
            "latestSupportedTlsVersion": "v1_2",
        }
        with self.lock:
            self.subscriptions[sub["id"]] = sub
            self.subscription_immutable[sub["id"]] = _prefers_immutable(req.headers)
            self.calendar.watch(sub["id"], str(body["resource"]), req)
        return SubResponse(201, {}, dict(sub))

    def _subscription(self, req: SubRequest, sub_id: str) -> SubResponse:
        method = req.method.upper()
        with self.lock:
            sub = self.subscriptions.get(sub_id)
            if sub is not None and _parse_iso(sub["expirationDateTime"]) <= _now():
                del self.subscriptions[sub_id]
                sub = None
            if sub is None:
                return _error(404, "ResourceNotFound", "The object was not found.")
            if method == "GET":
                return SubResponse(200, {}, dict(sub))
            if method == "DELETE":
                del self.subscriptions[sub_id]
                return SubResponse(204, {}, None)
            if method == "PATCH":
                body = _require_object(req.body)
                if "expirationDateTime" not in body:
                    return _error(400, "ValidationError", "expirationDateTime is required.")
                if bad := self._expiry_error(body["expirationDateTime"]):
                    return bad
                sub["expirationDateTime"] = _iso(_parse_iso(str(body["expirationDateTime"])))
                return SubResponse(200, {}, dict(sub))
        return _error(405, "ErrorInvalidRequest", "Method not allowed.")

    # batch --------------------------------------------------------------------

    def batch(self, outer: SubRequest) -> SubResponse:
        body = outer.body
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            return _error(400, "BadRequest", "Invalid batch payload format.")
        reqs = body["requests"]
        if len(reqs) > BATCH_MAX:
            return _error(400, "BadRequest", f"Invalid batch payload: the number of requests exceeds the limit of {BATCH_MAX}.")
        ids = [str(r.get("id", "")) for r in reqs]
        if any(not i for i in ids) or len(set(ids)) != len(ids):
            return _error(400, "BadRequest", "Batch request ids must be present and unique.")
        by_id = {str(r["id"]): r for r in reqs}
        for r in reqs:
            for dep in r.get("dependsOn") or []:
                if str(dep) not in by_id:
                    return _error(400, "BadRequest", "dependsOn refers to an unknown request id.")
        results: dict[str, SubResponse] = {}
        visiting: set[str] = set()

        def run(rid: str) -> SubResponse:
            if rid in results:
                return results[rid]
            if rid in visiting:
                return _error(400, "BadRequest", "Circular dependsOn.")
            visiting.add(rid)
            r = by_id[rid]
            failed = [d for d in (r.get("dependsOn") or []) if run(str(d)).status >= 400]
            if failed:
                res = _error(424, "FailedDependency", "Failed dependency.")
            else:
                res = self._run_batch_item(outer, r)
            results[rid] = res
            return res

        for rid in ids:
            run(rid)
        order = list(ids)
        if self.shuffle_batch:
            self._rng.shuffle(order)
        responses = []
        for rid in order:
            res = results[rid]
            item = {"id": rid, "status": res.status, "headers": dict(res.headers)}
            if res.body is not None:
                item["headers"].setdefault("Content-Type", "application/json")
                item["body"] = res.body
            responses.append(item)
        return SubResponse(200, {}, {"responses": responses})

    def _run_batch_item(self, outer: SubRequest, r: dict[str, Any]) -> SubResponse:
        method = str(r.get("method", "")).upper()
        url = str(r.get("url", ""))
        if not method or not url:
            return _error(400, "BadRequest", "Batch request needs method and url.")
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.scheme:
            path = re.sub(r"^/v1\.0", "", path)
        if not path.startswith("/"):
            path = "/" + path
        headers = {str(k).lower(): str(v) for k, v in (r.get("headers") or {}).items()}
        if outer.headers.get("authorization"):  # whose mailbox `/me` is inside the batch
            headers["authorization"] = outer.headers["authorization"]
        if "body" in r and r["body"] is not None and "content-type" not in headers:
            return _error(400, "BadRequest", "Write request id : " + str(r.get("id")) + " does not contain Content-Type header or body.")
        with self.lock:
            self.batch_items += 1
            self.request_log.append({"method": method, "path": path, "query": dict(parse_qsl(parts.query, keep_blank_values=True)),
                                     "prefer": headers.get("prefer", ""), "in_batch": True})
            key = f"{method} {_route_label(path)}"
            self.by_route[key] = self.by_route.get(key, 0) + 1
        fault = self._take_fault(method, path, "batch_item")
        if fault is not None and fault.status:
            return self._fault_response(fault)
        if path.rstrip("/") == "/$batch":
            return _error(400, "BadRequest", "Nested batches are not supported.")
        if path.rstrip("/") == "/subscriptions" or path.startswith("/subscriptions/"):
            return _error(400, "BadRequest", "Subscriptions are not supported inside $batch in this emulator.")
        sub = SubRequest(
            method=method,
            path=path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            body=r.get("body"),
            base_url=outer.base_url,
            in_batch=True,
        )
        return self.dispatch(sub)

    # faults / throttling ---------------------------------------------------------

    def _take_fault(self, method: str, path: str, where: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path, where):
                    f.count -= 1
                    if f.status == 429:
                        self.throttled += 1
                    return f
            self.faults = [f for f in self.faults if f.count > 0]
        return None

    @staticmethod
    def _fault_response(fault: Fault) -> SubResponse:
        status = fault.status or 500
        headers = {}
        retry_after = fault.retry_after if fault.retry_after is not None else (1 if status == 429 else None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        code = fault.code or _DEFAULT_CODES.get(status, "ErrorInternalServerError")
        msg = "Application is over its MailboxConcurrency limit." if status == 429 else "Injected failure."
        return _error(status, code, msg, headers)

    def _budget_exceeded(self) -> int | None:
        if not self.request_budget:
            return None
        limit, window = self.request_budget
        now = time.monotonic()
        with self.lock:
            while self._budget_times and now - self._budget_times[0] >= window:
                self._budget_times.popleft()
            if len(self._budget_times) >= limit:
                self.throttled += 1
                return max(1, int(window - (now - self._budget_times[0]) + 0.999))
            self._budget_times.append(now)
        return None

    def _token_ok(self, auth: str) -> bool:
        if not auth.lower().startswith("bearer "):
            return False
        token = auth[7:].strip()
        if not token:
            return False
        if self.token_validator is not None and not self.token_validator(token):
            return False
        return self.accepted_tokens is None or token in self.accepted_tokens


class _BadBody(ValueError):
    pass


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadBody("The request body must be a JSON object.")
    return body


def _validate_body(body: dict[str, Any]) -> SubResponse | None:
    for key, value in body.items():
        if key.startswith("@odata.") or key in READ_ONLY_FIELDS:
            continue
        if key not in WRITABLE_FIELDS:
            return _error(400, "RequestBodyRead", f"The property '{key}' does not exist on type 'microsoft.graph.contact'.")
        if key in LIST_FIELDS and value is not None and not isinstance(value, list):
            return _error(400, "RequestBodyRead", f"Property '{key}' must be a collection.")
    for e in body.get("emailAddresses") or []:
        if not isinstance(e, dict) or "address" not in e:
            return _error(400, "ErrorInvalidArgument", "emailAddresses entries need an address.")
    for key, limit in MULTI_VALUE_LIMITS.items():
        if len(body.get(key) or []) > limit:
            name = key[0].upper() + key[1:]
            return _error(400, "ErrorInvalidArgument", f"The multi value property {name} has {len(body[key])} "
                                                       f"entries, that exceeds the max allowed value of {limit}")
    for key in ADDRESS_FIELDS:
        value = body.get(key)
        if value is not None and (not isinstance(value, dict) or set(value) - ADDRESS_PARTS):
            return _error(400, "RequestBodyRead", f"Property '{key}' must be a physicalAddress.")
    if body.get("mobilePhone") is not None and not isinstance(body["mobilePhone"], str):
        return _error(400, "RequestBodyRead", "Property 'mobilePhone' must be a string.")
    if body.get("birthday") is not None and not re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+Z", str(body["birthday"])):
        return _error(400, "RequestBodyRead", "Property 'birthday' must be a DateTimeOffset.")
    for p in body.get("singleValueExtendedProperties") or []:
        if not isinstance(p, dict) or not p.get("id"):
            return _error(400, "ErrorInvalidProperty", "Extended property id is required.")
    return None


def _route_label(path: str) -> str:
    """Collapse ids so counters group by endpoint, never by contact."""
    p = re.sub(r"^/users/[^/]+", "/me", path)
    p = re.sub(r"/contacts/(?!delta)[^/]+", "/contacts/{id}", p)
    p = re.sub(r"/contactFolders/[^/]+", "/contactFolders/{id}", p)
    p = re.sub(r"/subscriptions/[^/]+", "/subscriptions/{id}", p)
    p = re.sub(r"/messages/(?!delta)[^/]+", "/messages/{id}", p)
    p = re.sub(r"/events/[^/]+", "/events/{id}", p)
    p = re.sub(r"/mailFolders(?:\('[^']*'\)|/[^/]+)", "/mailFolders/{id}", p)
    return p.split("?")[0]


def _json_response(res: SubResponse) -> Response:
    if res.body is None:
        return Response(status_code=res.status, headers=res.headers)
    return EscapedJSONResponse(res.body, status_code=res.status, headers=res.headers)


def create_app(state: GraphState | None = None) -> FastAPI:
    """The ASGI app; run it with `emulators.server.serve(create_app())`."""
    state = state or GraphState()
    app = FastAPI(title="Microsoft Graph emulator (contacts)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.graph = state

    @app.api_route("/v1.0/{path:path}", methods=["GET", "POST", "PATCH", "DELETE", "PUT"])
    async def graph(path: str, request: Request) -> Response:
        with state.lock:
            state.in_flight += 1
            state.peak_concurrency = max(state.peak_concurrency, state.in_flight)
            over = state.in_flight > state.max_concurrent
            state.requests_total += 1
            key = f"{request.method} {_route_label('/' + path)}"
            state.by_route[key] = state.by_route.get(key, 0) + 1
            state.request_log.append({"method": request.method, "path": "/" + path, "query": dict(request.query_params),
                                      "prefer": request.headers.get("prefer", ""), "in_batch": False})
        try:
            if state.latency:
                await asyncio.sleep(state.latency)
            if not state._token_ok(request.headers.get("authorization", "")):
                return _json_response(_error(401, "InvalidAuthenticationToken", "Access token is empty or invalid."))
            if over:
                with state.lock:
                    state.throttled += 1
                return _json_response(
                    _error(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", {"Retry-After": "1"})
                )
            if (wait := state._budget_exceeded()) is not None:
                return _json_response(
                    _error(429, "ApplicationThrottled", "Application is over its request limit.", {"Retry-After": str(wait)})
                )
            fault = state._take_fault(request.method, "/" + path, "request")
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status:
                    return _json_response(state._fault_response(fault))
            raw = await request.body()
            if state.max_request_bytes is not None and len(raw) > state.max_request_bytes:
                return _json_response(_error(413, "RequestEntityTooLarge",
                                             "The maximum request length supported is 4MB."))
            body = None
            is_text = request.headers.get("content-type", "").lower().startswith("text/plain")
            if raw and not is_text:
                try:
                    body = json.loads(raw)
                except ValueError:
                    return _json_response(_error(400, "BadRequest", "Unable to read JSON request payload."))
            sub = SubRequest(
                method=request.method,
                path="/" + path,
                query=dict(request.query_params),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                base_url=str(request.base_url).rstrip("/"),
                raw=raw if is_text else b"",
            )
            if path.rstrip("/") == "$batch" and request.method == "POST":
                res = await run_in_threadpool(state.batch, sub)
            else:
                res = await run_in_threadpool(state.dispatch, sub)
            return _json_response(res)
        finally:
            with state.lock:
                state.in_flight -= 1

    # ---------------------------------------------------------------- admin API

    @app.post("/_emulator/seed")
    async def seed(request: Request) -> Response:
        body = await request.json()
        ids = state.seed(body.get("contacts", []), body.get("folder_id"))
        return EscapedJSONResponse({"ids": ids})

    @app.post("/_emulator/folders")
    async def add_folder(request: Request) -> Response:
        body = await request.json()
        return EscapedJSONResponse({"id": state.add_folder(body.get("displayName", "Folder"))})

    @app.post("/_emulator/contacts/{item_id}/{action}")
    async def user_action(item_id: str, action: str, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        try:
            if action == "edit":
                state.user_edit(item_id, body)
                return EscapedJSONResponse({"ok": True})
            if action == "delete":
                state.user_delete(item_id)
                return EscapedJSONResponse({"ok": True})
            if action == "move":
                return EscapedJSONResponse({"rest_id": state.move(item_id, body["folder_id"])})
        except KeyError as exc:
            return EscapedJSONResponse({"error": str(exc)}, status_code=404)
        return EscapedJSONResponse({"error": "unknown action"}, status_code=400)

    @app.post("/_emulator/expire-delta")
    async def expire(request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        n = state.expire_delta_tokens(int(body.get("status", 410)), body.get("code", "syncStateNotFound"))
        return EscapedJSONResponse({"expired": n})

    @app.post("/_emulator/faults")
    async def add_fault(request: Request) -> Response:
        body = await request.json()
        allowed = {"status", "count", "retry_after", "code", "method", "path", "where", "delay"}
        state.inject_fault(**{k: v for k, v in body.items() if k in allowed})
        return EscapedJSONResponse({"ok": True})

    @app.delete("/_emulator/faults")
    async def clear_faults() -> Response:
        state.clear_faults()
        return EscapedJSONResponse({"ok": True})

    @app.post("/_emulator/config")
    async def config(request: Request) -> Response:
        body = await request.json()
        allowed = {
            "latency",
            "default_page_size",
            "delta_replays",
            "replay_mode",
            "delta_empty_pages",
            "coalesce",
            "max_concurrent",
            "shuffle_batch",
            "etag_mismatch_status",
            "validate_subscriptions",
            "require_https_notification_url",
            "max_request_bytes",
        }
        with state.lock:
            for k, v in body.items():
                if k in allowed:
                    setattr(state, k, v)
            if "accepted_tokens" in body:
                tokens = body["accepted_tokens"]
                state.accepted_tokens = None if tokens is None else set(tokens)
            for key in ("send_limit_per_day", "max_message_bytes"):
                if "mail_" + key in body:
                    setattr(state.mail, key, int(body["mail_" + key]))
            if "request_budget" in body:
                rb = body["request_budget"]
                state.request_budget = None if rb is None else (int(rb[0]), float(rb[1]))
        return EscapedJSONResponse({"ok": True})

    @app.put("/_upload/{token}")
    async def upload(token: str, request: Request) -> Response:
        """An attachment upload session's pre-authenticated URL (not under /v1.0: Graph
        hands out a URL on another host, and a request to it must not carry the bearer)."""
        chunk = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with state.lock:
            state.requests_total += 1
            state.request_log.append({"method": "PUT", "path": "/_upload/" + token, "query": {},
                                      "prefer": "", "in_batch": False, "content_range": headers.get("content-range", ""),
                                      "bytes": len(chunk)})
        res = await run_in_threadpool(state.mail.upload_chunk, token, headers, chunk)
        return _json_response(res)

    @app.post("/_emulator/mail/send_faults")
    async def mail_send_faults(request: Request) -> Response:
        body = await request.json()
        try:
            state.mail.fail_sends(int(body.get("count", 1)), status=int(body.get("status", 500)),
                                  when=str(body.get("when", "after")))
        except ValueError as exc:
            return EscapedJSONResponse({"error": str(exc)}, status_code=400)
        return EscapedJSONResponse({"ok": True})

    @app.get("/_emulator/stats")
    async def stats() -> Response:
        return EscapedJSONResponse(state.stats())

    @app.post("/_emulator/reset-stats")
    async def reset_stats() -> Response:
        state.reset_stats()
        return EscapedJSONResponse({"ok": True})

    @app.post("/_emulator/subscriptions/{sub_id}/notify")
    async def notify(sub_id: str, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        try:
            if body.get("lifecycleEvent"):
                status = await run_in_threadpool(state.fire_lifecycle, sub_id, body["lifecycleEvent"])
            else:
                status = await run_in_threadpool(
                    state.fire_notification, sub_id, body.get("contact_id"), body.get("changeType", "updated")
                )
        except KeyError:
            return EscapedJSONResponse({"error": "unknown subscription"}, status_code=404)
        except httpx.HTTPError as exc:
            return EscapedJSONResponse({"error": type(exc).__name__}, status_code=502)
        return EscapedJSONResponse({"receiver_status": status})

    from emulators.graph_calendar import add_calendar_routes

    add_calendar_routes(app, state)

    # ---------------------------------------------------------------- mail admin API

    @app.post("/_emulator/mail/deliver")
    async def mail_deliver(request: Request) -> Response:
        body = await request.json()
        raw = base64.b64decode(body.get("raw_b64", ""))
        try:
            mid = await run_in_threadpool(
                state.mail.deliver, raw, folder=body.get("folder", "inbox"), categories=tuple(body.get("categories") or ())
            )
        except KeyError as exc:
            return EscapedJSONResponse({"error": str(exc)}, status_code=404)
        return EscapedJSONResponse({"id": mid})

    @app.post("/_emulator/mail/folders")
    async def mail_folder(request: Request) -> Response:
        body = await request.json()
        return EscapedJSONResponse({"id": state.mail.add_folder(body.get("displayName", "Folder"))})

    @app.post("/_emulator/mail/messages/{message_id}/{action}")
    async def mail_action(message_id: str, action: str, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        mail = state.mail
        try:
            if action == "add-category":
                await run_in_threadpool(mail.add_category, message_id, body["category"])
            elif action == "remove-category":
                await run_in_threadpool(mail.remove_category, message_id, body["category"])
            elif action == "move":
                return EscapedJSONResponse({"rest_id": await run_in_threadpool(mail.move, message_id, body["folder"])})
            elif action == "delete":
                await run_in_threadpool(mail.delete, message_id)
            else:
                return EscapedJSONResponse({"error": "unknown action"}, status_code=400)
        except KeyError as exc:
            return EscapedJSONResponse({"error": str(exc)}, status_code=404)
        return EscapedJSONResponse({"ok": True})

    return app
