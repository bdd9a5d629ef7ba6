"""What makes an event unusable as received, one value-free message per problem.

Messages name the field and the rule, never the content: they reach quarantine
lists, logs and workflow history, where titles, people and descriptions must not.
A problem quarantines the one event; the batch goes on.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from dateutil.rrule import rrulestr

from models.event import Event, parse_instance_key, zone
from sync.normalize import email_problem

STATUSES = ("confirmed", "tentative", "cancelled")
TRANSPARENCIES = ("opaque", "transparent")
VISIBILITIES = ("default", "public", "private", "confidential")
#: a meeting's description carries join links and agendas (Teams' alone is kilobytes):
#: it gets its own limit rather than the organisation's per-field one
MAX_DESCRIPTION_LEN = 64 * 1024
_UNTIL = re.compile(r"\d{8}(T\d{6}Z?)?", re.IGNORECASE)
_TEXT_FIELDS = ("uid", "title", "location", "organizer", "project")


def _time_problem(name: str, text: str) -> str | None:
    if not text:
        return None
    try:
        if len(text) == 10:
            date.fromisoformat(text)
        else:
            value = datetime.fromisoformat(text)
            if value.tzinfo is not None:
                return f"{name} carries an offset; times are wall clock with a separate zone"
    except ValueError:
        return f"{name} is not a date or a date-time"
    return None


def _rrule_problem(event: Event) -> str | None:
    """Whether dateutil can read the rule. Only its syntax is checked, on a floating
    start: a UTC or local UNTIL is fine for any series (see sync.calendar.recurrence)."""
    start = event.start_value()
    if start is None:
        return None  # reported as the start's problem
    dtstart = datetime(start.year, start.month, start.day, getattr(start, "hour", 0), getattr(start, "minute", 0))
    text = ";".join(p.strip()[:-1] if p.strip().upper().startswith("UNTIL=") and p.strip().upper().endswith("Z")
                    else p for p in event.rrule.removeprefix("RRULE:").split(";"))
    for part in text.split(";"):
        name, _, value = part.partition("=")
        if name.strip().upper() == "UNTIL" and not _UNTIL.fullmatch(value.strip()):
            return "rrule has an UNTIL that is not a date or a date-time"
    try:
        rrulestr(text, dtstart=dtstart)
    except (ValueError, TypeError, IndexError, KeyError):
        return "rrule cannot be parsed"
    return None


def _key_problem(name: str, key: str) -> str | None:
    try:
        parse_instance_key(key)
    except ValueError:
        return f"{name} is not an instance key"
    return None


def event_problems(event: Event, *, max_field_len: int = 1000) -> list[str]:
    """What is wrong with `event`, one message per problem (empty when it is usable)."""
    problems: list[str] = []
    for name in _TEXT_FIELDS:
        value = getattr(event, name)
        if len(value) > max_field_len:
            problems.append(f"{name} is too long ({len(value)} characters; the limit is {max_field_len})")
    if len(event.description) > MAX_DESCRIPTION_LEN:
        problems.append(f"description is too long ({len(event.description)} characters; "
                        f"the limit is {MAX_DESCRIPTION_LEN})")

    if event.recurrence_id:
        if not event.uid:
            problems.append("recurrence_id is set without a uid: an exception needs its series' uid")
        if (p := _key_problem("recurrence_id", event.recurrence_id)):
            problems.append(p)
        if event.rrule:
            problems.append("rrule is set on an exception")
    if event.range and event.range.upper() != "THISANDFUTURE":
        problems.append("range is not THISANDFUTURE")
    elif event.range and not event.recurrence_id:
        problems.append("range is set on an event that is not an exception")
    for name in ("exdates", "rdates"):
        for i, key in enumerate(getattr(event, name)):
            if (p := _key_problem(f"{name}[{i}]", key)):
                problems.append(p)

    if event.status not in STATUSES:
        problems.append("status is not confirmed, tentative or cancelled")
    if event.transparency not in TRANSPARENCIES:
        problems.append("transparency is not opaque or transparent")
    if event.visibility not in VISIBILITIES:
        problems.append("visibility is not default, public, private or confidential")
    if event.organizer and email_problem(event.organizer):
        problems.append("organizer is not a valid email address")
    for i, email in enumerate(event.attendees):
        if email_problem(email):
            problems.append(f"attendees[{i}] is not a valid email address")

    problems += _time_problems(event)
    return problems


def _time_problems(event: Event) -> list[str]:
    # A cancelled exception is an instance's removal: Google sends it with nothing
    # but its ids and original start, and it needs nothing else.
    if event.status == "cancelled" and event.recurrence_id and not event.start:
        return []
    problems: list[str] = []
    if not event.start:
        problems.append("start is missing")
    for name in ("start", "end"):
        if (p := _time_problem(name, getattr(event, name))):
            problems.append(p)
    for name in ("start_tz", "end_tz"):
        tz = getattr(event, name)
        if tz and zone(tz) is None:
            problems.append(f"{name} is not a known time zone")
    if problems:
        return problems
    start, end = event.start_value(), event.end_value()
    all_day = event.all_day
    if event.end:
        if all_day and isinstance(end, datetime):
            problems.append("end is not a date while start is (an all-day event)")
        elif not all_day and not isinstance(end, datetime):
            problems.append("end is a date while start has a time")
        elif start is not None and end is not None:
            # floating against zoned (an end zone without a start zone) cannot be ordered
            comparable = isinstance(start, date) and not isinstance(start, datetime) or \
                (start.tzinfo is None) == (end.tzinfo is None)
            if comparable and (end < start or (all_day and end == start)):
                problems.append("end is before start" if end < start
                                else "end is not after start (an all-day end is exclusive)")
    if event.rrule and (p := _rrule_problem(event)):
        problems.append(p)
    return problems
