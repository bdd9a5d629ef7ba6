"""Event -> Graph JSON -> the emulator -> Graph JSON -> Event keeps what Graph can hold.

In-process (the emulator's dispatcher, no HTTP) so hypothesis can try many events
quickly; tests/test_graph_calendar.py covers the same path over real HTTP.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.graph_events import event_to_body, item_to_event
from connectors.graph_recurrence import pattern_to_rrule
from emulators.graph import GraphState, SubRequest
from emulators.graph_calendar import DEFAULT_USER
from models.event import Event

ZONES = ("Europe/Paris", "America/New_York", "Australia/Sydney", "Asia/Tokyo", "America/Sao_Paulo", "UTC")
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(str.strip)


@st.composite
def events(draw) -> Event:
    day = draw(st.dates(min_value=date(2026, 1, 1), max_value=date(2028, 12, 31)))
    all_day = draw(st.booleans())
    zone = draw(st.sampled_from(ZONES))
    if all_day:
        start, end = day.isoformat(), (day + timedelta(days=draw(st.integers(1, 5)))).isoformat()
        tz = ""
        dtstart: date | datetime = day
        z = None
    else:
        at = datetime.combine(day, datetime.min.time()) + timedelta(minutes=15 * draw(st.integers(0, 95)))
        start = at.isoformat(timespec="seconds")
        end = (at + timedelta(minutes=15 * draw(st.integers(0, 40)))).isoformat(timespec="seconds")
        tz = zone
        dtstart = at
        z = ZoneInfo(zone)
    rrule = ""
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["daily", "weekly", "absoluteMonthly", "relativeMonthly"]))
        pattern = {"type": kind, "interval": draw(st.integers(1, 3)), "firstDayOfWeek": "sunday",
                   "daysOfWeek": [["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
                                  [day.weekday()]], "dayOfMonth": min(day.day, 28), "index": "first"}
        rng = draw(st.sampled_from([{"type": "noEnd"}, {"type": "numbered", "numberOfOccurrences": 4},
                                    {"type": "endDate", "endDate": (day + timedelta(days=60)).isoformat()}]))
        rrule = pattern_to_rrule({"pattern": pattern, "range": rng}, dtstart, z)
    # Graph does not keep time zone transitions inside an event: a timed event's wall clock
    # at its end is read back in the end zone, which is the start zone here
    return Event(title=draw(_text), description=draw(_text), location=draw(_text), organizer=DEFAULT_USER,
                 transparency=draw(st.sampled_from(["opaque", "transparent"])),
                 visibility=draw(st.sampled_from(["default", "private"])),
                 start=start, end=end, start_tz=tz, end_tz=tz, rrule=rrule,
                 attendees=tuple(draw(st.lists(st.sampled_from(["a@x.test", "b@y.test", "c@z.test"]), unique=True))))


STATE = GraphState(tokens={"t"})


@settings(max_examples=150, deadline=None)
@given(events())
def test_an_event_written_to_graph_reads_back_the_same(ev):
    req = SubRequest("POST", "/me/events", {}, {"authorization": "Bearer t"}, event_to_body(ev), "http://emulator")
    res = STATE.calendar.dispatch(req, "/me/events")
    assert res.status == 201, res.body
    back = item_to_event(res.body)
    same = ("title", "description", "location", "organizer", "transparency", "visibility", "start", "end",
            "start_tz", "end_tz", "rrule", "attendees", "status")
    assert {k: getattr(back, k) for k in same} == {k: getattr(ev, k) for k in same}
    assert back.uid  # Graph assigned one


def test_times_in_any_zone_graph_answers_in_are_read_as_the_events_own_wall_clock():
    item = {"type": "singleInstance", "iCalUId": "u", "subject": "s", "isAllDay": False,
            "start": {"dateTime": "2026-12-03T00:00:00.0000000", "timeZone": "Pacific Standard Time"},
            "end": {"dateTime": "2026-12-03T01:30:00.0000000", "timeZone": "Pacific Standard Time"},
            "originalStartTimeZone": "Romance Standard Time", "originalEndTimeZone": "Romance Standard Time"}
    ev = item_to_event(item)
    assert (ev.start, ev.end, ev.start_tz) == ("2026-12-03T09:00:00", "2026-12-03T10:30:00", "Europe/Paris")


_json = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)
_when_json = st.fixed_dictionaries({"dateTime": st.one_of(st.text(max_size=25), st.sampled_from(
    ["2026-12-01T09:00:00", "9999-12-31T23:59:59", "0001-01-01T00:00:00", "2026-02-30T09:00:00"])),
    "timeZone": st.one_of(st.text(max_size=10), st.sampled_from(["UTC", "Romance Standard Time", "Etc/GMT+14"]))})
_bodies = st.one_of(_json, st.fixed_dictionaries({"subject": _json, "start": st.one_of(_when_json, _json),
                                                  "end": st.one_of(_when_json, _json)},
                                                 optional={"isAllDay": _json, "recurrence": _json,
                                                           "attendees": _json, "showAs": _json, "body": _json,
                                                           "location": _json, "singleValueExtendedProperties": _json}))


@settings(max_examples=300, deadline=None)
@given(_bodies, st.sampled_from(["POST", "PATCH", "GET"]), st.dictionaries(
    st.sampled_from(["startDateTime", "endDateTime", "$filter", "$top", "$skip", "$expand"]), st.text(max_size=20)))
def test_no_client_input_gets_a_500(body, method, query):
    (eid,) = STATE.calendar.seed([{"subject": "x", "start": {"dateTime": "2026-12-01T09:00:00", "timeZone": "UTC"},
                                   "end": {"dateTime": "2026-12-01T10:00:00", "timeZone": "UTC"},
                                   "recurrence": {"pattern": {"type": "daily", "interval": 1},
                                                  "range": {"type": "numbered", "startDate": "2026-12-01",
                                                            "numberOfOccurrences": 3}}}])
    occurrence = STATE.calendar.instances(eid, datetime(2026, 11, 1, tzinfo=timezone.utc),
                                          datetime(2027, 1, 1, tzinfo=timezone.utc))[1]["id"]
    for path in ("/me/events", f"/me/events/{eid}", f"/me/events/{occurrence}", f"/me/events/{eid}/instances",
                 "/me/calendarView/delta"):
        req = SubRequest(method, path, dict(query), {"authorization": "Bearer t"}, body, "http://emulator")
        res = STATE.calendar.dispatch(req, path)
        assert res.status < 500, (path, res.body)
