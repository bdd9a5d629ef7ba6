"""The calendar surface of the Graph emulator: events, series, instances, calendarView delta.

Mounted into `emulators.graph.GraphState` as `state.calendar`, so one server answers
contacts, mail, calendar, `$batch` and subscriptions with the same faults, throttling
(429 + Retry-After, the 4-in-flight rule), request log and stats. It reproduces what a
calendar connector must survive (PROVIDERS.md sections D and G):

- several users: `/users/{address or id}/...` names one; `/me` is the user the bearer
  token belongs to (`token_users`, default `DEFAULT_USER`). `invite` puts one meeting
  into several users' calendars (same `iCalUId`, new ids, `isOrganizer: false`);
  `respond` records an attendee's answer on their copy and on the organizer's.
- stored events are `singleInstance`, `seriesMaster` (with a `patternedRecurrence`)
  and `exception`; `occurrence`s are generated from the master's pattern by a day walk
  written here (`expand_pattern`), independent of dateutil, so tests can check the
  connector's RRULE against it. Occurrence ids are derived from the master id and
  the original start; an occurrence's `changeKey` is its master's (Exchange keeps no
  state per occurrence), so editing or cancelling anything in a series re-reports its
  occurrences in the next delta (UNCONFIRMED detail, the natural reading).
- `iCalUId` is Graph's to assign (read-only) and differs per instance, as Graph
  documents ("different for each occurrence in a recurring series"): only the master
  carries the series' UID. `GET /me/events` lists singles and masters only.
- `$batch` sub-requests act for the mailbox of the call's bearer token.
- PATCH on an occurrence turns it into an `exception` (`originalStart` kept); DELETE on
  an occurrence or exception cancels that instance: it leaves the view and the master
  keeps it cancelled (v1.0 exposes no `cancelledOccurrences`; they show as missing
  instances). A master PATCH that changes its recurrence or times drops its exceptions
  and cancellations, as Outlook does.
- `GET /me/calendarView/delta?startDateTime=&endDateTime=`: the window is fixed by the
  first call (later calls carry it in `$skiptoken` / `$deltatoken`), instances are
  expanded, masters are not listed, `$select` and `$filter` are refused (400), and
  `@removed` also covers an item that left the window (`reason: "changed"`; a deleted
  one `reason: "deleted"`). `expire_delta_tokens` (also `POST /_emulator/expire-delta`)
  makes old tokens answer 410 / 400 / 404 `syncStateNotFound` or `resyncRequired`.
- times: without `Prefer: outlook.timezone` start/end come in UTC (Graph's documented
  default) and the zone the event was written in is in `originalStartTimeZone` /
  `originalEndTimeZone` (a Windows name when it was written with one, as Outlook
  clients do); with the header they come in that zone (Windows or IANA name). All-day
  events are midnight to midnight whatever the zone; `originalStart` of an all-day
  series' instance is that date at midnight UTC (UNCONFIRMED).
- `dayOfMonth` 29..31 lands on the last day of shorter months (Outlook's behaviour,
  UNCONFIRMED for Graph).
- `@odata.etag` / `If-Match` on PATCH and DELETE (412 on mismatch), single-value
  extended properties with the documented `$filter` and `$expand`, `$filter=iCalUId eq`,
  `/me/events/{id}/instances?startDateTime=&endDateTime=`, an attendee's
  `/me/events/{id}/accept|tentativelyAccept|decline` (400 for the organizer), subscriptions on
  `me/events` (the state's subscription store; notifications posted as changes happen).
- admin (Python on `state.calendar`, and `/_emulator/calendar/...` over HTTP): users
  with their tokens, seed, user edits and deletes (as in Outlook), `invite`,
  `respond`, `organizer_cancel` (attendee copies get `isCancelled`).
- bad input is a 400 with Graph's error body (`RequestBodyRead`, `ErrorInvalidRequest`,
  `TimeZoneNotSupportedException`, `ErrorInvalidRecurrence`...), never a 500.
"""

from __future__ import annotations

import base64
import calendar as cal_lib
import copy
import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from fastapi import Request
from fastapi.responses import Response
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from starlette.concurrency import run_in_threadpool

from emulators.graph import (TENANT_ID, USER_ID, SubRequest, SubResponse, _error, _iso, _max_page_size,
                             _new_change_key, _new_id, _now)
from emulators.json_response import EscapedJSONResponse

if TYPE_CHECKING:  # pragma: no cover
    from emulators.graph import GraphState

DEFAULT_USER = "user@contoso.example"
MARKER_FILTER = re.compile(
    r"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+'((?:[^']|'')*)'\s+and\s+"
    r"\1/value\s+eq\s+'((?:[^']|'')*)'\s*\)\s*$", re.IGNORECASE)
UID_FILTER = re.compile(r"^\s*iCalUId\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
EXPAND_PROP = re.compile(r"^\s*singleValueExtendedProperties\(\s*\$filter\s*=\s*id\s+eq\s+'((?:[^']|'')*)'\s*\)\s*$",
                         re.IGNORECASE)
_PREFER_TZ = re.compile(r'outlook\.timezone\s*=\s*"([^"]+)"', re.IGNORECASE)
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
INDEXES = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
RESPONSES = {"none", "organizer", "tentativelyAccepted", "accepted", "declined", "notResponded"}
SHOW_AS = {"free", "tentative", "busy", "oof", "workingElsewhere", "unknown"}
SENSITIVITY = {"normal", "personal", "private", "confidential"}
WRITABLE = {"subject", "body", "start", "end", "location", "locations", "attendees", "isAllDay", "recurrence", "showAs",
            "sensitivity", "categories", "importance", "isReminderOn", "reminderMinutesBeforeStart",
            "responseRequested", "singleValueExtendedProperties", "isOnlineMeeting", "allowNewTimeProposals"}
READ_ONLY = {"id", "changeKey", "createdDateTime", "lastModifiedDateTime", "iCalUId", "type", "seriesMasterId",
             "originalStart", "isOrganizer", "organizer", "isCancelled", "responseStatus", "webLink",
             "originalStartTimeZone", "originalEndTimeZone", "bodyPreview"}
_WINDOWS_LOWER = {k.lower(): v for k, v in WINDOWS_TO_OLSON.items()}
_WINDOWS_NAME = {k.lower(): k for k in WINDOWS_TO_OLSON}
_GOLDEN = {v: k for k, v in sorted(WINDOWS_TO_OLSON.items(), reverse=True)}


class BadInput(ValueError):
    """A request the emulator answers with 400 (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------ times and zones


def zone_of(label: str) -> ZoneInfo:
    """Windows name (CLDR table), UTC, or IANA name -> zone; BadInput otherwise."""
    text = str(label or "").strip()
    if text.lower() in ("utc", "etc/utc", "gmt"):
        return ZoneInfo("UTC")
    if text.lower() in _WINDOWS_LOWER:
        return ZoneInfo(_WINDOWS_LOWER[text.lower()])
    try:
        if text and not text.startswith("/") and ".." not in text:
            return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise BadInput("TimeZoneNotSupportedException", "A valid TimeZone value must be specified.")


def _parse_wall(value: Any) -> datetime:
    text = str(value or "").strip()
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?", text)
    if not m:
        raise BadInput("ErrorInvalidRequest", "The dateTime value is not valid.")
    try:
        dt = datetime.fromisoformat(m.group(1) + (("." + m.group(2)[:6].ljust(6, "0")) if m.group(2) else "")
                                    + ((("+00:00" if m.group(3) == "Z" else m.group(3))) if m.group(3) else ""))
    except ValueError:
        raise BadInput("ErrorInvalidRequest", "The dateTime value is not valid.") from None
    return dt


def _fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.0000000")


@dataclass
class When:
    """A stored start or end: an aware datetime in its zone, or a date (all-day)."""

    value: datetime | date
    label: str  # the zone name as the client wrote it

    @property
    def all_day(self) -> bool:
        return not isinstance(self.value, datetime)

    def utc(self) -> datetime:
        if isinstance(self.value, datetime):
            return self.value.astimezone(timezone.utc)
        return datetime.combine(self.value, time(0), tzinfo=timezone.utc)


def _parse_when(obj: Any, all_day: bool, what: str) -> When:
    if not isinstance(obj, dict) or not obj.get("dateTime") or not obj.get("timeZone"):
        raise BadInput("ErrorInvalidRequest", f"The {what} property needs dateTime and timeZone.")
    z = zone_of(obj["timeZone"])
    dt = _parse_wall(obj["dateTime"])
    if dt.tzinfo is not None:
        dt = dt.astimezone(z).replace(tzinfo=None)
    if all_day:
        if dt.time() != time(0):
            raise BadInput("ErrorInvalidRequest", "Start and end times of an all-day event must be at midnight.")
        return When(dt.date(), str(obj["timeZone"]))
    return When(dt.replace(tzinfo=z), str(obj["timeZone"]))


def _render_when(w: When, out_zone: str | None) -> dict[str, str]:
    label = out_zone or "UTC"
    if w.all_day:
        return {"dateTime": _fmt(datetime.combine(w.value, time(0))), "timeZone": label}
    try:
        z = zone_of(label)
    except BadInput:
        z, label = ZoneInfo("UTC"), "UTC"
    return {"dateTime": _fmt(w.value.astimezone(z)), "timeZone": label}


def _windows_label(label: str) -> str:
    """What Graph reports in originalStartTimeZone: the Windows name when there is one."""
    return _WINDOWS_NAME.get(label.lower()) or _GOLDEN.get(label, label)


# ------------------------------------------------------------------------ recurrence


def _validate_recurrence(rec: Any) -> dict[str, Any]:
    bad = BadInput("ErrorInvalidRecurrence", "The recurrence pattern is not valid.")
    if not isinstance(rec, dict) or not isinstance(rec.get("pattern"), dict) or not isinstance(rec.get("range"), dict):
        raise bad
    p, r = rec["pattern"], rec["range"]
    kind = p.get("type")
    if kind not in ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"):
        raise bad
    try:
        interval = int(p.get("interval") or 1)
        if not 1 <= interval <= 999:
            raise bad
        days = [str(d).lower() for d in p.get("daysOfWeek") or []]
        if any(d not in DAYS for d in days) or str(p.get("firstDayOfWeek") or "sunday").lower() not in DAYS:
            raise bad
        if kind in ("weekly", "relativeMonthly", "relativeYearly") and not days:
            raise bad
        if kind in ("relativeMonthly", "relativeYearly") and str(p.get("index") or "first").lower() not in INDEXES:
            raise bad
        if kind in ("absoluteMonthly", "absoluteYearly") and not 1 <= int(p.get("dayOfMonth") or 0) <= 31:
            raise bad
        if kind in ("absoluteYearly", "relativeYearly") and not 1 <= int(p.get("month") or 0) <= 12:
            raise bad
        rtype = r.get("type")
        if rtype not in ("endDate", "noEnd", "numbered"):
            raise bad
        start = date.fromisoformat(str(r.get("startDate")))
        if rtype == "endDate" and date.fromisoformat(str(r.get("endDate"))) < start:
            raise bad
        if rtype == "numbered" and int(r.get("numberOfOccurrences") or 0) < 1:
            raise bad
    except (TypeError, ValueError):
        raise bad from None
    return copy.deepcopy(rec)


def _matches(p: dict[str, Any], d: date, start: date) -> bool:
    kind = p["type"]
    interval = int(p.get("interval") or 1)
    days = {DAYS.index(str(x).lower()) for x in p.get("daysOfWeek") or []}
    if kind == "daily":
        return (d - start).days % interval == 0
    if kind == "weekly":
        first = DAYS.index(str(p.get("firstDayOfWeek") or "sunday").lower())
        week0 = start - timedelta(days=(start.weekday() - first) % 7)
        return d.weekday() in days and ((d - week0).days // 7) % interval == 0
    yearly = kind.endswith("Yearly")
    if yearly:
        if d.month != int(p["month"]) or (d.year - start.year) % interval:
            return False
    elif ((d.year - start.year) * 12 + d.month - start.month) % interval:
        return False
    last = cal_lib.monthrange(d.year, d.month)[1]
    if kind.startswith("absolute"):
        return d.day == min(int(p["dayOfMonth"]), last)
    candidates = [x for x in range(1, last + 1) if date(d.year, d.month, x).weekday() in days]
    index = INDEXES[str(p.get("index") or "first").lower()]
    if index > len(candidates):
        return False
    return d.day == candidates[index - 1 if index > 0 else -1]


def expand_pattern(rec: dict[str, Any], series_start: date, until: date) -> list[date]:
    """Dates of a pattern's instances from its start up to `until` (exclusive), by walking days."""
    p, r = rec["pattern"], rec["range"]
    start = date.fromisoformat(str(r.get("startDate") or series_start.isoformat()))
    end = until
    if r.get("type") == "endDate":
        end = min(end, date.fromisoformat(str(r["endDate"])) + timedelta(days=1))
    count = int(r.get("numberOfOccurrences") or 0) if r.get("type") == "numbered" else None
    out: list[date] = []
    d = start
    while d < end:
        if _matches(p, d, start):
            out.append(d)
            if count is not None and len(out) >= count:
                break
        d += timedelta(days=1)
    return out


# ------------------------------------------------------------------------ storage


@dataclass
class _Item:
    id: str
    kind: str  # singleInstance | seriesMaster | exception
    data: dict[str, Any]
    start: When
    end: When
    change_key: str
    created: datetime
    modified: datetime
    uid: str
    is_organizer: bool = True
    organizer: dict[str, Any] = field(default_factory=dict)
    response: str = "organizer"
    master_id: str | None = None
    original_start: datetime | None = None  # exceptions: the replaced instance, UTC
    cancelled: set[str] = field(default_factory=set)  # masters: original starts (iso) cancelled
    exceptions: dict[str, str] = field(default_factory=dict)  # masters: original start iso -> exception id


@dataclass
class _Round:
    pages: list[list[dict]]
    window: tuple[datetime, datetime]
    snapshot: dict[str, str]
    page_size: int


@dataclass
class UserCalendar:
    address: str
    user_id: str
    name: str
    items: dict[str, _Item] = field(default_factory=dict)
    delta_tokens: dict[str, tuple[tuple[datetime, datetime], dict[str, str]]] = field(default_factory=dict)
    skip_tokens: dict[str, tuple[str, int]] = field(default_factory=dict)
    rounds: dict[str, _Round] = field(default_factory=dict)
    expired: dict[str, tuple[int, str]] = field(default_factory=dict)


def _okey(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CalendarStore:
    """Every user's calendar; shares the state's lock, knobs, faults and subscriptions."""

    def __init__(self, state: "GraphState") -> None:
        self.state = state
        self.lock = state.lock
        self.users: dict[str, UserCalendar] = {}
        #: bearer token -> user address, for `/me`; tokens not listed are DEFAULT_USER's
        self.token_users: dict[str, str] = {}
        #: subscription id -> user address it watches
        self.subscription_users: dict[str, str] = {}
        self.auto_notify = True
        self.notification_errors: list[str] = []
        self.default_page_size = 50
        self._expansions: dict[tuple, list[date]] = {}
        self.add_user(DEFAULT_USER, user_id=USER_ID, name="Emulated User")

    # ------------------------------------------------------------------ test control

    def add_user(self, address: str, *, user_id: str | None = None, name: str | None = None,
                 token: str | None = None) -> UserCalendar:
        with self.lock:
            key = address.strip().lower()
            if key not in self.users:
                self.users[key] = UserCalendar(key, user_id or str(uuid.uuid4()), name or key.split("@")[0])
            if token:
                self.token_users[token] = key
                if self.state.accepted_tokens is not None:
                    self.state.accepted_tokens.add(token)  # the user's own bearer token
            return self.users[key]

    def user(self, address: str | None = None) -> UserCalendar:
        key = (address or DEFAULT_USER).strip().lower()
        for u in self.users.values():
            if u.address == key or u.user_id.lower() == key:
                return u
        raise KeyError("unknown user")

    def seed(self, events: list[dict[str, Any]], user: str | None = None) -> list[str]:
        """Create events as the user would in Outlook; returns their ids."""
        out = []
        for body in events:
            res = self._create(self.user(user), copy.deepcopy(body), notify=False)
            out.append(res.id)
        return out

    def user_edit(self, event_id: str, changes: dict[str, Any], user: str | None = None) -> str:
        """PATCH as the user (an occurrence becomes an exception); returns the id edited."""
        req = SubRequest("PATCH", "", {}, {}, changes, "")
        res = self._patch(self.user(user), event_id, req)
        if res.status >= 300:
            raise KeyError(res.body["error"]["code"])
        return res.body["id"]

    def user_delete(self, event_id: str, user: str | None = None) -> None:
        res = self._delete(self.user(user), event_id, SubRequest("DELETE", "", {}, {}, None, ""))
        if res.status >= 300:
            raise KeyError(res.body["error"]["code"])

    def instances(self, event_id: str, start: datetime, end: datetime, user: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            u = self.user(user)
            m = u.items[event_id]
            return [self._render_instance(u, inst, None) for inst in self._series_instances(u, m, (start, end))]

    def event(self, event_id: str, user: str | None = None) -> dict[str, Any] | None:
        with self.lock:
            u = self.user(user)
            found = self._find(u, event_id)
            return None if found is None else self._render_instance(u, found, None)

    def invite(self, event_id: str, attendees: list[str], organizer: str | None = None) -> dict[str, str]:
        """The organizer's meeting lands in each attendee's calendar: same iCalUId, new ids,
        `isOrganizer: false`, no answer yet. Returns attendee address -> their copy's id."""
        with self.lock:
            org = self.user(organizer)
            src = org.items[event_id]
            out = {}
            invitees = [self.add_user(addr) for addr in attendees]
            for u in invitees:
                existing = {a["emailAddress"]["address"].lower() for a in src.data.get("attendees") or []}
                if u.address not in existing:
                    src.data.setdefault("attendees", []).append(
                        {"type": "required", "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
                         "emailAddress": {"name": u.name, "address": u.address}})
            src.change_key, src.modified = _new_change_key(), _now()
            for u in invitees:
                out[u.address] = self._copy_series(org, src, u)
            return out

    def _copy_series(self, org: UserCalendar, src: _Item, u: UserCalendar) -> str:
        new = copy.deepcopy(src)
        new.id = _new_id("AAMkAGcal")
        new.is_organizer, new.response = False, "none"
        new.organizer = {"emailAddress": {"name": org.name, "address": org.address}}
        new.change_key, new.modified = _new_change_key(), _now()
        new.exceptions = {}
        u.items[new.id] = new
        for key, ex_id in src.exceptions.items():
            ex = copy.deepcopy(org.items[ex_id])
            ex.id, ex.master_id = _new_id("AAMkAGcal"), new.id
            ex.is_organizer, ex.response, ex.organizer = False, "none", new.organizer
            u.items[ex.id] = ex
            new.exceptions[key] = ex.id
        return new.id

    def receive_invitation(self, user: str, body: dict[str, Any], *, uid: str, organizer: str) -> str:
        """An invitation from an organizer elsewhere (another provider) reaches this user:
        Outlook adds the meeting with the organizer's iCalUId, `isOrganizer: false`, no
        answer yet. Returns the copy's id."""
        u = self.user(user)
        item = self._create(u, copy.deepcopy(body), notify=False)
        with self.lock:
            item.uid = uid
            item.is_organizer, item.response = False, "none"
            item.organizer = {"emailAddress": {"name": organizer.split("@")[0], "address": organizer.lower()}}
            item.change_key, item.modified = _new_change_key(), _now()
        self._notify(u, item.id, "created")
        return item.id

    def respond(self, user: str, event_id: str, response: str) -> None:
        """An attendee answers: their copy's responseStatus and the organizer's attendee entry."""
        if response not in RESPONSES:
            raise KeyError("unknown response")
        with self.lock:
            u = self.user(user)
            item = u.items[event_id]
            item.response = response
            item.change_key, item.modified = _new_change_key(), _now()
            for other in self.users.values():
                for it in other.items.values():
                    if it.uid == item.uid and it.is_organizer:
                        for a in it.data.get("attendees") or []:
                            if a["emailAddress"]["address"].lower() == u.address:
                                a["status"] = {"response": response, "time": _iso(_now())}
                        it.change_key, it.modified = _new_change_key(), _now()

    def watch(self, sub_id: str, resource: str, req: SubRequest) -> None:
        """Remember whose calendar a new subscription watches (`users/{x}/events` or the token's user)."""
        if not self.accepts_resource(re.sub(r"^/?users/[^/]+", "me", resource.strip(), flags=re.IGNORECASE)):
            return
        m = re.match(r"^/?users/([^/]+)", resource.strip(), re.IGNORECASE)
        try:
            u = self.user(m.group(1)) if m else self.user_for(req)
        except KeyError:
            return
        self.subscription_users[sub_id] = u.address


    def organizer_cancel(self, uid: str) -> int:
        """The organizer cancels a meeting: attendee copies stay, marked `isCancelled` (until removed)."""
        n = 0
        with self.lock:
            for u in self.users.values():
                for item in u.items.values():
                    if item.uid == uid and not item.is_organizer:
                        item.data["_cancelled"] = True
                        item.change_key, item.modified = _new_change_key(), _now()
                        n += 1
        return n

    def expire_delta_tokens(self, status: int, code: str) -> int:
        with self.lock:
            n = 0
            for u in self.users.values():
                for tok in list(u.delta_tokens) + list(u.skip_tokens):
                    u.expired[tok] = (status, code)
                    n += 1
                u.delta_tokens.clear()
                u.skip_tokens.clear()
                u.rounds.clear()
            return n

    def live_count(self) -> int:
        with self.lock:
            return sum(len(u.items) for u in self.users.values())

    # ------------------------------------------------------------------ dispatching

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(("/me/events", "/me/calendarView", "/me/calendar/events", "/me/calendar/calendarView"))

    def accepts_resource(self, resource: str) -> bool:
        return bool(re.fullmatch(r"me/(?:calendar/)?events", resource, re.IGNORECASE))

    def user_for(self, req: SubRequest) -> UserCalendar:
        m = re.match(r"^/?users/([^/]+)", req.path.lstrip("/"), re.IGNORECASE)
        if m:
            return self.user(m.group(1))
        auth = req.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        return self.user(self.token_users.get(token, DEFAULT_USER))

    def dispatch(self, req: SubRequest, path: str) -> SubResponse:
        path = re.sub(r"^/me/calendar/", "/me/", path)
        try:
            try:
                u = self.user_for(req)
            except KeyError:
                return _error(404, "ErrorInvalidUser", "The requested user is invalid.")
            m = req.method.upper()
            if path == "/me/calendarView/delta":
                return self._delta(u, req) if m == "GET" else _error(405, "ErrorInvalidRequest", "Method not allowed.")
            if path == "/me/calendarView":
                return _error(400, "BadRequest", "Only calendarView/delta is emulated.")
            if path == "/me/events":
                if m == "POST":
                    body = req.body
                    if not isinstance(body, dict):
                        raise BadInput("RequestBodyRead", "The request body must be a JSON object.")
                    item = self._create(u, copy.deepcopy(body), notify=True)
                    with self.lock:
                        return SubResponse(201, {}, self._render_instance(u, item, req, with_props=True))
                if m == "GET":
                    return self._list(u, req)
                return _error(405, "ErrorInvalidRequest", "Method not allowed.")
            if mm := re.fullmatch(r"/me/events/([^/]+)/instances", path):
                return self._instances(u, mm.group(1), req) if m == "GET" else _error(
                    405, "ErrorInvalidRequest", "Method not allowed.")
            if mm := re.fullmatch(r"/me/events/([^/]+)/(accept|tentativelyAccept|decline)", path, re.IGNORECASE):
                return self._answer(u, mm.group(1), mm.group(2).lower(), req) if m == "POST" else _error(
                    405, "ErrorInvalidRequest", "Method not allowed.")
            if mm := re.fullmatch(r"/me/events/([^/]+)", path):
                if m == "GET":
                    return self._get(u, mm.group(1), req)
                if m == "PATCH":
                    return self._patch(u, mm.group(1), req)
                if m == "DELETE":
                    return self._delete(u, mm.group(1), req)
                return _error(405, "ErrorInvalidRequest", "Method not allowed.")
            return _error(400, "BadRequest", f"Unsupported request: {m} {path}")
        except BadInput as exc:
            return _error(400, exc.code, str(exc))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return _error(400, "ErrorInvalidRequest", "The request is not valid.")

    # ------------------------------------------------------------------ create / read / write

    def _parse_times(self, body: dict[str, Any], current: _Item | None) -> tuple[When, When, bool]:
        all_day = body.get("isAllDay", current.start.all_day if current else False)
        if not isinstance(all_day, bool):
            raise BadInput("RequestBodyRead", "isAllDay must be a boolean.")
        if current is None and ("start" not in body or "end" not in body):
            raise BadInput("ErrorInvalidRequest", "start and end are required.")
        start = _parse_when(body["start"], all_day, "start") if "start" in body else None
        end = _parse_when(body["end"], all_day, "end") if "end" in body else None
        if current is not None:
            if start is None or end is None:
                if all_day != current.start.all_day:
                    raise BadInput("ErrorInvalidRequest", "Changing isAllDay needs start and end.")
                start, end = start or current.start, end or current.end
        assert start is not None and end is not None
        if all_day and start.label.lower() != end.label.lower():
            raise BadInput("ErrorInvalidRequest", "An all-day event needs the same time zone for start and end.")
        if (end.value - start.value) < timedelta(0) if all_day else end.utc() < start.utc():
            raise BadInput("ErrorInvalidRequest", "The end of the event must be after its start.")
        if all_day and end.value == start.value:
            raise BadInput("ErrorInvalidRequest", "An all-day event lasts at least one day.")
        return start, end, all_day

    @staticmethod
    def _validate(body: dict[str, Any]) -> None:
        for key, value in body.items():
            if key.startswith("@odata."):
                continue
            if key in READ_ONLY:
                continue
            if key not in WRITABLE:
                raise BadInput("RequestBodyRead", f"The property '{key}' does not exist on type 'microsoft.graph.event'.")
        if "subject" in body and body["subject"] is not None and not isinstance(body["subject"], str):
            raise BadInput("RequestBodyRead", "subject must be a string.")
        if "body" in body and body["body"] is not None:
            b = body["body"]
            if not isinstance(b, dict) or str(b.get("contentType", "text")).lower() not in ("text", "html") \
                    or not isinstance(b.get("content", ""), str):
                raise BadInput("RequestBodyRead", "body must be an itemBody.")
        if "location" in body and body["location"] is not None:
            if not isinstance(body["location"], dict) or not isinstance(body["location"].get("displayName", ""), str):
                raise BadInput("RequestBodyRead", "location must be a location.")
        if "showAs" in body and body["showAs"] not in SHOW_AS:
            raise BadInput("RequestBodyRead", "showAs is not a freeBusyStatus.")
        if "sensitivity" in body and body["sensitivity"] not in SENSITIVITY:
            raise BadInput("RequestBodyRead", "sensitivity is not a sensitivity.")
        attendees = body.get("attendees")
        if attendees is not None:
            if not isinstance(attendees, list):
                raise BadInput("RequestBodyRead", "attendees must be a collection.")
            for a in attendees:
                addr = a.get("emailAddress") if isinstance(a, dict) else None
                if not isinstance(addr, dict) or not isinstance(addr.get("address"), str) or "@" not in addr["address"]:
                    raise BadInput("ErrorInvalidRecipients", "An attendee needs an email address.")
                if a.get("type", "required") not in ("required", "optional", "resource"):
                    raise BadInput("RequestBodyRead", "attendee type is not valid.")
        for p in body.get("singleValueExtendedProperties") or []:
            if not isinstance(p, dict) or not p.get("id") or not isinstance(p.get("value", ""), str):
                raise BadInput("ErrorInvalidProperty", "Extended property id is required.")

    def _apply(self, item: _Item, body: dict[str, Any]) -> None:
        for key, value in body.items():
            if key in READ_ONLY or key.startswith("@odata.") or key in ("start", "end", "isAllDay"):
                continue
            if key == "singleValueExtendedProperties":
                props = {p["id"].lower(): p for p in item.data.get(key, [])}
                for p in value or []:
                    props[p["id"].lower()] = {"id": p["id"], "value": p.get("value")}
                item.data[key] = list(props.values())
            elif key == "attendees":
                item.data[key] = [
                    {"type": a.get("type", "required"),
                     "status": a.get("status") if isinstance(a.get("status"), dict) else
                     {"response": "none", "time": "0001-01-01T00:00:00Z"},
                     "emailAddress": {"name": a["emailAddress"].get("name") or a["emailAddress"]["address"],
                                      "address": a["emailAddress"]["address"]}}
                    for a in value or []]
            else:
                item.data[key] = copy.deepcopy(value)

    def _create(self, u: UserCalendar, body: dict[str, Any], *, notify: bool) -> _Item:
        self._validate(body)
        start, end, _ = self._parse_times(body, None)
        rec = body.get("recurrence")
        with self.lock:
            now = _now()
            item = _Item(id=_new_id("AAMkAGcal"), kind="singleInstance", data={}, start=start, end=end,
                         change_key=_new_change_key(), created=now, modified=now,
                         uid="040000008200E00074C5B7101A82E008" + secrets.token_hex(24).upper(),
                         organizer={"emailAddress": {"name": u.name, "address": u.address}})
            if rec is not None:
                item.kind = "seriesMaster"
                rec = _validate_recurrence(rec)
                rec["range"].setdefault("recurrenceTimeZone", start.label)
                if not rec["range"].get("recurrenceTimeZone"):
                    rec["range"]["recurrenceTimeZone"] = start.label
                body = dict(body, recurrence=rec)
            self._apply(item, body)
            u.items[item.id] = item
        if notify:
            self._notify(u, item.id, "created")
        return item

    def _find(self, u: UserCalendar, event_id: str) -> _Item | None:
        """A stored item or a generated occurrence (as a transient _Item), None if gone."""
        item = u.items.get(event_id)
        if item is not None:
            return item
        parsed = _parse_occurrence_id(event_id)
        if parsed is None:
            return None
        master = u.items.get(parsed[0])
        if master is None or master.kind != "seriesMaster":
            return None
        key = parsed[1]
        if key in master.cancelled or key in master.exceptions:
            return None
        inst = self._occurrence(master, key)
        return inst

    def _occurrence(self, master: _Item, key: str) -> _Item | None:
        ostart = datetime.strptime(key, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        if master.start.all_day:
            d = ostart.date()
            if d not in set(expand_pattern(master.data["recurrence"], master.start.value, d + timedelta(days=1))):
                return None
            start = When(d, master.start.label)
            end = When(d + (master.end.value - master.start.value), master.end.label)
        else:
            z = master.start.value.tzinfo
            local = ostart.astimezone(z)
            dates = expand_pattern(master.data["recurrence"], master.start.value.date(), local.date() + timedelta(days=1))
            if local.date() not in set(dates) or local.replace(tzinfo=None).time() != master.start.value.time():
                return None
            start = When(local, master.start.label)
            end = When(local + (master.end.value - master.start.value), master.end.label)
        return _Item(id=_occurrence_id(master.id, key), kind="occurrence", data=master.data, start=start, end=end,
                     change_key=master.change_key, created=master.created, modified=master.modified, uid=master.uid,
                     is_organizer=master.is_organizer, organizer=master.organizer, response=master.response,
                     master_id=master.id, original_start=ostart)

    def _dates(self, master: _Item, first: date, until: date) -> list[date]:
        """`expand_pattern` for a master, cached per version (a delta call expands every series)."""
        key = (master.id, master.change_key, first, until)
        hit = self._expansions.get(key)
        if hit is None:
            if len(self._expansions) > 50_000:
                self._expansions.clear()
            hit = self._expansions[key] = expand_pattern(master.data["recurrence"], first, until)
        return hit

    def _series_instances(self, u: UserCalendar, master: _Item, window: tuple[datetime, datetime]) -> list[_Item]:
        ws, we = window
        out: list[_Item] = []
        if master.start.all_day:
            first, duration = master.start.value, master.end.value - master.start.value
            for d in self._dates(master, first, we.date() + timedelta(days=1)):
                key = _okey(datetime.combine(d, time(0), tzinfo=timezone.utc))
                if key in master.cancelled or key in master.exceptions:
                    continue
                s = datetime.combine(d, time(0), tzinfo=timezone.utc)
                if _overlaps(s, s + duration, ws, we):
                    out.append(self._occurrence(master, key))  # type: ignore[arg-type]
        else:
            z = master.start.value.tzinfo
            wall = master.start.value.replace(tzinfo=None)
            duration = master.end.value - master.start.value
            for d in self._dates(master, wall.date(), we.astimezone(z).date() + timedelta(days=2)):
                s = datetime.combine(d, wall.time()).replace(tzinfo=z)
                key = _okey(s)
                if key in master.cancelled or key in master.exceptions:
                    continue
                if _overlaps(s.astimezone(timezone.utc), (s + duration).astimezone(timezone.utc), ws, we):
                    out.append(_Item(id=_occurrence_id(master.id, key), kind="occurrence", data=master.data,
                                     start=When(s, master.start.label), end=When(s + duration, master.end.label),
                                     change_key=master.change_key, created=master.created, modified=master.modified,
                                     uid=master.uid, is_organizer=master.is_organizer, organizer=master.organizer,
                                     response=master.response, master_id=master.id,
                                     original_start=s.astimezone(timezone.utc)))
        for ex_id in master.exceptions.values():
            ex = u.items.get(ex_id)
            if ex is not None and _overlaps(ex.start.utc(), ex.end.utc(), ws, we):
                out.append(ex)
        return sorted(out, key=lambda i: (i.start.utc(), i.id))

    def _view(self, u: UserCalendar, window: tuple[datetime, datetime]) -> list[_Item]:
        ws, we = window
        out: list[_Item] = []
        for item in u.items.values():
            if item.kind == "singleInstance" and _overlaps(item.start.utc(), item.end.utc(), ws, we):
                out.append(item)
            elif item.kind == "seriesMaster":
                out.extend(self._series_instances(u, item, window))
        return sorted(out, key=lambda i: (i.start.utc(), i.id))

    def _etag(self, item: _Item) -> str:
        return f'W/"{item.change_key}"'

    def _render_instance(self, u: UserCalendar, item: _Item, req: SubRequest | None, *, with_props: bool = False,
                         expand: str | None = None) -> dict[str, Any]:
        out_zone = None
        if req is not None:
            mm = _PREFER_TZ.search(req.headers.get("prefer", ""))
            out_zone = mm.group(1) if mm else None
        d = item.data
        body = d.get("body") or {"contentType": "text", "content": ""}
        text = re.sub(r"<[^>]+>", " ", body.get("content") or "")
        uid = item.uid
        if item.kind in ("occurrence", "exception"):
            digest = hashlib.sha256(f"{item.uid}|{_okey(item.original_start)}".encode()).hexdigest().upper()  # type: ignore[arg-type]
            uid = "040000008200E00074C5B7101A82E008" + digest[:48]
        attendees = copy.deepcopy(d.get("attendees") or [])
        out: dict[str, Any] = {
            "@odata.etag": self._etag(item),
            "id": item.id,
            "createdDateTime": _iso(item.created),
            "lastModifiedDateTime": _iso(item.modified),
            "changeKey": item.change_key,
            "categories": list(d.get("categories") or []),
            "originalStartTimeZone": _windows_label(item.start.label),
            "originalEndTimeZone": _windows_label(item.end.label),
            "iCalUId": uid,
            "reminderMinutesBeforeStart": d.get("reminderMinutesBeforeStart", 15),
            "isReminderOn": d.get("isReminderOn", True),
            "subject": d.get("subject") or "",
            "bodyPreview": " ".join(text.split())[:255],
            "importance": d.get("importance", "normal"),
            "sensitivity": d.get("sensitivity", "normal"),
            "isAllDay": item.start.all_day,
            "isCancelled": bool(d.get("_cancelled")),
            "isOrganizer": item.is_organizer,
            "responseRequested": d.get("responseRequested", True),
            "seriesMasterId": item.master_id,
            "showAs": d.get("showAs", "busy"),
            "type": item.kind,
            "webLink": f"https://outlook.office365.com/owa/?itemid={item.id}",
            "responseStatus": {"response": item.response, "time": "0001-01-01T00:00:00Z"},
            "body": copy.deepcopy(body),
            "start": _render_when(item.start, out_zone),
            "end": _render_when(item.end, out_zone),
            "location": {"displayName": (d.get("location") or {}).get("displayName", ""), "locationType": "default"},
            "locations": [],
            "recurrence": copy.deepcopy(d.get("recurrence")) if item.kind == "seriesMaster" else None,
            "attendees": attendees,
            "organizer": copy.deepcopy(item.organizer),
        }
        if item.kind in ("occurrence", "exception"):
            out["originalStart"] = _okey(item.original_start)  # type: ignore[arg-type]
        props = d.get("singleValueExtendedProperties") or []
        if with_props and props:
            out["singleValueExtendedProperties"] = copy.deepcopy(props)
        elif expand:
            hit = [p for p in props if p["id"].lower() == expand.lower()]
            if hit:
                out["singleValueExtendedProperties"] = copy.deepcopy(hit)
        return out

    def _expand(self, req: SubRequest) -> str | None:
        if not req.query.get("$expand"):
            return None
        mm = EXPAND_PROP.match(req.query["$expand"])
        if not mm:
            raise BadInput("BadRequest", "Unsupported $expand.")
        return mm.group(1).replace("''", "'")

    def _list(self, u: UserCalendar, req: SubRequest) -> SubResponse:
        expand = self._expand(req)
        with self.lock:
            items = [i for i in sorted(u.items.values(), key=lambda i: (i.created, i.id))
                     if i.kind in ("singleInstance", "seriesMaster")]
            flt = req.query.get("$filter")
            if flt:
                if mm := MARKER_FILTER.match(flt):
                    pid, pval = mm.group(2).replace("''", "'").lower(), mm.group(3).replace("''", "'")
                    items = [i for i in items if any(p["id"].lower() == pid and p.get("value") == pval
                                                     for p in i.data.get("singleValueExtendedProperties") or [])]
                elif mm := UID_FILTER.match(flt):
                    uid = mm.group(1).replace("''", "'")
                    items = [i for i in items if i.uid == uid]
                else:
                    raise BadInput("ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
            top = int(req.query.get("$top") or 10)
            skip = int(req.query.get("$skip") or 0)
            if top < 1 or skip < 0:
                raise BadInput("BadRequest", "Invalid $top or $skip.")
            top = min(top, 1000)
            chunk = items[skip: skip + top]
            out: dict[str, Any] = {"value": [self._render_instance(u, i, req, expand=expand) for i in chunk]}
            if skip + top < len(items):
                q = "&".join(f"{k}={v}" for k, v in req.query.items() if k not in ("$skip",))
                out["@odata.nextLink"] = f"{req.base_url}/v1.0/{self._prefix(req)}/events?{q}&$skip={skip + top}"
            return SubResponse(200, {}, out)

    @staticmethod
    def _prefix(req: SubRequest) -> str:
        m = re.match(r"^/?(users/[^/]+)", req.path.lstrip("/"), re.IGNORECASE)
        return m.group(1) if m else "me"

    def _get(self, u: UserCalendar, event_id: str, req: SubRequest) -> SubResponse:
        expand = self._expand(req)
        with self.lock:
            item = self._find(u, event_id)
            if item is None:
                return _not_found()
            return SubResponse(200, {}, self._render_instance(u, item, req, expand=expand))

    def _window(self, req: SubRequest) -> tuple[datetime, datetime]:
        q = req.query
        if not q.get("startDateTime") or not q.get("endDateTime"):
            raise BadInput("ErrorInvalidParameter",
                           "This request requires a time window specified by the query string parameters "
                           "StartDateTime and EndDateTime.")
        try:
            ws, we = (_parse_wall(q["startDateTime"]), _parse_wall(q["endDateTime"]))
        except BadInput:
            raise BadInput("ErrorInvalidParameter", "StartDateTime and EndDateTime must be ISO 8601 date-times.") from None
        ws = ws if ws.tzinfo else ws.replace(tzinfo=timezone.utc)
        we = we if we.tzinfo else we.replace(tzinfo=timezone.utc)
        if we <= ws:
            raise BadInput("ErrorInvalidParameter", "EndDateTime must be after StartDateTime.")
        return ws.astimezone(timezone.utc), we.astimezone(timezone.utc)

    def _instances(self, u: UserCalendar, event_id: str, req: SubRequest) -> SubResponse:
        window = self._window(req)
        with self.lock:
            master = u.items.get(event_id)
            if master is None:
                return _not_found()
            if master.kind != "seriesMaster":
                return _error(400, "ErrorInvalidRequest", "The event is not the master of a recurring series.")
            items = self._series_instances(u, master, window)
            top = min(int(req.query.get("$top") or 10), 1000)
            skip = int(req.query.get("$skip") or 0)
            if top < 1 or skip < 0:
                raise BadInput("BadRequest", "Invalid $top or $skip.")
            out: dict[str, Any] = {"value": [self._render_instance(u, i, req) for i in items[skip: skip + top]]}
            if skip + top < len(items):
                q = "&".join(f"{k}={v}" for k, v in req.query.items() if k != "$skip")
                out["@odata.nextLink"] = (f"{req.base_url}/v1.0/{self._prefix(req)}/events/{event_id}/instances?"
                                          f"{q}&$skip={skip + top}")
            return SubResponse(200, {}, out)

    def _check_etag(self, item: _Item, req: SubRequest) -> SubResponse | None:
        match = req.headers.get("if-match")
        if match and match.strip() != "*":
            bare = match.strip()
            bare = (bare[2:] if bare.startswith("W/") else bare).strip('"')
            if bare != item.change_key:
                return _error(self.state.etag_mismatch_status, "ErrorIrresolvableConflict",
                              "The change key passed in the request does not match the current change key for the item.")
        return None

    def _patch(self, u: UserCalendar, event_id: str, req: SubRequest) -> SubResponse:
        body = req.body
        if not isinstance(body, dict):
            raise BadInput("RequestBodyRead", "The request body must be a JSON object.")
        self._validate(body)
        with self.lock:
            item = self._find(u, event_id)
            if item is None:
                return _not_found()
            if bad := self._check_etag(item, req):
                return bad
            if "recurrence" in body and item.kind not in ("seriesMaster", "singleInstance"):
                raise BadInput("ErrorInvalidRecurrence", "Only a series master or single event takes a recurrence.")
            start, end, _ = self._parse_times(body, item)
            master = u.items.get(item.master_id) if item.master_id else None
            if item.kind == "occurrence":
                assert master is not None
                key = _okey(item.original_start)  # type: ignore[arg-type]
                ex = _Item(id=_new_id("AAMkAGcal"), kind="exception", data=copy.deepcopy(master.data), start=start,
                           end=end, change_key=_new_change_key(), created=_now(), modified=_now(), uid=master.uid,
                           is_organizer=master.is_organizer, organizer=copy.deepcopy(master.organizer),
                           response=master.response, master_id=master.id, original_start=item.original_start)
                ex.data.pop("recurrence", None)
                self._apply(ex, body)
                u.items[ex.id] = ex
                master.exceptions[key] = ex.id
                master.change_key, master.modified = _new_change_key(), _now()
                item = ex
            else:
                times_changed = (start.utc(), end.utc(), start.all_day) != (item.start.utc(), item.end.utc(),
                                                                              item.start.all_day)
                if item.kind == "singleInstance" and body.get("recurrence") is not None:
                    item.kind = "seriesMaster"
                rec = body.get("recurrence")
                if rec is not None:
                    rec = _validate_recurrence(rec)
                    if not rec["range"].get("recurrenceTimeZone"):
                        rec["range"]["recurrenceTimeZone"] = start.label
                    body = dict(body, recurrence=rec)
                if item.kind == "seriesMaster" and (times_changed or (
                        rec is not None and rec != item.data.get("recurrence"))):
                    for ex_id in item.exceptions.values():
                        u.items.pop(ex_id, None)
                    item.exceptions.clear()
                    item.cancelled.clear()
                if item.kind == "seriesMaster" and "recurrence" in body and body["recurrence"] is None:
                    raise BadInput("ErrorInvalidRecurrence", "A series master keeps its recurrence.")
                item.start, item.end = start, end
                self._apply(item, body)
                item.change_key, item.modified = _new_change_key(), _now()
                if master is not None:
                    master.change_key, master.modified = _new_change_key(), _now()
            out = self._render_instance(u, item, req)
            ident = item.id
        self._notify(u, ident, "updated")
        return SubResponse(200, {}, out)

    def _answer(self, u: UserCalendar, event_id: str, action: str, req: SubRequest) -> SubResponse:
        """An attendee accepts, tentatively accepts or declines their copy (202, no body)."""
        if req.body is not None and not isinstance(req.body, dict):
            raise BadInput("RequestBodyRead", "The request body must be a JSON object.")
        with self.lock:
            item = u.items.get(event_id)
            if item is None:
                return _not_found()
            if item.is_organizer:
                return _error(400, "ErrorInvalidRequest", "You can't respond to this meeting because you're the "
                                                          "meeting organizer.")
        response = {"accept": "accepted", "tentativelyaccept": "tentativelyAccepted", "decline": "declined"}[action]
        self.respond(u.address, event_id, response)
        self._notify(u, event_id, "updated")
        return SubResponse(202, {}, None)

    def _delete(self, u: UserCalendar, event_id: str, req: SubRequest) -> SubResponse:
        with self.lock:
            item = self._find(u, event_id)
            if item is None:
                return _not_found()
            if bad := self._check_etag(item, req):
                return bad
            if item.kind in ("occurrence", "exception"):
                master = u.items[item.master_id]  # type: ignore[index]
                key = _okey(item.original_start)  # type: ignore[arg-type]
                master.exceptions.pop(key, None)
                u.items.pop(item.id, None)
                master.cancelled.add(key)
                master.change_key, master.modified = _new_change_key(), _now()
            else:
                for ex_id in item.exceptions.values():
                    u.items.pop(ex_id, None)
                u.items.pop(item.id, None)
        self._notify(u, event_id, "deleted")
        return SubResponse(204, {}, None)

    # ------------------------------------------------------------------ delta

    def _delta(self, u: UserCalendar, req: SubRequest) -> SubResponse:
        q = req.query
        st = self.state
        with self.lock:
            for key in ("$skiptoken", "$deltatoken"):
                tok = q.get(key)
                if tok and tok in u.expired:
                    status, code = u.expired[tok]
                    return _error(status, code, "Sync state generation is not found or has expired. Resync required.")
            if "$skiptoken" in q:
                ref = u.skip_tokens.get(q["$skiptoken"])
                rnd = u.rounds.get(ref[0]) if ref else None
                if ref is None or rnd is None:
                    return _error(400, "SyncStateInvalid", "Invalid skip token.")
                return self._serve(u, req, ref[0], rnd, ref[1])
            if "$select" in q or "$filter" in q or "$orderby" in q:
                raise BadInput("ErrorInvalidUrlQuery", "$select, $filter and $orderby are not supported with delta "
                                                       "on calendarView.")
            if "$deltatoken" in q:
                ref2 = u.delta_tokens.get(q["$deltatoken"])
                if ref2 is None:
                    return _error(410, "syncStateNotFound", "Sync state generation is not found. Resync required.")
                window, before = ref2
                page_size = min(_max_page_size(req.headers) or self.default_page_size, st.max_page_size)
            else:
                window = self._window(req)
                before = {}
                page_size = min(_max_page_size(req.headers) or self.default_page_size, st.max_page_size)
            view = self._view(u, window)
            now_snap = {i.id: i.change_key for i in view}
            entries: list[dict] = []
            for i in view:
                if before.get(i.id) != i.change_key:
                    entries.append({"kind": "item", "item": self._render_instance(u, i, req)})
            for gone in before.keys() - now_snap.keys():
                reason = "changed" if self._find(u, gone) is not None else "deleted"
                entries.append({"kind": "removed", "id": gone, "reason": reason})
            entries = st._add_replays(entries)
            pages = [entries[i: i + page_size] for i in range(0, len(entries), page_size)] or [[]]
            for _ in range(st.delta_empty_pages):
                pages.insert(min(1, len(pages)), [])
            round_id = secrets.token_urlsafe(12)
            rnd = _Round(pages, window, now_snap, page_size)
            u.rounds[round_id] = rnd
            return self._serve(u, req, round_id, rnd, 0)

    def _serve(self, u: UserCalendar, req: SubRequest, round_id: str, rnd: _Round, index: int) -> SubResponse:
        page = rnd.pages[index] if index < len(rnd.pages) else []
        value = []
        for e in page:
            if e["kind"] == "removed":
                value.append({"@odata.type": "#microsoft.graph.event", "id": e["id"], "@removed": {"reason": e["reason"]}})
            else:
                value.append(dict(e["item"], **{"@odata.type": "#microsoft.graph.event"}))
        link = f"{req.base_url}/v1.0/{self._prefix(req)}/calendarView/delta"
        out: dict[str, Any] = {"@odata.context": f"{req.base_url}/v1.0/$metadata#Collection(event)", "value": value}
        tok = secrets.token_urlsafe(24)
        if index + 1 < len(rnd.pages):
            u.skip_tokens[tok] = (round_id, index + 1)
            out["@odata.nextLink"] = f"{link}?$skiptoken={tok}"
        else:
            u.delta_tokens[tok] = (rnd.window, rnd.snapshot)
            out["@odata.deltaLink"] = f"{link}?$deltatoken={tok}"
        return SubResponse(200, {}, out)

    # ------------------------------------------------------------------ notifications

    def _notify(self, u: UserCalendar, event_id: str, change_type: str) -> None:
        if not self.auto_notify:
            return
        notes = []
        with self.lock:
            for sub_id, owner in self.subscription_users.items():
                sub = self.state.subscriptions.get(sub_id)
                if sub is None or owner != u.address:
                    continue
                if change_type not in {c.strip() for c in str(sub.get("changeType") or "").split(",")}:
                    continue
                resource = f"Users/{u.user_id}/Events/{event_id}"
                item = u.items.get(event_id)
                note = {"subscriptionId": sub_id, "subscriptionExpirationDateTime": sub["expirationDateTime"],
                        "clientState": sub.get("clientState"), "changeType": change_type, "resource": resource,
                        "tenantId": TENANT_ID,
                        "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "@odata.id": resource,
                                         "@odata.etag": self._etag(item) if item else None, "id": event_id}}
                self.state.notifications_sent.append(note)
                notes.append((sub["notificationUrl"], note))
        for url, note in notes:
            try:
                resp = httpx.post(url, json={"value": [note]}, timeout=3.0)
                if resp.status_code >= 300:
                    self.notification_errors.append(str(resp.status_code))
            except httpx.HTTPError as exc:
                self.notification_errors.append(type(exc).__name__)


def _overlaps(s: datetime, e: datetime, ws: datetime, we: datetime) -> bool:
    if e <= s:
        return ws <= s < we
    return s < we and e > ws


def _occurrence_id(master_id: str, key: str) -> str:
    raw = f"{master_id}|{key}".encode()
    return "AAMkAGocc" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_occurrence_id(value: str) -> tuple[str, str] | None:
    if not value.startswith("AAMkAGocc"):
        return None
    text = value[len("AAMkAGocc"):]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    master_id, sep, key = raw.rpartition("|")
    return (master_id, key) if sep else None


def _not_found() -> SubResponse:
    return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")


# ---------------------------------------------------------------------------- admin routes




def add_calendar_routes(app: Any, state: "GraphState") -> None:
    """`/_emulator/calendar/...`: users, seed, user edits and deletes, invitations, answers."""
    cal = state.calendar

    async def _body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise KeyError("body must be a JSON object")
        return body

    async def _run(fn, *args, **kwargs) -> Response:
        try:
            return EscapedJSONResponse(await run_in_threadpool(fn, *args, **kwargs))
        except (KeyError, BadInput, ValueError, TypeError) as exc:
            return EscapedJSONResponse({"error": type(exc).__name__}, status_code=400)

    @app.post("/_emulator/calendar/users")
    async def add_user(request: Request) -> Response:
        try:
            b = await _body(request)
        except KeyError:
            return EscapedJSONResponse({"error": "bad body"}, status_code=400)
        return await _run(lambda: {"id": cal.add_user(str(b["address"]), name=b.get("name"), token=b.get("token")).user_id})

    @app.post("/_emulator/calendar/seed")
    async def seed(request: Request) -> Response:
        try:
            b = await _body(request)
        except KeyError:
            return EscapedJSONResponse({"error": "bad body"}, status_code=400)
        return await _run(lambda: {"ids": cal.seed(list(b.get("events") or []), b.get("user"))})

    @app.post("/_emulator/calendar/events/{event_id}/{action}")
    async def action(event_id: str, action: str, request: Request) -> Response:
        try:
            b = await _body(request)
        except KeyError:
            return EscapedJSONResponse({"error": "bad body"}, status_code=400)
        if action == "edit":
            return await _run(lambda: {"id": cal.user_edit(event_id, dict(b.get("changes") or {}), b.get("user"))})
        if action == "delete":
            return await _run(lambda: {"ok": cal.user_delete(event_id, b.get("user")) is None})
        if action == "invite":
            return await _run(lambda: {"copies": cal.invite(event_id, list(b.get("attendees") or []), b.get("user"))})
        if action == "respond":
            return await _run(lambda: {"ok": cal.respond(str(b["user"]), event_id, str(b["response"])) is None})
        return EscapedJSONResponse({"error": "unknown action"}, status_code=400)

    @app.post("/_emulator/calendar/cancel-meeting")
    async def cancel_meeting(request: Request) -> Response:
        try:
            b = await _body(request)
        except KeyError:
            return EscapedJSONResponse({"error": "bad body"}, status_code=400)
        return await _run(lambda: {"copies": cal.organizer_cancel(str(b["uid"]))})
