"""A local Google People API (contacts) that google-api-python-client talks to unchanged.

Why an emulator and not mocks: the connector's correctness hangs on wire details
(sync-token expiry as a 400 FAILED_PRECONDITION, etag checks, page-token parameter
pinning, `metadata.deleted` tombstones, lagging sync visibility). Reproducing them
behind a real HTTP port lets tests, the demo and benchmarks exercise the real
client library, retries and error translation exactly as against Google.

Behaviour follows /work/shared/PROVIDERS.md sections 0 and B. Where Google's
behaviour is UNCONFIRMED the emulator makes it configurable instead of guessing:

- `batch_error_mode` ("whole_request", default, or "per_item"): what
  batchCreateContacts / batchUpdateContacts do when one item is bad (invalid data,
  stale etag, missing person). "whole_request": nothing is applied and the whole
  call fails with that item's error. "per_item": good items are applied and each
  bad item carries its own `status` in the PersonResponse. batchDeleteContacts
  has no per-item answer (its response is Empty), so a missing name fails it whole
  (404) in both modes and nothing is deleted.
- updateContact's etag check accepts either the top-level `person.etag` or the
  CONTACT source etag (which one Google compares is UNCONFIRMED).

One mailbox per app instance. Deliberate simplifications: no photos, contact
groups, other contacts or directory; `people/me` is not a profile; multipart
`/batch` is not served (the connector uses the People batch methods instead).

Change tracking: every write gets a change sequence number and a "visible at"
time (now + `write_visibility_lag`). Changes are published to the sync view in
sequence order once visible; the sync view is what connections.list serves, while
get/update/delete act on the current truth (reads of a single person are
immediately consistent, sync is not, as with Google). A sync token pins the
published sequence at issue time; a page token pins the round's upper bound, so a
person changed mid-pagination moves to the next round instead of being lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import json
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import Response

from emulators.admin_routes import add_config_clock_stats
from emulators.json_response import EscapedJSONResponse

# Fields a client may write (the updatePersonFields vocabulary of people.v1).
UPDATABLE_FIELDS: frozenset[str] = frozenset(
    """addresses biographies birthdays calendarUrls clientData emailAddresses events
    externalIds genders imClients interests locales locations memberships miscKeywords
    names nicknames occupations organizations phoneNumbers relations sipAddresses urls
    userDefined""".split()
)
READ_ONLY_FIELDS: frozenset[str] = frozenset({"ageRanges", "coverPhotos", "metadata", "photos", "skills"})
READABLE_FIELDS: frozenset[str] = UPDATABLE_FIELDS | READ_ONLY_FIELDS
SINGLETON_FIELDS: frozenset[str] = frozenset({"names", "biographies", "birthdays", "genders"})
# Top-level Person keys accepted on input and then ignored (output-only or ids).
IGNORED_INPUT_KEYS: frozenset[str] = frozenset({"resourceName", "etag", "metadata", "photos", "coverPhotos", "ageRanges"})

SORT_ORDERS = ("LAST_MODIFIED_ASCENDING", "LAST_MODIFIED_DESCENDING", "FIRST_NAME_ASCENDING", "LAST_NAME_ASCENDING")
OPS = ("list", "get", "create", "update", "delete", "any")
FAULT_KINDS = ("429", "403_rate", "500", "503", "401", "expired_token", "stale_etag")

EXPIRED_SYNC_TOKEN_MESSAGE = "Sync token is expired. Clear local cache and retry call without the sync token."
STALE_ETAG_MESSAGE = (
    "Request person.etag is different than the current person.etag. "
    "Clear local cache and get the latest person."
)
MISSING_ETAG_MESSAGE = "Request must set person.etag or person.metadata.sources.etag for the source that is being updated."
NOT_FOUND_MESSAGE = "Requested entity was not found."
PAGE_PARAMS_MESSAGE = "Parameters provided to connections.list must match the first call that provided the page token."

RPC_CODES = {
    "OK": 0,
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}


class ApiError(Exception):
    """A Google-shaped error: HTTP status, google.rpc status name, optional ErrorInfo reason."""

    def __init__(
        self,
        http_status: int,
        status: str,
        message: str,
        *,
        reason: str | None = None,
        legacy_reason: str | None = None,
        legacy_domain: str = "global",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.message = message
        self.reason = reason
        self.legacy_reason = legacy_reason
        self.legacy_domain = legacy_domain
        self.headers = headers or {}

    def body(self) -> dict:
        err: dict[str, Any] = {"code": self.http_status, "message": self.message, "status": self.status}
        if self.legacy_reason:
            err["errors"] = [{"message": self.message, "domain": self.legacy_domain, "reason": self.legacy_reason}]
        if self.reason:
            err["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": "people.googleapis.com"},
                }
            ]
        return {"error": err}

    def rpc_status(self) -> dict:
        """The per-item `status` of a PersonResponse."""
        return {"code": RPC_CODES.get(self.status, 2), "message": self.message}

    def response(self) -> EscapedJSONResponse:
        return EscapedJSONResponse(self.body(), status_code=self.http_status, headers=self.headers)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message, legacy_reason="badRequest")


def expired_sync_token() -> ApiError:
    return ApiError(400, "FAILED_PRECONDITION", EXPIRED_SYNC_TOKEN_MESSAGE, reason="EXPIRED_SYNC_TOKEN", legacy_reason="failedPrecondition")


def stale_etag() -> ApiError:
    return ApiError(400, "FAILED_PRECONDITION", STALE_ETAG_MESSAGE, legacy_reason="failedPrecondition")


def not_found() -> ApiError:
    return ApiError(404, "NOT_FOUND", NOT_FOUND_MESSAGE, legacy_reason="notFound")


def fault_error(kind: str, retry_after: float | None = None) -> ApiError:
    """The wire error for an injected fault kind."""
    headers = {"Retry-After": str(int(retry_after) if float(retry_after).is_integer() else retry_after)} if retry_after is not None else {}
    if kind == "429":
        return ApiError(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute per user' "
            "of service 'people.googleapis.com'.",
            reason="RATE_LIMIT_EXCEEDED",
            legacy_reason="rateLimitExceeded",
            legacy_domain="usageLimits",
            headers=headers,
        )
    if kind == "403_rate":
        return ApiError(
            403,
            "PERMISSION_DENIED",
            "User Rate Limit Exceeded",
            legacy_reason="userRateLimitExceeded",
            legacy_domain="usageLimits",
            headers=headers,
        )
    if kind == "500":
        return ApiError(500, "INTERNAL", "Internal error encountered.", legacy_reason="backendError")
    if kind == "503":
        return ApiError(503, "UNAVAILABLE", "The service is currently unavailable.", legacy_reason="backendError")
    if kind == "401":
        return unauthenticated()
    if kind == "expired_token":
        return expired_sync_token()
    if kind == "stale_etag":
        return stale_etag()
    raise ValueError(f"unknown fault kind {kind!r}")


def unauthenticated() -> ApiError:
    return ApiError(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
        "or other valid authentication credential.",
        reason="ACCESS_TOKEN_TYPE_UNSUPPORTED",
        legacy_reason="authError",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
    )


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _unb64(token: str) -> dict | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Stored:
    """A person as the mailbox holds it now (the truth behind get/update/delete)."""

    resource_name: str
    source_id: str
    fields: dict[str, list]
    version: int
    update_time: float
    previous_names: list[str] = field(default_factory=list)

    def etag(self, instance: str) -> str:
        digest = hashlib.sha1(f"{instance}:{self.resource_name}:{self.version}".encode()).digest()
        return "%Eg" + base64.b64encode(digest[:15]).decode()

    def source_etag(self, instance: str) -> str:
        digest = hashlib.sha1(f"src:{instance}:{self.resource_name}:{self.version}".encode()).digest()
        return "#" + base64.b64encode(digest[:9]).decode()


@dataclass
class _Change:
    """One published-or-pending entry of the sync view."""

    seq: int
    visible_at: float
    resource_name: str
    snapshot: _Stored | None  # None: deleted
    source_id: str
    etag: str
    replaces: str | None = None  # resource name this change renames (profile linking)


@dataclass
class _Fault:
    kind: str
    op: str
    remaining: int
    retry_after: float | None = None
    scope: str = "request"  # "request" or "item" (one item inside a batch call)


class PeopleState:
    """One mailbox's contacts, sync view, tokens, faults and counters. Thread-safe.

    The clock is injectable (`clock`) and can be advanced (`advance_clock`), so
    token expiry and write-visibility lag are testable without sleeping.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sync_token_max_age: float = 7 * 86400,
        write_visibility_lag: float = 0.0,
        batch_error_mode: str = "whole_request",
        static_tokens: tuple[str, ...] | set[str] = ("emulator-token",),
        access_token_lifetime: int = 3600,
        refresh_tokens: set[str] | None = None,
    ) -> None:
        if batch_error_mode not in ("whole_request", "per_item"):
            raise ValueError("batch_error_mode must be 'whole_request' or 'per_item'")
        self._lock = threading.RLock()
        self._clock = clock or time.time
        self._clock_offset = 0.0
        self.instance = secrets.token_hex(4)
        self.sync_token_max_age = float(sync_token_max_age)
        self.write_visibility_lag = float(write_visibility_lag)
        self.batch_error_mode = batch_error_mode
        self.static_tokens: set[str] = set(static_tokens)
        self.access_token_lifetime = access_token_lifetime
        #: None accepts any refresh token; a set accepts only its members.
        self.refresh_tokens = refresh_tokens
        self.revoked_refresh_tokens: set[str] = set()
        #: Also accept bearer tokens this callable vouches for (e.g. the OAuth
        #: emulator's `OAuthState.validate_access_token`), as People trusts Google's issuer.
        self.token_validator: Callable[[str], bool] | None = None
        self._access_tokens: dict[str, float] = {}
        self._persons: dict[str, _Stored] = {}
        self._seq = 0
        self._pending: deque[_Change] = deque()
        self._visible: dict[str, _Change] = {}
        self._published_seq = 0
        self._faults: list[_Fault] = []
        self._next_token_serial = 1
        self._min_token_serial = 1
        self._next_id = int.from_bytes(secrets.token_bytes(6), "big") | (1 << 50)
        #: Seconds to wait per operation ("list", "create", ... or "any").
        self.latency: dict[str, float] = {}
        #: Whether latency is spent before the write is applied or after (the write
        #: lands, then the response is late: the crash-after-write case).
        self.latency_phase = "before"
        self.requests: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.faults_served = 0

    # ---- clock -------------------------------------------------------------

    def now(self) -> float:
        return self._clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        with self._lock:
            self._clock_offset += float(seconds)

    # ---- configuration and faults -----------------------------------------------

    def inject_fault(self, kind: str, op: str = "any", count: int = 1, *, retry_after: float | None = None, scope: str = "request") -> None:
        """Make the next `count` matching requests fail with `kind`.

        scope="request" fails whole HTTP calls. scope="item" fails single contacts:
        one item of a batch call (answered per `batch_error_mode`) or a single
        createContact / updateContact. expired_token only hits list calls;
        stale_etag only hits updates.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}")
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}")
        if scope not in ("request", "item"):
            raise ValueError("scope must be 'request' or 'item'")
        with self._lock:
            self._faults.append(_Fault(kind, op, int(count), retry_after, scope))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, op: str, scope: str = "request") -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.scope != scope or f.remaining <= 0 or f.op not in (op, "any"):
                    continue
                if f.kind == "expired_token" and op != "list":
                    continue
                if f.kind == "stale_etag" and op != "update":
                    continue
                f.remaining -= 1
                self.faults_served += 1
                self._faults = [x for x in self._faults if x.remaining > 0]
                return f
        return None

    def configure(self, **settings: Any) -> None:
        with self._lock:
            for key, value in settings.items():
                if key == "write_visibility_lag":
                    self.write_visibility_lag = float(value)
                elif key == "sync_token_max_age":
                    self.sync_token_max_age = float(value)
                elif key == "batch_error_mode":
                    if value not in ("whole_request", "per_item"):
                        raise ValueError("batch_error_mode must be 'whole_request' or 'per_item'")
                    self.batch_error_mode = value
                elif key == "latency":
                    self.latency = {str(k): float(v) for k, v in dict(value).items()}
                elif key == "latency_phase":
                    if value not in ("before", "after"):
                        raise ValueError("latency_phase must be 'before' or 'after'")
                    self.latency_phase = value
                else:
                    raise ValueError(f"unknown setting {key!r}")

    def latency_for(self, op: str) -> float:
        return self.latency.get(op, self.latency.get("any", 0.0))

    def expire_sync_tokens(self) -> None:
        """Every sync token issued so far is refused from now on."""
        with self._lock:
            self._min_token_serial = self._next_token_serial

    def stats(self) -> dict:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "ops": dict(self.ops),
                "faults_served": self.faults_served,
                "persons": len(self._persons),
                "pending_changes": len(self._pending),
            }

    # ---- auth ------------------------------------------------------------------

    def issue_access_token(self, refresh_token: str) -> dict:
        with self._lock:
            if refresh_token in self.revoked_refresh_tokens or (
                self.refresh_tokens is not None and refresh_token not in self.refresh_tokens
            ):
                raise PermissionError("invalid_grant")
            token = "ya29.emu." + secrets.token_urlsafe(24)
            self._access_tokens[token] = self.now() + self.access_token_lifetime
            return {
                "access_token": token,
                "expires_in": self.access_token_lifetime,
                "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/contacts",
            }

    def token_valid(self, token: str) -> bool:
        with self._lock:
            if token in self.static_tokens:
                return True
            expiry = self._access_tokens.get(token)
            if expiry is not None and expiry > self.now():
                return True
        validator = self.token_validator
        return bool(validator is not None and validator(token))

    def expire_access_tokens(self) -> None:
        """Issued access tokens stop working (static tokens are unaffected)."""
        with self._lock:
            self._access_tokens.clear()

    def revoke_refresh_token(self, refresh_token: str) -> None:
        with self._lock:
            self.revoked_refresh_tokens.add(refresh_token)

    # ---- change log ---------------------------------------------------------------

    def _record(self, stored: _Stored | None, resource_name: str, source_id: str, etag: str, replaces: str | None = None) -> None:
        self._seq += 1
        now = self.now()
        snap = copy.deepcopy(stored) if stored is not None else None
        self._pending.append(_Change(self._seq, now + self.write_visibility_lag, resource_name, snap, source_id, etag, replaces))
        self._publish()

    def _publish(self) -> None:
        now = self.now()
        while self._pending and self._pending[0].visible_at <= now:
            change = self._pending.popleft()
            if change.replaces:
                self._visible.pop(change.replaces, None)
            self._visible[change.resource_name] = change
            self._published_seq = change.seq

    def _new_resource_name(self) -> tuple[str, str]:
        self._next_id += 1 + secrets.randbelow(1000)
        return f"people/c{self._next_id}", format(self._next_id, "x")

    # ---- person validation and rendering -------------------------------------------

    @staticmethod
    def validate_person(person: Any, *, where: str = "person") -> dict[str, list]:
        """Check a Person body and return its writable fields, stripped of output-only data."""
        if not isinstance(person, dict):
            raise bad_request(f"Invalid JSON payload received. '{where}' must be an object.")
        out: dict[str, list] = {}
        for key, value in person.items():
            if key in IGNORED_INPUT_KEYS:
                continue
            if key not in UPDATABLE_FIELDS:
                raise bad_request(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.')
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise bad_request(f"Invalid value at '{where}.{key}': expected a list of objects.")
            if key in SINGLETON_FIELDS and len(value) > 1:
                raise bad_request(f"Invalid {where}.{key}: only one value is allowed, got {len(value)}.")
            if key == "clientData":
                for item in value:
                    if not isinstance(item.get("key"), str) or not item["key"]:
                        raise bad_request(f"Invalid {where}.clientData: every entry needs a non-empty key.")
            out[key] = [{k: v for k, v in item.items() if k != "metadata"} for item in value]
        return out

    def _render(self, stored: _Stored, person_fields: set[str] | None, *, sync: bool = False) -> dict:
        inst = self.instance
        person: dict[str, Any] = {"resourceName": stored.resource_name, "etag": stored.etag(inst)}
        wanted = READABLE_FIELDS if person_fields is None else person_fields
        for name, values in stored.fields.items():
            if name not in wanted or not values:
                continue
            rendered = []
            for i, value in enumerate(values):
                item = copy.deepcopy(value)
                if not isinstance(item, dict):  # malformed data seeded with validate=False: served as stored
                    rendered.append(item)
                    continue
                item["metadata"] = {"primary": i == 0, "source": {"type": "CONTACT", "id": stored.source_id}}
                if name == "names":
                    display = " ".join(p for p in (item.get("givenName"), item.get("familyName")) if p)
                    if display:
                        item.setdefault("displayName", display)
                        item.setdefault("unstructuredName", display)
                    last_first = ", ".join(p for p in (item.get("familyName"), item.get("givenName")) if p)
                    if last_first:
                        item.setdefault("displayNameLastFirst", last_first)
                if "type" in item and isinstance(item["type"], str):
                    item.setdefault("formattedType", item["type"].capitalize())
                rendered.append(item)
            person[name] = rendered
        if "metadata" in wanted:
            meta: dict[str, Any] = {
                "sources": [
                    {
                        "type": "CONTACT",
                        "id": stored.source_id,
                        "etag": stored.source_etag(inst),
                        "updateTime": rfc3339(stored.update_time),
                    }
                ],
                "objectType": "PERSON",
            }
            if sync and stored.previous_names:
                meta["previousResourceNames"] = list(stored.previous_names)
            person["metadata"] = meta
        return person

    @staticmethod
    def _tombstone(change: _Change) -> dict:
        return {
            "resourceName": change.resource_name,
            "etag": change.etag,
            "metadata": {"sources": [{"type": "CONTACT", "id": change.source_id}], "objectType": "PERSON", "deleted": True},
        }

    @staticmethod
    def parse_mask(mask: str | None, *, name: str, allowed: frozenset[str], required: bool = True) -> set[str] | None:
        if not mask:
            if required:
                raise bad_request(
                    f"{name} mask is required. Please specify one or more valid paths. "
                    "Valid paths are documented at https://developers.google.com/people/api/rest/v1/people/get."
                )
            return None
        paths = {p.strip() for p in mask.split(",") if p.strip()}
        for p in paths:
            if p.startswith("person."):
                p = p[len("person."):]
            if p not in allowed:
                raise bad_request(f'Invalid {name} mask path: "{p}". Valid paths are documented at https://developers.google.com/people/api/rest/v1/people/get.')
        return {p[len("person."):] if p.startswith("person.") else p for p in paths}

    # ---- Python API used by tests (seed, user edits) ----------------------------------

    def seed(self, persons: list[dict], *, validate: bool = True) -> list[str]:
        """Add persons as if they had always been there (they enter the change log).

        validate=False stores malformed data (e.g. two names) the API would refuse,
        to test how a connector reads what it did not write.
        """
        names = []
        with self._lock:
            for person in persons:
                fields = self.validate_person(person) if validate else {
                    k: copy.deepcopy(v) for k, v in person.items() if k in UPDATABLE_FIELDS
                }
                names.append(self._create(fields))
        return names

    def user_edit(self, resource_name: str, changes: dict) -> dict:
        """Simulate an edit made in the Gmail/Contacts UI: given fields replaced, etag bumped."""
        with self._lock:
            stored = self._persons.get(resource_name)
            if stored is None:
                raise KeyError(resource_name)
            fields = self.validate_person(changes)
            for name in changes:
                if name in UPDATABLE_FIELDS:
                    stored.fields[name] = fields.get(name, [])
            self._bump(stored)
            return self._render(stored, None)

    def user_delete(self, resource_name: str) -> None:
        with self._lock:
            if resource_name not in self._persons:
                raise KeyError(resource_name)
            self._delete(resource_name)

    def relink(self, resource_name: str) -> str:
        """Give a person a new resource name (as linking to a profile does); returns it."""
        with self._lock:
            stored = self._persons.pop(resource_name)
            new_name, _ = self._new_resource_name()
            stored.previous_names.append(resource_name)
            stored.resource_name = new_name
            self._persons[new_name] = stored
            self._bump(stored, replaces=resource_name)
            return new_name

    def person(self, resource_name: str) -> dict | None:
        with self._lock:
            stored = self._persons.get(resource_name)
            return None if stored is None else self._render(stored, None)

    def all_persons(self) -> list[dict]:
        with self._lock:
            return [self._render(p, None) for p in self._persons.values()]

    # ---- core mutations (caller holds the lock) ------------------------------------------

    def _create(self, fields: dict[str, list]) -> str:
        resource_name, source_id = self._new_resource_name()
        stored = _Stored(resource_name, source_id, fields, 1, self.now())
        self._persons[resource_name] = stored
        self._record(stored, resource_name, source_id, stored.etag(self.instance))
        return resource_name

    def _bump(self, stored: _Stored, replaces: str | None = None) -> None:
        stored.version += 1
        stored.update_time = max(self.now(), stored.update_time + 1e-6)
        self._record(stored, stored.resource_name, stored.source_id, stored.etag(self.instance), replaces)

    def _delete(self, resource_name: str) -> None:
        stored = self._persons.pop(resource_name)
        stored.version += 1
        self._record(None, resource_name, stored.source_id, stored.etag(self.instance))

    def _check_update(self, resource_name: str, person: Any, mask: set[str]) -> tuple[_Stored, dict[str, list]]:
        stored = self._persons.get(resource_name)
        if stored is None:
            raise not_found()
        fields = self.validate_person(person)
        etag = person.get("etag")
        if not etag:
            for src in (person.get("metadata") or {}).get("sources") or []:
                if isinstance(src, dict) and src.get("type", "CONTACT") == "CONTACT" and src.get("etag"):
                    etag = src["etag"]
        if not etag:
            raise bad_request(MISSING_ETAG_MESSAGE)
        if etag not in (stored.etag(self.instance), stored.source_etag(self.instance)):
            raise stale_etag()
        return stored, fields

    def _apply_update(self, stored: _Stored, fields: dict[str, list], mask: set[str]) -> None:
        for name in mask:
            stored.fields[name] = fields.get(name, [])
        self._bump(stored)

    # ---- API operations (return JSON bodies or raise ApiError) ---------------------------

    def list_connections(self, params: dict[str, Any]) -> dict:
        person_fields = self.parse_mask(params.get("personFields"), name="personFields", allowed=READABLE_FIELDS)
        try:
            page_size = int(params.get("pageSize") or 100)
        except ValueError:
            raise bad_request("Invalid value for pageSize") from None
        if page_size < 1 or page_size > 1000:
            raise bad_request("pageSize must be between 1 and 1000.")
        sort_order = params.get("sortOrder") or "LAST_MODIFIED_ASCENDING"
        if sort_order not in SORT_ORDERS:
            raise bad_request(f"Invalid value for sortOrder: {sort_order}")
        request_sync = str(params.get("requestSyncToken", "")).lower() == "true"
        sync_token = params.get("syncToken") or None
        signature = hashlib.sha1(
            json.dumps(
                [sorted(person_fields or ()), page_size, sort_order, request_sync, sync_token, sorted(params.get("sources") or [])]
            ).encode()
        ).hexdigest()[:16]

        with self._lock:
            self._publish()
            watermark = None
            if sync_token is not None:
                data = _unb64(sync_token)
                if (
                    data is None
                    or data.get("i") != self.instance
                    or int(data.get("n", 0)) < self._min_token_serial
                    or self.now() - float(data.get("t", 0)) > self.sync_token_max_age
                ):
                    raise expired_sync_token()
                watermark = int(data["w"])
            page_token = params.get("pageToken") or None
            if page_token is not None:
                data = _unb64(page_token)
                if data is None or "s" not in data:
                    raise bad_request("Invalid pageToken.")
                if data["s"] != signature:
                    raise bad_request(PAGE_PARAMS_MESSAGE)
                bound, position = int(data["b"]), data["p"]
            else:
                bound, position = self._published_seq, None

            if watermark is None:
                items = [c for c in self._visible.values() if c.snapshot is not None and c.seq <= bound]
            else:
                items = [c for c in self._visible.values() if watermark < c.seq <= bound]

            if sort_order in ("LAST_MODIFIED_ASCENDING", "LAST_MODIFIED_DESCENDING"):
                descending = sort_order == "LAST_MODIFIED_DESCENDING"
                items.sort(key=lambda c: c.seq, reverse=descending)
                if position is not None:
                    items_after = [c for c in items if (c.seq < position if descending else c.seq > position)]
                else:
                    items_after = items
                page = items_after[:page_size]
                more = len(items_after) > page_size
                next_position = page[-1].seq if page else position
            else:
                def name_key(c: _Change, idx: str = "givenName" if sort_order == "FIRST_NAME_ASCENDING" else "familyName"):
                    names = (c.snapshot.fields.get("names") if c.snapshot else None) or [{}]
                    return (str(names[0].get(idx, "")).lower(), c.seq)

                items.sort(key=name_key)
                offset = int(position or 0)
                page = items[offset : offset + page_size]
                more = offset + page_size < len(items)
                next_position = offset + page_size

            body: dict[str, Any] = {}
            connections = [
                self._tombstone(c) if c.snapshot is None else self._render(c.snapshot, person_fields, sync=watermark is not None)
                for c in page
            ]
            if connections:
                body["connections"] = connections
            if items:
                body["totalItems"] = len(items)
            if more:
                body["nextPageToken"] = _b64({"s": signature, "b": bound, "p": next_position})
            elif request_sync:
                serial = self._next_token_serial
                self._next_token_serial += 1
                body["nextSyncToken"] = _b64({"i": self.instance, "n": serial, "w": bound, "t": self.now()})
            return body

    def get_person(self, resource_name: str, person_fields_mask: str | None) -> dict:
        fields = self.parse_mask(person_fields_mask, name="personFields", allowed=READABLE_FIELDS)
        with self._lock:
            stored = self._persons.get(resource_name)
            if stored is None:
                raise not_found()
            return self._render(stored, fields)

    def batch_get(self, resource_names: list[str], person_fields_mask: str | None) -> dict:
        fields = self.parse_mask(person_fields_mask, name="personFields", allowed=READABLE_FIELDS)
        if not resource_names:
            raise bad_request("resourceNames must contain at least one entry.")
        if len(resource_names) > 200:
            raise bad_request("resourceNames cannot contain more than 200 entries.")
        out = []
        with self._lock:
            for name in resource_names:
                stored = self._persons.get(name)
                if stored is None:
                    err = not_found()
                    out.append({"requestedResourceName": name, "httpStatusCode": 404, "status": err.rpc_status()})
                else:
                    out.append({"requestedResourceName": name, "httpStatusCode": 200, "person": self._render(stored, fields), "status": {}})
        return {"responses": out}

    def create_contact(self, person: Any, person_fields_mask: str | None) -> dict:
        read = self.parse_mask(person_fields_mask, name="personFields", allowed=READABLE_FIELDS, required=False)
        fields = self.validate_person(person)
        fault = self._item_fault("create")
        if fault:
            raise fault
        with self._lock:
            name = self._create(fields)
            return self._render(self._persons[name], read)

    def update_contact(self, resource_name: str, person: Any, update_mask: str | None, person_fields_mask: str | None) -> dict:
        mask = self.parse_mask(update_mask, name="updatePersonFields", allowed=UPDATABLE_FIELDS)
        read = self.parse_mask(person_fields_mask, name="personFields", allowed=READABLE_FIELDS, required=False)
        fault = self._item_fault("update")
        if fault:
            raise fault
        with self._lock:
            stored, fields = self._check_update(resource_name, person, mask)
            self._apply_update(stored, fields, mask)
            return self._render(stored, read)

    def delete_contact(self, resource_name: str) -> dict:
        with self._lock:
            if resource_name not in self._persons:
                raise not_found()
            self._delete(resource_name)
            return {}

    def _item_fault(self, op: str) -> ApiError | None:
        fault = self._take_fault(op, scope="item")
        return None if fault is None else fault_error(fault.kind, fault.retry_after)

    def batch_create(self, body: Any) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("contacts"), list) or not body["contacts"]:
            raise bad_request("contacts is required and must be a non-empty list.")
        contacts = body["contacts"]
        if len(contacts) > 200:
            raise bad_request("Too many contacts in the request: at most 200 are allowed.")
        read = self.parse_mask(body.get("readMask"), name="readMask", allowed=READABLE_FIELDS)
        checked: list[dict | ApiError] = []
        for i, item in enumerate(contacts):
            try:
                if not isinstance(item, dict):
                    raise bad_request(f"Invalid contacts[{i}].")
                fault = self._item_fault("create")
                if fault:
                    raise fault
                checked.append(self.validate_person(item.get("contactPerson"), where=f"contacts[{i}].contactPerson"))
            except ApiError as err:
                if self.batch_error_mode == "whole_request":
                    raise
                checked.append(err)
        out = []
        with self._lock:
            for item in checked:
                if isinstance(item, ApiError):
                    out.append({"httpStatusCode": item.http_status, "status": item.rpc_status()})
                else:
                    name = self._create(item)
                    out.append({"person": self._render(self._persons[name], read), "httpStatusCode": 200, "status": {}})
        return {"createdPeople": out}

    def batch_update(self, body: Any) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("contacts"), dict) or not body["contacts"]:
            raise bad_request("contacts is required and must be a non-empty map of resource names to persons.")
        contacts: dict = body["contacts"]
        if len(contacts) > 200:
            raise bad_request("Too many contacts in the request: at most 200 are allowed.")
        mask = self.parse_mask(body.get("updateMask"), name="updateMask", allowed=UPDATABLE_FIELDS)
        read = self.parse_mask(body.get("readMask"), name="readMask", allowed=READABLE_FIELDS)
        results: dict[str, dict] = {}
        with self._lock:
            checked: list[tuple[str, _Stored, dict] | tuple[str, ApiError]] = []
            for name, person in contacts.items():
                try:
                    fault = self._item_fault("update")
                    if fault:
                        raise fault
                    stored, fields = self._check_update(name, person if isinstance(person, dict) else None, mask)
                    checked.append((name, stored, fields))
                except ApiError as err:
                    if self.batch_error_mode == "whole_request":
                        raise
                    checked.append((name, err))
            for entry in checked:
                if isinstance(entry[1], ApiError):
                    name, err = entry  # type: ignore[misc]
                    results[name] = {"httpStatusCode": err.http_status, "status": err.rpc_status(), "requestedResourceName": name}
                else:
                    name, stored, fields = entry  # type: ignore[misc]
                    self._apply_update(stored, fields, mask)
                    results[name] = {"person": self._render(stored, read), "httpStatusCode": 200, "status": {}, "requestedResourceName": name}
        return {"updateResult": results}

    def batch_delete(self, body: Any) -> dict:
        names = body.get("resourceNames") if isinstance(body, dict) else None
        if not isinstance(names, list) or not names:
            raise bad_request("resourceNames is required and must be a non-empty list.")
        if len(names) > 500:
            raise bad_request("Too many resource names in the request: at most 500 are allowed.")
        with self._lock:
            unique = list(dict.fromkeys(names))
            if any(n not in self._persons for n in unique):
                raise not_found()
            for n in unique:
                self._delete(n)
        return {}


# ---- HTTP ------------------------------------------------------------------------------


def _raise(err: Exception) -> dict:
    raise err


class MethodOverride:
    """Google's front end honours `X-HTTP-Method-Override: GET` on a POST.

    google-api-python-client turns any GET whose URI passes 2,048 characters into
    such a POST with the query string as a form body: a `people:batchGet` of more
    than ~45 resource names does.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"x-http-method-override", b"").upper() == b"GET":
                body, more = b"", True
                while more:
                    message = await receive()
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                query = scope.get("query_string", b"")
                dropped = (b"content-type", b"content-length", b"x-http-method-override")
                scope = {**scope, "method": "GET", "query_string": b"&".join(q for q in (query, body) if q),
                         "headers": [(k, v) for k, v in scope.get("headers") or [] if k.lower() not in dropped]}

                async def no_body() -> dict:
                    return {"type": "http.request", "body": b"", "more_body": False}

                await self.app(scope, no_body, send)
                return
        await self.app(scope, receive, send)


def create_app(state: PeopleState | None = None) -> FastAPI:
    """The People API, its minimal OAuth token endpoint and the /_emulator admin API."""
    state = state or PeopleState()
    app = FastAPI(title="Google People API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.people = state
    app.add_middleware(MethodOverride)

    async def json_body(request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise bad_request("Invalid JSON payload received.") from None

    async def call(request: Request, method: str, op: str, fn: Callable[[], dict]) -> Response:
        state.requests[method] += 1
        state.ops[op] += 1
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not state.token_valid(auth[7:].strip()):
            return unauthenticated().response()
        fault = state._take_fault(op)
        if fault is not None:
            return fault_error(fault.kind, fault.retry_after).response()
        delay = state.latency_for(op)
        if delay and state.latency_phase == "before":
            await asyncio.sleep(delay)
        try:
            body = fn()
        except ApiError as err:
            return err.response()
        if delay and state.latency_phase == "after":
            await asyncio.sleep(delay)
        return EscapedJSONResponse(body)

    @app.post("/token")
    async def token(request: Request) -> Response:
        state.requests["oauth.token"] += 1
        # Parsed by hand: Starlette's form parser needs python-multipart, which we do not ship.
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            return EscapedJSONResponse({"error": "unsupported_grant_type", "error_description": "Only refresh_token is supported."}, status_code=400)
        try:
            return EscapedJSONResponse(state.issue_access_token(str(form["refresh_token"])))
        except PermissionError:
            return EscapedJSONResponse({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, status_code=400)

    @app.get("/v1/people/{pid}/connections")
    async def list_connections(pid: str, request: Request) -> Response:
        params: dict[str, Any] = dict(request.query_params)
        params["sources"] = request.query_params.getlist("sources")
        if pid != "me":
            return await call(request, "people.connections.list", "list", lambda: _raise(bad_request("Only people/me is supported.")))
        return await call(request, "people.connections.list", "list", lambda: state.list_connections(params))

    @app.get("/v1/people:batchGet")
    async def batch_get(request: Request) -> Response:
        names = request.query_params.getlist("resourceNames")
        return await call(request, "people.getBatchGet", "get", lambda: state.batch_get(names, request.query_params.get("personFields")))

    @app.post("/v1/people:createContact")
    async def create_contact(request: Request) -> Response:
        try:
            body = await json_body(request)
        except ApiError as err:
            return err.response()
        return await call(request, "people.createContact", "create", lambda: state.create_contact(body, request.query_params.get("personFields")))

    @app.post("/v1/people:batchCreateContacts")
    async def batch_create(request: Request) -> Response:
        try:
            body = await json_body(request)
        except ApiError as err:
            return err.response()
        return await call(request, "people.batchCreateContacts", "create", lambda: state.batch_create(body))

    @app.post("/v1/people:batchUpdateContacts")
    async def batch_update(request: Request) -> Response:
        try:
            body = await json_body(request)
        except ApiError as err:
            return err.response()
        return await call(request, "people.batchUpdateContacts", "update", lambda: state.batch_update(body))

    @app.post("/v1/people:batchDeleteContacts")
    async def batch_delete(request: Request) -> Response:
        try:
            body = await json_body(request)
        except ApiError as err:
            return err.response()
        return await call(request, "people.batchDeleteContacts", "delete", lambda: state.batch_delete(body))

    @app.patch("/v1/people/{pid}:updateContact")
    async def update_contact(pid: str, request: Request) -> Response:
        try:
            body = await json_body(request)
        except ApiError as err:
            return err.response()
        q = request.query_params
        return await call(
            request,
            "people.updateContact",
            "update",
            lambda: state.update_contact(f"people/{pid}", body, q.get("updatePersonFields"), q.get("personFields")),
        )

    @app.delete("/v1/people/{pid}:deleteContact")
    async def delete_contact(pid: str, request: Request) -> Response:
        return await call(request, "people.deleteContact", "delete", lambda: state.delete_contact(f"people/{pid}"))

    @app.get("/v1/people/{pid}")
    async def get_person(pid: str, request: Request) -> Response:
        return await call(request, "people.get", "get", lambda: state.get_person(f"people/{pid}", request.query_params.get("personFields")))

    # ---- admin ----------------------------------------------------------------------

    def admin(fn: Callable[[], Any]) -> Response:
        try:
            result = fn()
        except (ValueError, KeyError) as err:
            return EscapedJSONResponse({"error": str(err)}, status_code=400)
        except ApiError as err:
            return err.response()
        return EscapedJSONResponse(result if result is not None else {"ok": True})

    @app.post("/_emulator/faults")
    async def add_fault(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.inject_fault(b["kind"], b.get("op", "any"), int(b.get("count", 1)), retry_after=b.get("retry_after"), scope=b.get("scope", "request")))

    @app.delete("/_emulator/faults")
    async def clear_faults() -> Response:
        return admin(state.clear_faults)

    @app.post("/_emulator/expire_sync_tokens")
    async def expire_tokens() -> Response:
        return admin(state.expire_sync_tokens)

    @app.post("/_emulator/expire_access_tokens")
    async def expire_access() -> Response:
        return admin(state.expire_access_tokens)

    @app.post("/_emulator/seed")
    async def seed(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: {"resourceNames": state.seed(b.get("persons", []), validate=b.get("validate", True))})

    @app.post("/_emulator/user_edit")
    async def user_edit(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.user_edit(b["resourceName"], b.get("person", {})))

    @app.post("/_emulator/user_delete")
    async def user_delete(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.user_delete(b["resourceName"]))

    @app.post("/_emulator/relink")
    async def relink(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: {"resourceName": state.relink(b["resourceName"])})

    add_config_clock_stats(app, state, admin)

    @app.get("/_emulator/persons")
    async def persons() -> Response:
        return admin(lambda: {"persons": state.all_persons()})

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Run the Google People API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--seed-json", help="a JSON file holding a list of Person objects")
    parser.add_argument("--write-visibility-lag", type=float, default=0.0)
    parser.add_argument("--batch-error-mode", choices=("whole_request", "per_item"), default="whole_request")
    args = parser.parse_args(argv)
    state = PeopleState(write_visibility_lag=args.write_visibility_lag, batch_error_mode=args.batch_error_mode)
    if args.seed_json:
        with open(args.seed_json, encoding="utf-8") as fh:
            data = json.load(fh)
        state.seed(data["persons"] if isinstance(data, dict) else data)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
