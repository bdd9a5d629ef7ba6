"""Graph patternedRecurrence <-> RRULE, and Windows <-> IANA zone names (pure logic).

Three independent views of a series are compared: the RRULE expanded by dateutil,
the Graph pattern expanded by the emulator's own day walk
(`emulators.graph_calendar.expand_pattern`), and the round trip through both
translations.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from hypothesis import given, settings
from hypothesis import strategies as st
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from connectors.graph_recurrence import DAYS, RecurrenceProblem, comparable, pattern_to_rrule, rrule_to_pattern
from emulators.graph_calendar import expand_pattern
from sync.calendar.timezones import ZoneProblem, graph_zone_name, to_iana, to_windows

ZONES = ("Europe/Paris", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC")


# ----------------------------------------------------------------------------- strategies


@st.composite
def patterns(draw) -> tuple[dict, date]:
    kind = draw(st.sampled_from(["daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly",
                                 "relativeYearly"]))
    start = draw(st.dates(min_value=date(2024, 1, 1), max_value=date(2027, 12, 31)))
    p: dict = {"type": kind, "interval": draw(st.integers(1, 4)), "month": 0, "dayOfMonth": 0, "daysOfWeek": [],
               "firstDayOfWeek": draw(st.sampled_from(DAYS)), "index": "first"}
    if kind in ("weekly", "relativeMonthly", "relativeYearly"):
        p["daysOfWeek"] = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
    if kind in ("relativeMonthly", "relativeYearly"):
        p["index"] = draw(st.sampled_from(["first", "second", "third", "fourth", "last"]))
    if kind in ("absoluteMonthly", "absoluteYearly"):
        p["dayOfMonth"] = draw(st.integers(1, 31))
    if kind.endswith("Yearly"):
        p["month"] = draw(st.integers(1, 12))
        if kind == "absoluteYearly":
            p["dayOfMonth"] = min(p["dayOfMonth"], 28 if p["month"] == 2 else 30 if p["month"] in (4, 6, 9, 11) else 31)
    if kind != "weekly":
        p["firstDayOfWeek"] = "sunday"
    rtype = draw(st.sampled_from(["noEnd", "numbered", "endDate"]))
    r: dict = {"type": rtype, "startDate": start.isoformat(), "endDate": "0001-01-01", "recurrenceTimeZone": "",
               "numberOfOccurrences": 0}
    if rtype == "numbered":
        r["numberOfOccurrences"] = draw(st.integers(1, 30))
    if rtype == "endDate":
        r["endDate"] = (start + timedelta(days=draw(st.integers(0, 900)))).isoformat()
    return {"pattern": p, "range": r}, start


starts = st.one_of(
    st.builds(lambda z, h, m: (z, time(h, m)), st.sampled_from(ZONES), st.integers(0, 23), st.sampled_from([0, 30])),
    st.just(("", None)),  # all-day
)


def _dtstart(start: date, zone: str, at: time | None) -> tuple[date | datetime, ZoneInfo | None]:
    if at is None:
        return start, None
    return datetime.combine(start, at), ZoneInfo(zone)


def _dateutil_dates(rrule: str, start: date | datetime, z: ZoneInfo | None, until: date) -> list[date]:
    if isinstance(start, datetime):
        dtstart = start.replace(tzinfo=z)
        hi = datetime.combine(until, time(0), tzinfo=z)
    else:
        dtstart = datetime.combine(start, time(0))
        hi = datetime.combine(until, time(0))
        rrule = ";".join(p[:-1] if p.startswith("UNTIL=") and p.endswith("Z") else p for p in rrule.split(";"))
    found = rrulestr(rrule, dtstart=dtstart).between(dtstart, hi, inc=True)
    return [d.date() for d in found if d.date() < until]


HORIZON = date(2030, 1, 1)


# ----------------------------------------------------------------------------- pattern -> RRULE -> pattern


@settings(max_examples=300, deadline=None)
@given(patterns(), starts)
def test_graph_pattern_round_trips_through_rrule(pat, when):
    rec, start = pat
    zone, at = when
    dt, z = _dtstart(start, zone, at)
    rrule = pattern_to_rrule(rec, dt, z)
    back = rrule_to_pattern(rrule, dt, z, "W. Europe Standard Time")
    assert comparable(back) == comparable(rec)
    assert back["range"]["startDate"] == start.isoformat()


@settings(max_examples=300, deadline=None)
@given(patterns(), starts)
def test_dateutil_expansion_of_the_rrule_equals_the_emulators_expansion_of_the_pattern(pat, when):
    rec, start = pat
    zone, at = when
    dt, z = _dtstart(start, zone, at)
    rrule = pattern_to_rrule(rec, dt, z)
    assert _dateutil_dates(rrule, dt, z, HORIZON) == expand_pattern(rec, start, HORIZON)


# ----------------------------------------------------------------------------- RRULE -> pattern -> RRULE

_DAY = st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"])


@st.composite
def rrules(draw) -> str:
    freq = draw(st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    parts = [f"FREQ={freq}"]
    if draw(st.booleans()):
        parts.append(f"INTERVAL={draw(st.integers(1, 3))}")
    by = draw(st.sampled_from(["none", "byday", "bymonthday", "ordinal", "setpos", "last", "clamp"]))
    days = draw(st.lists(_DAY, min_size=1, max_size=4, unique=True))
    month = draw(st.integers(1, 12)) if freq == "YEARLY" and draw(st.booleans()) else None
    # a day the month never has (February 30th) would send dateutil looking until year 9999
    longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}.get(month or 1, 31)
    if by == "byday":
        parts.append("BYDAY=" + ",".join(days))
    elif by == "bymonthday":
        parts.append(f"BYMONTHDAY={draw(st.integers(1, longest))}")
    elif by == "ordinal":
        parts.append(f"BYDAY={draw(st.sampled_from([1, 2, 3, 4, 5, -1, -2]))}{days[0]}")
    elif by == "setpos" and freq in ("DAILY", "WEEKLY"):  # one candidate per period: never a 4th
        parts.append("BYDAY=" + ",".join(days) + ";BYSETPOS=1")
    elif by == "setpos":
        parts += ["BYDAY=" + ",".join(days), f"BYSETPOS={draw(st.sampled_from([1, 2, 4, -1, 3]))}"]
    elif by == "last":
        parts.append("BYMONTHDAY=-1")
    elif by == "clamp":
        top = draw(st.integers(29, max(29, longest)))
        parts += ["BYMONTHDAY=" + ",".join(str(d) for d in range(28, top + 1)), "BYSETPOS=-1"]
    if month is not None:
        parts.append(f"BYMONTH={month}")
    if draw(st.booleans()):
        parts.append(f"WKST={draw(_DAY)}")
    end = draw(st.sampled_from(["none", "count", "until"]))
    if end == "count":
        parts.append(f"COUNT={draw(st.integers(1, 25))}")
    elif end == "until":
        parts.append("UNTIL=" + draw(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2029, 12, 31)))
                     .strftime("%Y%m%dT%H%M%SZ"))
    return ";".join(parts)


@settings(max_examples=250, deadline=None)
@given(rrules(), st.dates(min_value=date(2026, 1, 1), max_value=date(2026, 12, 31)), starts)
def test_an_rrule_graph_accepts_keeps_its_instances_and_one_it_cannot_is_a_named_problem(rrule, start, when):
    zone, at = when
    dt, z = _dtstart(start, zone, at)
    if not isinstance(dt, datetime):
        rrule = ";".join(p if not p.startswith("UNTIL=") else p[:14] for p in rrule.split(";"))
    try:
        original = _dateutil_dates(rrule, dt, z, HORIZON)
    except ValueError:
        return  # dateutil itself refuses it: nothing to compare
    try:
        rec = rrule_to_pattern(rrule, dt, z, graph_zone_name(zone or "UTC"))
    except RecurrenceProblem as exc:
        assert exc.code and " " not in exc.code  # a fixed code, no values
        return
    again = pattern_to_rrule(rec, dt, z)
    ours = _dateutil_dates(again, dt, z, HORIZON)
    emulated = expand_pattern(rec, start, HORIZON)
    # dateutil counts DTSTART as an instance only when it matches the rule; Graph's series
    # starts on its startDate the same way (the emulator walks from it), so all three agree
    assert ours == original
    assert emulated == original


@pytest.mark.parametrize("rrule", [
    "FREQ=HOURLY",
    "FREQ=DAILY;BYHOUR=9,17",
    "FREQ=WEEKLY;BYDAY=2MO",
    "FREQ=MONTHLY;BYDAY=5FR",
    "FREQ=MONTHLY;BYMONTHDAY=30",
    "FREQ=MONTHLY;BYMONTHDAY=1,15",
    "FREQ=YEARLY;BYMONTH=1,7",
    "FREQ=YEARLY;BYWEEKNO=20",
    "FREQ=DAILY;INTERVAL=2;BYDAY=MO,WE",
    "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=1,2",
    "FREQ=WEEKLY;COUNT=3;UNTIL=20270101T000000Z",
    "INTERVAL=2",
    "FREQ=WEEKLY;BYDAY=XX",
])
def test_rrules_graph_cannot_express_are_refused_by_name(rrule):
    with pytest.raises(RecurrenceProblem) as err:
        rrule_to_pattern(rrule, datetime(2026, 3, 2, 9), ZoneInfo("Europe/Paris"), "Romance Standard Time")
    assert "2026" not in str(err.value) and "=" not in str(err.value)


def test_until_earlier_in_the_day_than_the_start_ends_the_series_the_day_before():
    start, z = datetime(2026, 3, 2, 9, 0), ZoneInfo("Europe/Paris")
    rec = rrule_to_pattern("FREQ=DAILY;UNTIL=20260305T070000Z", start, z, "Romance Standard Time")
    assert rec["range"]["endDate"] == "2026-03-04"  # 08:00 Paris on the 5th is before 09:00
    rec = rrule_to_pattern("FREQ=DAILY;UNTIL=20260305T080000Z", start, z, "Romance Standard Time")
    assert rec["range"]["endDate"] == "2026-03-05"
    assert pattern_to_rrule(rec, start, z) == "FREQ=DAILY;UNTIL=20260305T080000Z"


def test_malformed_graph_patterns_are_problems_not_crashes():
    for bad in ({}, {"pattern": "x"}, {"pattern": {"type": "hourly"}, "range": {}},
                {"pattern": {"type": "weekly", "daysOfWeek": []}, "range": {}},
                {"pattern": {"type": "absoluteMonthly", "dayOfMonth": 32}, "range": {}},
                {"pattern": {"type": "daily"}, "range": {"type": "endDate", "endDate": "soon"}}):
        with pytest.raises(RecurrenceProblem):
            pattern_to_rrule(bad, datetime(2026, 1, 1, 9), ZoneInfo("UTC"))


# ----------------------------------------------------------------------------- zones


def test_every_windows_zone_maps_to_a_real_iana_zone_and_golden_zones_map_back():
    for windows, iana in WINDOWS_TO_OLSON.items():
        mapped = to_iana(windows)
        ZoneInfo(mapped)
        assert to_iana(windows.upper()) == mapped
        assert to_windows(mapped) is not None
        assert to_iana(to_windows(mapped)) == mapped  # golden zone -> its own Windows name
    assert to_iana("Pacific Standard Time") == "America/Los_Angeles"
    assert to_windows("America/Los_Angeles") == "Pacific Standard Time"
    assert to_iana("UTC") == "UTC" and to_windows("UTC") == "UTC"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(__import__("zoneinfo").available_timezones())))
def test_iana_to_windows_is_deterministic_and_keeps_the_offsets_it_claims(name):
    first = to_windows(name)
    assert first == to_windows(name)
    if first is None:
        assert graph_zone_name(name) == name  # Graph takes the IANA name itself
        return
    mine, theirs = ZoneInfo(name), ZoneInfo(to_iana(first))
    for month in range(1, 13):
        when = datetime(2026, month, 15, 12, tzinfo=timezone.utc)
        assert when.astimezone(mine).utcoffset() == when.astimezone(theirs).utcoffset()


@pytest.mark.parametrize("name", ["Customized Time Zone", "tzone://Microsoft/Custom", "", "Mars/Olympus", "../etc"])
def test_unknown_zone_names_are_a_named_problem(name):
    with pytest.raises(ZoneProblem) as err:
        to_iana(name)
    assert name == "" or name not in str(err.value)
