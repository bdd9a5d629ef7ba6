"""Microsoft 365 calendar through Microsoft Graph v1.0, as a `MailboxSide[Event]`.

Choices that are not obvious from the protocol:

- Changes come from `GET /me/calendarView/delta` (v1.0 has no events delta), which
  needs a time window. The window (`days_back` before and `days_ahead` after the
  moment a full listing starts) is fixed for the whole round and every later delta
  round: it lives in the cursor, compact JSON `{"v", "ws", "we", "link"}` holding the
  `@odata.deltaLink` exactly as Graph gave it. A new window comes with the next full
  listing (no cursor, or CursorExpired). Changes to events wholly outside the window
  are not seen by delta rounds; a full listing still lists them: after the window's
  delta it pages through `/me/events` (singles and masters of every date, 1,000 a
  call), because the caller takes "not listed by a full listing" for "deleted" and an
  event a year away is not deleted. (Exceptions of a series outside the window are
  not listed: limitation.)
- calendarView expands series: it lists singles, occurrences and exceptions, never
  masters. Records are singles, series masters, exceptions and cancelled instances;
  ordinary occurrences are not records (the master's RRULE stands for them). A page
  naming a series (through an occurrence's or exception's `seriesMasterId`) costs,
  once per series per round, two sub-requests in a `$batch` (20 per call): the master
  and its instances in the window. The page token carries short digests of the
  series already read in this round, so a series spread over pages is read once.
- Cancelled instances: v1.0 shows no `cancelledOccurrences`; a cancelled instance is
  an instance the RRULE (expanded by dateutil, `sync.calendar.recurrence`) places in
  the window that the instances listing lacks. It becomes a record with status
  "cancelled" and the synthetic id `{master id}/cancelled/{instance key}` (Graph has
  no item for it; writing to that id is answered here). An exception moved out of
  the window looks the same (limitation: the window cannot show where it went).
- `@removed` entries: an item can leave the window without being deleted, so removed
  ids are read back (GETs in the same `$batch`); a single still there is reported with
  its current content, a 404 is a tombstone. An exception moved out of the window is
  read back the same way: its series is read (again) knowing it, so its slot is not a
  cancelled instance (a tombstone withdraws one an earlier page of the round gave). A removed occurrence's tombstone names an id
  no record has (harmless). A deleted series shows only as removed occurrences: its
  master's deletion is seen by the next full listing, not by the delta.
- Writes: a write that is one Graph call goes in a JSON `$batch` (20 per call, the
  call's cost shared in `WriteResult.calls`; a 429 inside the batch fails that item
  alone, a failed `$batch` call every item in it): singles and masters are POSTed
  (our marker in a single-value extended property), singles, masters and exceptions
  PATCHed / DELETEd with `If-Match` (412 -> PreconditionFailed). The rest go one by
  one after them (so an exception finds a series created in the same call): an
  exception is created by finding its master by `iCalUId` and the instance by `originalStart`
  (instances in a small window around it, then the whole sync window), then PATCHing
  the instance (Graph makes it an exception) or DELETEing it (cancelled). A master's
  EXDATEs are cancelled the same way after it is written. A cancelled instance cannot
  be restored in Graph: such an update is ValidationRejected.
- On an attendee's copy (the connector knows its owner's `address` and the event's
  organizer is someone else) an update writes only the owner's answer (`accept`,
  `tentativelyAccept`, `decline`, sent to the organizer); content is the organizer's.
- Graph assigns `iCalUId` itself: a created event comes back with Graph's UID, not
  the one asked for (the caller links by the returned record).
- Errors as in `connectors.graph_http.error_for` (410 / syncStateNotFound /
  resyncRequired -> CursorExpired; 429 -> RateLimited with Retry-After; ...). A cursor
  or page token that is not our JSON is CursorExpired: listing again is the cure.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlencode

import httpx

from connectors.graph_contacts import _dedupe
from connectors.graph_events import (TranslationProblem, cancelled_instance, event_to_body, item_to_event,
                                     original_key, window_around)
from connectors.graph_http import GraphConnection, error_for
from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from connectors.translation import untranslatable
from models.errors import ConnectorError, CursorExpired, NotFound, Transient, ValidationRejected
from models.event import Event, EventRecord
from models.record import SideRecord
from sync.calendar.recurrence import instance_keys

#: the same property id the contacts connector uses: one private GUID namespace for our markers
MARKER_PROPERTY_ID = "String {5b8f3c1e-7a2d-4e69-9c4b-2f1d6a8e0c37} Name concordMarker"
BATCH_MAX = 20
PREFER_UTC = 'outlook.timezone="UTC"'
CANCELLED = "/cancelled/"
INSTANCES_PAGE = 1000
LISTING_PAGE = 1000


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(state: dict[str, Any]) -> str:
    return json.dumps(state, separators=(",", ":"))


def _digest(master_id: str) -> str:
    return hashlib.sha256(master_id.encode()).hexdigest()[:10]


def _in_window(ev: Event, window: tuple[datetime, datetime]) -> bool:
    """Whether calendarView over `window` listed this single, or an instance of this series."""
    if ev.rrule:
        try:
            return bool(instance_keys(ev, *window))
        except ValueError:
            return False
    start, end = ev.start_value(), ev.end_value()
    if start is None or end is None:
        return False
    lo, hi = (_as_utc(start), _as_utc(end))
    return lo < window[1] and (hi > window[0] or (hi == lo and lo >= window[0]))


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


def _problem_record(item: Any, exc: Exception) -> SideRecord:
    rec = untranslatable("mailbox", item.get("id") if isinstance(item, dict) else None, exc)
    if isinstance(exc, TranslationProblem):
        return rec.model_copy(update={"problems": (f"event could not be read ({exc.code})",)})
    return rec


def _updated_at(item: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(item.get("lastModifiedDateTime")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class GraphCalendar(GraphConnection):
    """The calendar of one Microsoft 365 mailbox (`provider = "microsoft"`)."""

    provider = "microsoft"

    def __init__(
        self,
        base_url: str,
        token_provider: Callable[[], str],
        *,
        client: httpx.Client | None = None,
        max_concurrency: int = 4,
        page_size: int = 200,
        timeout: float = 30.0,
        mailbox_key: str | None = None,
        address: str | None = None,
        days_back: int = 90,
        days_ahead: int = 365,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(base_url, token_provider, client=client, timeout=timeout,
                         max_concurrency=max_concurrency, mailbox_key=mailbox_key)
        self.page_size = page_size
        #: the mailbox owner's address: their own answer on attendee copies is recorded under it
        self.address = (address or "").strip().lower() or None
        self.days_back, self.days_ahead = days_back, days_ahead
        self.clock = clock

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, url: str, *, params: dict[str, str] | None = None, body: Any = None,
                 headers: dict[str, str] | None = None) -> httpx.Response:
        hdrs = {"Authorization": f"Bearer {self._token_provider()}", "Accept": "application/json",
                "Prefer": PREFER_UTC}
        content = None
        if body is not None:
            content = json.dumps(body, ensure_ascii=True).encode("ascii")
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        return self._send(method, url, params=params, content=content, headers=hdrs, what="graph calendar")

    def _batch(self, subs: list[dict[str, Any]]) -> list[dict[str, Any] | ConnectorError]:
        """Sub-requests in `$batch` calls of 20; answers in the order of `subs`."""
        out: list[dict[str, Any] | ConnectorError] = []
        for i in range(0, len(subs), BATCH_MAX):
            chunk = subs[i: i + BATCH_MAX]
            wire = []
            for n, sub in enumerate(chunk):
                headers = {"Prefer": PREFER_UTC}
                headers.update(sub.get("headers") or {})
                item = dict(sub, id=str(n + 1), headers=headers)
                if "body" in sub:
                    headers["Content-Type"] = "application/json"
                wire.append(item)
            answers = {str(a.get("id")): a for a in self._request("POST", "/$batch", body={"requests": wire})
                       .json().get("responses") or [] if isinstance(a, dict)}
            out.extend(answers.get(str(n + 1)) or Transient("graph $batch answer missing") for n in range(len(chunk)))
        return out

    @staticmethod
    def _body_of(answer: dict[str, Any] | ConnectorError) -> dict[str, Any]:
        if isinstance(answer, ConnectorError):
            raise answer
        status, body = int(answer.get("status") or 0), answer.get("body")
        if status >= 300:
            raise error_for(status, answer.get("headers") or {}, body)
        if not isinstance(body, dict):
            raise Transient("graph $batch answer without a body")
        return body

    def _window_now(self) -> tuple[datetime, datetime]:
        now = datetime.fromtimestamp(self.clock(), timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        return now - timedelta(days=self.days_back), now + timedelta(days=self.days_ahead + 1)

    @staticmethod
    def _read_state(text: str) -> dict[str, Any]:
        try:
            state = json.loads(text)
            datetime.fromisoformat(state["ws"].replace("Z", "+00:00"))
            datetime.fromisoformat(state["we"].replace("Z", "+00:00"))
            if state.get("v") != 1 or not isinstance(state.get("link"), str):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CursorExpired("graph calendar cursor unreadable") from None
        return state

    # ------------------------------------------------------------------ reads

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        if page_token or cursor:
            state = self._read_state(page_token or cursor or "")
            ws = datetime.fromisoformat(state["ws"].replace("Z", "+00:00"))
            we = datetime.fromisoformat(state["we"].replace("Z", "+00:00"))
            full = bool(page_token and state.get("full"))
            if page_token and state.get("phase") == "events":
                return self._listing_page(state)
            seen = set(state.get("seen") or []) if page_token else set()
            resp = self._request("GET", state["link"], headers={"Prefer": f"{PREFER_UTC}, odata.maxpagesize={self.page_size}"})
        else:
            ws, we = self._window_now()
            full, seen = True, set()
            resp = self._request("GET", "/me/calendarView/delta",
                                 params={"startDateTime": _iso(ws), "endDateTime": _iso(we)},
                                 headers={"Prefer": f"{PREFER_UTC}, odata.maxpagesize={self.page_size}"})
        body = resp.json()
        value = body.get("value")
        if not isinstance(value, list):
            raise Transient("graph delta page without a value array")
        next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
        if not next_link and not delta_link:
            raise Transient("graph delta page without nextLink or deltaLink")
        records = self._page_records(_dedupe(value), (ws, we), seen)
        base = {"v": 1, "ws": _iso(ws), "we": _iso(we)}
        if next_link:
            return DeltaPage(records=records, next_page=_compact(dict(base, link=next_link, seen=sorted(seen),
                                                                       full=full)))
        if full:  # then the events outside the window (see the module docstring)
            return DeltaPage(records=records, next_page=_compact(dict(base, phase="events", delta=delta_link,
                                                                       link=f"/me/events?$top={LISTING_PAGE}")))
        return DeltaPage(records=records, cursor=_compact(dict(base, link=delta_link)))

    def _listing_page(self, state: dict[str, Any]) -> DeltaPage:
        """A page of `/me/events` (singles and masters, every date) at the end of a full listing."""
        body = self._request("GET", state["link"]).json()
        value = body.get("value")
        if not isinstance(value, list) or not isinstance(state.get("delta"), str):
            raise Transient("graph events page without a value array")
        window = (datetime.fromisoformat(state["ws"].replace("Z", "+00:00")),
                  datetime.fromisoformat(state["we"].replace("Z", "+00:00")))
        records = []
        for item in value:
            if isinstance(item, dict) and item.get("type") in ("singleInstance", "seriesMaster"):
                rec = self._record(item)
                if rec.content is None or not _in_window(rec.content, window):
                    records.append(rec)  # what the window's delta listed is not listed twice
        base = {"v": 1, "ws": state["ws"], "we": state["we"]}
        if body.get("@odata.nextLink"):
            return DeltaPage(records=records, next_page=_compact(dict(base, phase="events", delta=state["delta"],
                                                                       link=body["@odata.nextLink"])))
        return DeltaPage(records=records, cursor=_compact(dict(base, link=state["delta"])))

    def _page_records(self, items: list[dict[str, Any]], window: tuple[datetime, datetime],
                      seen: set[str]) -> list[SideRecord]:
        out: dict[str, SideRecord] = {}
        series: list[str] = []
        removed: list[str] = []
        for item in items:
            if "@removed" in item:
                removed.append(str(item["id"]))
                continue
            kind = item.get("type")
            if kind == "singleInstance":
                out[str(item["id"])] = self._record(item)
            elif kind == "seriesMaster":
                series.append(str(item["id"]))
            elif kind in ("occurrence", "exception") and item.get("seriesMasterId"):
                series.append(str(item["seriesMasterId"]))
            else:
                out[str(item.get("id") or "")] = _problem_record(item, TranslationProblem("event_type_unknown"))
        wanted = self._unseen(series, seen)
        answers = self._batch(self._series_gets(wanted, window) + [
            {"method": "GET", "url": f"/me/events/{quote(rid, safe='')}"} for rid in removed]) if wanted or removed else []
        outside: dict[str, list[dict[str, Any]]] = {}
        for rid, answer in zip(removed, answers[2 * len(wanted):]):
            try:
                item = self._body_of(answer)
            except NotFound:
                out.setdefault(rid, EventRecord(side="mailbox", external_id=rid, deleted=True))
                continue
            if item.get("type") == "singleInstance":
                out[rid] = self._record(item)  # it left the window, it was not deleted
            elif item.get("seriesMasterId"):  # an instance moved out of the window: its series changed
                outside.setdefault(str(item["seriesMasterId"]), []).append(item)
        out.update(self._series_from(wanted, answers[: 2 * len(wanted)], window, seen, outside))
        # re-read even a series an earlier page of this round read: it took the slot of an
        # instance moved out of the window for a cancelled one (corrected by a tombstone)
        again = [m for m in outside if m not in wanted]
        if again:
            out.update(self._series_from(again, self._batch(self._series_gets(again, window)), window, seen, outside))
        return list(out.values())

    @staticmethod
    def _unseen(master_ids: list[str], seen: set[str]) -> list[str]:
        return [m for m in dict.fromkeys(master_ids) if _digest(m) not in seen]

    def _series_gets(self, master_ids: list[str], window: tuple[datetime, datetime]) -> list[dict[str, Any]]:
        """Per series: its master, then its instances in the window (answers in that order)."""
        subs: list[dict[str, Any]] = []
        for m in master_ids:
            subs.append({"method": "GET", "url": f"/me/events/{quote(m, safe='')}"})
            subs.append({"method": "GET", "url": self._instances_url(m, window)})
        return subs

    def _series_from(self, master_ids: list[str], answers: list[Any], window: tuple[datetime, datetime],
                     seen: set[str], outside: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, SideRecord]:
        """Records of each series; `outside`: instances known to lie outside the window (read back
        after an `@removed`), so their slots are not taken for cancelled ones."""
        out: dict[str, SideRecord] = {}
        for n, m in enumerate(master_ids):
            seen.add(_digest(m))
            for rec in self._series_records(m, answers[2 * n], answers[2 * n + 1], window,
                                            (outside or {}).get(m, [])):
                out[rec.external_id] = rec
        return out

    def _instances_url(self, master_id: str, window: tuple[datetime, datetime]) -> str:
        q = urlencode({"startDateTime": _iso(window[0]), "endDateTime": _iso(window[1]), "$top": str(INSTANCES_PAGE)},
                      quote_via=quote)
        return f"/me/events/{quote(master_id, safe='')}/instances?{q}"

    def _record(self, item: dict[str, Any], *, uid: str | None = None, all_day_series: bool | None = None) -> SideRecord:
        """One Graph event as a record; an exception needs its series' `uid` and all-day-ness."""
        try:
            ev = item_to_event(item, uid=uid, all_day_series=all_day_series, owner_address=self.address)
        except (TranslationProblem, ValueError) as exc:
            return _problem_record(item, exc)
        return EventRecord(side="mailbox", external_id=str(item["id"]), content=ev,
                           etag=item.get("@odata.etag"), updated_at=_updated_at(item))

    def _series_records(self, master_id: str, master_answer: Any, instances_answer: Any,
                        window: tuple[datetime, datetime], outside: list[dict[str, Any]] = ()) -> list[SideRecord]:
        try:
            master_item = self._body_of(master_answer)
        except NotFound:
            return []  # deleted since the page was read: its removals follow
        master_rec = self._record(master_item)
        if master_rec.content is None:
            return [master_rec]
        master: Event = master_rec.content
        try:
            instances = self._all_instances(self._body_of(instances_answer))
        except NotFound:
            return [master_rec]  # deleted between the two reads: its removals follow
        known = {str(i.get("id")) for i in instances}
        instances += [i for i in outside if str(i.get("id")) not in known]
        records = self._instance_records(master_id, master, instances, window)
        for item in outside:
            try:
                key = original_key(item, master.all_day)
            except TranslationProblem:
                continue
            records.append(EventRecord(side="mailbox", external_id=f"{master_id}{CANCELLED}{key}", deleted=True))
        return [master_rec] + records

    def _all_instances(self, first: dict[str, Any]) -> list[dict[str, Any]]:
        items = list(first.get("value") or [])
        link = first.get("@odata.nextLink")
        while link:
            page = self._request("GET", link).json()
            items.extend(page.get("value") or [])
            link = page.get("@odata.nextLink")
        return items

    def _instance_records(self, master_id: str, master: Event, instances: list[dict[str, Any]],
                          window: tuple[datetime, datetime]) -> list[SideRecord]:
        out: list[SideRecord] = []
        present: set[str] = set()
        for inst in instances:
            try:
                present.add(original_key(inst, master.all_day))
            except TranslationProblem as exc:
                out.append(_problem_record(inst, exc))
                continue
            if inst.get("type") == "exception":
                out.append(self._record(inst, uid=master.uid, all_day_series=master.all_day))
        try:
            expected = instance_keys(master, *window)
        except ValueError:
            return out
        for key in expected:
            if key not in present:
                out.append(EventRecord(side="mailbox", external_id=f"{master_id}{CANCELLED}{key}",
                                       content=cancelled_instance(master, key)))
        return out

    def get(self, external_id: str) -> SideRecord:
        if CANCELLED in external_id:
            master_id, _, key = external_id.partition(CANCELLED)
            master_item = self._request("GET", f"/me/events/{quote(master_id, safe='')}").json()
            master_rec = self._record(master_item)
            if master_rec.content is None:
                return master_rec
            window = window_around(key, master_rec.content.all_day)
            instances = self._all_instances(self._request("GET", self._instances_url(master_id, window)).json())
            for rec in self._instance_records(master_id, master_rec.content, instances, window):
                if rec.external_id == external_id:
                    return rec
            return EventRecord(side="mailbox", external_id=external_id, deleted=True)
        item = self._request("GET", f"/me/events/{quote(external_id, safe='')}").json()
        if item.get("type") == "occurrence":
            raise NotFound("graph occurrence is not a record")
        if item.get("type") == "exception" and item.get("seriesMasterId"):
            master_rec = self.get(str(item["seriesMasterId"]))
            if master_rec.content is None:
                return _problem_record(item, TranslationProblem("event_master_unreadable"))
            return self._record(item, uid=master_rec.content.uid, all_day_series=master_rec.content.all_day)
        return self._record(item)

    # ------------------------------------------------------------------ markers

    def find_by_marker(self, marker: str) -> SideRecord | None:
        return self.find_by_markers([marker]).get(marker)

    def find_by_markers(self, markers: Sequence[str], heartbeat: Callable[[], None] = lambda: None) -> dict[str, SideRecord]:
        """Singles and masters we created, by marker: up to 20 by `$filter` in one `$batch`,
        more by one listing that expands the marker property (see GraphContacts)."""
        wanted = list(dict.fromkeys(markers))
        if not wanted:
            return {}
        found: dict[str, SideRecord] = {}
        if len(wanted) <= BATCH_MAX:
            subs = []
            for marker in wanted:
                value = marker.replace("'", "''")
                flt = f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARKER_PROPERTY_ID}' and ep/value eq '{value}')"
                subs.append({"method": "GET", "url": "/me/events?" + urlencode({"$filter": flt, "$top": "1"},
                                                                                  quote_via=quote)})
            for marker, answer in zip(wanted, self._batch(subs)):
                items = self._body_of(answer).get("value") or []
                if items:
                    found[marker] = self._record(items[0])
            heartbeat()
            return found
        want = set(wanted)
        link: str | None = "/me/events"
        params: dict[str, str] | None = {"$top": "1000",
                                         "$expand": f"singleValueExtendedProperties($filter=id eq '{MARKER_PROPERTY_ID}')"}
        while link and len(found) < len(want):
            body = self._request("GET", link, params=params).json()
            for item in body.get("value") or []:
                for prop in item.get("singleValueExtendedProperties") or []:
                    if isinstance(prop, dict) and prop.get("value") in want:
                        found[prop["value"]] = self._record(item)
            heartbeat()
            link, params = body.get("@odata.nextLink"), None
        return found

    # ------------------------------------------------------------------ writes

    def create_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._write(requests, "create")

    def update_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._write(requests, "update")

    def delete_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._write(requests, "delete")

    def _write(self, requests: Sequence[WriteRequest], op: str) -> list[WriteResult]:
        """Plain writes (one Graph item each) in `$batch` calls of 20; the others (exceptions
        created or cancelled, EXDATEs, synthetic cancelled ids) one by one, after the plain
        ones so an exception finds a series created in the same call."""
        results: dict[int, WriteResult] = {}
        plain: dict[int, dict[str, Any]] = {}
        later: list[int] = []
        for i, r in enumerate(requests):
            bad = r.malformed(op)
            if bad is not None:
                results[i] = WriteResult(key=r.key, error=bad, calls=0.0)
                continue
            try:
                sub = self._plain_sub(r, op)
            except ConnectorError as exc:
                results[i] = WriteResult(key=r.key, error=exc, calls=0.0)
                continue
            if sub is None:
                later.append(i)
            else:
                plain[i] = sub
        order = list(plain)
        for start in range(0, len(order), BATCH_MAX):
            chunk = order[start: start + BATCH_MAX]
            try:
                answers: list[Any] = self._batch([plain[i] for i in chunk])
            except ConnectorError as exc:  # the whole call failed: each item shares it
                answers = [exc] * len(chunk)
            for i, answer in zip(chunk, answers):
                results[i] = self._plain_result(requests[i], op, answer, 1.0 / len(chunk))
        for i in later:
            results[i] = self._one(requests[i], op)
        return [results[i] for i in range(len(requests))]

    def _plain_sub(self, r: WriteRequest, op: str) -> dict[str, Any] | None:
        """The `$batch` sub-request of a write that is one Graph call, or None for the others."""
        ext = r.external_id or ""
        if CANCELLED in ext:
            return None
        headers = {"If-Match": r.etag} if r.etag else {}
        if op == "delete":
            return {"method": "DELETE", "url": f"/me/events/{quote(ext, safe='')}", "headers": headers}
        ev: Event = r.content
        if ev.exdates and ev.rrule:
            return None
        if op == "create":
            if ev.recurrence_id:
                return None
            return {"method": "POST", "url": "/me/events",
                    "body": event_to_body(ev, marker=r.marker, marker_property=MARKER_PROPERTY_ID)}
        if (ev.recurrence_id and ev.status == "cancelled") or self._is_attendee_copy(ev):
            return None
        return {"method": "PATCH", "url": f"/me/events/{quote(ext, safe='')}", "headers": headers,
                "body": event_to_body(ev, instance=bool(ev.recurrence_id))}

    def _plain_result(self, r: WriteRequest, op: str, answer: Any, share: float) -> WriteResult:
        if isinstance(answer, ConnectorError):
            return WriteResult(key=r.key, error=answer, calls=share)
        status, body = int(answer.get("status") or 0), answer.get("body")
        if op == "delete" and (status < 300 or status == 404):  # already gone counts as deleted
            return WriteResult(key=r.key, record=EventRecord(side="mailbox", external_id=r.external_id or "",
                                                             deleted=True), calls=share)
        if status >= 300:
            return WriteResult(key=r.key, error=error_for(status, answer.get("headers") or {}, body), calls=share)
        if not isinstance(body, dict):
            return WriteResult(key=r.key, error=Transient("graph $batch answer without a body"), calls=share)
        ev: Event = r.content
        if body.get("type") == "exception":
            return WriteResult(key=r.key, record=self._record(body, uid=ev.uid,
                                                              all_day_series=len(ev.recurrence_id) == 8), calls=share)
        return WriteResult(key=r.key, record=self._record(body), calls=share)

    def _one(self, r: WriteRequest, op: str) -> WriteResult:
        bad = r.malformed(op)
        if bad is not None:
            return WriteResult(key=r.key, error=bad, calls=0.0)
        before = self.calls_made
        try:
            record = getattr(self, f"_{op}")(r)
        except ConnectorError as exc:
            return WriteResult(key=r.key, error=exc, calls=float(self.calls_made - before))
        return WriteResult(key=r.key, record=record, calls=float(self.calls_made - before))

    def _create(self, r: WriteRequest) -> SideRecord:
        ev: Event = r.content
        if ev.recurrence_id:
            return self._write_instance(ev)
        body = event_to_body(ev, marker=r.marker, marker_property=MARKER_PROPERTY_ID)
        item = self._request("POST", "/me/events", body=body).json()
        if ev.rrule and ev.exdates:
            self._cancel_keys(str(item["id"]), item, ev.exdates)
            item = self._request("GET", f"/me/events/{quote(str(item['id']), safe='')}").json()
        return self._record(item)

    def _update(self, r: WriteRequest) -> SideRecord:
        ev: Event = r.content
        ext = r.external_id or ""
        if CANCELLED in ext:
            if ev.status == "cancelled":
                return EventRecord(side="mailbox", external_id=ext, content=ev)
            raise ValidationRejected("graph cannot restore a cancelled occurrence", rule="cancelled_instance_restore")
        if self._is_attendee_copy(ev):
            return self._respond(ext, ev)
        headers = {"If-Match": r.etag} if r.etag else None
        if ev.recurrence_id and ev.status == "cancelled":
            self._request("DELETE", f"/me/events/{quote(ext, safe='')}", headers=headers)
            master = self._master_by_uid(ev.uid)
            return EventRecord(side="mailbox", external_id=f"{master['id']}{CANCELLED}{ev.recurrence_id}", content=ev)
        body = event_to_body(ev, instance=bool(ev.recurrence_id))
        item = self._request("PATCH", f"/me/events/{quote(ext, safe='')}", body=body, headers=headers).json()
        if ev.rrule and ev.exdates and item.get("type") == "seriesMaster":
            self._cancel_keys(ext, item, ev.exdates)
            item = self._request("GET", f"/me/events/{quote(ext, safe='')}").json()
        if item.get("type") == "exception":
            return self._record(item, uid=ev.uid, all_day_series=len(ev.recurrence_id) == 8)
        return self._record(item)

    def _delete(self, r: WriteRequest) -> SideRecord:
        ext = r.external_id or ""
        if CANCELLED not in ext:
            try:
                self._request("DELETE", f"/me/events/{quote(ext, safe='')}",
                              headers={"If-Match": r.etag} if r.etag else None)
            except NotFound:
                pass  # already gone counts as deleted
        return EventRecord(side="mailbox", external_id=ext, deleted=True)

    def _is_attendee_copy(self, ev: Event) -> bool:
        return bool(self.address and ev.organizer and ev.organizer != self.address)

    def _respond(self, ext: str, ev: Event) -> SideRecord:
        """On an attendee's copy only the owner's answer is written (Graph sends it to the
        organizer); content edits belong to the organizer's copy and are not pushed from here."""
        action = {"accepted": "accept", "tentative": "tentativelyAccept", "declined": "decline"}.get(
            ev.response_of(self.address or "") or "")
        if action is not None:
            self._request("POST", f"/me/events/{quote(ext, safe='')}/{action}", body={"sendResponse": True})
        return self.get(ext)

    # exceptions and cancelled instances -----------------------------------------------

    def _master_by_uid(self, uid: str) -> dict[str, Any]:
        value = uid.replace("'", "''")
        items = self._request("GET", "/me/events", params={"$filter": f"iCalUId eq '{value}'", "$top": "5"}).json()
        for item in items.get("value") or []:
            if item.get("type") == "seriesMaster":
                return item
        raise ValidationRejected("graph calendar has no series for this exception", rule="series_master_missing")

    def _find_instance(self, master: dict[str, Any], key: str) -> dict[str, Any] | None:
        all_day = bool(master.get("isAllDay"))
        ws, we = self._window_now()
        for window in (window_around(key, all_day), (ws, we)):
            url = self._instances_url(str(master["id"]), window)
            for inst in self._all_instances(self._request("GET", url).json()):
                try:
                    if original_key(inst, all_day) == key:
                        return inst
                except TranslationProblem:
                    continue
        return None

    def _write_instance(self, ev: Event) -> SideRecord:
        if ev.range:  # before any call, as event_to_body would for a live one
            raise ValidationRejected("graph calendar cannot hold a this-and-following exception",
                                     rule="thisandfuture_unsupported")
        body = event_to_body(ev, instance=True) if ev.status != "cancelled" else None
        master = self._master_by_uid(ev.uid)
        inst = self._find_instance(master, ev.recurrence_id)
        cancelled_id = f"{master['id']}{CANCELLED}{ev.recurrence_id}"
        if ev.status == "cancelled":
            if inst is not None:
                try:
                    self._request("DELETE", f"/me/events/{quote(str(inst['id']), safe='')}")
                except NotFound:
                    pass
            return EventRecord(side="mailbox", external_id=cancelled_id, content=ev)
        if inst is None:
            raise ValidationRejected("graph series has no such instance (cancelled or outside the series)",
                                     rule="instance_missing")
        item = self._request("PATCH", f"/me/events/{quote(str(inst['id']), safe='')}", body=body).json()
        return self._record(item, uid=str(master.get("iCalUId") or ev.uid), all_day_series=bool(master.get("isAllDay")))

    def _cancel_keys(self, master_id: str, master: dict[str, Any], keys: Sequence[str]) -> None:
        all_day = bool(master.get("isAllDay"))
        windows = [window_around(k, all_day) for k in keys]
        window = (min(w[0] for w in windows), max(w[1] for w in windows))
        wanted = set(keys)
        for inst in self._all_instances(self._request("GET", self._instances_url(master_id, window)).json()):
            try:
                key = original_key(inst, all_day)
            except TranslationProblem:
                continue
            if key in wanted:
                try:
                    self._request("DELETE", f"/me/events/{quote(str(inst['id']), safe='')}")
                except NotFound:
                    pass

    # ------------------------------------------------------------------ subscriptions

    def create_subscription(self, notification_url: str, client_state: str, *, minutes: int = 4230,
                            change_type: str = "created,updated,deleted",
                            lifecycle_url: str | None = None) -> dict[str, Any]:
        """Subscribe to this mailbox's events (`me/events`, at most 10,080 minutes)."""
        return self._subscribe("me/events", notification_url, client_state, minutes=minutes,
                               change_type=change_type, lifecycle_url=lifecycle_url)
