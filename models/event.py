"""The canonical calendar event: one shape for Google Calendar, Graph and the platform.

A series is one record (its master, with the RRULE, EXDATEs and RDATEs) and every
exception is a record of its own, keyed like RFC 5545 by (UID, RECURRENCE-ID): a
moved or edited instance carries its new content, a cancelled one
`status="cancelled"`, a "this and following" edit `range="THISANDFUTURE"`. Keeping
exceptions as records (rather than folding them into the master) lets the generic
planner merge, link and quarantine each one alone, and lets the organisation claim a
meeting instance once however many calendars hold it.

Like every canonical model the fields are `str` (scalars, merged field by field) and
`tuple[str, ...]` (sets, merged by additions and removals), so the shared three-way
merge applies unchanged. Times are strings in one documented form:

- timed, zoned: `start="2026-12-07T09:00:00"` (wall clock, no offset) and
  `start_tz="Europe/Paris"` (IANA; connectors map Graph's Windows names);
- floating (no zone, RFC 5545 "local time"): the same wall clock and `start_tz=""`;
- all-day: `start="2026-12-07"`, `end="2026-12-08"` (exclusive, as both providers
  and RFC 5545 have it) and no zone.

`recurrence_id`, `exdates` and `rdates` hold instance keys (`instance_key`): the
instant in UTC for zoned times (`20261207T080000Z`), the wall clock for floating
ones (`20261207T090000`), the date for all-day series (`20261207`). One form per
instant means the organizer's copy, an attendee's copy in another zone and the
platform agree on which instance an exception replaces.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator

from models.record import SideRecord

Status = Literal["confirmed", "tentative", "cancelled"]
Response = Literal["needsAction", "accepted", "tentative", "declined"]
RESPONSES: tuple[str, ...] = ("needsAction", "tentative", "declined", "accepted")

#: fields whose change on both sides is always a conflict for a person, whatever the
#: organisation's policy: silently picking one side's meeting time moves a meeting
TIME_FIELDS: tuple[str, ...] = ("start", "end", "start_tz", "end_tz", "rrule")


def instance_key(value: date | datetime) -> str:
    """The one string form of an instance's original start (see the module docstring)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.strftime("%Y%m%dT%H%M%S")
        return value.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return value.strftime("%Y%m%d")


def parse_instance_key(key: str) -> date | datetime:
    if len(key) == 8:
        return datetime.strptime(key, "%Y%m%d").date()
    if key.endswith("Z"):
        return datetime.strptime(key, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return datetime.strptime(key, "%Y%m%dT%H%M%S")


def zone(name: str) -> ZoneInfo | None:
    """The IANA zone, or None for floating / all-day times and unknown names."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _one_response_per_attendee(values: tuple[str, ...]) -> tuple[str, ...]:
    """`email=response`, one per address (case-folded). When two disagree (both sides
    changed one person's answer since the last sync) the most committed answer wins:
    accepted over declined over tentative over needsAction, the same on every run."""
    chosen: dict[str, str] = {}
    for v in values:
        email, _, response = v.partition("=")
        email = email.strip().casefold()
        if not email:
            continue
        response = response if response in RESPONSES else "needsAction"
        if email not in chosen or RESPONSES.index(response) > RESPONSES.index(chosen[email]):
            chosen[email] = response
    return tuple(sorted(f"{e}={r}" for e, r in chosen.items()))


class Event(BaseModel):
    """A calendar event, a series master or one exception of a series."""

    model_config = ConfigDict(frozen=True)

    #: RFC 5545 UID (Google `iCalUID`, Graph `iCalUId`): shared by every copy of a meeting
    uid: str = ""
    #: the replaced instance's original start (`instance_key`), "" for masters and singles
    recurrence_id: str = ""
    #: "THISANDFUTURE" when this exception replaces its instance and every later one
    range: str = ""
    title: str = ""
    description: str = ""
    location: str = ""
    organizer: str = ""
    status: str = "confirmed"
    #: "opaque" (busy) or "transparent" (free)
    transparency: str = "opaque"
    #: "default", "public" or "private": a private event's description stays in the mailbox
    visibility: str = "default"
    start: str = ""
    end: str = ""
    start_tz: str = ""
    end_tz: str = ""
    #: the RRULE value without its "RRULE:" prefix (masters only)
    rrule: str = ""
    #: the project the platform files the event under ("" until a rule or a person sets it)
    project: str = ""
    attendees: tuple[str, ...] = ()
    #: "email=needsAction|accepted|tentative|declined", one per attendee
    responses: tuple[str, ...] = ()
    exdates: tuple[str, ...] = ()
    rdates: tuple[str, ...] = ()

    @field_validator("attendees", mode="before")
    @classmethod
    def _attendees(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = (value,)
        return tuple(sorted({str(v).strip().casefold() for v in value if str(v).strip()}))

    @field_validator("responses", mode="before")
    @classmethod
    def _responses(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = (value,)
        return _one_response_per_attendee(tuple(str(v) for v in value))

    @field_validator("exdates", "rdates", mode="before")
    @classmethod
    def _keys(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = (value,)
        return tuple(sorted({str(v).strip() for v in value if str(v).strip()}))

    @field_validator("organizer", mode="before")
    @classmethod
    def _organizer(cls, value: object) -> str:
        return "" if value is None else str(value).strip().casefold()

    @field_validator("uid", "recurrence_id", "range", "title", "description", "location", "status",
                     "transparency", "visibility", "start", "end", "start_tz", "end_tz", "rrule",
                     "project", mode="before")
    @classmethod
    def _strip(cls, value: object) -> str:
        return "" if value is None else str(value).strip()

    # -- what the sync core asks of an event --------------------------------------------

    @property
    def key(self) -> str:
        """(UID, RECURRENCE-ID) as one string: the organisation-wide identity of a meeting."""
        return f"{self.uid}|{self.recurrence_id}"

    @property
    def is_series(self) -> bool:
        return bool(self.rrule or self.rdates) and not self.recurrence_id

    @property
    def is_exception(self) -> bool:
        return bool(self.recurrence_id)

    @property
    def all_day(self) -> bool:
        return len(self.start) == 10

    def response_of(self, email: str) -> str | None:
        email = email.casefold()
        for r in self.responses:
            who, _, answer = r.partition("=")
            if who == email:
                return answer
        return None

    def with_response(self, email: str, response: str) -> "Event":
        """This event with one attendee's answer replaced (an attendee's copy adds only that)."""
        email = email.casefold()
        others = tuple(r for r in self.responses if r.partition("=")[0] != email)
        return self.model_copy(update={"responses": _one_response_per_attendee(others + (f"{email}={response}",))})

    def start_value(self) -> date | datetime | None:
        """The start as Python sees it: a date, a zoned datetime, or a naive (floating) one."""
        return _value(self.start, self.start_tz)

    def end_value(self) -> date | datetime | None:
        return _value(self.end, self.end_tz or self.start_tz)


def _value(text: str, tz: str) -> date | datetime | None:
    if not text:
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    z = zone(tz)
    if z is not None:
        return dt.replace(tzinfo=z) if dt.tzinfo is None else dt.astimezone(z)
    return dt


#: an event as one side reports it
EventRecord = SideRecord[Event]
