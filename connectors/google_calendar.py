"""A Google calendar's events as a `MailboxSide[Event]`, through google-api-python-client.

Why the shapes below:

- The cursor is Google's `nextSyncToken`. A full listing (cursor None) asks for live
  events only; a delta with the token gets everything changed, deletions included.
  A 410 `fullSyncRequired` (or a token Google refuses as invalid) is CursorExpired:
  the pipeline lists again from scratch, and since records are keyed by event id and
  the canonical (UID, RECURRENCE-ID), a resync matches what it already linked instead
  of duplicating it.
- Google lists a series as its master (`recurrence[]` lines) plus one event per
  exception (`recurringEventId`, `originalStartTime`). Each becomes one `Event`
  record, as models/event.py keys them. `originalStartTime` and the master's EXDATE /
  RDATE values become instance keys (UTC instant, or the date for all-day series);
  writing them back renders them in the master's own zone (`EXDATE;TZID=...`).
- A cancelled instance of a live series arrives carrying only `id`,
  `recurringEventId` and `originalStartTime`: its UID is its master's. The master is
  looked for in the same page, then in a per-process cache of master id -> iCalUID
  (an iCalUID never changes), and only then fetched: one batch of gets for all the
  page's unknown masters. A master that turns out deleted makes the instance a
  deletion (PROVIDERS.md C: "any other cancelled event is a deletion").
- Times: `dateTime` + `timeZone` becomes the wall clock in that zone and the IANA
  name; without `timeZone` the calendar's zone is used (a listing reports it, and the
  connector remembers it per calendar); `date` is all-day. Google has no floating
  times: a floating event is written in the calendar's zone (reported back zoned).
- Writes go in multipart batches (`BatchHttpRequest` with our own `batch_uri`:
  `new_batch_http_request()` ignores the endpoint override, PROVIDERS.md 0), up to
  `batch_size` per HTTP call, so steady state costs one list call per round plus one
  call per `batch_size` writes. Updates are PATCHes of our fields only (other apps'
  reminders, conference data and extended properties stay), with `If-Match` when the
  caller has an etag: a mismatch (412) is PreconditionFailed for that item.
- An exception is written on its instance id (`{masterId}_{key}`), which Google
  accepts before the exception exists; its cancellation is a DELETE of that id.
- Our marker lives in `extendedProperties.private.concordMarker`; `find_by_markers`
  asks `privateExtendedProperty=` for each marker, all in one batch call per 50.
- The organizer of an event we create is the calendar's owner (Google sets it; an
  Event's `organizer` is not written). Guests hear of creates, edits and cancellations
  as `send_updates` says (Google's `sendUpdates`: "all" by default, so the provider
  sends the invitations). On an attendee's copy Google lets only that attendee's answer
  change: a content edit there is refused (403 forbiddenForNonOrganizer), reported as
  ValidationRejected(rule="organizer_only") for that item.
- Retries belong to Temporal: `num_retries=0`, failures leave as `models.errors`.

Not thread-safe: one instance per activity invocation (httplib2.Http is not).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import date, datetime, timezone
from typing import Any, Callable, Sequence

from google.oauth2.credentials import Credentials
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest
from icalendar.parser import Contentline
from icalendar.prop import vDDDTypes

from connectors.google_api import GoogleConnector, api_root, build_service, can_refresh, transport
from connectors.google_people import _error_body, translate_http_error
from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from connectors.translation import untranslatable
from models.errors import (ConnectorError, CursorExpired, Fatal, NotFound, PreconditionFailed, Transient,
                           ValidationRejected)
from models.event import Event, EventRecord, instance_key, parse_instance_key, zone
from models.record import SideRecord

MAX_PAGE_SIZE = 2500
MARKER_KEY = "concordMarker"
#: Google's advice for Calendar batches (the client allows 1000)
MAX_BATCH = 50
UTC = timezone.utc

#: master event id -> iCalUID, per calendar (an iCalUID never changes, so it may outlive a round)
_UID_CACHE: dict[str, str] = {}
_UID_CACHE_MAX = 100_000
_CACHE_LOCK = threading.Lock()
#: the calendar's zone, per calendar, as its last listing reported it
_ZONE_CACHE: dict[str, str] = {}


def _remember(scope: str, master_id: str, uid: str) -> None:
    with _CACHE_LOCK:
        if len(_UID_CACHE) >= _UID_CACHE_MAX:
            _UID_CACHE.clear()
        _UID_CACHE[f"{scope}|{master_id}"] = uid


def _recall(scope: str, master_id: str) -> str | None:
    return _UID_CACHE.get(f"{scope}|{master_id}")


# ---- errors ---------------------------------------------------------------------------------------


def translate(err: HttpError, *, listing_with_token: bool = False) -> ConnectorError:
    """One HttpError -> one recovery class, with Calendar's own words first."""
    status = int(getattr(err.resp, "status", 0) or 0)
    body = _error_body(err)
    reasons = {str(e.get("reason")) for e in body.get("errors") or [] if isinstance(e, dict)}
    detail = {"http_status": status, "reasons": sorted(reasons)}
    if status == 410:
        if "fullSyncRequired" in reasons or listing_with_token:
            return CursorExpired("sync token no longer valid", detail=detail)
        return NotFound("event deleted", detail=detail)
    if status == 412:
        return PreconditionFailed("event changed since it was read", detail=detail)
    if status == 409:
        return ValidationRejected("event id already exists", rule="duplicate", detail=detail)
    if status == 403 and "forbiddenForNonOrganizer" in reasons:
        # an attendee's copy: only its own answer may change (this item only)
        return ValidationRejected("only the organizer can change this event", rule="organizer_only", detail=detail)
    out = translate_http_error(err)
    if listing_with_token and status == 400 and "sync token" in str(body.get("message") or "").lower():
        return CursorExpired("sync token refused", detail=detail)
    return out


# ---- Google JSON <-> Event ---------------------------------------------------------------------------


def read_time(value: Any, calendar_tz: str) -> tuple[str, str]:
    """EventDateTime -> (wall clock or date, IANA zone or "")."""
    if not isinstance(value, dict):
        raise ValueError("time missing")
    if value.get("date"):
        return date.fromisoformat(str(value["date"])).isoformat(), ""
    dt = datetime.fromisoformat(str(value["dateTime"]).replace("Z", "+00:00"))
    name = str(value.get("timeZone") or calendar_tz or "UTC")
    z = zone(name)
    if z is None:
        name, z = "UTC", zone("UTC")
    dt = dt.replace(tzinfo=z) if dt.tzinfo is None else dt.astimezone(z)
    return dt.strftime("%Y-%m-%dT%H:%M:%S"), name


def write_time(value: str, tz: str, calendar_tz: str) -> dict:
    """Wall clock + zone -> EventDateTime (dateTime with its offset, and the zone's name)."""
    if len(value) == 10:
        return {"date": value}
    name = tz or calendar_tz or "UTC"
    z = zone(name) or zone("UTC")
    dt = datetime.fromisoformat(value)
    dt = dt.replace(tzinfo=z) if dt.tzinfo is None else dt.astimezone(z)
    return {"dateTime": dt.isoformat(), "timeZone": name}


def original_key(value: Any, calendar_tz: str) -> str:
    """originalStartTime -> instance key (UTC instant, or the date of an all-day instance)."""
    if not isinstance(value, dict):
        raise ValueError("originalStartTime missing")
    if value.get("date"):
        return instance_key(date.fromisoformat(str(value["date"])))
    wall, tz = read_time(value, calendar_tz)
    return instance_key(datetime.fromisoformat(wall).replace(tzinfo=zone(tz)))


def _keys_of(line: str, master_tz: str) -> tuple[str, list[str]]:
    """An EXDATE / RDATE line -> (name, instance keys). Floating values read in the master's zone."""
    name, params, value = Contentline(line).parts()
    name = name.upper()
    if str(params.get("VALUE", "")).upper() == "PERIOD":
        raise ValueError("RDATE periods are not supported")
    tzid = params.get("TZID")
    keys = []
    for part in str(value).split(","):
        part = part.strip()
        if not part:
            continue
        parsed = vDDDTypes.from_ical(part, timezone=tzid) if tzid else vDDDTypes.from_ical(part)
        if isinstance(parsed, datetime) and parsed.tzinfo is None and master_tz:
            parsed = parsed.replace(tzinfo=zone(master_tz))
        keys.append(instance_key(parsed))
    return name, keys


def read_recurrence(lines: Sequence[str], master_tz: str) -> tuple[str, list[str], list[str], list[str]]:
    """recurrence[] -> (rrule, exdates, rdates, problems)."""
    rrule, exdates, rdates, problems = "", [], [], []
    for line in lines or ():
        head = re.split(r"[;:]", line, 1)[0].upper()
        if head == "RRULE":
            if rrule:
                problems.append("recurrence holds more than one RRULE; the first was used")
                continue
            rrule = line.split(":", 1)[1].strip()
        elif head in ("EXDATE", "RDATE"):
            try:
                name, keys = _keys_of(line, master_tz)
            except Exception as exc:
                problems.append(f"a recurrence {head} line could not be read ({type(exc).__name__})")
                continue
            (exdates if name == "EXDATE" else rdates).extend(keys)
        else:
            problems.append(f"recurrence {head} lines are not supported")
    return rrule, exdates, rdates, problems


def write_recurrence(ev: Event, calendar_tz: str) -> list[str]:
    """rrule / exdates / rdates -> recurrence[] lines, dates in the master's zone."""
    lines = [f"RRULE:{ev.rrule}"] if ev.rrule else []
    for name, keys in (("EXDATE", ev.exdates), ("RDATE", ev.rdates)):
        if not keys:
            continue
        if ev.all_day:
            values = [parse_instance_key(k) for k in keys]
            lines.append(f"{name};VALUE=DATE:" + ",".join(
                (v.date() if isinstance(v, datetime) else v).strftime("%Y%m%d") for v in values))
            continue
        tz = ev.start_tz or calendar_tz or "UTC"
        z = zone(tz) or UTC
        local = []
        for k in keys:
            v = parse_instance_key(k)
            if not isinstance(v, datetime):
                v = datetime.combine(v, datetime.fromisoformat(ev.start).time())
            v = v.replace(tzinfo=z) if v.tzinfo is None else v.astimezone(z)
            local.append(v.strftime("%Y%m%dT%H%M%S"))
        lines.append(f"{name};TZID={tz}:" + ",".join(local))
    return lines


def google_to_event(item: dict, calendar_tz: str) -> tuple[Event, tuple[str, ...]]:
    """A live Google event (master, single or exception) -> Event and value-free problems."""
    start, start_tz = read_time(item.get("start"), calendar_tz)
    end, end_tz = read_time(item.get("end"), calendar_tz)
    rrule, exdates, rdates, problems = read_recurrence(item.get("recurrence") or [], start_tz)
    attendees = [a for a in item.get("attendees") or [] if isinstance(a, dict) and a.get("email")]
    event = Event(
        uid=item.get("iCalUID"),
        recurrence_id=original_key(item.get("originalStartTime"), calendar_tz) if item.get("recurringEventId") else "",
        title=item.get("summary"),
        description=item.get("description"),
        location=item.get("location"),
        organizer=(item.get("organizer") or {}).get("email"),
        status=item.get("status") or "confirmed",
        transparency=item.get("transparency") or "opaque",
        visibility=item.get("visibility") or "default",
        start=start, end=end, start_tz=start_tz, end_tz=end_tz,
        rrule=rrule, exdates=exdates, rdates=rdates,
        attendees=[a["email"] for a in attendees],
        responses=[f"{a['email']}={a.get('responseStatus') or 'needsAction'}" for a in attendees],
    )
    return event, tuple(problems)


def event_to_google(ev: Event, calendar_tz: str, *, marker: str | None = None, insert: bool = False) -> dict:
    """Our fields of `ev` as a Google body (a PATCH leaves every other field alone)."""
    answers = {r.partition("=")[0]: r.partition("=")[2] for r in ev.responses}
    body: dict[str, Any] = {
        "summary": ev.title,
        "description": ev.description,
        "location": ev.location,
        "status": ev.status if ev.status in ("confirmed", "tentative") else "confirmed",
        "transparency": ev.transparency or "opaque",
        "visibility": ev.visibility or "default",
        "start": write_time(ev.start, ev.start_tz, calendar_tz),
        "end": write_time(ev.end, ev.end_tz or ev.start_tz, calendar_tz),
        "attendees": [{"email": a, "responseStatus": answers.get(a, "needsAction")} for a in ev.attendees],
    }
    if not ev.recurrence_id:
        body["recurrence"] = write_recurrence(ev, calendar_tz)
        if insert and ev.uid:
            body["iCalUID"] = ev.uid
    if marker is not None:
        body["extendedProperties"] = {"private": {MARKER_KEY: marker}}
    return body


def event_marker(item: Any) -> str | None:
    props = ((item.get("extendedProperties") or {}).get("private") or {}) if isinstance(item, dict) else {}
    value = props.get(MARKER_KEY)
    return value if isinstance(value, str) else None


def _updated(item: dict) -> float | None:
    try:
        return datetime.fromisoformat(str(item["updated"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def _split(items: Sequence, size: int) -> list[list]:
    items = list(items)
    return [items[i: i + size] for i in range(0, len(items), size)]


# ---- the connector -----------------------------------------------------------------------------------


class GoogleCalendar(GoogleConnector):
    """One Google calendar's events. See the module docstring."""

    provider = "google"

    def __init__(self, base_url: str, credentials: Credentials, *, calendar_id: str = "primary",
                 page_size: int = MAX_PAGE_SIZE, batch_size: int = MAX_BATCH, account: str | None = None,
                 time_zone: str | None = None, send_updates: str = "all", timeout: float = 30.0) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self.base_url = api_root(base_url)
        root = self.base_url[: -len("calendar/v3/")] if self.base_url.endswith("calendar/v3/") else self.base_url
        self.batch_uri = root + "batch/calendar/v3"
        if send_updates not in ("all", "externalOnly", "none"):
            raise ValueError("send_updates must be all, externalOnly or none")
        self.send_updates = send_updates
        self.calendar_id = calendar_id
        self.page_size = page_size
        self.batch_size = batch_size
        self.scope = f"{self.base_url}|{account or id(self)}|{calendar_id}"
        if time_zone:
            _ZONE_CACHE[self.scope] = time_zone
        self._can_refresh = can_refresh(credentials)
        self._service, self._authed, self._http = build_service("calendar", "v3", self.base_url, credentials,
                                                                timeout=timeout)
        #: masters seen deleted during this instance's life (their cancelled instances are deletions)
        self._deleted_masters: set[str] = set()
        #: iCalUID -> master id, for writing exceptions
        self._master_by_uid: dict[str, str] = {}

    @property
    def calendar_tz(self) -> str:
        return _ZONE_CACHE.get(self.scope, "UTC")

    def _need_zone(self, needed: bool) -> None:
        """Learn the calendar's zone (calendars.get, once per process and calendar) before
        reading a time that has no zone of its own or writing a floating one: reading it
        as UTC here and in the calendar's zone after a listing would look like an edit."""
        if needed and self.scope not in _ZONE_CACHE:
            body = self._execute(self._service.calendars().get(calendarId=self.calendar_id))
            _ZONE_CACHE[self.scope] = str(body.get("timeZone") or "UTC")

    @property
    def _events(self) -> Any:
        return self._service.events()

    # ---- plumbing ------------------------------------------------------------------------------

    def _execute(self, request: Any, *, listing_with_token: bool = False) -> dict:
        try:
            return transport(lambda: request.execute(num_retries=0),
                             refusal_is_auth_expired=not self._can_refresh) or {}
        except HttpError as err:
            raise translate(err, listing_with_token=listing_with_token) from err

    def _batch(self, requests: list[tuple[str, Any]]) -> dict[str, dict | ConnectorError]:
        """Run (key, request) pairs in batches of `batch_size`; each key's answer or error.

        A failure of a whole batch call (transport, 401, 5xx) is raised: nothing of it
        can be attributed to one item."""
        out: dict[str, dict | ConnectorError] = {}
        for chunk in _split(requests, self.batch_size):
            def done(request_id: str, response: Any, exception: Exception | None) -> None:
                if exception is None:
                    out[request_id] = response if isinstance(response, dict) else {}
                elif isinstance(exception, HttpError):
                    out[request_id] = translate(exception)
                else:
                    out[request_id] = Transient(f"batch part failed: {type(exception).__name__}")

            if len(chunk) == 1:
                key, request = chunk[0]
                try:
                    out[key] = self._execute(request)
                except ConnectorError as err:
                    if not isinstance(err, (NotFound, PreconditionFailed, ValidationRejected)):
                        raise
                    out[key] = err
                continue
            batch = BatchHttpRequest(callback=done, batch_uri=self.batch_uri)
            for key, request in chunk:
                batch.add(request, request_id=key)
            try:
                transport(lambda: batch.execute(http=self._authed), refusal_is_auth_expired=not self._can_refresh)
            except HttpError as err:
                raise translate(err) from err
        return out

    # ---- reads ---------------------------------------------------------------------------------

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        """One page of a full listing (cursor None) or of a sync-token round; the round's
        token travels inside `next_page` (Google pins every parameter across a round)."""
        sync_token, google_page = cursor, None
        if page_token:
            try:
                state = json.loads(page_token)
                sync_token, google_page = state.get("s"), state["p"]
            except (ValueError, KeyError, TypeError, AttributeError):
                raise Fatal("page token was not produced by this connector") from None
        params: dict[str, Any] = {"calendarId": self.calendar_id, "maxResults": self.page_size}
        if sync_token:
            params["syncToken"] = sync_token
        else:
            params["showDeleted"] = False
        if google_page:
            params["pageToken"] = google_page
        body = self._execute(self._events.list(**params), listing_with_token=bool(sync_token))
        if body.get("timeZone"):
            _ZONE_CACHE[self.scope] = str(body["timeZone"])
        records = self._records([i for i in body.get("items") or [] if isinstance(i, dict)])
        if body.get("nextPageToken"):
            return DeltaPage(records=records, next_page=json.dumps({"s": sync_token, "p": body["nextPageToken"]}))
        return DeltaPage(records=records, cursor=body.get("nextSyncToken"))

    def get(self, external_id: str) -> SideRecord:
        """The event now; a tombstone when Google no longer has it."""
        try:
            item = self._execute(self._events.get(calendarId=self.calendar_id, eventId=external_id))
        except NotFound:
            return EventRecord(side="mailbox", external_id=external_id, deleted=True)
        return self._records([item])[0]

    def _records(self, items: list[dict]) -> list[SideRecord]:
        self._need_zone(any(isinstance(i.get(k), dict) and i[k].get("dateTime") and not i[k].get("timeZone")
                            for i in items for k in ("start", "end", "originalStartTime")))
        for item in items:
            if item.get("recurrence") or not item.get("recurringEventId"):
                if item.get("id") and item.get("iCalUID"):
                    _remember(self.scope, str(item["id"]), str(item["iCalUID"]))
                    self._master_by_uid.setdefault(str(item["iCalUID"]), str(item["id"]))
                if item.get("status") == "cancelled" and item.get("id"):
                    self._deleted_masters.add(str(item["id"]))
        orphans = {str(i["recurringEventId"]) for i in items
                   if i.get("status") == "cancelled" and i.get("recurringEventId") and not i.get("iCalUID")}
        unknown = [m for m in orphans if m not in self._deleted_masters and _recall(self.scope, m) is None]
        if unknown:
            self._load_masters(unknown)
        return [self._record(i) for i in items]

    def _load_masters(self, master_ids: list[str]) -> None:
        """The iCalUIDs (and liveness) of the masters of cancelled instances: one batch call."""
        answers = self._batch([(m, self._events.get(calendarId=self.calendar_id, eventId=m)) for m in master_ids])
        for m, answer in answers.items():
            if isinstance(answer, NotFound):
                self._deleted_masters.add(m)
            elif isinstance(answer, ConnectorError):
                raise answer
            elif answer.get("status") == "cancelled":
                self._deleted_masters.add(m)
                if answer.get("iCalUID"):
                    _remember(self.scope, m, str(answer["iCalUID"]))
            elif answer.get("iCalUID"):
                _remember(self.scope, m, str(answer["iCalUID"]))

    def _record(self, item: dict) -> SideRecord:
        event_id = str(item.get("id") or "")
        try:
            if item.get("status") == "cancelled":
                return self._cancelled(item)
            event, problems = google_to_event(item, self.calendar_tz)
        except Exception as exc:  # one malformed event must not fail its page
            return untranslatable("mailbox", event_id, exc)
        return EventRecord(side="mailbox", external_id=event_id, content=event, etag=item.get("etag"),
                           updated_at=_updated(item), problems=problems)

    def _cancelled(self, item: dict) -> SideRecord:
        event_id = str(item["id"])
        master = str(item.get("recurringEventId") or "")
        tombstone = EventRecord(side="mailbox", external_id=event_id, deleted=True, etag=item.get("etag"),
                                updated_at=_updated(item))
        if not master or master in self._deleted_masters:
            return tombstone
        uid = item.get("iCalUID") or _recall(self.scope, master)
        if not uid:
            return tombstone
        event = Event(uid=uid, recurrence_id=original_key(item.get("originalStartTime"), self.calendar_tz),
                      status="cancelled")
        return EventRecord(side="mailbox", external_id=event_id, content=event, etag=item.get("etag"),
                           updated_at=_updated(item))

    def find_by_marker(self, marker: str) -> SideRecord | None:
        return self.find_by_markers([marker]).get(marker)

    def find_by_markers(self, markers: Sequence[str], heartbeat: Callable[[], None] = lambda: None) -> dict[str, SideRecord]:
        """Events we created, by marker: one `privateExtendedProperty` query per marker,
        `batch_size` of them per HTTP call (heartbeat after each)."""
        wanted = list(dict.fromkeys(markers))
        found: dict[str, SideRecord] = {}
        for chunk in _split(wanted, self.batch_size):
            answers = self._batch([(f"m{i}", self._events.list(
                calendarId=self.calendar_id, privateExtendedProperty=f"{MARKER_KEY}={m}", maxResults=10))
                for i, m in enumerate(chunk)])
            heartbeat()
            for i, m in enumerate(chunk):
                answer = answers.get(f"m{i}")
                if isinstance(answer, ConnectorError):
                    raise answer
                items = [x for x in (answer or {}).get("items") or [] if isinstance(x, dict)
                         and event_marker(x) == m and x.get("status") != "cancelled"]
                if items:
                    found[m] = self._records(items[:1])[0]
        return found

    # ---- writes --------------------------------------------------------------------------------

    @staticmethod
    def _malformed_apart(requests: Sequence[WriteRequest], op: str,
                         run: Callable[[list[WriteRequest]], list[WriteResult]]) -> list[WriteResult]:
        bad = {id(r): WriteResult(key=r.key, error=err, calls=0.0) for r in requests if (err := r.malformed(op))}
        good = [r for r in requests if id(r) not in bad]
        done = iter(run(good) if good else [])
        return [bad[id(r)] if id(r) in bad else next(done) for r in requests]

    def _run(self, requests: list[WriteRequest], build: Callable[[WriteRequest], tuple[str, Any] | WriteResult],
             finish: Callable[[WriteRequest, dict | ConnectorError], WriteResult]) -> list[WriteResult]:
        """Build each item's call, send them batched, attribute calls; a whole-call failure
        fails its items and leaves the later ones unsent with the same error."""
        prepared: list[tuple[WriteRequest, tuple[str, Any] | WriteResult]] = []
        looked_up = self.calls_made
        self._need_zone(any(isinstance(r.content, Event) and not r.content.start_tz and len(r.content.start) > 10
                            for r in requests))
        for r in requests:
            try:
                prepared.append((r, build(r)))
            except ConnectorError as err:
                prepared.append((r, WriteResult(key=r.key, error=err, calls=0.0)))
        results: dict[int, WriteResult] = {id(r): p for r, p in prepared if isinstance(p, WriteResult)}
        calls = [(r, p) for r, p in prepared if not isinstance(p, WriteResult)]
        # look-ups made while building (an exception's series id) are shared by every item
        lookup_share = (self.calls_made - looked_up) / len(requests) if requests else 0.0
        for res in results.values():
            res.calls += lookup_share
        chunks = _split(calls, self.batch_size)
        for index, chunk in enumerate(chunks):
            before = self.calls_made
            try:
                answers = self._batch([(f"r{n}", call[1]) for n, (_, call) in enumerate(chunk)])
            except ConnectorError as err:
                share = (self.calls_made - before) / len(chunk) + lookup_share
                for r, _ in chunk:
                    results[id(r)] = WriteResult(key=r.key, error=err, calls=share)
                for later in chunks[index + 1:]:
                    for r, _ in later:
                        results[id(r)] = WriteResult(key=r.key, error=err, calls=lookup_share)
                break
            share = (self.calls_made - before) / len(chunk) + lookup_share
            for n, (r, _) in enumerate(chunk):
                answer = answers.get(f"r{n}", Transient("batch returned no answer for this item"))
                result = finish(r, answer)
                result.calls += share
                results[id(r)] = result
        return [results[id(r)] for r in requests]

    def _with_etag(self, request: Any, etag: str | None) -> Any:
        if etag:
            request.headers["If-Match"] = etag
        return request

    def _instance_id(self, ev: Event) -> str:
        """The id of the instance an exception replaces: `{masterId}_{key}`.

        Google has no "this and following" exception: its UI splits the series in two
        (the first one's RRULE ends, a new series starts). A THISANDFUTURE write is
        refused for this item; the caller splits the series itself."""
        if ev.range:
            raise ValidationRejected("Google Calendar has no this-and-following exceptions; split the series",
                                     field="range", rule="this_and_future")
        master = self._master_id(ev.uid)
        key = ev.recurrence_id
        value = parse_instance_key(key)
        if isinstance(value, datetime) and value.tzinfo is None:  # floating: Google reads it in the calendar's zone
            key = instance_key(value.replace(tzinfo=zone(self.calendar_tz) or UTC))
        return f"{master}_{key}"

    def _master_id(self, uid: str) -> str:
        if not uid:
            raise ValidationRejected("an exception needs its series' UID", field="uid")
        if uid in self._master_by_uid:
            return self._master_by_uid[uid]
        body = self._execute(self._events.list(calendarId=self.calendar_id, iCalUID=uid, showDeleted=False,
                                               maxResults=50))
        for item in body.get("items") or []:
            if isinstance(item, dict) and not item.get("recurringEventId") and item.get("id"):
                self._master_by_uid[uid] = str(item["id"])
                _remember(self.scope, str(item["id"]), uid)
                return str(item["id"])
        raise NotFound("the series of this exception is not in the calendar", detail={"field": "uid"})

    def _answer(self, r: WriteRequest, answer: dict | ConnectorError, *, event_id: str | None = None,
                cancelled: Event | None = None) -> WriteResult:
        if isinstance(answer, ConnectorError):
            if cancelled is not None and isinstance(answer, NotFound) and event_id:
                answer = {}  # the instance was cancelled already
            else:
                return WriteResult(key=r.key, error=answer, calls=0.0)
        if cancelled is not None:
            return WriteResult(key=r.key, calls=0.0, record=EventRecord(side="mailbox", external_id=event_id or "",
                                                                        content=cancelled))
        return WriteResult(key=r.key, calls=0.0, record=self._records([answer])[0])

    def create_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._malformed_apart(requests, "create", self._create)

    def _create(self, requests: list[WriteRequest]) -> list[WriteResult]:
        ids: dict[int, str] = {}

        def build(r: WriteRequest) -> tuple[str, Any]:
            ev: Event = r.content
            if ev.recurrence_id:
                iid = ids[id(r)] = self._instance_id(ev)
                if ev.status == "cancelled":
                    return r.key, self._events.delete(calendarId=self.calendar_id, eventId=iid,
                                                      sendUpdates=self.send_updates)
                body = event_to_google(ev, self.calendar_tz, marker=r.marker)
                return r.key, self._events.patch(calendarId=self.calendar_id, eventId=iid, body=body,
                                                 sendUpdates=self.send_updates)
            if ev.status == "cancelled":
                raise ValidationRejected("a cancelled event cannot be created", field="status")
            body = event_to_google(ev, self.calendar_tz, marker=r.marker, insert=True)
            return r.key, self._events.insert(calendarId=self.calendar_id, body=body, sendUpdates=self.send_updates)

        def finish(r: WriteRequest, answer: dict | ConnectorError) -> WriteResult:
            ev: Event = r.content
            cancelled = ev if ev.recurrence_id and ev.status == "cancelled" else None
            return self._answer(r, answer, event_id=ids.get(id(r)), cancelled=cancelled)

        return self._run(requests, build, finish)

    def update_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._malformed_apart(requests, "update", self._update)

    def _update(self, requests: list[WriteRequest]) -> list[WriteResult]:
        def build(r: WriteRequest) -> tuple[str, Any]:
            ev: Event = r.content
            if ev.status == "cancelled":
                req = self._events.delete(calendarId=self.calendar_id, eventId=r.external_id,
                                          sendUpdates=self.send_updates)
            else:
                req = self._events.patch(calendarId=self.calendar_id, eventId=r.external_id,
                                         body=event_to_google(ev, self.calendar_tz, marker=r.marker),
                                         sendUpdates=self.send_updates)
            return r.key, self._with_etag(req, r.etag)

        def finish(r: WriteRequest, answer: dict | ConnectorError) -> WriteResult:
            ev: Event = r.content
            if ev.status == "cancelled":
                if not ev.recurrence_id:
                    if isinstance(answer, NotFound) or not isinstance(answer, ConnectorError):
                        return WriteResult(key=r.key, calls=0.0, record=EventRecord(
                            side="mailbox", external_id=r.external_id or "", deleted=True))
                return self._answer(r, answer, event_id=r.external_id, cancelled=ev)
            return self._answer(r, answer)

        return self._run(requests, build, finish)

    def delete_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Delete; gone already (404, 410) counts as deleted."""
        return self._malformed_apart(requests, "delete", self._delete)

    def _delete(self, requests: list[WriteRequest]) -> list[WriteResult]:
        def build(r: WriteRequest) -> tuple[str, Any]:
            return r.key, self._with_etag(self._events.delete(calendarId=self.calendar_id, eventId=r.external_id,
                                                              sendUpdates=self.send_updates), r.etag)

        def finish(r: WriteRequest, answer: dict | ConnectorError) -> WriteResult:
            if isinstance(answer, ConnectorError) and not isinstance(answer, NotFound):
                return WriteResult(key=r.key, error=answer, calls=0.0)
            return WriteResult(key=r.key, calls=0.0,
                               record=EventRecord(side="mailbox", external_id=r.external_id or "", deleted=True))

        return self._run(requests, build, finish)

    # ---- push (events.watch channels) ------------------------------------------------------------

    def watch(self, address: str, token: str | None = None, *, channel_id: str | None = None,
              expiration_ms: int | None = None) -> dict[str, Any]:
        """Open a channel pushing this calendar's changes to `address`. Returns Google's
        `{id, resourceId, resourceUri, expiration (epoch ms, a string)}`; `resourceId` is
        what `stop_channel` needs."""
        body: dict[str, Any] = {"id": channel_id or str(uuid.uuid4()), "type": "web_hook", "address": address}
        if token is not None:
            body["token"] = token
        if expiration_ms is not None:
            body["expiration"] = int(expiration_ms)
        return self._execute(self._events.watch(calendarId=self.calendar_id, body=body))

    def stop_channel(self, channel_id: str, resource_id: str) -> None:
        """Stop a channel; one Google no longer knows counts as stopped."""
        try:
            self._execute(self._service.channels().stop(body={"id": channel_id, "resourceId": resource_id}))
        except NotFound:
            pass

    # the "subscription" shape SubscriptionActivities keeps (PushNeed mode "subscription")

    def create_subscription(self, url: str, secret: str, *, minutes: int, lifecycle_url: str | None = None) -> dict:
        """A channel as a subscription row: `id` the channel id, `resource` its resourceId
        (what `channels/stop` needs), `expirationDateTime` ISO 8601. The secret travels as
        the channel token (X-Goog-Channel-Token). Calendar has no lifecycle notifications."""
        expiration_ms = int((datetime.now(UTC).timestamp() + minutes * 60) * 1000)
        reply = self.watch(url, secret, expiration_ms=expiration_ms)
        when = datetime.fromtimestamp(int(reply.get("expiration") or expiration_ms) / 1000, UTC)
        return {"id": reply["id"], "resource": reply.get("resourceId", ""),
                "expirationDateTime": when.isoformat().replace("+00:00", "Z")}

    def renew_subscription(self, external_id: str, *, minutes: int) -> dict:
        """Calendar channels cannot be extended: NotFound makes the caller open a new
        channel (the old one runs out on its own; its late pings are refused as removed)."""
        raise NotFound("calendar channels cannot be renewed; open a new one")
