"""Our series expansion agrees with an independent expander on random series.

The reference is recurring-ical-events over an icalendar VEVENT built (with
icalendar's own types, never pasted text) from the same data as our `Event`: random
RRULEs (every FREQ, INTERVAL, COUNT or UNTIL, BYDAY with and without positions,
BYMONTHDAY, BYMONTH), starts in zones with and without DST (and near the change
hours), floating and all-day starts, EXDATEs on real instances and RDATEs anywhere.
Both must give the same instances: the same original starts (as instance keys) and
the same start and end instants.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import recurring_ical_events
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from icalendar import Calendar
from icalendar import Event as VEvent

from models.event import Event, instance_key
from sync.calendar.recurrence import expand

ZONES = ["Europe/Paris", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "America/Sao_Paulo",
         "Europe/London", "Pacific/Chatham", "UTC"]
#: DST changes of 2026 in the zones above (EU, US, southern hemisphere)
DST_CHANGES = [date(2026, 3, 29), date(2026, 10, 25), date(2026, 3, 8), date(2026, 11, 1), date(2026, 4, 5),
               date(2026, 10, 4), date(2026, 9, 27)]
DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
WINDOW = (datetime(2023, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))


def _exists(wall: datetime, tz: ZoneInfo) -> bool:
    """Whether a wall time exists once in `tz` (not in a DST gap, not in a repeated hour)."""
    a, b = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    return a.utcoffset() == b.utcoffset()


@st.composite
def series(draw):
    kind = draw(st.sampled_from(["zoned", "zoned", "floating", "all_day"]))
    day = draw(st.one_of(
        st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 31)),
        # a few days before a DST change, so daily and weekly series cross it
        st.builds(lambda d, back: d - timedelta(days=back), st.sampled_from(DST_CHANGES), st.integers(0, 8)),
    ))
    tz = ZoneInfo(draw(st.sampled_from(ZONES))) if kind == "zoned" else None
    if kind == "all_day":
        start: date | datetime = day
        end: date | datetime = day + timedelta(days=draw(st.integers(1, 3)))
    else:
        # hours around 02:00 are where DST changes happen
        hour = draw(st.one_of(st.integers(0, 23), st.sampled_from([1, 2, 3])))
        wall = datetime(day.year, day.month, day.day, hour, draw(st.sampled_from([0, 15, 30, 45])))
        start = wall.replace(tzinfo=tz) if tz else wall
        end = start + timedelta(minutes=draw(st.integers(0, 26 * 60)))

    freq = draw(st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    rule: dict[str, object] = {"FREQ": freq}
    interval = draw(st.integers(1, 3))
    if interval > 1:
        rule["INTERVAL"] = interval
    if freq == "WEEKLY" and draw(st.booleans()):
        rule["BYDAY"] = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=3, unique=True))
    if freq == "MONTHLY":
        by = draw(st.sampled_from(["none", "monthday", "nth_day"]))
        if by == "monthday":
            rule["BYMONTHDAY"] = draw(st.lists(st.integers(1, 28) | st.just(-1), min_size=1, max_size=2,
                                               unique=True))
        elif by == "nth_day":
            rule["BYDAY"] = [f"{draw(st.sampled_from([1, 2, -1]))}{draw(st.sampled_from(DAYS))}"]
    if freq == "YEARLY" and draw(st.booleans()):
        rule["BYMONTH"] = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            rule["BYMONTHDAY"] = [draw(st.integers(1, 28))]
    if freq == "DAILY" and draw(st.booleans()):
        rule["BYMONTH"] = draw(st.lists(st.integers(1, 12), min_size=2, max_size=6, unique=True))
    if draw(st.booleans()):
        rule["COUNT"] = draw(st.integers(1, 12))
    else:
        span = {"DAILY": 40, "WEEKLY": 200, "MONTHLY": 800, "YEARLY": 3000}[freq]
        limit = day + timedelta(days=draw(st.integers(0, span)))
        if kind == "all_day":
            rule["UNTIL"] = limit
        elif kind == "floating":
            rule["UNTIL"] = datetime(limit.year, limit.month, limit.day, draw(st.integers(0, 23)))
        else:  # RFC 5545: UTC for a zoned DTSTART
            rule["UNTIL"] = datetime(limit.year, limit.month, limit.day, draw(st.integers(0, 23)),
                                     tzinfo=timezone.utc)

    # RDATEs anywhere in the series' span, at times that exist once in its zone
    extra: list[date | datetime] = []
    for offset, minute in draw(st.lists(st.tuples(st.integers(0, 400), st.sampled_from([0, 30])), max_size=3)):
        d = day + timedelta(days=offset)
        if kind == "all_day":
            extra.append(d)
            continue
        wall = datetime(d.year, d.month, d.day, start.hour, minute)
        if tz is not None and not _exists(wall, tz):
            continue
        extra.append(wall.replace(tzinfo=tz) if tz else wall)
    exdate_picks = draw(st.lists(st.integers(0, 15), max_size=3, unique=True))
    return start, end, rule, extra, exdate_picks


def _text(value: date | datetime) -> str:
    return value.replace(tzinfo=None).isoformat(timespec="seconds") if isinstance(value, datetime) \
        else value.isoformat()


def _rrule_text(rule: dict) -> str:
    # the model keeps the RRULE value as text; icalendar writes it from the same dict
    from icalendar import vRecur
    return vRecur(rule).to_ical().decode()


def _utc(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


def _vevent(start, end, rule, rdates, exdates) -> Calendar:
    cal = Calendar()
    cal.add("prodid", "-//concord tests//EN")
    cal.add("version", "2.0")
    ev = VEvent()
    ev.add("uid", "series@example.org")
    ev.add("summary", "t")
    ev.add("dtstart", start)
    ev.add("dtend", end)
    ev.add("rrule", rule)
    if rdates:
        ev.add("rdate", list(rdates))
    if exdates:
        ev.add("exdate", list(exdates))
    cal.add_component(ev)
    return cal


def _theirs(cal: Calendar) -> set[tuple[str, datetime, datetime]]:
    out = set()
    for inst in recurring_ical_events.of(cal).between(WINDOW[0], WINDOW[1]):
        rid = inst["RECURRENCE-ID"].dt
        out.add((instance_key(rid), _utc(inst["DTSTART"].dt), _utc(inst["DTEND"].dt)))
    return out


def _ours(master: Event) -> set[tuple[str, datetime, datetime]]:
    out = set()
    for inst in expand(master, [], *WINDOW):
        s, e = inst.start_value(), inst.end_value()
        assert s is not None and e is not None
        out.add((inst.recurrence_id, _utc(s), _utc(e)))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series())
def test_expansion_matches_recurring_ical_events(case):
    start, end, rule, rdates, exdate_picks = case
    tz_name = start.tzinfo.key if isinstance(start, datetime) and start.tzinfo else ""
    base = Event(uid="series@example.org", title="t", start=_text(start), end=_text(end), start_tz=tz_name,
                 end_tz=tz_name, rrule=_rrule_text(rule), rdates=tuple(instance_key(v) for v in rdates))
    # EXDATEs on real instances (found by the reference, so nothing of ours picks them)
    reference = sorted(_theirs(_vevent(start, end, rule, rdates, [])), key=lambda t: t[1])
    assume(reference)
    picked = [reference[i][0] for i in exdate_picks if i < len(reference)]
    exdates = [_exdate_value(k, start) for k in picked]
    master = base.model_copy(update={"exdates": tuple(picked)})

    theirs = _theirs(_vevent(start, end, rule, rdates, exdates))
    ours = _ours(master)
    assert ours == theirs


def _exdate_value(key: str, start: date | datetime) -> date | datetime:
    """An instance key back as the VEVENT's EXDATE value (same type and zone as DTSTART)."""
    from models.event import parse_instance_key
    value = parse_instance_key(key)
    if isinstance(start, datetime) and start.tzinfo is not None:
        return value.astimezone(start.tzinfo)
    return value


def test_the_generator_reaches_every_shape():
    """The property above is only as good as its inputs: check they cover the cases."""
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None)
    @given(series())
    def collect(case):
        start, end, rule, rdates, _ = case
        seen.add(rule["FREQ"])
        seen.add("all_day" if not isinstance(start, datetime) else ("zoned" if start.tzinfo else "floating"))
        seen.update(k for k in rule if k in ("COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYMONTH", "INTERVAL"))
        if rdates:
            seen.add("RDATE")

    collect()
    assert {"DAILY", "WEEKLY", "MONTHLY", "YEARLY", "all_day", "zoned", "floating", "COUNT", "UNTIL",
            "BYDAY", "BYMONTHDAY", "BYMONTH", "INTERVAL", "RDATE"} <= seen


# --- exceptions and windows ----------------------------------------------------


def _override(start: date | datetime, key_value: date | datetime, *, shift: timedelta, length: timedelta,
              title: str, cancelled: bool, future: bool) -> VEvent:
    ov = VEvent()
    ov.add("uid", "series@example.org")
    params = {"RANGE": "THISANDFUTURE"} if future else {}
    ov.add("recurrence-id", key_value, parameters=params)
    ov.add("dtstart", key_value + shift)
    ov.add("dtend", key_value + shift + length)
    ov.add("summary", title)
    if cancelled:
        ov.add("status", "CANCELLED")
    return ov


@st.composite
def overrides(draw, n_instances: int, all_day: bool):
    picks = draw(st.lists(st.integers(0, max(0, n_instances - 1)), max_size=3, unique=True))
    out = []
    for i in picks:
        if all_day:
            shift, length = timedelta(days=draw(st.integers(-3, 3))), timedelta(days=draw(st.integers(1, 2)))
        else:
            shift = timedelta(minutes=draw(st.integers(-3 * 24 * 4, 3 * 24 * 4)) * 15)
            length = timedelta(minutes=draw(st.integers(0, 16)) * 15)
        out.append((i, shift, length, draw(st.sampled_from(["t", "edited"])),
                    draw(st.integers(0, 4)) == 0, draw(st.integers(0, 3)) == 0))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series(), st.data())
def test_exceptions_and_windows_match_recurring_ical_events(case, data):
    """Moved, edited, cancelled and THISANDFUTURE overrides, seen through a random window."""
    start, end, rule, rdates, _ = case
    tz = start.tzinfo if isinstance(start, datetime) else None
    tz_name = tz.key if tz else ""
    all_day = not isinstance(start, datetime)
    master = Event(uid="series@example.org", title="t", start=_text(start), end=_text(end), start_tz=tz_name,
                   end_tz=tz_name, rrule=_rrule_text(rule), rdates=tuple(instance_key(v) for v in rdates))
    originals = sorted(_theirs(_vevent(start, end, rule, rdates, [])), key=lambda t: t[1])
    assume(originals)
    cal = _vevent(start, end, rule, rdates, [])
    ours_ex: list[Event] = []
    for i, shift, length, title, cancelled, future in data.draw(overrides(len(originals), all_day)):
        key = originals[i][0]
        value = _exdate_value(key, start)
        if tz is not None:
            # moved instances land on times that exist once (RFC 5545 reading of the rest is tested above)
            assume(_exists((value + shift).replace(tzinfo=None), tz))
            assume(_exists((value + shift + length).replace(tzinfo=None), tz))
        ov = _override(start, value, shift=shift, length=length, title=title, cancelled=cancelled, future=future)
        cal.add_component(ov)
        ours_ex.append(Event(uid=master.uid, recurrence_id=key, range="THISANDFUTURE" if future else "",
                             title=title, status="cancelled" if cancelled else "confirmed",
                             start=_text(value + shift), end=_text(value + shift + length),
                             start_tz=tz_name, end_tz=tz_name))
    first, last = originals[0][1], originals[-1][2]
    lo = first + timedelta(hours=data.draw(st.integers(-48, 24 * 40)))
    hi = lo + timedelta(hours=data.draw(st.integers(1, 24 * 400)))
    assume(lo < last + timedelta(days=5))

    theirs = set()
    for inst in recurring_ical_events.of(cal).between(lo, hi):
        if str(inst.get("STATUS", "")).upper() == "CANCELLED":
            continue
        theirs.add((instance_key(inst["RECURRENCE-ID"].dt), _utc(inst["DTSTART"].dt), _utc(inst["DTEND"].dt),
                    str(inst.get("SUMMARY"))))
    ours = {(i.recurrence_id, _utc(i.start_value()), _utc(i.end_value()), i.title)  # type: ignore[arg-type]
            for i in expand(master, ours_ex, lo, hi)}
    if any(e.range for e in ours_ex):
        # recurring-ical-events labels the instances a THISANDFUTURE override derives
        # with the override's own RECURRENCE-ID: compare those by their times and content
        assert len({k for k, *_ in ours}) == len(ours)
        ours, theirs = {t[1:] for t in ours}, {t[1:] for t in theirs}
    assert ours == theirs


# --- series edits keep every instance --------------------------------------------


@pytest.mark.parametrize("start_hour, end_hour, rdates, at_index", [
    (1, 2, [(1, 30)], 1),  # the new series' end lands in the gap: its RDATE instance keeps one hour
    (2, 2, [], 1),  # the instance itself is in the gap (once refused as "not an instance of the series")
])
def test_a_split_next_to_a_dst_gap_keeps_the_instances(start_hour, end_hour, rdates, at_index):
    """Found by the property test below: a series in New York split next to the gap of 9 March 2025."""
    from sync.calendar.recurrence import exceptions_after_split, split_this_and_future

    ny = ZoneInfo("America/New_York")
    start, end = datetime(2025, 2, 10, start_hour, tzinfo=ny), datetime(2025, 2, 10, end_hour, tzinfo=ny)
    master = Event(uid="series@example.org", title="t", start=_text(start), end=_text(end), start_tz=ny.key,
                   end_tz=ny.key, rrule=_rrule_text({"FREQ": "MONTHLY", "BYDAY": ["2SU"], "COUNT": 1}),
                   rdates=tuple(instance_key(datetime(2025, 2, 10, h, m, tzinfo=ny)) for h, m in rdates))
    original = expand(master, [], *WINDOW)
    at = original[at_index]
    old, new = split_this_and_future(master, at.recurrence_id, {"title": "renamed"})
    kept, moved = exceptions_after_split([], master, at.recurrence_id, new)
    times = [(_utc(e.start_value()), _utc(e.end_value())) for e in expand(old, kept, *WINDOW) + expand(new, moved, *WINDOW)]
    assert times == [(_utc(e.start_value()), _utc(e.end_value())) for e in original]


def test_an_instance_in_a_dst_gap_is_an_instance_and_its_exdate_removes_it():
    """A daily 02:30 in New York meets the gap of 9 March 2025: that day's instance is at
    03:30 EDT. Its key (the instant) names an instance, an EXDATE on it removes it, and
    an override of it replaces it instead of losing it (each was refused or ignored)."""
    from sync.calendar.recurrence import is_instance

    master = Event(uid="daily@example.org", title="t", start="2025-03-07T02:30:00", end="2025-03-07T03:00:00",
                   start_tz="America/New_York", end_tz="America/New_York", rrule="FREQ=DAILY;COUNT=4")
    original = expand(master, [], *WINDOW)
    gap_day = original[2]
    assert _utc(gap_day.start_value()) == datetime(2025, 3, 9, 7, 30, tzinfo=timezone.utc)
    assert is_instance(master, gap_day.recurrence_id)
    without = expand(master.model_copy(update={"exdates": (gap_day.recurrence_id,)}), [], *WINDOW)
    assert [e.recurrence_id for e in without] == [e.recurrence_id for e in original if e is not gap_day]
    moved = Event(uid=master.uid, recurrence_id=gap_day.recurrence_id, title="moved", start="2025-03-09T10:00:00",
                  end="2025-03-09T10:30:00", start_tz="America/New_York", end_tz="America/New_York")
    overridden = expand(master, [moved], *WINDOW)
    assert [e.title for e in overridden] == ["t", "t", "moved", "t"]


@pytest.mark.parametrize("start, end, rrule, rdates, at_index", [
    # split in the gap of 29 March 2026 in Paris, the rule going on: the later instances stay at 02:30
    ("2026-03-22T02:30:00", "2026-03-22T03:30:00", "FREQ=WEEKLY;COUNT=4", (), 1),
    # split at an RDATE at 03:00 that night: the rule's 02:15 (03:15) is after it, though its wall clock is not
    ("2026-03-27T02:15:00", "2026-03-27T02:45:00", "FREQ=DAILY;UNTIL=20260329T120000Z", ("20260329T010000Z",), 2),
    # split at a DTSTART in the gap and off the rule's pattern (a Sunday): the new series starts there
    ("2026-03-29T02:00:00", "2026-03-29T03:00:00", "FREQ=WEEKLY;BYDAY=MO;UNTIL=20260331T000000Z",
     ("20260325T230000Z",), 1),
    # a DTSTART off the rule's pattern (a Sunday), after the split RDATE, stays an instance
    ("2026-03-29T00:45:00", "2026-03-29T01:00:00", "FREQ=WEEKLY;BYDAY=MO;UNTIL=20260329T000000Z",
     ("20260328T230000Z", "20260328T233000Z"), 1),
])
def test_a_split_keeps_the_later_instances_its_new_rule_does_not_start_from(start, end, rrule, rdates, at_index):
    """Found by the property test below, run with more examples and series nearer a DST change."""
    from sync.calendar.recurrence import exceptions_after_split, split_this_and_future

    master = Event(uid="series@example.org", title="t", start=start, end=end, start_tz="Europe/Paris",
                   end_tz="Europe/Paris", rrule=rrule, rdates=rdates)
    original = expand(master, [], *WINDOW)
    at = original[at_index].recurrence_id
    old, new = split_this_and_future(master, at, {"title": "renamed"})
    kept, moved = exceptions_after_split([], master, at, new)
    assert old is not None
    before, after = expand(old, kept, *WINDOW), expand(new, moved, *WINDOW)
    assert [(e.recurrence_id, e.start, e.end) for e in before + after] == \
        [(e.recurrence_id, e.start, e.end) for e in original]
    assert len(before) == at_index and all(e.title == "renamed" for e in after)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series(), st.data())
def test_a_split_series_has_exactly_the_instances_of_the_original(case, data):
    """Split "this and following" without moving anything: the two series together
    have the original's instances, the new one from the split on, and the exceptions
    handed to the new series still remove theirs."""
    from sync.calendar.recurrence import exceptions_after_split, split_this_and_future

    start, end, rule, rdates, exdate_picks = case
    tz_name = start.tzinfo.key if isinstance(start, datetime) and start.tzinfo else ""
    master = Event(uid="series@example.org", title="t", start=_text(start), end=_text(end), start_tz=tz_name,
                   end_tz=tz_name, rrule=_rrule_text(rule), rdates=tuple(instance_key(v) for v in rdates))
    original = expand(master, [], *WINDOW)
    assume(len(original) >= 2)
    at = original[data.draw(st.integers(1, len(original) - 1))]
    cancelled = [Event(uid=master.uid, recurrence_id=original[i].recurrence_id, status="cancelled")
                 for i in exdate_picks if i < len(original)]
    old, new = split_this_and_future(master, at.recurrence_id, {"title": "renamed"})
    assert old is not None and new.uid != master.uid
    kept, moved = exceptions_after_split(cancelled, master, at.recurrence_id, new)

    def times(events):
        return [(_utc(e.start_value()), _utc(e.end_value())) for e in events]  # type: ignore[arg-type]

    before = expand(old, kept, *WINDOW)
    after = expand(new, moved, *WINDOW)
    assert times(before + after) == times(expand(master, cancelled, *WINDOW))
    assert all(e.title == "t" for e in before) and all(e.title == "renamed" for e in after)
    assert all(_utc(e.start_value()) < _utc(at.start_value()) for e in before)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(series(), st.sampled_from(ZONES + [""]))
def test_a_series_moved_to_another_zone_keeps_every_instances_wall_clock(case, new_zone):
    from sync.calendar.recurrence import series_changes_zone

    start, end, rule, rdates, _ = case
    assume(isinstance(start, datetime))
    tz_name = start.tzinfo.key if start.tzinfo else ""
    master = Event(uid="series@example.org", title="t", start=_text(start), end=_text(end), start_tz=tz_name,
                   end_tz=tz_name, rrule=_rrule_text(rule), rdates=tuple(instance_key(v) for v in rdates))
    everything = (datetime(2020, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))
    before = expand(master, [], *everything)
    moved, _ = series_changes_zone(master, new_zone)
    after = expand(moved, [], *everything)

    def exists_in_both(e: Event) -> bool:
        # the nominal wall clock (the series' time of day on the instance's date; RDATEs
        # have their own), before a DST gap moved it
        wall = datetime.fromisoformat(e.start)
        nominal = [wall] if wall.time() == start.time() else [wall, datetime.combine(wall.date(), start.time())]
        return all(_exists(w, ZoneInfo(z)) for z in (tz_name, new_zone) if z for w in nominal)

    assert len(before) == len(after)
    for b, a in zip(before, after):
        if exists_in_both(b):  # a wall clock in a DST gap of the new zone moves forward
            assert a.start == b.start
    assert all(e.start_tz == new_zone for e in after)
