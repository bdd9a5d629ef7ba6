"""Expanding a series into its instances, with dateutil (never a hand-written RRULE walker).

A zoned series is expanded in its own zone, so 09:00 stays 09:00 across a DST change
(the UTC instant moves); a floating series in wall-clock time; an all-day one in dates.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from dateutil.rrule import rruleset, rrulestr

from models.event import Event, instance_key, parse_instance_key, zone


def _as_datetime(value: date | datetime, tz) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.combine(value, time(0), tzinfo=tz)


def _rule_set(master: Event) -> tuple[rruleset, bool, object]:
    start = master.start_value()
    if start is None:
        raise ValueError("series without a valid start")
    all_day = not isinstance(start, datetime)
    tz = None if all_day else start.tzinfo
    dtstart = _as_datetime(start, tz)
    rules = rruleset()
    if master.rrule:
        rrule_text = master.rrule
        if all_day or tz is None:
            # dateutil refuses a UTC UNTIL with a naive DTSTART (RFC 5545 allows the pair
            # for floating and all-day series): compare in wall-clock time
            rrule_text = ";".join(p[:-1] if p.upper().startswith("UNTIL=") and p.endswith("Z") else p
                                  for p in rrule_text.split(";"))
        rules.rrule(rrulestr(rrule_text, dtstart=dtstart))
    for key in master.rdates:
        rules.rdate(_from_key(key, all_day, tz))
    for key in master.exdates:
        rules.exdate(_from_key(key, all_day, tz))
    return rules, all_day, tz


def _from_key(key: str, all_day: bool, tz) -> datetime:
    value = parse_instance_key(key)
    if all_day:
        d = value if not isinstance(value, datetime) else value.date()
        return datetime.combine(d, time(0))
    if isinstance(value, datetime):
        if tz is None:
            return value.replace(tzinfo=None)
        return value.astimezone(tz) if value.tzinfo else value.replace(tzinfo=tz)
    return datetime.combine(value, time(0), tzinfo=tz)


def occurrence_starts(master: Event, window_start: datetime, window_end: datetime) -> list[date | datetime]:
    """Original starts of the series' instances that begin in [window_start, window_end).

    The window is given as aware datetimes; for all-day and floating series it is read
    in wall-clock time (its UTC clock), as RFC 5545 has floating times follow the viewer.
    """
    rules, all_day, tz = _rule_set(master)
    if all_day or tz is None:
        lo, hi = window_start.replace(tzinfo=None), window_end.replace(tzinfo=None)
    else:
        lo, hi = window_start, window_end
    found = rules.between(lo, hi - timedelta(microseconds=1), inc=True)
    return [d.date() if all_day else d for d in found]


def instance_keys(master: Event, window_start: datetime, window_end: datetime) -> list[str]:
    return [instance_key(v) for v in occurrence_starts(master, window_start, window_end)]
