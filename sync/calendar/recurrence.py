"""Expanding a series into its instances, with dateutil (never a hand-written RRULE walker).

A zoned series is expanded in its own zone, so 09:00 stays 09:00 across a DST change
(the UTC instant moves); a floating series in wall-clock time; an all-day one in dates.
An instance keeps the series' duration as wall-clock time too (the Python arithmetic
of aware datetimes in one zone, and what recurring-ical-events does), so a 01:00-04:00
meeting is 01:00-04:00 on the night the clocks go back, four hours long.

A wall-clock time that does not exist (02:30 on the night the clocks go forward) is
read with the offset before the gap, as RFC 5545 section 3.3.5 asks, and written back
as the wall clock that does exist (03:30): providers refuse times in a gap. A series'
own start and end are the exception: they keep the wall clock the rule repeats (see
`_times`).

Windows are half-open `[window_start, window_end)`, given as aware datetimes (naive
ones are read as UTC). Floating and all-day series have no instant of their own, so
a window is read on the UTC clock for them, as RFC 5545 floating times follow the
viewer and a sync worker's viewer is UTC.

Editing "this and following" is a split, as Google Calendar and RFC 5545 clients do it
(not a RANGE=THISANDFUTURE override, which neither provider stores): the old series
ends just before the instance and a new series, with a UID derived from the old one,
starts at it. `expand` still honours a THISANDFUTURE override received from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone, tzinfo

from dateutil.rrule import DAILY, rrule, rruleset, rrulestr
from icalendar import vRecur

from models.event import Event, instance_key, parse_instance_key, zone

THISANDFUTURE = "THISANDFUTURE"
#: a rule with no instance in this many years from its start is refused (see `_base_rule`)
BARREN_YEARS = 10

#: what an instance carries of its own: the rest it shares with its series
_INSTANCE_FIELDS = frozenset({"uid", "recurrence_id", "range", "start", "end", "start_tz", "end_tz",
                              "rrule", "exdates", "rdates"})


class RecurrenceError(ValueError):
    """A series that cannot be expanded; the message names the problem, never a value."""


# --- reading a series -----------------------------------------------------------


def _as_datetime(value: date | datetime, tz: tzinfo | None) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.combine(value, time(0), tzinfo=tz)


def _rule_text(master: Event, all_day: bool, tz: tzinfo | None) -> str:
    """The RRULE with UNTIL in the form dateutil accepts for this DTSTART.

    RFC 5545 wants UNTIL in UTC for a zoned series and local for floating and all-day
    ones; providers send both forms for either, so each is read the way it was meant:
    a UTC UNTIL on a floating series on the wall clock, a local one on a zoned series
    in the series' zone, and a date on a timed series as the end of that day.
    """
    parts = []
    for part in master.rrule.removeprefix("RRULE:").split(";"):
        name, _, value = part.partition("=")
        if name.strip().upper() == "UNTIL" and value:
            value = value.strip().upper()
            if all_day or tz is None:
                value = value.removesuffix("Z")
                if len(value) == 8 and not all_day:
                    value += "T235959"
            elif not value.endswith("Z"):
                try:
                    local = (datetime.strptime(value, "%Y%m%d").replace(hour=23, minute=59, second=59)
                             if len(value) == 8 else datetime.strptime(value, "%Y%m%dT%H%M%S"))
                except ValueError as exc:
                    raise RecurrenceError("the series' UNTIL is not a date or a date-time") from exc
                value = instance_key(local.replace(tzinfo=tz))
            part = f"UNTIL={value}"
        if part.strip():
            parts.append(part.strip())
    return ";".join(parts)


def _series_frame(master: Event) -> tuple[datetime, bool, tzinfo | None]:
    start = master.start_value()
    if start is None:
        raise RecurrenceError("series without a valid start")
    all_day = not isinstance(start, datetime)
    tz = None if all_day else start.tzinfo
    return _as_datetime(start, tz), all_day, tz


def _base_rule(master: Event, dtstart: datetime, all_day: bool, tz: tzinfo | None) -> rrule | None:
    if not master.rrule:
        return None
    try:
        parsed = rrulestr(_rule_text(master, all_day, tz), dtstart=dtstart)
    except (ValueError, TypeError, IndexError) as exc:
        raise RecurrenceError("the series' RRULE cannot be parsed") from exc
    if not isinstance(parsed, rrule):
        raise RecurrenceError("the series' RRULE holds more than one rule")
    if parsed._interval < 1 or (parsed._count is not None and parsed._count < 1):  # noqa: SLF001
        # RFC 5545 wants both positive; dateutil takes INTERVAL=0 and then never moves on
        # (an endless loop in any expansion), and a COUNT below 1 never runs out.
        raise RecurrenceError("the series' RRULE has an INTERVAL or COUNT below 1")
    if parsed._freq > DAILY:  # noqa: SLF001 - dateutil keeps FREQ here
        # No calendar provider repeats meetings hourly or finer; such a rule is junk and
        # would expand to thousands of instances a window.
        raise RecurrenceError("the series' RRULE repeats more often than daily")
    horizon = dtstart + timedelta(days=366 * BARREN_YEARS)
    bounded = parsed._until is not None and parsed._until <= horizon  # noqa: SLF001
    if not bounded and parsed.replace(until=horizon, count=None).after(dtstart, inc=True) is None:
        # dateutil looks for a first instance until the year 9999 (seconds of CPU per
        # call): "31 February" is refused here, once, rather than on every expansion.
        raise RecurrenceError("the series' RRULE has no instance in ten years")
    return parsed


def _rule_set(master: Event) -> tuple[rruleset, bool, tzinfo | None]:
    dtstart, all_day, tz = _series_frame(master)
    rules = rruleset()
    base = _base_rule(master, dtstart, all_day, tz)
    if base is not None:
        rules.rrule(base)
    # DTSTART is the first instance even when the RRULE would not produce it (RFC 5545
    # 3.8.5.3, as recurring-ical-events reads it), unless an UNTIL before it ends the
    # series before it starts; dateutil leaves it out.
    if base is None or base._until is None or base._until >= dtstart:  # noqa: SLF001
        rules.rdate(dtstart)
    for key in master.rdates:
        rules.rdate(_from_key(key, all_day, tz))
    for key in master.exdates:
        value = _from_key(key, all_day, tz)
        rules.exdate(value)
        in_gap = _in_gap(value, tz)
        if in_gap is not None:
            rules.exdate(in_gap)
    return rules, all_day, tz


def _from_key(key: str, all_day: bool, tz: tzinfo | None) -> datetime:
    """An instance key as the series' own rule produces it (see `_rule_set`)."""
    try:
        value = parse_instance_key(key)
    except ValueError as exc:
        raise RecurrenceError("an instance key is not in instance-key form") from exc
    if all_day:
        d = value if not isinstance(value, datetime) else value.date()
        return datetime.combine(d, time(0))
    if isinstance(value, datetime):
        if tz is None:
            return value.replace(tzinfo=None)
        return value.astimezone(tz) if value.tzinfo else value.replace(tzinfo=tz)
    return datetime.combine(value, time(0), tzinfo=tz)


def _around(rules: rrule | rruleset, value: datetime) -> list[datetime]:
    """The instances within a day of `value`, to be compared with it by instant.

    dateutil compares times in one zone by wall clock, and an instance in a DST gap is
    produced as written (02:30) at the instant of the time that exists (03:30): by wall
    clock it comes before a 03:15 instance that day, by instant after it.
    """
    day = timedelta(days=1)
    return rules.between(value - day, value + day, inc=True)


def _in_gap(value: datetime, tz: tzinfo | None) -> datetime | None:
    """The wall time in a DST gap that reads as the instant `value` (02:30 for 03:30), if any.

    A rule produces that instance as written, and dateutil matches an EXDATE by wall
    clock (see `_around`): an EXDATE there is given in both forms.
    """
    if tz is None or value.tzinfo is None:
        return None
    before = (value - timedelta(days=1)).utcoffset()
    wall = (_utc(value) + before).replace(tzinfo=tz) if before is not None else value
    return wall if wall != value and _utc(wall) == _utc(value) else None


def _as_produced(rules: rruleset, value: datetime) -> datetime | None:
    """The series' instance at the instant `value` as its rule produces it, or None
    (an instance key reads back as the time that exists, see `_around`)."""
    return next((v for v in _around(rules, value) if _utc(v) == _utc(value)), None)


def _has_earlier(rules: rruleset, value: datetime) -> bool:
    """Whether the series has an instance before `value`, by instant (see `_around`)."""
    return rules.before(value - timedelta(days=1)) is not None or any(_utc(v) < _utc(value)
                                                                      for v in _around(rules, value))


def _key_of(value: datetime, all_day: bool) -> str:
    return instance_key(value.date() if all_day else value)


def normalize_key(master: Event, key: str) -> str:
    """`key` in the series' one form: exceptions from a copy in another form still match."""
    _, all_day, tz = _series_frame(master)
    return _key_of(_from_key(key, all_day, tz), all_day)


def rrule_problem(master: Event) -> str | None:
    """Why the series' RRULE cannot be expanded (a value-free message), or None."""
    if not master.rrule:
        return None
    try:
        dtstart, all_day, tz = _series_frame(master)
        _base_rule(master, dtstart, all_day, tz)
    except RecurrenceError as exc:
        return str(exc)
    return None


# --- times as instants and as strings ----------------------------------------------


def _utc(value: date | datetime) -> datetime:
    """A comparable instant: aware times in UTC, floating and all-day ones on the UTC clock."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.combine(value, time(0), tzinfo=timezone.utc)


def _in_series_terms(value: datetime, all_day: bool, tz: tzinfo | None) -> datetime:
    """A UTC bound as the series' rule can compare it (naive on the wall clock if floating)."""
    return value.replace(tzinfo=None) if (all_day or tz is None) else value


def _real_wall(wall: datetime, tz: tzinfo | None) -> datetime:
    """The wall clock that exists for `wall` (a time in a DST gap moves forward by the gap)."""
    if tz is None:
        return wall
    return wall.replace(tzinfo=tz).astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None)


def _text(value: date | datetime) -> str:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(timespec="seconds")
    return value.isoformat()


def _wall(value: date | datetime, tz: tzinfo | None) -> datetime:
    """Wall clock of `value` in `tz` (naive); dates at midnight."""
    if not isinstance(value, datetime):
        return datetime.combine(value, time(0))
    if value.tzinfo is not None and tz is not None:
        value = value.astimezone(tz)
    return value.replace(tzinfo=None)


def _end_of(event: Event) -> date | datetime | None:
    end = event.end_value()
    return end if end is not None else event.start_value()


def _wall_duration(event: Event) -> timedelta:
    """End minus start on the event's own wall clock (the nominal duration)."""
    start, end = event.start_value(), _end_of(event)
    if start is None or end is None:
        return timedelta(0)
    if isinstance(start, datetime) != isinstance(end, datetime):
        return timedelta(days=1) if not isinstance(start, datetime) else timedelta(0)
    if isinstance(start, datetime) and event.end_tz and event.end_tz != event.start_tz:
        return _utc(end) - _utc(start)  # two zones: the exact duration
    tz = start.tzinfo if isinstance(start, datetime) else None
    return _wall(end, tz) - _wall(start, tz)


def _times(event: Event, wall_start: datetime, duration: timedelta, all_day: bool,
           tz: tzinfo | None, series: bool = False) -> dict[str, str]:
    """start/end strings for an instance starting at `wall_start` in the series' frame.

    A `series`' own start and end stay on the wall clock the rule repeats, even in a DST
    gap (where `expand` reads them as RFC 5545 does): written as the time that exists,
    the gap would move every other instance's start or change their duration.
    """
    if all_day:
        return {"start": wall_start.date().isoformat(), "end": (wall_start + duration).date().isoformat()}
    start = wall_start if series else _real_wall(wall_start, tz)
    out = {"start": _text(start)}
    if event.end_tz and event.end_tz != event.start_tz:
        end_zone = zone(event.end_tz)
        aware = wall_start.replace(tzinfo=tz) if tz else wall_start
        out["end"] = _text(_wall(_utc(aware) + duration, end_zone))
    else:
        end = wall_start + duration
        out["end"] = _text(end if series else _real_wall(end, tz))
    return out


def _interval(event: Event) -> tuple[datetime, datetime] | None:
    start = event.start_value()
    if start is None:
        return None
    end = _end_of(event)
    return _utc(start), _utc(end if end is not None else start)


def _overlaps(event: Event, lo: datetime, hi: datetime) -> bool:
    span = _interval(event)
    if span is None:
        return False
    s, e = span
    if e <= s:  # an instant: it is in the window if it starts there
        return lo <= s < hi
    return s < hi and e > lo


# --- instances -------------------------------------------------------------------


def occurrence_starts(master: Event, window_start: datetime, window_end: datetime) -> list[date | datetime]:
    """Original starts of the series' instances that begin in [window_start, window_end).

    The window is given as aware datetimes; for all-day and floating series it is read
    in wall-clock time (its UTC clock), as RFC 5545 has floating times follow the viewer.
    """
    rules, all_day, tz = _rule_set(master)
    lo = _in_series_terms(_utc(window_start), all_day, tz)
    hi = _in_series_terms(_utc(window_end), all_day, tz)
    found = rules.between(lo, hi - timedelta(microseconds=1), inc=True)
    return [d.date() if all_day else d for d in found]


def instance_keys(master: Event, window_start: datetime, window_end: datetime) -> list[str]:
    return [instance_key(v) for v in occurrence_starts(master, window_start, window_end)]


def is_instance(master: Event, key: str) -> bool:
    """Whether `key` names an instance the series has (an RRULE/RDATE start, not EXDATE'd)."""
    rules, all_day, tz = _rule_set(master)
    value = _from_key(key, all_day, tz)
    return _as_produced(rules, value) is not None


def _content_changes(override: Event, master: Event) -> dict[str, object]:
    """What a THISANDFUTURE override changed about the series, besides its times."""
    return {name: getattr(override, name) for name in Event.model_fields
            if name not in _INSTANCE_FIELDS and getattr(override, name) != getattr(master, name)}


class _Regime:
    """How instances from a THISANDFUTURE override onwards differ from the series."""

    def __init__(self, master: Event, override: Event, original: datetime, all_day: bool,
                 tz: tzinfo | None) -> None:
        self.original = original
        self.cancelled = override.status == "cancelled"
        self.changes = _content_changes(override, master)
        start = override.start_value()
        same_shape = start is not None and isinstance(start, datetime) != all_day
        # A shift is only meaningful between like times: an all-day series whose
        # override is timed changes that one instance, not the clock of the rest.
        self.shift = (_wall(start, tz) - _wall(original, tz)) if same_shape and start is not None else timedelta(0)
        self.duration = _wall_duration(override) if same_shape else _wall_duration(master)


def _instance(master: Event, original: datetime, all_day: bool, tz: tzinfo | None,
              regime: _Regime | None) -> Event | None:
    shift, duration, changes = timedelta(0), _wall_duration(master), {}
    if regime is not None:
        if regime.cancelled:
            return None
        shift, duration, changes = regime.shift, regime.duration, regime.changes
    wall = _wall(original, tz) + shift
    update: dict[str, object] = {"recurrence_id": _key_of(original, all_day), "range": "", "rrule": "",
                                 "exdates": (), "rdates": (), **changes}
    update.update(_times(master, wall, duration, all_day, tz))
    return master.model_copy(update=update)


def _as_override(ex: Event, key: str) -> Event:
    return ex.model_copy(update={"recurrence_id": key, "range": "", "rrule": "", "exdates": (), "rdates": ()})


def expand(master: Event, exceptions: Iterable[Event], window_start: datetime,
           window_end: datetime) -> list[Event]:
    """The concrete instances of a series that overlap [window_start, window_end).

    Each is an `Event` with `recurrence_id` set to its original start's key and no
    recurrence of its own. An exception (same UID, a `recurrence_id` naming one of the
    series' instances) replaces its instance wherever it moved, so one moved into the
    window from outside appears and one moved out does not; a cancelled one removes
    it. A THISANDFUTURE override also shifts every later instance by the same wall-clock
    delta and gives them the fields it changed. Sorted by start, then key.
    """
    rules, all_day, tz = _rule_set(master)
    lo, hi = _utc(window_start), _utc(window_end)
    single: dict[str, Event] = {}
    future: dict[str, Event] = {}
    for ex in exceptions:
        if not ex.recurrence_id or ex.uid != master.uid:
            continue
        try:
            key = normalize_key(master, ex.recurrence_id)
        except RecurrenceError:
            continue
        # one record per instance: the last one received wins
        single.pop(key, None)
        future.pop(key, None)
        if ex.range.upper() == THISANDFUTURE:
            future[key] = ex
        else:
            single[key] = ex
    regimes = sorted((_Regime(master, ex, _from_key(k, all_day, tz), all_day, tz) for k, ex in future.items()),
                     key=lambda r: _utc(r.original))

    # Original starts far enough around the window that any shifted or lengthened
    # instance overlapping it is among them.
    span = max([abs(_wall_duration(master))] + [abs(r.shift) + abs(r.duration) for r in regimes]) + timedelta(days=1)
    originals = rules.between(_in_series_terms(lo - span, all_day, tz), _in_series_terms(hi + span, all_day, tz),
                              inc=True)
    found: dict[str, Event] = {}
    for original in originals:
        key = _key_of(original, all_day)
        if key in single:
            continue
        regime = None
        for r in regimes:
            if _utc(r.original) <= _utc(original):
                regime = r
        inst = _instance(master, original, all_day, tz, regime)
        if inst is not None and _overlaps(inst, lo, hi):
            found[key] = inst
    # An override's own instance is the override itself, wherever it moved.
    for key, ex in [*single.items(), *future.items()]:
        found.pop(key, None)
        original = _from_key(key, all_day, tz)
        if ex.status == "cancelled" or _as_produced(rules, original) is None:
            continue
        override = _as_override(ex, key)
        if _overlaps(override, lo, hi):
            found[key] = override
    return sorted(found.values(), key=lambda e: ((_interval(e) or (lo, lo))[0], e.recurrence_id))


# --- editing a series --------------------------------------------------------------


def split_uid(uid: str, at_key: str) -> str:
    """The UID of the series a "this and following" edit at `at_key` starts.

    Derived, not random: two workers splitting the same series at the same instance
    (an organizer's and an attendee's copy) agree on the new series' identity. The
    shape follows Google's split ids (`{id}_R{instant}`), before any `@domain`.
    """
    local, at, domain = uid.rpartition("@")
    if not at:
        return f"{uid}_R{at_key}"
    return f"{local}_R{at_key}@{domain}"


def _with_rule(text: str, **params: object) -> str:
    """The RRULE `text` with the named parts replaced (None removes one), through icalendar."""
    rule = vRecur.from_ical(text.removeprefix("RRULE:"))
    for name, value in params.items():
        rule.pop(name.upper(), None)
        if value is not None:
            rule[name.upper()] = [value]
    return rule.to_ical().decode()


def _until_before(value: datetime, all_day: bool, tz: tzinfo | None) -> date | datetime:
    """The UNTIL that ends a series just before the instance at `value`, in RFC 5545's form.

    A second before on the UTC clock: a second before on the wall clock can fall in the
    DST gap just before the instance, which reads as a time after it.
    """
    if all_day:
        return value.date() - timedelta(days=1)
    if tz is None:
        return value - timedelta(seconds=1)
    return _utc(value) - timedelta(seconds=1)


def _shift(event: Event, original: datetime, all_day: bool, tz: tzinfo | None) -> timedelta:
    """How far `event` moved from `original`, on the series' wall clock (0 between unlike times)."""
    start = event.start_value()
    if start is None or isinstance(start, datetime) == all_day:
        return timedelta(0)
    return _wall(start, tz) - _wall(original, tz)


def _key_at_wall(wall: datetime, all_day: bool, tz: tzinfo | None) -> str:
    if all_day:
        return instance_key(wall.date())
    if tz is None:
        return instance_key(wall)
    return instance_key(_real_wall(wall, tz).replace(tzinfo=tz))


def _split_anchor(base: rrule | None, at: datetime, dtstart: datetime) -> datetime | None:
    """Where the new series of a split at `at` starts: `at` itself when the rule has it or
    it is the series' DTSTART (which the rule keeps its phase from), else the rule's next
    instance (by instant, see `_around`); None when the rule has no instance left."""
    if base is None:
        return None
    if at == dtstart:
        return at
    near = [v for v in _around(base, at) if _utc(v) >= _utc(at)]
    return min(near, key=_utc) if near else base.after(at + timedelta(days=1))


def split_this_and_future(master: Event, at_key: str,
                          changes: Mapping[str, object] | None = None) -> tuple[Event | None, Event]:
    """Edit a series "this and following" from the instance `at_key`: (old part, new series).

    The old series gets an UNTIL just before the instance (and loses its COUNT); the
    new one starts at the instance with `changes` applied (a changed start without an
    end keeps the duration), the COUNT that remains, the EXDATEs and RDATEs from the
    instance on moved with it, and `split_uid`'s UID. Split at the first instance the
    edit is one of the whole series, which keeps its UID: (None, the series edited).
    """
    changes = dict(changes or {})
    dtstart, all_day, tz = _series_frame(master)
    rules, _, _ = _rule_set(master)
    at = _as_produced(rules, _from_key(at_key, all_day, tz))
    if at is None:
        raise RecurrenceError("the split instance is not an instance of the series")
    at_utc = _utc(at)
    instance = _instance(master, at, all_day, tz, None)
    assert instance is not None
    # the start the new series repeats, not the time that exists that day (see `_times`)
    instance = instance.model_copy(update=_times(master, _wall(at, tz), _wall_duration(master), all_day, tz,
                                                 series=True))
    if "start" in changes and "end" not in changes:
        probe = instance.model_copy(update={k: changes[k] for k in ("start", "start_tz", "end_tz") if k in changes})
        new_start = probe.start_value()
        if new_start is not None:
            new_tz = new_start.tzinfo if isinstance(new_start, datetime) else None
            changes["end"] = _times(probe, _wall(new_start, new_tz), _wall_duration(master),
                                    not isinstance(new_start, datetime), new_tz, series=True)["end"]
    first = instance.model_copy(update=changes)
    shift = _shift(first, at, all_day, tz)

    def later(keys: Iterable[str]) -> tuple[str, ...]:
        values = (_from_key(k, all_day, tz) for k in keys)
        return tuple(_key_at_wall(_wall(v, tz) + shift, all_day, tz) for v in values if _utc(v) >= at_utc)

    base = _base_rule(master, dtstart, all_day, tz)
    anchor = _split_anchor(base, at, dtstart)
    rrule_text = master.rrule if anchor is not None else ""
    rdates = later(master.rdates)
    if _utc(dtstart) > at_utc and dtstart != anchor and _as_produced(rules, dtstart) is not None:
        # A DTSTART off the rule's pattern, after a split at an earlier RDATE, is an
        # instance the new series' rule does not produce: it stays, as an RDATE.
        rdates = rdates + later([_key_of(dtstart, all_day)])
    if anchor is not None and anchor != at:
        # The split instance is an RDATE off the rule's pattern: the new series starts at
        # the rule's next instance (keeping its phase: INTERVAL counts from DTSTART) and
        # keeps the split instance as an RDATE.
        rdates = tuple(dict.fromkeys(rdates + later([_key_of(at, all_day)])))
        first = first.model_copy(update=_times(first, _wall(anchor, tz) + shift, _wall_duration(first), all_day, tz,
                                               series=True))
    if base is not None and anchor is not None and base._count is not None:  # noqa: SLF001 - dateutil's COUNT
        done = sum(1 for v in base.between(dtstart, at + timedelta(days=1), inc=True) if _utc(v) < at_utc)
        rrule_text = _with_rule(rrule_text, count=max(1, base._count - done))  # noqa: SLF001
    new_master = first.model_copy(update={
        "uid": split_uid(master.uid, _key_of(at, all_day)), "recurrence_id": "", "range": "",
        "rrule": changes.get("rrule", rrule_text),
        "exdates": changes.get("exdates", later(master.exdates)),
        "rdates": changes.get("rdates", rdates),
    })
    if not _has_earlier(rules, at):
        return None, new_master.model_copy(update={"uid": master.uid})
    # An UNTIL the rule already has that ends it sooner stays; so does a COUNT that ends
    # it before the split (a COUNT and an UNTIL cannot be combined).
    ends_sooner = base is not None and anchor is None
    truncated = master.model_copy(update={
        "rrule": master.rrule if ends_sooner or not master.rrule
        else _with_rule(master.rrule, until=_until_before(at, all_day, tz), count=None),
        "exdates": tuple(k for k in master.exdates if _utc(_from_key(k, all_day, tz)) < at_utc),
        "rdates": tuple(k for k in master.rdates if _utc(_from_key(k, all_day, tz)) < at_utc),
    })
    if _utc(dtstart) >= at_utc:
        # Only RDATEs before DTSTART remain: the earliest becomes the old part's start.
        earliest = min(_from_key(k, all_day, tz) for k in truncated.rdates)
        truncated = truncated.model_copy(update={
            "rrule": "", "rdates": tuple(k for k in truncated.rdates if _from_key(k, all_day, tz) != earliest),
            **_times(master, _wall(earliest, tz), _wall_duration(master), all_day, tz, series=True)})
    return truncated, new_master


def exceptions_after_split(exceptions: Iterable[Event], master: Event, at_key: str,
                           new_master: Event) -> tuple[list[Event], list[Event]]:
    """Sort a split series' exceptions: (those the old series keeps, those the new one takes).

    The new series' exceptions get its UID and their `recurrence_id` moved by the same
    wall-clock shift as the series' start, so they still name their instance.
    """
    dtstart, all_day, tz = _series_frame(master)
    at = _from_key(at_key, all_day, tz)
    at = _as_produced(_rule_set(master)[0], at) or at
    anchor = _split_anchor(_base_rule(master, dtstart, all_day, tz), at, dtstart)
    shift = _shift(new_master, anchor if anchor is not None else at, all_day, tz)
    kept, moved = [], []
    for ex in exceptions:
        if ex.uid != master.uid or not ex.recurrence_id:
            continue
        original = _from_key(ex.recurrence_id, all_day, tz)
        if _utc(original) < _utc(at):
            kept.append(ex)
            continue
        key = _key_at_wall(_wall(original, tz) + shift, all_day, tz)
        moved.append(ex.model_copy(update={"uid": new_master.uid, "recurrence_id": key,
                                           "range": ""}))
    return kept, moved


def series_changes_zone(master: Event, new_tz: str,
                        exceptions: Sequence[Event] = ()) -> tuple[Event, list[Event]]:
    """Move a timed series to the zone `new_tz` ("" for floating), keeping its wall clock.

    A weekly 09:00 Paris meeting becomes a weekly 09:00 New York one: the start string
    stays, the instants move, so every instance key (EXDATEs, RDATEs, a UTC UNTIL and
    the exceptions' `recurrence_id`) is re-read on the old wall clock and written in the
    new zone. An exception that was not moved (it starts at its original start) follows
    the series to the new zone; a moved one keeps its own explicit time.
    """
    if master.all_day:
        return master, list(exceptions)
    new_zone = zone(new_tz)
    if new_tz and new_zone is None:
        raise RecurrenceError("unknown time zone")
    _, _, old_zone = _series_frame(master)

    def rekey(key: str) -> str:
        wall = _wall(_from_key(key, False, old_zone), old_zone)
        return instance_key(wall.replace(tzinfo=new_zone) if new_zone else wall)

    rrule_text = master.rrule
    if rrule_text:
        rule = vRecur.from_ical(rrule_text.removeprefix("RRULE:"))
        until = rule.get("UNTIL")
        if until:
            value = until[0]
            if isinstance(value, datetime):
                moved = parse_instance_key(rekey(instance_key(value)))
                rrule_text = _with_rule(rrule_text, until=moved)
    follows_zone = not master.end_tz or master.end_tz == master.start_tz
    moved_master = master.model_copy(update={
        "start_tz": new_tz, "end_tz": (new_tz if master.end_tz else "") if follows_zone else master.end_tz,
        "rrule": rrule_text, "exdates": tuple(rekey(k) for k in master.exdates),
        "rdates": tuple(rekey(k) for k in master.rdates),
    })
    out = []
    for ex in exceptions:
        if ex.uid != master.uid or not ex.recurrence_id:
            out.append(ex)
            continue
        update: dict[str, object] = {"recurrence_id": rekey(ex.recurrence_id)}
        start = ex.start_value()
        if (isinstance(start, datetime) and ex.start_tz == master.start_tz
                and _utc(start) == _utc(_from_key(ex.recurrence_id, False, old_zone))):
            update["start_tz"] = new_tz
            if not ex.end_tz or ex.end_tz == ex.start_tz:
                update["end_tz"] = new_tz if ex.end_tz else ""
        out.append(ex.model_copy(update=update))
    return moved_master, out
