"""A local Google Calendar API (events and channels) that google-api-python-client talks to unchanged.

Why an emulator: what breaks calendar sync lives in wire details (a 410
`fullSyncRequired` for an expired sync token, cancelled instances that carry only
`id`, `recurringEventId` and `originalStartTime`, instance ids built from the master's
id and the original start, etags with `If-Match`, the same `iCalUID` on every
attendee's copy of a meeting). Serving them on a real port lets tests, the demo and
benchmarks run the real client library exactly as against Google.

Behaviour follows /work/shared/PROVIDERS.md sections 0 and C:

- Base path `calendar/v3/` (clients set `api_endpoint` to `http://HOST:PORT/calendar/v3/`),
  multipart batch at `/batch/calendar/v3`.
- events.list: `maxResults` default 250, capped at 2500; `nextPageToken`, or on the
  last page `nextSyncToken`. `syncToken` with any of `iCalUID, orderBy,
  privateExtendedProperty, q, sharedExtendedProperty, timeMin, timeMax, updatedMin`
  is a 400; with a sync token deleted events are always returned; an expired or
  forgotten token is a 410 `fullSyncRequired`. `singleEvents=false` (default) lists
  masters and their exceptions; a full listing includes cancelled exceptions of live
  series even without `showDeleted` (deleted events need `showDeleted`).
  `singleEvents=true` expands series over [timeMin, timeMax) (default: now .. now +
  `expand_horizon_days`) and drops masters.
- Ids: base32hex (a-v, 0-9), 5-1024 chars, client-chosen or generated; `iCalUID`
  `{id}@google.com` unless the client gave one. An instance's id is
  `{masterId}_{YYYYMMDDTHHMMSSZ}` (all-day: `{masterId}_{YYYYMMDD}`); get/update/patch/
  delete on an instance id that is not an exception yet act on the virtual instance
  (an update makes it an exception, a delete a cancelled one).
- A cancelled exception of a live series is served as `{kind, etag, id, status,
  recurringEventId, originalStartTime}` only; any other cancelled event is a deletion.
- Etags; `If-Match` on update/patch/delete, a mismatch is 412 `conditionNotMet`.
- events.watch channels post `sync` on creation, then `exists` after every change of
  the calendar, with the X-Goog-* headers; `channels/stop` ends one.
- Invitations (admin `invite`): the organizer's event is copied into each attendee's
  calendar under its own id and the same `iCalUID`, `organizer.self` false and that
  attendee's `self` true. An organizer's later edits reach the copies; an attendee's
  answer (its `responseStatus` on its own copy) reaches the organizer's copy and from
  there everyone's (Google does this for users of one domain).

UNCONFIRMED, hence configurable (`configure(...)`):

- `invalid_sync_token_status`: what a sync token the server never issued gets (410
  like an expired one, default, or 400).
- `sync_token_max_age`: seconds a sync token stays valid (Google: "some time").
- `deleted_shape`: a deleted event in a listing is `minimal` (id, status, etag and the
  instance fields; default) or `full` (its last content with status cancelled).
- `https_only_webhooks`: Google requires an https address for events.watch; off by
  default so tests can receive on plain http.
- `attendee_edits`: what an attendee's change of content on its copy (title, times,
  other people's answers) gets: "refuse" (403 `forbiddenForNonOrganizer`, default) or
  "local" (kept on that copy only). Its own `responseStatus` always goes through.

Deliberate simplifications: one calendar per user ("primary", or the user's address),
of which calendars.get reports only id, summary and timeZone; no events.instances,
ACLs, calendarList, reminders, conference data, attachments or free/busy; `q`
matches summary, description and location case-insensitively; tombstones are kept
forever.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import queue
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable
from urllib.parse import parse_qs, unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrulestr, rruleset
from fastapi import FastAPI, Request
from icalendar.parser import Contentline
from icalendar.prop import vDDDTypes
from fastapi.responses import Response

from emulators.google_batch import BatchRefused, batch_parts, serve_parts
from emulators.admin_routes import add_config_clock_stats
from emulators.google_people import MethodOverride
from emulators.json_response import EscapedJSONResponse

MAX_RESULTS = 2500
DEFAULT_RESULTS = 250
#: parameters events.list refuses beside a syncToken (PROVIDERS.md C)
SYNC_FORBIDDEN = ("iCalUID", "orderBy", "privateExtendedProperty", "q", "sharedExtendedProperty", "timeMin",
                  "timeMax", "updatedMin")
#: parameters pinned across the pages of one round
PAGE_PINNED = ("iCalUID", "privateExtendedProperty", "sharedExtendedProperty", "q", "showDeleted", "singleEvents",
               "timeMin", "timeMax", "updatedMin", "orderBy")
ID_RE = re.compile(r"[a-v0-9]{5,1024}")
INSTANCE_RE = re.compile(r"^(?P<master>[a-v0-9]{5,1024})_(?P<key>\d{8}(?:T\d{6}Z)?)$")
STATUSES = ("confirmed", "tentative", "cancelled")
RESPONSES = ("needsAction", "declined", "tentative", "accepted")
TRANSPARENCIES = ("opaque", "transparent")
VISIBILITIES = ("default", "public", "private", "confidential")
#: what a client writes (everything else is output-only or ignored)
WRITABLE = ("summary", "description", "location", "start", "end", "recurrence", "status", "transparency",
            "visibility", "attendees", "extendedProperties", "colorId", "guestsCanModify", "guestsCanInviteOthers",
            "guestsCanSeeOtherGuests", "anyoneCanAddSelf", "reminders", "source", "sequence", "eventType")
#: what an organizer's edit carries to the attendees' copies
SHARED_CONTENT = ("summary", "description", "location", "start", "end", "recurrence", "status", "transparency",
                  "visibility", "attendees", "sequence", "extendedProperties.shared", "guestsCanModify")
FAULT_KINDS = ("429", "403_rate", "500", "503", "401")
OPS = ("list", "get", "insert", "update", "patch", "delete", "watch", "stop", "any")  # calendars.get counts as "get"


class ApiError(Exception):
    """A Calendar-shaped error (legacy `errors[]` with domain and reason)."""

    def __init__(self, code: int, message: str, *, reason: str, domain: str = "global",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message,
                          "errors": [{"domain": self.domain, "reason": self.reason, "message": self.message}]}}


def bad_request(message: str, reason: str = "invalid") -> ApiError:
    return ApiError(400, message, reason=reason)


def not_found() -> ApiError:
    return ApiError(404, "Not Found", reason="notFound")


def gone() -> ApiError:
    return ApiError(410, "Resource has been deleted", reason="deleted")


def full_sync_required() -> ApiError:
    return ApiError(410, "Sync token is no longer valid, a full sync is required.", reason="fullSyncRequired",
                    domain="calendar")


def condition_not_met() -> ApiError:
    return ApiError(412, "Precondition Failed", reason="conditionNotMet")


def unauthenticated() -> ApiError:
    return ApiError(401, "Request had invalid authentication credentials.", reason="authError")


def fault_error(kind: str) -> ApiError:
    if kind == "429":
        return ApiError(429, "Rate Limit Exceeded", reason="rateLimitExceeded", domain="usageLimits")
    if kind == "403_rate":
        return ApiError(403, "Rate Limit Exceeded", reason="userRateLimitExceeded", domain="usageLimits")
    if kind == "500":
        return ApiError(500, "Backend Error", reason="backendError")
    if kind == "503":
        return ApiError(503, "Backend Error", reason="backendError")
    if kind == "401":
        return unauthenticated()
    raise ValueError(f"unknown fault kind {kind!r}")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _unb64(token: str) -> dict | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def _zone(name: Any, what: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise bad_request(f"Invalid time zone definition for {what} time.")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad_request(f"Invalid time zone definition for {what} time.") from None


@dataclass(frozen=True)
class When:
    """An EventDateTime read: a date (all-day) or an aware instant with its zone name ("" if none)."""

    value: date | datetime
    tz: str

    @property
    def all_day(self) -> bool:
        return not isinstance(self.value, datetime)

    def key(self) -> str:
        """The instance-id suffix and originalStartTime identity: UTC instant or date."""
        if isinstance(self.value, datetime):
            return self.value.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.value.strftime("%Y%m%d")

    def render(self) -> dict:
        if isinstance(self.value, datetime):
            out: dict[str, Any] = {"dateTime": self.value.isoformat()}
            if self.tz:
                out["timeZone"] = self.tz
            return out
        return {"date": self.value.isoformat()}

    def shifted(self, delta: timedelta) -> "When":
        if isinstance(self.value, datetime):
            z = ZoneInfo(self.tz) if self.tz else self.value.tzinfo
            return When((self.value.astimezone(timezone.utc) + delta).astimezone(z), self.tz)
        return When(self.value + delta, "")


def read_when(value: Any, what: str, *, need_zone: bool = False) -> When:
    if not isinstance(value, dict):
        raise bad_request(f"Missing {what} time.", "required")
    tz_name = value.get("timeZone")
    if value.get("date") is not None and value.get("dateTime") is not None:
        raise bad_request(f"Invalid {what} time: date and dateTime both set.")
    if value.get("date") is not None:
        try:
            return When(date.fromisoformat(str(value["date"])), "")
        except ValueError:
            raise bad_request(f"Invalid {what} time.") from None
    if value.get("dateTime") is None:
        raise bad_request(f"Missing {what} time.", "required")
    text = str(value["dateTime"])
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_request(f"Invalid {what} time.") from None
    if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d", text):
        raise bad_request(f"Invalid {what} time.")
    if tz_name is not None:
        z = _zone(tz_name, what)
        dt = dt.replace(tzinfo=z) if dt.tzinfo is None else dt.astimezone(z)
        return When(dt, str(tz_name))
    if need_zone or dt.tzinfo is None:
        raise bad_request(f"Missing time zone definition for {what} time.", "required")
    return When(dt, "")


# ---- recurrence ---------------------------------------------------------------------------------


def _recurrence_lines(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("Invalid recurrence rule.")
    lines = [v.strip() for v in value if v.strip()]
    for line in lines:
        name = re.split(r"[;:]", line, 1)[0].upper()
        if name not in ("RRULE", "EXRULE", "RDATE", "EXDATE"):
            raise bad_request("Invalid recurrence rule.")
    return lines


def rule_set(start: When, lines: list[str]):
    """dateutil's rruleset for a master: zoned in its own zone, all-day in naive dates.

    RRULE / EXRULE go through dateutil; RDATE / EXDATE values are read with icalendar
    (dateutil refuses `VALUE=DATE`, which all-day series need)."""
    if start.all_day:
        dtstart = datetime.combine(start.value, dtime(0))  # type: ignore[arg-type]
    else:
        dtstart = start.value
    rules = rruleset()
    for line in lines:
        name, params, value = Contentline(line).parts()
        name = name.upper()
        if name in ("RRULE", "EXRULE"):
            text = str(value)
            if start.all_day:  # a UTC UNTIL beside a date DTSTART: compare in wall-clock time
                text = re.sub(r"(UNTIL=\d{8}(?:T\d{6})?)Z", r"\1", text)
            rule = rrulestr(text, dtstart=dtstart)
            (rules.rrule if name == "RRULE" else rules.exrule)(rule)
            continue
        tzid = params.get("TZID")
        for part in str(value).split(","):
            parsed = vDDDTypes.from_ical(part.strip(), timezone=tzid) if tzid else vDDDTypes.from_ical(part.strip())
            if isinstance(parsed, datetime):
                if start.all_day:
                    parsed = datetime.combine(parsed.date(), dtime(0))
                elif parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=dtstart.tzinfo)  # floating: the master's zone
            elif isinstance(parsed, date):
                parsed = datetime.combine(parsed, dtime(0)) if start.all_day else \
                    datetime.combine(parsed, dtstart.timetz())
            else:
                raise ValueError("unsupported recurrence value")
            (rules.rdate if name == "RDATE" else rules.exdate)(parsed)
    return rules, dtstart


def _instant(key: str, start: When) -> datetime:
    if len(key) == 8:
        return datetime.strptime(key, "%Y%m%d")
    when = datetime.strptime(key, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return when if not start.all_day else when.replace(tzinfo=None)


def occurs(start: When, lines: list[str], key: str) -> bool:
    """Whether the series has an instance whose original start is `key`."""
    try:
        rules, _ = rule_set(start, lines)
        at = _instant(key, start)
        if start.all_day != (len(key) == 8):
            return False
        found = rules.between(at - timedelta(seconds=1), at + timedelta(seconds=1), inc=True)
    except Exception:  # a rule stored before it was validated this way: no instance, not a 500
        return False
    return any(abs((f - at).total_seconds()) < 1 for f in found)


def occurrences(start: When, lines: list[str], lo: datetime, hi: datetime, limit: int = 5000) -> list[When]:
    rules, dtstart = rule_set(start, lines)
    if start.all_day:
        lo, hi = lo.replace(tzinfo=None), hi.replace(tzinfo=None)
    out: list[When] = []
    for found in rules.xafter(lo - timedelta(microseconds=1), inc=True):
        if found >= hi or len(out) >= limit:
            break
        if start.all_day:
            out.append(When(found.date(), ""))
        else:
            out.append(When(found.astimezone(ZoneInfo(start.tz)) if start.tz else found, start.tz))
    return out


# ---- storage --------------------------------------------------------------------------------------


@dataclass
class Stored:
    """One event as the calendar holds it (the Google resource, without output-only extras)."""

    body: dict
    seq: int
    #: a deletion (served only with showDeleted or a sync token); a cancelled exception is not one
    deleted: bool = False

    @property
    def id(self) -> str:
        return self.body["id"]

    @property
    def cancelled_exception(self) -> bool:
        return self.body.get("status") == "cancelled" and bool(self.body.get("recurringEventId")) and not self.deleted


@dataclass
class Channel:
    id: str
    resource_id: str
    address: str
    token: str | None
    expiration_ms: int
    calendar: str
    number: int = 0


@dataclass
class Calendar:
    owner: str
    time_zone: str
    events: dict[str, Stored] = field(default_factory=dict)
    seq: int = 0
    #: tokens issued before this epoch are refused (410)
    epoch: int = 0
    resource_id: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    #: (iCalUID, original start key or "") -> event id: finds a meeting's copy without a scan
    by_uid: dict[tuple[str, str], str] = field(default_factory=dict)
    #: master id -> ids of its exceptions
    exceptions: dict[str, set[str]] = field(default_factory=dict)

    def put(self, stored: Stored) -> None:
        """Store an event and index it (an id's iCalUID and original start never change)."""
        self.events[stored.id] = stored
        uid = stored.body.get("iCalUID")
        if uid:
            self.by_uid[(uid, _orig_key(stored.body))] = stored.id
        master = stored.body.get("recurringEventId")
        if master:
            self.exceptions.setdefault(master, set()).add(stored.id)


class CalendarState:
    """Every user's calendar, channels, tokens, faults and counters. Thread-safe."""

    def __init__(self, *, default_user: str = "me@acme.example", time_zone: str = "UTC",
                 clock: Callable[[], float] = time.time, static_tokens: dict[str, str | None] | None = None,
                 access_token_lifetime: int = 3600, sync_token_max_age: float = 30 * 86400,
                 invalid_sync_token_status: int = 410, deleted_shape: str = "minimal",
                 https_only_webhooks: bool = False, propagate_invitations: bool = True,
                 expand_horizon_days: int = 365, attendee_edits: str = "refuse", push: Callable[[str, dict[str, str]], Any] | None = None) -> None:
        self._lock = threading.RLock()
        self.clock = clock
        self._offset = 0.0
        self.default_user = default_user.lower()
        self.default_time_zone = time_zone
        self.static_tokens: dict[str, str | None] = dict(static_tokens or {"emulator-token": None})
        self.access_token_lifetime = access_token_lifetime
        self._access_tokens: dict[str, tuple[float, str]] = {}
        self.token_validator: Callable[[str], bool] | None = None
        self.sync_token_max_age = float(sync_token_max_age)
        self.invalid_sync_token_status = invalid_sync_token_status
        self.deleted_shape = deleted_shape
        self.https_only_webhooks = https_only_webhooks
        self.propagate_invitations = propagate_invitations
        self.expand_horizon_days = expand_horizon_days
        #: "refuse" (403 forbiddenForNonOrganizer) or "local" (kept on the attendee's copy only)
        self.attendee_edits = attendee_edits
        #: push(address, headers) instead of an HTTP POST (tests that want no receiver)
        self.push = push
        self.calendars: dict[str, Calendar] = {}
        self.channels: dict[str, Channel] = {}
        self.notifications: list[dict[str, str]] = []
        self.calls: Counter = Counter()
        #: writes by their `sendUpdates` ("" when absent): who Google would have emailed
        self.send_updates: Counter = Counter()
        self.batches = 0
        self.batch_sizes: list[int] = []
        self._faults: list[list] = []
        self._serial = int.from_bytes(secrets.token_bytes(5), "big")
        self._outbox: queue.Queue = queue.Queue()
        self._sender: threading.Thread | None = None

    # ---- clock, config, stats ---------------------------------------------------------------

    def now(self) -> float:
        return self.clock() + self._offset

    def advance_clock(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def configure(self, **settings: Any) -> None:
        allowed = {"sync_token_max_age", "invalid_sync_token_status", "deleted_shape", "https_only_webhooks",
                   "propagate_invitations", "expand_horizon_days", "access_token_lifetime", "attendee_edits"}
        unknown = set(settings) - allowed
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        if settings.get("invalid_sync_token_status", 410) not in (400, 410):
            raise ValueError("invalid_sync_token_status must be 400 or 410")
        if settings.get("deleted_shape", "minimal") not in ("minimal", "full"):
            raise ValueError("deleted_shape must be minimal or full")
        if settings.get("attendee_edits", "refuse") not in ("refuse", "local"):
            raise ValueError("attendee_edits must be refuse or local")
        with self._lock:
            for k, v in settings.items():
                setattr(self, k, v)

    def stats(self) -> dict:
        with self._lock:
            return {"calls": dict(self.calls), "batches": self.batches, "batch_sizes": list(self.batch_sizes),
                    "notifications": len(self.notifications), "channels": len(self.channels),
                    "events": {u: sum(1 for s in c.events.values() if not s.deleted) for u, c in self.calendars.items()}}

    def inject_fault(self, kind: str, method: str = "any", count: int = 1) -> None:
        fault_error(kind)
        if method not in OPS:
            raise ValueError(f"unknown method {method!r}")
        with self._lock:
            self._faults.append([kind, method, int(count)])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, name: str) -> ApiError | None:
        op = name.rsplit(".", 1)[-1]
        with self._lock:
            for f in self._faults:
                if f[2] > 0 and f[1] in ("any", op):
                    f[2] -= 1
                    return fault_error(f[0])
        return None

    # ---- auth -------------------------------------------------------------------------------------

    def add_token(self, token: str, user: str | None = None) -> None:
        with self._lock:
            self.static_tokens[token] = user.lower() if user else None
            if user:
                self.calendar(user)

    def issue_access_token(self, refresh_token: str, user: str | None = None) -> dict:
        with self._lock:
            token = "ya29.emu." + secrets.token_urlsafe(24)
            self._access_tokens[token] = (self.now() + self.access_token_lifetime, (user or self.default_user).lower())
            return {"access_token": token, "expires_in": self.access_token_lifetime, "token_type": "Bearer",
                    "scope": "https://www.googleapis.com/auth/calendar"}

    def user_for_token(self, token: str) -> str | None:
        with self._lock:
            if token in self.static_tokens:
                return self.static_tokens[token] or self.default_user
            issued = self._access_tokens.get(token)
            if issued is not None and issued[0] > self.now():
                return issued[1]
        validator = self.token_validator
        if validator is not None and validator(token):
            return self.default_user
        return None

    # ---- calendars ----------------------------------------------------------------------------------

    def calendar(self, user: str | None = None, time_zone: str | None = None) -> Calendar:
        user = (user or self.default_user).lower()
        with self._lock:
            cal = self.calendars.get(user)
            if cal is None:
                cal = self.calendars[user] = Calendar(owner=user, time_zone=time_zone or self.default_time_zone)
            elif time_zone:
                cal.time_zone = time_zone
            return cal

    def _resolve(self, calendar_id: str, user: str) -> Calendar:
        if calendar_id == "primary" or calendar_id.lower() == user:
            return self.calendar(user)
        raise not_found()

    def _new_id(self) -> str:
        self._serial += 1 + secrets.randbelow(1 << 20)
        alphabet = "0123456789abcdefghijklmnopqrstuv"
        n, out = self._serial * (1 << 20) + secrets.randbelow(1 << 20), ""
        while n:
            n, r = divmod(n, 32)
            out = alphabet[r] + out
        return out.rjust(26, "0")

    def _etag(self) -> str:
        self._serial += 1
        return f'"{int(self.now() * 1000)}{self._serial % 1000:03d}"'

    def _touch(self, cal: Calendar, stored: Stored) -> None:
        """Record a change: a new sequence number, etag and `updated`; channels hear of it."""
        cal.seq += 1
        stored.seq = cal.seq
        stored.body["etag"] = self._etag()
        stored.body["updated"] = rfc3339(self.now())
        self._notify(cal)

    # ---- admin: content the user made in Google's own UI ------------------------------------------------

    def put_event(self, user: str | None, event: dict) -> dict:
        """An event the user made in Google's UI (reaching its guests' calendars here), or,
        with `organizer: {"email"}` of someone else, an invitation from outside."""
        with self._lock:
            cal = self.calendar(user)
            event = copy.deepcopy(event)
            organizer = event.pop("organizer", None)
            if organizer is not None:
                if not isinstance(organizer, dict) or not isinstance(organizer.get("email"), str):
                    raise bad_request("Invalid value for: organizer")
                organizer = {"email": organizer["email"].strip().lower()}
            stored = self._insert(cal, event, organizer=organizer)
            self._after_write(cal, stored)
            return self._render(cal, stored)

    def invite(self, organizer: str, event: dict) -> dict[str, dict]:
        """The organizer's meeting, and a copy in each attendee's calendar that exists here
        (the same iCalUID). Returns each calendar's event by owner."""
        with self._lock:
            cal = self.calendar(organizer)
            stored = self._insert(cal, copy.deepcopy(event))
            self._propagate(cal, stored)
            out = {cal.owner: self._render(cal, stored)}
            uid = stored.body["iCalUID"]
            for other in self.calendars.values():
                found = _copy_in(other, uid, "") if other is not cal else None
                if found is not None:
                    out[other.owner] = self._render(other, found)
            return out

    def expire_sync_tokens(self, user: str | None = None) -> None:
        """Every sync token of this calendar (None: of all calendars) gets a 410 from now on."""
        with self._lock:
            cals = [self.calendar(user)] if user else list(self.calendars.values())
            for cal in cals:
                cal.epoch += 1

    def event(self, user: str | None, event_id: str) -> dict:
        with self._lock:
            cal = self.calendar(user)
            return self._render(cal, self._find(cal, event_id, allow_deleted=True))

    # ---- the API -------------------------------------------------------------------------------------

    def _find(self, cal: Calendar, event_id: str, *, allow_deleted: bool = False) -> Stored:
        stored = cal.events.get(event_id)
        if stored is not None:
            if stored.deleted and not allow_deleted:
                raise gone()
            return stored
        virtual = self._virtual(cal, event_id)
        if virtual is None:
            raise not_found()
        return virtual

    def _virtual(self, cal: Calendar, event_id: str) -> Stored | None:
        """The instance `{masterId}_{key}` of a live series that has no exception yet."""
        match = INSTANCE_RE.match(event_id)
        if not match:
            return None
        master = cal.events.get(match["master"])
        if master is None or master.deleted or not master.body.get("recurrence"):
            return None
        start = read_when(master.body["start"], "start")
        if not occurs(start, master.body["recurrence"], match["key"]):
            return None
        original = _instant(match["key"], start)
        if start.all_day:
            orig = When(original.date(), "")
        else:
            orig = When(original.astimezone(ZoneInfo(start.tz)) if start.tz else original, start.tz)
        end = read_when(master.body["end"], "end")
        duration = _minus(end, start)
        body = {k: copy.deepcopy(v) for k, v in master.body.items()
                if k not in ("id", "recurrence", "etag", "updated", "htmlLink")}
        body.update(id=event_id, recurringEventId=master.id, originalStartTime=orig.render(), start=orig.render(),
                    end=orig.shifted(duration).render(), etag=master.body["etag"], updated=master.body["updated"])
        return Stored(body=body, seq=master.seq)

    def _check_if_match(self, stored: Stored, headers: dict[str, str]) -> None:
        wanted = headers.get("if-match")
        if wanted and wanted.strip() != "*" and wanted.strip() != stored.body.get("etag"):
            raise condition_not_met()

    def _clean_input(self, cal: Calendar, body: Any, *, base: dict | None = None) -> dict:
        """A client's event body, validated: the fields we keep, or a 400 naming the problem."""
        if not isinstance(body, dict):
            raise bad_request("Invalid event body.")
        out = copy.deepcopy(base) if base is not None else {}
        for key in WRITABLE:
            if key in body:
                out[key] = copy.deepcopy(body[key])
        for key in ("summary", "description", "location"):
            if key in out and out[key] is not None and not isinstance(out[key], str):
                raise bad_request(f"Invalid value for: {key}")
        status = out.get("status") or "confirmed"
        if status not in STATUSES:
            raise bad_request("Invalid value for: status")
        if out.get("transparency") is not None and out["transparency"] not in TRANSPARENCIES:
            raise bad_request("Invalid value for: transparency")
        if out.get("visibility") is not None and out["visibility"] not in VISIBILITIES:
            raise bad_request("Invalid value for: visibility")
        recurrence = _recurrence_lines(out.get("recurrence"))
        if recurrence:
            out["recurrence"] = recurrence
        else:
            out.pop("recurrence", None)
        start = read_when(out.get("start"), "start", need_zone=bool(recurrence) and "dateTime" in (out.get("start") or {}))
        end = read_when(out.get("end"), "end")
        if start.all_day != end.all_day:
            raise bad_request("Start and end times must either both be date or both be dateTime.")
        if _minus(end, start) < timedelta(0):
            raise bad_request("The specified time range is empty.", "timeRangeEmpty")
        out["start"], out["end"] = start.render(), end.render()
        if recurrence:
            try:
                rules, _ = rule_set(start, recurrence)
                for _i, _d in zip(range(3), rules):
                    pass
            except Exception:  # any refusal of dateutil or icalendar is the client's bad rule
                raise bad_request("Invalid recurrence rule.") from None
        attendees = out.get("attendees")
        if attendees is not None:
            if not isinstance(attendees, list):
                raise bad_request("Invalid value for: attendees")
            clean = []
            for a in attendees:
                if not isinstance(a, dict) or not isinstance(a.get("email"), str) or "@" not in a["email"]:
                    raise bad_request("Invalid attendee email.")
                a = {k: v for k, v in a.items() if k in ("email", "displayName", "optional", "responseStatus",
                                                         "comment", "additionalGuests", "resource")}
                a["email"] = a["email"].strip().lower()
                if a.get("responseStatus", "needsAction") not in RESPONSES:
                    raise bad_request("Invalid value for: responseStatus")
                a.setdefault("responseStatus", "needsAction")
                clean.append(a)
            out["attendees"] = clean
        ext = out.get("extendedProperties")
        if ext is not None:
            if not isinstance(ext, dict) or any(k not in ("private", "shared") or not isinstance(v, dict)
                                                for k, v in ext.items()):
                raise bad_request("Invalid value for: extendedProperties")
            for part in ext.values():
                if any(not isinstance(k, str) or not isinstance(v, str) for k, v in part.items()):
                    raise bad_request("Invalid value for: extendedProperties")
        if "sequence" in out and not isinstance(out["sequence"], int):
            raise bad_request("Invalid value for: sequence")
        out["status"] = status
        return out

    def _finish(self, cal: Calendar, body: dict, organizer: dict) -> dict:
        """Output fields every stored event carries."""
        body["kind"] = "calendar#event"
        body["organizer"] = organizer
        body.setdefault("creator", {"email": organizer.get("email")})
        body.setdefault("sequence", 0)
        body["htmlLink"] = "https://www.google.com/calendar/event?eid=" + base64.urlsafe_b64encode(
            f"{body['id']} {cal.owner}".encode()).decode().rstrip("=")
        for a in body.get("attendees") or []:
            a.pop("self", None)
            a.pop("organizer", None)
            if a["email"] == cal.owner:
                a["self"] = True
            if a["email"] == organizer.get("email"):
                a["organizer"] = True
        if body.get("transparency") == "opaque":
            body.pop("transparency")
        if body.get("visibility") == "default":
            body.pop("visibility")
        return body

    def _insert(self, cal: Calendar, payload: Any, *, organizer: dict | None = None) -> Stored:
        body = self._clean_input(cal, payload)
        if body["status"] == "cancelled":
            raise bad_request("Cannot create a cancelled event.")
        given = payload.get("id")
        if given is not None:
            if not isinstance(given, str) or not ID_RE.fullmatch(given):
                raise bad_request("Invalid resource id value.", "invalid")
            if given in cal.events:
                raise ApiError(409, "The requested identifier already exists.", reason="duplicate")
            event_id = given
        else:
            event_id = self._new_id()
        uid = payload.get("iCalUID")
        if uid is not None and (not isinstance(uid, str) or not uid.strip()):
            raise bad_request("Invalid iCalUID value.")
        body["id"] = event_id
        body["iCalUID"] = uid.strip() if uid else f"{event_id}@google.com"
        body["created"] = rfc3339(self.now())
        stored = Stored(body=self._finish(cal, body, organizer or {"email": cal.owner, "self": True}), seq=0)
        cal.put(stored)
        self._touch(cal, stored)
        return stored

    def _write_instance(self, cal: Calendar, stored: Stored, body: dict) -> Stored:
        """An update of an instance (virtual or an exception): stored as an exception."""
        body["id"] = stored.id
        body["recurringEventId"] = stored.body["recurringEventId"]
        body["originalStartTime"] = stored.body["originalStartTime"]
        body["iCalUID"] = stored.body.get("iCalUID") or cal.events[stored.body["recurringEventId"]].body["iCalUID"]
        body.pop("recurrence", None)
        if body.get("status") == "cancelled":
            return self._cancel_instance(cal, stored)
        body["created"] = stored.body.get("created") or rfc3339(self.now())
        new = Stored(body=self._finish(cal, body, stored.body.get("organizer") or {"email": cal.owner, "self": True}),
                     seq=stored.seq)
        cal.put(new)
        self._touch(cal, new)
        return new

    def _cancel_instance(self, cal: Calendar, stored: Stored) -> Stored:
        new = Stored(body={"kind": "calendar#event", "id": stored.id, "status": "cancelled",
                           "recurringEventId": stored.body["recurringEventId"],
                           "originalStartTime": stored.body["originalStartTime"],
                           "iCalUID": stored.body.get("iCalUID") or cal.events[stored.body["recurringEventId"]].body["iCalUID"]},
                     seq=stored.seq)
        cal.put(new)
        self._touch(cal, new)
        return new

    def _replace(self, cal: Calendar, stored: Stored, payload: Any, *, merge: bool) -> Stored:
        if merge:
            if not isinstance(payload, dict):
                raise bad_request("Invalid event body.")
            base = {k: v for k, v in stored.body.items() if k in WRITABLE}
            if stored.cancelled_exception:
                master = cal.events[stored.body["recurringEventId"]]
                base = {k: v for k, v in self._virtual_or_master_copy(cal, master, stored).items() if k in WRITABLE}
            payload = _merge(base, payload)
        body = self._clean_input(cal, payload)
        self._check_organizer_only(cal, stored, body)
        if stored.body.get("recurringEventId"):
            return self._write_instance(cal, stored, body)
        body["id"] = stored.id
        body["iCalUID"] = stored.body["iCalUID"]
        body["created"] = stored.body.get("created")
        if "sequence" not in (payload or {}):
            body["sequence"] = int(stored.body.get("sequence") or 0) + (
                1 if any(body.get(k) != stored.body.get(k) for k in ("start", "end", "recurrence")) else 0)
        if body["status"] == "cancelled":
            self._delete(cal, stored)
            return cal.events[stored.id]
        new = Stored(body=self._finish(cal, body, stored.body.get("organizer") or {"email": cal.owner, "self": True}),
                     seq=stored.seq)
        cal.put(new)
        self._touch(cal, new)
        return new

    def _check_organizer_only(self, cal: Calendar, stored: Stored, body: dict) -> None:
        """On an attendee's copy only that attendee's answer (and its own private bits) may
        change; content and other people's answers are the organizer's (403
        forbiddenForNonOrganizer), unless `attendee_edits` is "local"."""
        organizer = ((stored.body.get("organizer") or {}).get("email") or "").lower()
        if self.attendee_edits == "local" or not organizer or organizer == cal.owner or stored.cancelled_exception:
            return
        current = stored.body
        changed = [k for k in ("summary", "description", "location", "recurrence")
                   if (body.get(k) or None) != (current.get(k) or None)]
        changed += [k for k in ("start", "end") if read_when(body[k], k).key() != read_when(current[k], k).key()]
        if (body.get("status") or "confirmed") != (current.get("status") or "confirmed"):
            changed.append("status")

        def answers(b: dict) -> dict:
            return {a["email"]: a.get("responseStatus") or "needsAction" for a in b.get("attendees") or []
                    if a.get("email") != cal.owner}

        if answers(body) != answers(current):
            changed.append("attendees")
        if changed:
            raise ApiError(403, "The operation can only be performed by the organizer of the event.",
                           reason="forbiddenForNonOrganizer")

    def _virtual_or_master_copy(self, cal: Calendar, master: Stored, stored: Stored) -> dict:
        """A cancelled instance patched back to life starts from the master's content."""
        body = {k: copy.deepcopy(v) for k, v in master.body.items() if k in WRITABLE and k != "recurrence"}
        start = read_when(master.body["start"], "start")
        orig = read_when(stored.body["originalStartTime"], "originalStart")
        body["start"] = orig.render()
        body["end"] = orig.shifted(_minus(read_when(master.body["end"], "end"), start)).render()
        body["status"] = "confirmed"
        return body

    def _delete(self, cal: Calendar, stored: Stored) -> None:
        if stored.body.get("recurringEventId"):
            if stored.cancelled_exception:
                raise gone()
            self._cancel_instance(cal, stored)
            return
        body = stored.body
        body["status"] = "cancelled"
        stored.deleted = True
        self._touch(cal, stored)
        for other_id in sorted(cal.exceptions.get(stored.id, ())):
            other = cal.events[other_id]
            if not other.deleted:
                other.deleted = True
                other.body["status"] = "cancelled"
                self._touch(cal, other)

    # ---- invitations -----------------------------------------------------------------------------------

    def _organizer_cal(self, cal: Calendar, stored: Stored) -> Calendar | None:
        org = ((stored.body.get("organizer") or {}).get("email") or "").lower()
        if stored.cancelled_exception or stored.deleted:
            master = cal.events.get(stored.body.get("recurringEventId") or "") or stored
            org = ((master.body.get("organizer") or {}).get("email") or "").lower()
        return self.calendars.get(org)

    def _after_write(self, cal: Calendar, stored: Stored) -> None:
        if not self.propagate_invitations:
            return
        org_cal = self._organizer_cal(cal, stored)
        if org_cal is cal:
            self._propagate(cal, stored)
        elif org_cal is not None and not stored.deleted and not stored.cancelled_exception:
            self._answer(cal, org_cal, stored)

    def _answer(self, cal: Calendar, org_cal: Calendar, stored: Stored) -> None:
        """An attendee's response on its copy reaches the organizer's copy, then everyone's."""
        mine = next((a for a in stored.body.get("attendees") or [] if a.get("email") == cal.owner), None)
        if mine is None:
            return
        target = _copy_in(org_cal, stored.body.get("iCalUID"), _orig_key(stored.body))
        if target is None or target.deleted or target.cancelled_exception:
            return
        for a in target.body.get("attendees") or []:
            if a.get("email") == cal.owner and a.get("responseStatus") != mine.get("responseStatus"):
                a["responseStatus"] = mine.get("responseStatus")
                self._touch(org_cal, target)
                self._propagate(org_cal, target, skip=cal)
                return

    def _propagate(self, cal: Calendar, stored: Stored, *, skip: Calendar | None = None) -> None:
        """The organizer's event (master, exception or deletion) into each attendee's calendar."""
        uid = stored.body.get("iCalUID")
        if not uid:
            return
        key = _orig_key(stored.body)
        emails = {a.get("email") for a in stored.body.get("attendees") or []}
        holders = {c.owner for c in self.calendars.values() if _copy_in(c, uid, "") is not None}
        master = cal.events.get(stored.body.get("recurringEventId") or "") if key else stored
        if master is not None:
            emails |= {a.get("email") for a in master.body.get("attendees") or []}
        for email in sorted(e for e in (emails | holders) if e and e != cal.owner):
            other = self.calendars.get(email)
            if other is None or other is skip:
                continue
            existing = _copy_in(other, uid, key)
            dropped = not key and email not in emails  # taken off the guest list: the copy goes
            if stored.deleted or dropped:
                if existing is not None and not existing.deleted:
                    self._delete(other, existing)
                continue
            if key:
                copy_master = _copy_in(other, uid, "")
                if copy_master is None or copy_master.deleted:
                    continue
                instance_id = f"{copy_master.id}_{key}"
                target = existing or self._virtual(other, instance_id)
                if target is None:
                    continue
                if stored.cancelled_exception:
                    if not (existing is not None and existing.cancelled_exception):
                        self._cancel_instance(other, target)
                    continue
                body = _shared_content(stored.body, existing.body if existing else None)
                body.update(id=instance_id, iCalUID=uid, recurringEventId=copy_master.id,
                            originalStartTime=stored.body["originalStartTime"], created=rfc3339(self.now()))
                new = Stored(body=self._finish(other, body, {"email": cal.owner}), seq=0)
                other.put(new)
                self._touch(other, new)
                continue
            body = _shared_content(stored.body, existing.body if existing else None)
            if existing is None:
                body.update(id=self._new_id(), iCalUID=uid, created=rfc3339(self.now()))
            else:
                body.update(id=existing.id, iCalUID=uid, created=existing.body.get("created"))
            new = Stored(body=self._finish(other, body, {"email": cal.owner}), seq=0)
            other.put(new)
            self._touch(other, new)

    # ---- dispatch targets ---------------------------------------------------------------------------------

    def events_insert(self, cal: Calendar, q: dict, body: Any, headers: dict) -> tuple[int, dict]:
        if not isinstance(body, dict):
            raise bad_request("Invalid event body.")
        stored = self._insert(cal, body)
        self._after_write(cal, stored)
        return 200, self._render(cal, stored)

    def events_get(self, cal: Calendar, q: dict, event_id: str, headers: dict) -> tuple[int, dict]:
        return 200, self._render(cal, self._find(cal, event_id, allow_deleted=True))

    def events_update(self, cal: Calendar, q: dict, event_id: str, body: Any, headers: dict, *, merge: bool) -> tuple[int, dict]:
        stored = self._find(cal, event_id)
        self._check_if_match(stored, headers)
        new = self._replace(cal, stored, body, merge=merge)
        self._after_write(cal, new)
        return 200, self._render(cal, new)

    def events_delete(self, cal: Calendar, q: dict, event_id: str, headers: dict) -> tuple[int, dict]:
        stored = self._find(cal, event_id)
        self._check_if_match(stored, headers)
        self._delete(cal, stored)
        self._after_write(cal, cal.events[event_id])
        return 204, {}

    def events_list(self, cal: Calendar, q: dict) -> tuple[int, dict]:
        sync = _one(q, "syncToken")
        page = _one(q, "pageToken")
        size = _int(q, "maxResults", DEFAULT_RESULTS, lo=1)
        size = min(size, MAX_RESULTS)
        show_deleted = _bool(q, "showDeleted")
        single = _bool(q, "singleEvents")
        order = _one(q, "orderBy")
        if order not in (None, "startTime", "updated"):
            raise bad_request("Invalid value for: orderBy")
        if order == "startTime" and not single:
            raise bad_request("The requested ordering is not available for the particular query.")
        if sync is not None:
            bad = [p for p in SYNC_FORBIDDEN if p in q]
            if bad:
                raise bad_request(f"Sync token cannot be used with {bad[0]}.")
        pinned = hashlib.sha256(json.dumps({k: q.get(k) for k in PAGE_PINNED}, sort_keys=True).encode()).hexdigest()[:16]
        if page is not None:
            state = _unb64(page)
            if state is None or state.get("c") != cal.resource_id or state.get("f") != pinned:
                raise bad_request("Invalid page token value.")
            lo, hi, after, epoch = int(state["lo"]), int(state["hi"]), state["a"], int(state["e"])
            if epoch != cal.epoch and state.get("lo"):
                raise full_sync_required()
        elif sync is not None:
            lo = self._read_sync_token(cal, sync)
            hi, after = cal.seq, 0
        else:
            lo, hi, after = 0, cal.seq, 0
        is_delta = lo > 0 or sync is not None or (page is not None and bool(state.get("d")))
        if single:
            items, next_after = self._expanded(cal, q, lo, hi, after, size, is_delta, show_deleted)
        else:
            candidates = sorted((s for s in cal.events.values() if lo < s.seq <= hi and s.seq > int(after)),
                                key=lambda s: s.seq)
            matching = [s for s in candidates if self._listed(cal, s, q, is_delta, show_deleted)]
            chosen = matching[:size]
            items = [self._render(cal, s) for s in chosen]
            next_after = chosen[-1].seq if len(matching) > size else None
        out: dict[str, Any] = {"kind": "calendar#events", "etag": self._etag(), "summary": cal.owner,
                               "updated": rfc3339(self.now()), "timeZone": cal.time_zone, "accessRole": "owner",
                               "defaultReminders": [], "items": items}
        if next_after is not None:
            out["nextPageToken"] = _b64({"c": cal.resource_id, "f": pinned, "lo": lo, "hi": hi, "a": next_after,
                                         "e": cal.epoch, "d": is_delta})
        else:
            out["nextSyncToken"] = _b64({"c": cal.resource_id, "e": cal.epoch, "s": hi, "t": int(self.now())})
        return 200, out

    def _read_sync_token(self, cal: Calendar, token: str) -> int:
        data = _unb64(token)
        if data is None or data.get("c") != cal.resource_id or not isinstance(data.get("s"), int):
            if self.invalid_sync_token_status == 400:
                raise bad_request("Invalid sync token value.")
            raise full_sync_required()
        if data.get("e") != cal.epoch or self.now() - float(data.get("t") or 0) > self.sync_token_max_age:
            raise full_sync_required()
        return max(int(data["s"]), 0) or -1  # -1: a token issued on an empty calendar still means "delta"

    def _listed(self, cal: Calendar, s: Stored, q: dict, is_delta: bool, show_deleted: bool) -> bool:
        if s.deleted and not (is_delta or show_deleted):
            return False
        uid = _one(q, "iCalUID")
        if uid is not None and s.body.get("iCalUID") != uid:
            return False
        for name, part in (("privateExtendedProperty", "private"), ("sharedExtendedProperty", "shared")):
            for cond in q.get(name) or []:
                k, sep, v = cond.partition("=")
                if not sep:
                    raise bad_request(f"Invalid value for: {name}")
                props = ((s.body.get("extendedProperties") or {}).get(part) or {})
                if props.get(k) != v:
                    return False
        text = _one(q, "q")
        if text:
            hay = " ".join(str(s.body.get(k) or "") for k in ("summary", "description", "location")).lower()
            if text.lower() not in hay:
                return False
        updated_min = _one(q, "updatedMin")
        if updated_min:
            if (s.body.get("updated") or "") < _rfc(updated_min, "updatedMin"):
                return False
        t_min, t_max = _one(q, "timeMin"), _one(q, "timeMax")
        if (t_min or t_max) and not s.deleted and not s.cancelled_exception:
            start = read_when(s.body["start"], "start")
            end = read_when(s.body["end"], "end")
            lo = _parse_rfc(t_min, "timeMin") if t_min else None
            hi = _parse_rfc(t_max, "timeMax") if t_max else None
            if s.body.get("recurrence"):
                if hi is not None and _utc(start, cal) >= hi:
                    return False
                return True
            if lo is not None and _utc(end, cal) <= lo:
                return False
            if hi is not None and _utc(start, cal) >= hi:
                return False
        return True

    def _expanded(self, cal: Calendar, q: dict, lo: int, hi: int, after: Any, size: int, is_delta: bool,
                  show_deleted: bool) -> tuple[list[dict], Any]:
        """singleEvents=true: every instance in the window, as Google returns them (no masters)."""
        t_min, t_max = _one(q, "timeMin"), _one(q, "timeMax")
        w_lo = _parse_rfc(t_min, "timeMin") if t_min else datetime.fromtimestamp(self.now(), timezone.utc)
        w_hi = _parse_rfc(t_max, "timeMax") if t_max else w_lo + timedelta(days=self.expand_horizon_days)
        out: list[dict] = []
        for s in sorted((s for s in cal.events.values() if lo < s.seq <= hi), key=lambda s: s.seq):
            if not self._listed(cal, s, {k: v for k, v in q.items() if k not in ("timeMin", "timeMax")}, is_delta,
                                show_deleted):
                continue
            if s.body.get("recurrence") and not s.deleted:
                start = read_when(s.body["start"], "start")
                for when in occurrences(start, s.body["recurrence"], w_lo, w_hi):
                    iid = f"{s.id}_{when.key()}"
                    if iid in cal.events:
                        continue
                    v = self._virtual(cal, iid)
                    if v is not None:
                        out.append(self._render(cal, v))
            elif s.body.get("recurringEventId") or not s.body.get("recurrence"):
                if s.cancelled_exception and not (is_delta or show_deleted):
                    continue
                if not s.deleted and not s.cancelled_exception:
                    start, end = read_when(s.body["start"], "start"), read_when(s.body["end"], "end")
                    if _utc(end, cal) <= w_lo or _utc(start, cal) >= w_hi:
                        continue
                out.append(self._render(cal, s))
        if _one(q, "orderBy") == "startTime":
            out.sort(key=lambda b: _sort_start(b, cal))
        offset = int(after or 0)
        chunk = out[offset: offset + size]
        return chunk, (offset + size if offset + size < len(out) else None)

    def _render(self, cal: Calendar, stored: Stored) -> dict:
        body = copy.deepcopy(stored.body)
        if stored.deleted and self.deleted_shape == "minimal":
            keep = ("kind", "etag", "id", "status", "recurringEventId", "originalStartTime", "updated")
            return {k: body[k] for k in keep if k in body}
        if stored.cancelled_exception:
            keep = ("kind", "etag", "id", "status", "recurringEventId", "originalStartTime")
            return {k: body[k] for k in keep if k in body}
        if body.get("organizer"):
            body["organizer"] = dict(body["organizer"])
            if body["organizer"].get("email") == cal.owner:
                body["organizer"]["self"] = True
            else:
                body["organizer"].pop("self", None)
        return body

    # ---- channels ----------------------------------------------------------------------------------------

    def events_watch(self, cal: Calendar, q: dict, body: Any) -> tuple[int, dict]:
        if not isinstance(body, dict):
            raise bad_request("Invalid channel body.")
        cid, address = body.get("id"), body.get("address")
        if not isinstance(cid, str) or not re.fullmatch(r"[A-Za-z0-9\-_+/=]{1,64}", cid):
            raise bad_request("Invalid channel id.", "required")
        if body.get("type") not in ("web_hook", "webhook"):
            raise bad_request("Invalid channel type.", "invalid")
        if not isinstance(address, str) or not re.match(r"^https?://", address):
            raise bad_request("Invalid webhook address.", "invalid")
        if self.https_only_webhooks and not address.startswith("https://"):
            raise bad_request("WebHook callback must be HTTPS: " + "address", "push.webhookUrlNotHttps")
        if cid in self.channels:
            raise bad_request(f"Channel id {cid} not unique", "channelIdNotUnique")
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            raise bad_request("Invalid channel token.")
        max_ms = int((self.now() + 30 * 86400) * 1000)
        expiration = body.get("expiration")
        try:
            exp = int(expiration) if expiration is not None else int((self.now() + 7 * 86400) * 1000)
        except (TypeError, ValueError):
            raise bad_request("Invalid channel expiration.") from None
        exp = min(exp, max_ms)
        channel = Channel(id=cid, resource_id=cal.resource_id, address=address, token=token, expiration_ms=exp,
                          calendar=cal.owner)
        self.channels[cid] = channel
        self._send(channel, "sync")
        out = {"kind": "api#channel", "id": cid, "resourceId": cal.resource_id,
               "resourceUri": f"https://www.googleapis.com/calendar/v3/calendars/{cal.owner}/events?alt=json",
               "expiration": str(exp)}
        if token is not None:
            out["token"] = token
        return 200, out

    def channels_stop(self, body: Any, user: str) -> tuple[int, dict]:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("resourceId"), str):
            raise bad_request("Invalid channel.", "required")
        channel = self.channels.get(body["id"])
        if channel is None or channel.resource_id != body["resourceId"] or channel.calendar != user:
            raise ApiError(404, f"Channel '{body['id']}' not found for project", reason="notFound")
        del self.channels[body["id"]]
        return 204, {}

    def _notify(self, cal: Calendar) -> None:
        for channel in list(self.channels.values()):
            if channel.calendar == cal.owner:
                self._send(channel, "exists")

    def _send(self, channel: Channel, state: str) -> None:
        if channel.expiration_ms <= self.now() * 1000:
            self.channels.pop(channel.id, None)
            return
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": format_datetime(datetime.fromtimestamp(channel.expiration_ms / 1000, timezone.utc), usegmt=True),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": f"https://www.googleapis.com/calendar/v3/calendars/{channel.calendar}/events?alt=json",
            "X-Goog-Resource-State": state,
            "X-Goog-Message-Number": str(1 if state == "sync" else channel.number + 1),
        }
        channel.number = int(headers["X-Goog-Message-Number"])
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        self.notifications.append({"address": channel.address, **headers})
        self._outbox.put((channel.address, headers))
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(target=self._deliver_loop, name="calendar-push", daemon=True)
            self._sender.start()

    def _deliver_loop(self) -> None:
        """One sender, so a receiver sees a channel's messages in number order."""
        import httpx

        while True:
            address, headers = self._outbox.get()
            try:
                if self.push is not None:
                    self.push(address, headers)
                else:
                    httpx.post(address, headers=headers, content=b"", timeout=10)
            except Exception:  # a receiver's failure is its own; Google retries later (not emulated)
                pass


# ---- helpers ------------------------------------------------------------------------------------------------


def _minus(end: When, start: When) -> timedelta:
    if start.all_day:
        return timedelta(days=(end.value - start.value).days)  # type: ignore[operator]
    return end.value.astimezone(timezone.utc) - start.value.astimezone(timezone.utc)  # type: ignore[union-attr]


def _utc(when: When, cal: Calendar) -> datetime:
    if isinstance(when.value, datetime):
        return when.value.astimezone(timezone.utc)
    return datetime.combine(when.value, dtime(0), tzinfo=ZoneInfo(cal.time_zone)).astimezone(timezone.utc)


def _sort_start(body: dict, cal: Calendar) -> datetime:
    try:
        return _utc(read_when(body.get("start"), "start"), cal)
    except ApiError:
        return datetime.max.replace(tzinfo=timezone.utc)


def _orig_key(body: dict) -> str:
    orig = body.get("originalStartTime")
    return read_when(orig, "originalStart").key() if orig else ""


def _copy_in(cal: Calendar, uid: Any, key: str) -> Stored | None:
    event_id = cal.by_uid.get((uid, key)) if isinstance(uid, str) else None
    return cal.events.get(event_id) if event_id else None


def _shared_content(source: dict, existing: dict | None) -> dict:
    """What an attendee's copy takes from the organizer's: content, not its private properties."""
    out: dict[str, Any] = {}
    for key in SHARED_CONTENT:
        if key == "extendedProperties.shared":
            shared = (source.get("extendedProperties") or {}).get("shared")
            private = ((existing or {}).get("extendedProperties") or {}).get("private")
            ext = {k: v for k, v in (("shared", shared), ("private", private)) if v}
            if ext:
                out["extendedProperties"] = copy.deepcopy(ext)
        elif key in source:
            out[key] = copy.deepcopy(source[key])
    return out


def _merge(base: dict, patch: dict) -> dict:
    """Patch semantics: objects merge key by key, anything else (arrays too) replaces."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("start", "end"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _one(q: dict, name: str) -> str | None:
    values = q.get(name)
    return values[-1] if values else None


def _int(q: dict, name: str, default: int, *, lo: int) -> int:
    value = _one(q, name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise bad_request(f"Invalid value for: {name}") from None
    if n < lo:
        raise bad_request(f"Invalid value for: {name}")
    return n


def _bool(q: dict, name: str) -> bool:
    value = _one(q, name)
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise bad_request(f"Invalid value for: {name}")
    return value.lower() == "true"


def _parse_rfc(value: str, name: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"Invalid value for: {name}") from None
    if dt.tzinfo is None:
        raise bad_request(f"Invalid value for: {name}")
    return dt.astimezone(timezone.utc)


def _rfc(value: str, name: str) -> str:
    return rfc3339(_parse_rfc(value, name).timestamp())


# ---- routing -------------------------------------------------------------------------------------------------

_ROUTES: list[tuple[str, re.Pattern, str]] = [
    ("POST", re.compile(r"^/calendar/v3/calendars/([^/]+)/events/watch$"), "events.watch"),
    ("GET", re.compile(r"^/calendar/v3/calendars/([^/]+)/events$"), "events.list"),
    ("POST", re.compile(r"^/calendar/v3/calendars/([^/]+)/events$"), "events.insert"),
    ("GET", re.compile(r"^/calendar/v3/calendars/([^/]+)/events/([^/]+)$"), "events.get"),
    ("PUT", re.compile(r"^/calendar/v3/calendars/([^/]+)/events/([^/]+)$"), "events.update"),
    ("PATCH", re.compile(r"^/calendar/v3/calendars/([^/]+)/events/([^/]+)$"), "events.patch"),
    ("DELETE", re.compile(r"^/calendar/v3/calendars/([^/]+)/events/([^/]+)$"), "events.delete"),
    ("POST", re.compile(r"^/calendar/v3/channels/stop$"), "channels.stop"),
    ("GET", re.compile(r"^/calendar/v3/calendars/([^/]+)$"), "calendars.get"),
]


def dispatch(state: CalendarState, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
             body: bytes) -> tuple[int, dict, dict[str, str]]:
    """One API call (direct or inside a batch) -> (status, JSON body, headers)."""
    for verb, pattern, name in _ROUTES:
        match = pattern.match(path)
        if match and verb == method.upper():
            break
    else:
        return 404, {"error": {"code": 404, "message": "Not Found",
                               "errors": [{"domain": "global", "reason": "notFound", "message": "Not Found"}]}}, {}
    state.calls[name] += 1
    try:
        auth = headers.get("authorization", "")
        user = state.user_for_token(auth[7:].strip()) if auth.lower().startswith("bearer ") else None
        if user is None:
            raise unauthenticated()
        fault = state._take_fault(name)
        if fault is not None:
            raise fault
        payload: Any = None
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                raise bad_request("Parse Error", "parseError") from None
        args = [unquote(g) for g in match.groups()]
        if name in ("events.insert", "events.update", "events.patch", "events.delete"):
            notify = _one(query, "sendUpdates")
            if notify not in (None, "all", "externalOnly", "none"):
                raise bad_request("Invalid value for: sendUpdates")
            state.send_updates[notify or ""] += 1
        with state._lock:
            if name == "channels.stop":
                status, result = state.channels_stop(payload, user)
                return status, result, {}
            cal = state._resolve(args[0], user)
            if name == "calendars.get":
                status, result = 200, {"kind": "calendar#calendar", "etag": f'"{cal.epoch}"', "id": cal.owner,
                                       "summary": cal.owner, "timeZone": cal.time_zone}
            elif name == "events.list":
                status, result = state.events_list(cal, query)
            elif name == "events.insert":
                status, result = state.events_insert(cal, query, payload, headers)
            elif name == "events.watch":
                status, result = state.events_watch(cal, query, payload)
            elif name == "events.get":
                status, result = state.events_get(cal, query, args[1], headers)
            elif name in ("events.update", "events.patch"):
                status, result = state.events_update(cal, query, args[1], payload, headers,
                                                     merge=name == "events.patch")
            else:
                status, result = state.events_delete(cal, query, args[1], headers)
        return status, result, {"ETag": result["etag"]} if isinstance(result, dict) and "etag" in result and \
            name != "events.list" else {}
    except ApiError as err:
        return err.code, err.body(), err.headers
    except (KeyError, TypeError, ValueError, AttributeError):
        # a shape the checks above did not foresee is still the client's input: never a 500
        err = bad_request("Invalid request.")
        return err.code, err.body(), {}



MAX_BATCH = 1000


def handle_batch(state: CalendarState, content_type: str, body: bytes, outer_auth: str) -> tuple[int, bytes, str]:
    """`/batch/calendar/v3`: multipart/mixed in and out, each part dispatched on its own."""
    try:
        parts = batch_parts(content_type, body, MAX_BATCH)
    except BatchRefused as exc:
        return 400, json.dumps(bad_request(str(exc)).body()).encode(), "application/json"
    state.batches += 1
    state.batch_sizes.append(len(parts))
    out, kind = serve_parts(parts, outer_auth, lambda m, p, q, h, b: dispatch(state, m, p, q, h, b),
                            invalid=lambda: bad_request("Invalid batch part").body())
    return 200, out, kind


def create_app(state: CalendarState | None = None) -> FastAPI:
    """The Calendar API, its batch endpoint, a minimal OAuth token endpoint and /_emulator."""
    state = state or CalendarState()
    app = FastAPI(title="Google Calendar API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.calendar = state
    app.add_middleware(MethodOverride)

    @app.api_route("/calendar/v3/{rest:path}", methods=["GET", "POST", "DELETE", "PUT", "PATCH"])
    async def api(rest: str, request: Request) -> Response:
        query: dict[str, list[str]] = {}
        for k, v in request.query_params.multi_items():
            query.setdefault(k, []).append(v)
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, result, extra = dispatch(state, request.method, request.url.path, query, headers, body)
        if status == 204:
            return Response(status_code=204, headers=extra)
        return EscapedJSONResponse(result, status_code=status, headers=extra)

    @app.post("/batch/calendar/v3")
    async def batch(request: Request) -> Response:
        body = await request.body()
        status, content, ctype = handle_batch(state, request.headers.get("content-type", ""), body,
                                              request.headers.get("authorization", ""))
        return Response(content, status_code=status, media_type=None, headers={"Content-Type": ctype})

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            return EscapedJSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        return EscapedJSONResponse(state.issue_access_token(str(form["refresh_token"])))

    # ---- admin ----------------------------------------------------------------------------------

    def admin(fn: Callable[[], Any]) -> Response:
        try:
            result = fn()
        except ApiError as err:
            return EscapedJSONResponse(err.body(), status_code=err.code)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return EscapedJSONResponse({"error": type(err).__name__ + ": " + str(err)[:200]}, status_code=400)
        return EscapedJSONResponse(result if result is not None else {"ok": True})

    async def _json(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    @app.post("/_emulator/events")
    async def put_event(request: Request) -> Response:
        """`{"user", "event"}` -> the event; `{"user", "events": [...]}` -> `{"items": [...]}`
        (a benchmark's calendars filled in one call each)."""
        b = await _json(request)
        if isinstance(b, dict) and isinstance(b.get("events"), list):
            return admin(lambda: {"items": [state.put_event(b.get("user"), e) for e in b["events"]]})
        return admin(lambda: state.put_event(b.get("user"), b["event"]))

    @app.post("/_emulator/invite")
    async def invite(request: Request) -> Response:
        b = await _json(request)
        return admin(lambda: state.invite(b["organizer"], b["event"]))

    @app.post("/_emulator/expire_sync_tokens")
    async def expire(request: Request) -> Response:
        b = await _json(request) or {}
        return admin(lambda: state.expire_sync_tokens(b.get("user")))

    @app.post("/_emulator/users")
    async def users(request: Request) -> Response:
        b = await _json(request)

        def add() -> dict:
            cal = state.calendar(b["user"], b.get("time_zone"))
            if b.get("token"):
                state.add_token(str(b["token"]), cal.owner)
            return {"user": cal.owner, "timeZone": cal.time_zone}

        return admin(add)

    @app.post("/_emulator/faults")
    async def faults(request: Request) -> Response:
        b = await _json(request)
        return admin(lambda: state.inject_fault(b["kind"], b.get("method", "any"), int(b.get("count", 1))))

    @app.delete("/_emulator/faults")
    async def clear() -> Response:
        return admin(state.clear_faults)

    @app.get("/_emulator/notifications")
    async def notifications() -> Response:
        return admin(lambda: {"notifications": list(state.notifications)})

    add_config_clock_stats(app, state, admin)
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Run the Google Calendar API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--user", default="me@acme.example")
    parser.add_argument("--time-zone", default="UTC")
    args = parser.parse_args(argv)
    state = CalendarState(default_user=args.user, time_zone=args.time_zone)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
