"""How the "singles" calendar flavour turns a series into single events (pure, no I/O).

The platform stores one row per instance over a horizon. An unedited instance is
the series' content at one occurrence: the master's fields with the start moved to
the occurrence and the master's duration kept. Occurrences come from dateutil
(sync.calendar.recurrence.occurrence_starts); nothing here walks an RRULE.

A "this and following" exception (range THISANDFUTURE) replaces its instance and
every later one: a later instance takes that exception's content, shifted by as
much as the exception moved its own instance (RFC 5545 3.8.4.4). The latest such
split at or before an occurrence wins. A cancelled split ends the series there.

Time arithmetic is done on wall clocks in the template's zone, so a 09:00-10:00
meeting stays 09:00-10:00 across a DST change, as the providers expand it.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Sequence

from models.event import Event, instance_key, parse_instance_key, zone
from sync.calendar.recurrence import occurrence_starts


def _wall(value: date | datetime, tz) -> datetime:
    """`value` as a naive wall clock in `tz` (dates at midnight; naive values as they are)."""
    if not isinstance(value, datetime):
        return datetime.combine(value, time(0))
    if value.tzinfo is not None and tz is not None:
        return value.astimezone(tz).replace(tzinfo=None)
    return value.replace(tzinfo=None)


def _fmt(wall: datetime, all_day: bool) -> str:
    return wall.date().isoformat() if all_day else wall.isoformat(timespec="seconds")


def _sort_key(value: date | datetime) -> datetime:
    if not isinstance(value, datetime):
        return datetime.combine(value, time(0), tzinfo=timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def occurrence_of(master: Event, key: str) -> date | datetime:
    """The original start an instance key stands for, in the master's own terms."""
    value = parse_instance_key(key)
    if master.all_day:
        return value if not isinstance(value, datetime) else value.date()
    tz = zone(master.start_tz)
    if isinstance(value, datetime) and value.tzinfo is not None and tz is not None:
        return value.astimezone(tz)
    if not isinstance(value, datetime):
        return datetime.combine(value, time(0), tzinfo=tz)
    return value.replace(tzinfo=tz) if tz is not None and value.tzinfo is None else value


def template_for(occurrence: date | datetime, splits: Sequence[Event]) -> Event | None:
    """The latest THISANDFUTURE exception at or before `occurrence`, if any."""
    best: Event | None = None
    for split in splits:
        if split.range != "THISANDFUTURE" or not split.recurrence_id:
            continue
        if _sort_key(parse_instance_key(split.recurrence_id)) <= _sort_key(occurrence):
            if best is None or _sort_key(parse_instance_key(split.recurrence_id)) > _sort_key(
                    parse_instance_key(best.recurrence_id)):
                best = split
    return best


def derive_instance(master: Event, occurrence: date | datetime, splits: Sequence[Event] = ()) -> Event | None:
    """The single event the platform shows for one unedited occurrence (None: none, as a
    cancelled "this and following" split ended the series before it)."""
    split = template_for(occurrence, splits)
    template = split or master
    if split is not None and split.status == "cancelled":
        return None
    all_day = template.all_day
    tz = zone(template.start_tz)
    t_start, t_end = template.start_value(), template.end_value()
    if t_start is None:
        return None
    occ_wall = _wall(occurrence, tz)
    if split is not None:
        shift = _wall(t_start, tz) - _wall(occurrence_of(master, split.recurrence_id), tz)
    else:
        shift = timedelta(0)
    start_wall = occ_wall + shift
    if all_day:
        start_wall = datetime.combine(start_wall.date(), time(0))
    end = ""
    if t_end is not None:
        end_tz = zone(template.end_tz) if template.end_tz else tz
        if all_day or template.end_tz in ("", template.start_tz):
            end_wall = start_wall + (_wall(t_end, tz) - _wall(t_start, tz))
        else:
            # End in another zone (a flight): keep the elapsed time, not the wall clock.
            elapsed = t_end - t_start
            start_aware = start_wall.replace(tzinfo=tz) if tz is not None else start_wall
            end_wall = _wall(start_aware + elapsed, end_tz)
        end = _fmt(end_wall, all_day)
    return template.model_copy(update={
        "uid": master.uid,
        "recurrence_id": instance_key(occurrence),
        "range": "",
        "rrule": "",
        "exdates": (),
        "rdates": (),
        "start": _fmt(start_wall, all_day),
        "end": end,
    })


def unedited_instances(master: Event, splits: Sequence[Event], window_start: datetime,
           window_end: datetime) -> dict[str, Event]:
    """Every unedited instance of the series in [window_start, window_end), by instance
    key. Keys of exceptions are included too (the caller keeps its edited rows)."""
    out: dict[str, Event] = {}
    for occ in occurrence_starts(master, window_start, window_end):
        inst = derive_instance(master, occ, splits)
        if inst is not None:
            out[inst.recurrence_id] = inst
    return out
