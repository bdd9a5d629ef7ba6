"""Graph event JSON <-> the canonical `Event` (pure, no I/O).

Reading (`item_to_event`):

- Times come in UTC (the connector asks for it with `Prefer: outlook.timezone="UTC"`,
  also Graph's default); the zone the event was written in is `originalStartTimeZone`
  / `originalEndTimeZone`, a Windows name mapped to IANA
  (`sync.calendar.timezones`). The wall clock is the UTC instant seen in that zone.
  An unknown zone name (Outlook's "Customized Time Zone") is a `ZoneProblem`: the
  record is quarantined rather than moved in time.
- All-day: `isAllDay`, start and end dates (end exclusive), no zone.
- A series master's `recurrence` becomes its RRULE (`connectors.graph_recurrence`).
- An exception's UID is its master's (Graph gives each instance an iCalUId of its
  own); its RECURRENCE-ID is `originalStart` as an instance key: the UTC instant for a
  timed series, the date for an all-day one.
- `isCancelled` -> status "cancelled" (an attendee's copy of a meeting its organizer
  cancelled); `showAs` free -> transparent, anything else opaque; `sensitivity`
  private / confidential / personal -> "private", normal -> "default".
- Attendees and their answers: none / notResponded -> needsAction,
  tentativelyAccepted -> tentative, accepted, declined. On an attendee's copy
  (`isOrganizer` false) the mailbox owner's own answer is `responseStatus`: it is
  added under `owner_address` when the connector knows it.
- An HTML body is reduced to text (Outlook stores HTML even for text it was given).

Writing (`event_to_body`): the same fields back, zones as Windows names when one
exists (IANA otherwise, which Graph accepts), an RRULE as a patternedRecurrence.
What Graph cannot hold is refused by name (ValidationRejected with a `rule`): a
floating time, RDATEs, a THISANDFUTURE exception, an RRULE without a Graph pattern.
"""

from __future__ import annotations

import html
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from connectors.graph_recurrence import RecurrenceProblem, pattern_to_rrule, rrule_to_pattern
from models.errors import ValidationRejected
from models.event import Event, instance_key, parse_instance_key
from sync.calendar.timezones import ZoneProblem, graph_zone_name, to_iana

_RESPONSE_IN = {"none": "needsAction", "notResponded": "needsAction", "tentativelyAccepted": "tentative",
                "accepted": "accepted", "declined": "declined", "organizer": "accepted"}
_PRIVATE = {"private", "confidential", "personal"}


class TranslationProblem(ValueError):
    """A Graph event we cannot read faithfully; `code` names why (no values)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _utc(obj: Any) -> datetime:
    """A Graph dateTimeTimeZone as an aware datetime."""
    if not isinstance(obj, dict) or not obj.get("dateTime"):
        raise TranslationProblem("event_time_missing")
    text = str(obj["dateTime"])
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?)(?:\.\d+)?", text)
    if not m:
        raise TranslationProblem("event_time_malformed")
    try:
        zone = ZoneInfo(to_iana(str(obj.get("timeZone") or "UTC")))
    except ZoneProblem:
        raise TranslationProblem("event_time_zone_unknown") from None
    return datetime.fromisoformat(m.group(1)).replace(tzinfo=zone)


def _zone(name: Any) -> tuple[str, ZoneInfo]:
    try:
        iana = to_iana(str(name or ""))
    except ZoneProblem:
        raise TranslationProblem("event_time_zone_unknown") from None
    return iana, ZoneInfo(iana)


def _text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    content = str(body.get("content") or "")
    if str(body.get("contentType") or "text").lower() == "html":
        content = re.sub(r"(?is)<(script|style)[^>]*>.*?</\1>", "", content)
        content = re.sub(r"(?i)<br\s*/?>|</p>|</div>", "\n", content)
        content = html.unescape(re.sub(r"<[^>]+>", "", content))
        content = "\n".join(line.strip() for line in content.splitlines()).strip()
    return content


def _address(obj: Any) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("emailAddress"), dict):
        return str(obj["emailAddress"].get("address") or "").strip().lower()
    return ""


def series_is_all_day(master: dict[str, Any]) -> bool:
    return bool(master.get("isAllDay"))


def original_key(item: dict[str, Any], all_day_series: bool) -> str:
    """The RECURRENCE-ID (instance key) of an occurrence or exception."""
    text = str(item.get("originalStart") or "")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TranslationProblem("event_original_start_malformed") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return instance_key(when.astimezone(timezone.utc).date() if all_day_series else when)


def item_to_event(item: dict[str, Any], *, uid: str | None = None, all_day_series: bool | None = None,
                  owner_address: str | None = None) -> Event:
    """A Graph event (single, master or exception) as an Event; TranslationProblem if unreadable.

    For an exception pass the master's `uid` and whether the series is all-day.
    """
    kind = item.get("type") or "singleInstance"
    all_day = bool(item.get("isAllDay"))
    start_utc, end_utc = _utc(item.get("start")), _utc(item.get("end"))
    if all_day:
        start, end, start_tz, end_tz = (start_utc.date().isoformat(), end_utc.date().isoformat(), "", "")
        start_local: date | datetime = start_utc.date()
        zone = None
    else:
        start_tz, zone = _zone(item.get("originalStartTimeZone") or item["start"].get("timeZone"))
        end_tz, end_zone = _zone(item.get("originalEndTimeZone") or item.get("originalStartTimeZone")
                                 or item["end"].get("timeZone"))
        start_local = start_utc.astimezone(zone).replace(tzinfo=None)
        start = start_local.isoformat(timespec="seconds")
        end = end_utc.astimezone(end_zone).replace(tzinfo=None).isoformat(timespec="seconds")
    rrule = ""
    if kind == "seriesMaster":
        try:
            rrule = pattern_to_rrule(item.get("recurrence") or {}, start_local, zone)
        except RecurrenceProblem as exc:
            raise TranslationProblem(exc.code) from None
    recurrence_id = ""
    if kind in ("exception", "occurrence"):
        recurrence_id = original_key(item, all_day if all_day_series is None else all_day_series)
    attendees, responses = [], []
    for a in item.get("attendees") or []:
        addr = _address(a)
        if not addr:
            continue
        attendees.append(addr)
        answer = ((a.get("status") or {}).get("response") if isinstance(a, dict) else None) or "none"
        responses.append(f"{addr}={_RESPONSE_IN.get(answer, 'needsAction')}")
    if owner_address and item.get("isOrganizer") is False:
        # the owner's own answer is authoritative on their copy; the attendee list may be stale
        me = owner_address.lower()
        own = (item.get("responseStatus") or {}).get("response") or "none"
        responses = [r for r in responses if r.partition("=")[0] != me]
        responses.append(f"{me}={_RESPONSE_IN.get(own, 'needsAction')}")
    return Event(
        uid=uid if uid is not None else str(item.get("iCalUId") or ""),
        recurrence_id=recurrence_id,
        title=str(item.get("subject") or ""),
        description=_text(item.get("body")),
        location=str((item.get("location") or {}).get("displayName") or ""),
        organizer=_address(item.get("organizer")),
        status="cancelled" if item.get("isCancelled") else "confirmed",
        transparency="transparent" if item.get("showAs") == "free" else "opaque",
        visibility="private" if item.get("sensitivity") in _PRIVATE else "default",
        start=start, end=end, start_tz=start_tz, end_tz=end_tz,
        rrule=rrule,
        attendees=tuple(attendees),
        responses=tuple(responses),
    )


def cancelled_instance(master: Event, key: str) -> Event:
    """The record of a cancelled instance of `master` (RFC 5545: an override with STATUS:CANCELLED)."""
    start_value, end_value = master.start_value(), master.end_value()
    original = parse_instance_key(key)
    if master.all_day and isinstance(start_value, date) and isinstance(end_value, date):
        d = original if not isinstance(original, datetime) else original.date()
        start, end = d.isoformat(), (d + (end_value - start_value)).isoformat()
    elif isinstance(start_value, datetime) and isinstance(end_value, datetime) and isinstance(original, datetime):
        z = start_value.tzinfo
        local = original.astimezone(z) if original.tzinfo and z else original
        start = local.replace(tzinfo=None).isoformat(timespec="seconds")
        end = (local + (end_value - start_value)).replace(tzinfo=None).isoformat(timespec="seconds")
    else:
        start, end = master.start, master.end
    return Event(uid=master.uid, recurrence_id=key, title=master.title, organizer=master.organizer,
                 status="cancelled", start=start, end=end, start_tz=master.start_tz, end_tz=master.end_tz)


# ---------------------------------------------------------------------------- writing


def _reject(rule: str, what: str) -> ValidationRejected:
    return ValidationRejected(f"graph calendar cannot hold {what}", rule=rule)


def _when(text: str, tz: str, all_day: bool) -> dict[str, str]:
    if all_day:
        return {"dateTime": f"{text}T00:00:00", "timeZone": "UTC"}
    if not tz:
        raise _reject("floating_time_unsupported", "a floating time")
    try:
        ZoneInfo(tz)
    except Exception:
        raise _reject("time_zone_unknown", "an unknown time zone") from None
    try:
        wall = datetime.fromisoformat(text)
    except ValueError:
        raise _reject("time_malformed", "a malformed time") from None
    return {"dateTime": wall.replace(tzinfo=None).isoformat(timespec="seconds"), "timeZone": graph_zone_name(tz)}


def event_to_body(ev: Event, *, marker: str | None = None, marker_property: str | None = None,
                  instance: bool = False) -> dict[str, Any]:
    """The Graph JSON for creating or replacing `ev`; `instance`: the PATCH of an occurrence or exception
    (no recurrence). Raises ValidationRejected for what Graph cannot express."""
    if ev.rdates:
        raise _reject("rdate_unsupported", "RDATEs")
    if ev.range:
        raise _reject("thisandfuture_unsupported", "a this-and-following exception")
    if not ev.start or not ev.end:
        raise _reject("time_missing", "an event without start and end")
    all_day = ev.all_day
    if all_day != (len(ev.end) == 10):
        raise _reject("time_malformed", "an all-day start with a timed end")
    body: dict[str, Any] = {
        "subject": ev.title,
        "body": {"contentType": "text", "content": ev.description},
        "location": {"displayName": ev.location},
        "showAs": "free" if ev.transparency == "transparent" else "busy",
        "sensitivity": "private" if ev.visibility == "private" else "normal",
        "isAllDay": all_day,
        "start": _when(ev.start, ev.start_tz, all_day),
        "end": _when(ev.end, ev.end_tz or ev.start_tz, all_day),
        "attendees": [{"type": "required", "emailAddress": {"address": a}} for a in ev.attendees
                      if a != ev.organizer],
    }
    if ev.rrule and not instance:
        start_value = ev.start_value()
        if start_value is None:
            raise _reject("time_malformed", "a malformed start")
        wall = start_value.replace(tzinfo=None) if isinstance(start_value, datetime) else start_value
        zone = start_value.tzinfo if isinstance(start_value, datetime) else None
        try:
            body["recurrence"] = rrule_to_pattern(ev.rrule, wall, zone,  # type: ignore[arg-type]
                                                  graph_zone_name(ev.start_tz) if ev.start_tz else "UTC")
        except RecurrenceProblem as exc:
            raise ValidationRejected("graph calendar cannot hold this recurrence rule", rule=exc.code) from None
    if marker and marker_property:
        body["singleValueExtendedProperties"] = [{"id": marker_property, "value": marker}]
    return body


def window_around(key: str, all_day: bool) -> tuple[datetime, datetime]:
    """A small window holding the instance whose original start is `key` (to find it again)."""
    value = parse_instance_key(key)
    if isinstance(value, datetime):
        at = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    else:
        at = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return at - timedelta(days=2), at + timedelta(days=3)
