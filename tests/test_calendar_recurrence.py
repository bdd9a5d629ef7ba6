"""Series expansion and series edits on the cases calendars get wrong.

DST both ways (Europe/Paris, America/New_York), all-day and floating series, a
series that changes zone, events across midnight, "this and following" splits,
moved / edited / cancelled exceptions, EXDATE and RDATE.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from models.event import Event
from sync.calendar.recurrence import (RecurrenceError, exceptions_after_split, expand, instance_keys, is_instance,
                                      normalize_key, occurrence_starts, series_changes_zone, split_this_and_future,
                                      split_uid)

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
NY = ZoneInfo("America/New_York")


def w(y, m, d, h=0):
    return datetime(y, m, d, h, tzinfo=UTC)


def weekly(**kw) -> Event:
    base = dict(uid="weekly@example.org", title="Weekly", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00",
                start_tz="Europe/Paris", end_tz="Europe/Paris", rrule="FREQ=WEEKLY;BYDAY=MO")
    return Event(**{**base, **kw})


def starts(instances):
    return [(i.start, i.end) for i in instances]


def utc_of(e: Event) -> datetime:
    v = e.start_value()
    assert isinstance(v, datetime)
    return v.astimezone(UTC)


# --- DST -----------------------------------------------------------------------


@pytest.mark.parametrize("tz, spring, fall", [
    ("Europe/Paris", date(2026, 3, 29), date(2026, 10, 25)),
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1)),
])
def test_a_daily_meeting_keeps_its_wall_clock_across_both_dst_changes(tz, spring, fall):
    for change in (spring, fall):
        first = change - timedelta(days=2)
        m = Event(uid="d@x", start=f"{first}T09:00:00", end=f"{first}T09:30:00", start_tz=tz, end_tz=tz,
                  rrule="FREQ=DAILY;COUNT=5")
        got = expand(m, [], w(2026, 1, 1), w(2027, 1, 1))
        assert [(i.start[11:], i.end[11:]) for i in got] == [("09:00:00", "09:30:00")] * 5
        offsets = {utc_of(i).utcoffset() for i in got}
        hours = [utc_of(i).hour for i in got]
        # the UTC instant moves by the hour the clocks moved, on the day they moved
        assert hours[0] == hours[1] and hours[3] == hours[4] and hours[1] != hours[3]
        assert offsets == {timedelta(0)}
        assert abs(hours[1] - hours[3]) == 1


def test_instance_keys_are_utc_instants_that_follow_the_dst_change():
    m = weekly(start="2026-03-23T09:00:00", end="2026-03-23T10:00:00", rrule="FREQ=WEEKLY;COUNT=3")
    assert instance_keys(m, w(2026, 3, 1), w(2026, 5, 1)) == \
        ["20260323T080000Z", "20260330T070000Z", "20260406T070000Z"]


def test_a_time_in_the_spring_gap_is_read_before_the_gap_and_written_as_the_time_that_exists():
    # 02:30 does not exist in Paris on 29 March 2026: RFC 5545 reads it with the
    # offset before the gap (01:30 UTC), which is 03:30 local.
    m = Event(uid="g@x", start="2026-03-28T02:30:00", end="2026-03-28T03:00:00", start_tz="Europe/Paris",
              end_tz="Europe/Paris", rrule="FREQ=DAILY;COUNT=3")
    got = expand(m, [], w(2026, 3, 1), w(2026, 4, 1))
    assert [i.start for i in got] == ["2026-03-28T02:30:00", "2026-03-29T03:30:00", "2026-03-30T02:30:00"]
    assert got[1].recurrence_id == "20260329T013000Z"
    assert utc_of(got[1]) == w(2026, 3, 29, 1) + timedelta(minutes=30)


def test_a_night_shift_spanning_the_fall_change_keeps_its_wall_clock_and_lasts_an_hour_longer():
    m = Event(uid="n@x", start="2026-10-24T01:00:00", end="2026-10-24T04:00:00", start_tz="Europe/Paris",
              end_tz="Europe/Paris", rrule="FREQ=DAILY;COUNT=3")
    got = expand(m, [], w(2026, 10, 1), w(2026, 11, 1))
    assert starts(got) == [("2026-10-24T01:00:00", "2026-10-24T04:00:00"),
                           ("2026-10-25T01:00:00", "2026-10-25T04:00:00"),
                           ("2026-10-26T01:00:00", "2026-10-26T04:00:00")]
    lengths = [(i.end_value() - i.start_value()) for i in got]  # type: ignore[operator]
    elapsed = [i.end_value().astimezone(UTC) - i.start_value().astimezone(UTC) for i in got]  # type: ignore
    assert lengths == [timedelta(hours=3)] * 3
    assert elapsed == [timedelta(hours=3), timedelta(hours=4), timedelta(hours=3)]


# --- all-day, floating, midnight ---------------------------------------------------


def test_an_all_day_series_expands_in_dates_with_exclusive_ends_and_date_keys():
    m = Event(uid="a@x", start="2026-12-24", end="2026-12-26", rrule="FREQ=YEARLY;COUNT=3",
              exdates=("20271224",))
    got = expand(m, [], w(2026, 1, 1), w(2030, 1, 1))
    assert starts(got) == [("2026-12-24", "2026-12-26"), ("2028-12-24", "2028-12-26")]
    assert [i.recurrence_id for i in got] == ["20261224", "20281224"]
    assert all(i.all_day and not i.start_tz and not i.rrule for i in got)


def test_an_all_day_series_with_a_utc_until_stops_on_its_date():
    m = Event(uid="a@x", start="2026-03-27", end="2026-03-28", rrule="FREQ=DAILY;UNTIL=20260330T000000Z")
    assert [i.start for i in expand(m, [], w(2026, 3, 1), w(2026, 5, 1))] == \
        ["2026-03-27", "2026-03-28", "2026-03-29", "2026-03-30"]


def test_a_floating_series_keeps_its_wall_clock_and_wall_clock_keys_whatever_the_zones():
    m = Event(uid="f@x", start="2026-03-27T08:00:00", end="2026-03-27T08:45:00", rrule="FREQ=DAILY;COUNT=4")
    got = expand(m, [], w(2026, 3, 1), w(2026, 4, 1))
    assert [i.start for i in got] == [f"2026-03-{d}T08:00:00" for d in (27, 28, 29, 30)]
    assert [i.recurrence_id for i in got] == [f"202603{d}T080000" for d in (27, 28, 29, 30)]
    assert all(i.start_tz == "" for i in got)


def test_an_event_across_midnight_ends_the_next_day_and_is_found_by_a_window_starting_after_midnight():
    m = weekly(start="2026-12-07T23:30:00", end="2026-12-08T01:00:00", rrule="FREQ=WEEKLY;COUNT=3")
    got = expand(m, [], w(2026, 12, 1), w(2027, 1, 1))
    assert starts(got)[1] == ("2026-12-14T23:30:00", "2026-12-15T01:00:00")
    # 23:00 UTC on the 14th to 01:00 on the 15th is inside the instance that began at
    # 22:30 UTC (23:30 Paris) and ends at midnight UTC
    inside = expand(m, [], w(2026, 12, 14, 23), w(2026, 12, 15, 1))
    assert [i.recurrence_id for i in inside] == ["20261214T223000Z"]
    # but it does not *start* there, and a window from its end on misses it
    assert occurrence_starts(m, w(2026, 12, 14, 23), w(2026, 12, 15, 1)) == []
    assert expand(m, [], w(2026, 12, 15, 0), w(2026, 12, 15, 1)) == []


# --- EXDATE / RDATE -----------------------------------------------------------------


def test_exdates_remove_and_rdates_add_instances_in_utc_or_wall_clock_form():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=4", exdates=("20261214T080000Z",), rdates=("20261217T150000Z",))
    got = expand(m, [], w(2026, 12, 1), w(2027, 2, 1))
    assert [i.recurrence_id for i in got] == ["20261207T080000Z", "20261217T150000Z", "20261221T080000Z",
                                              "20261228T080000Z"]
    rdate = got[1]
    assert (rdate.start, rdate.end) == ("2026-12-17T16:00:00", "2026-12-17T17:00:00")
    # an EXDATE written on the series' wall clock names the same instance
    wall = weekly(rrule="FREQ=WEEKLY;COUNT=4", exdates=("20261214T090000",))
    assert "20261214T080000Z" not in [i.recurrence_id for i in expand(wall, [], w(2026, 12, 1), w(2027, 2, 1))]


def test_dtstart_off_the_rule_is_still_the_first_instance():
    # 2026-12-08 is a Tuesday; the rule says Mondays
    m = weekly(start="2026-12-08T09:00:00", end="2026-12-08T10:00:00", rrule="FREQ=WEEKLY;BYDAY=MO;COUNT=2")
    assert [i.start[:10] for i in expand(m, [], w(2026, 12, 1), w(2027, 1, 1))] == \
        ["2026-12-08", "2026-12-14", "2026-12-21"]


def test_a_local_until_on_a_zoned_series_is_read_in_its_zone():
    m = weekly(rrule="FREQ=WEEKLY;UNTIL=20261221T090000")
    assert [i.start[:10] for i in expand(m, [], w(2026, 12, 1), w(2027, 6, 1))] == \
        ["2026-12-07", "2026-12-14", "2026-12-21"]


# --- exceptions -----------------------------------------------------------------


def test_moved_edited_and_cancelled_instances_replace_theirs():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=5")
    moved = Event(uid=m.uid, recurrence_id="20261214T080000Z", title="Weekly", start="2026-12-15T14:00:00",
                  end="2026-12-15T15:00:00", start_tz="Europe/Paris", end_tz="Europe/Paris")
    edited = Event(uid=m.uid, recurrence_id="20261221T080000Z", title="Weekly (agenda changed)",
                   start="2026-12-21T09:00:00", end="2026-12-21T10:00:00", start_tz="Europe/Paris",
                   end_tz="Europe/Paris")
    cancelled = Event(uid=m.uid, recurrence_id="20261228T080000Z", status="cancelled")
    other_series = Event(uid="other@x", recurrence_id="20261207T080000Z", status="cancelled")
    got = expand(m, [moved, edited, cancelled, other_series], w(2026, 12, 1), w(2027, 2, 1))
    assert [(i.recurrence_id, i.start, i.title) for i in got] == [
        ("20261207T080000Z", "2026-12-07T09:00:00", "Weekly"),
        ("20261214T080000Z", "2026-12-15T14:00:00", "Weekly"),
        ("20261221T080000Z", "2026-12-21T09:00:00", "Weekly (agenda changed)"),
        ("20270104T080000Z", "2027-01-04T09:00:00", "Weekly"),
    ]


def test_an_instance_moved_into_the_window_appears_and_one_moved_out_does_not():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=5")
    into = Event(uid=m.uid, recurrence_id="20270104T080000Z", start="2026-12-16T09:00:00",
                 end="2026-12-16T10:00:00", start_tz="Europe/Paris", title="pulled forward")
    out = Event(uid=m.uid, recurrence_id="20261214T080000Z", start="2027-03-01T09:00:00",
                end="2027-03-01T10:00:00", start_tz="Europe/Paris", title="pushed back")
    got = expand(m, [into, out], w(2026, 12, 10), w(2026, 12, 20))
    assert [(i.recurrence_id, i.title) for i in got] == [("20270104T080000Z", "pulled forward")]


def test_an_exception_keyed_in_another_form_still_replaces_its_instance():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=3")
    # the attendee's copy keyed the instance by its Paris wall clock
    ex = Event(uid=m.uid, recurrence_id="20261214T090000", status="cancelled")
    assert normalize_key(m, ex.recurrence_id) == "20261214T080000Z"
    assert [i.recurrence_id for i in expand(m, [ex], w(2026, 12, 1), w(2027, 1, 1))] == \
        ["20261207T080000Z", "20261221T080000Z"]


def test_an_exception_for_an_instance_the_series_does_not_have_is_ignored():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=3")
    stray = Event(uid=m.uid, recurrence_id="20261215T080000Z", start="2026-12-15T09:00:00",
                  end="2026-12-15T10:00:00", start_tz="Europe/Paris", title="stray")
    assert not is_instance(m, stray.recurrence_id)
    assert "stray" not in [i.title for i in expand(m, [stray], w(2026, 12, 1), w(2027, 1, 1))]


def test_a_thisandfuture_override_shifts_every_later_instance_and_changes_their_fields():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=5", location="Room 1")
    later = Event(uid=m.uid, recurrence_id="20261221T080000Z", range="THISANDFUTURE", title="Weekly",
                  location="Room 2", start="2026-12-22T11:00:00", end="2026-12-22T11:30:00",
                  start_tz="Europe/Paris", end_tz="Europe/Paris")
    single = Event(uid=m.uid, recurrence_id="20261228T080000Z", title="Weekly", location="Room 9",
                   start="2026-12-29T11:00:00", end="2026-12-29T12:00:00", start_tz="Europe/Paris",
                   end_tz="Europe/Paris")
    got = expand(m, [later, single], w(2026, 12, 1), w(2027, 2, 1))
    assert [(i.start, i.end, i.location) for i in got] == [
        ("2026-12-07T09:00:00", "2026-12-07T10:00:00", "Room 1"),
        ("2026-12-14T09:00:00", "2026-12-14T10:00:00", "Room 1"),
        ("2026-12-22T11:00:00", "2026-12-22T11:30:00", "Room 2"),
        ("2026-12-29T11:00:00", "2026-12-29T12:00:00", "Room 9"),   # its own exception wins
        ("2027-01-05T11:00:00", "2027-01-05T11:30:00", "Room 2"),   # shifted a day and two hours
    ]


def test_a_cancelled_thisandfuture_override_ends_the_series_there():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=5")
    stop = Event(uid=m.uid, recurrence_id="20261221T080000Z", range="THISANDFUTURE", status="cancelled")
    assert [i.start[:10] for i in expand(m, [stop], w(2026, 12, 1), w(2027, 2, 1))] == \
        ["2026-12-07", "2026-12-14"]


# --- this and following -----------------------------------------------------------


def test_split_this_and_future_ends_the_old_series_before_the_instance_and_starts_a_new_one():
    m = weekly(rrule="FREQ=WEEKLY;BYDAY=MO;COUNT=6", exdates=("20261214T080000Z", "20270104T080000Z"))
    old, new = split_this_and_future(m, "20261228T080000Z", {"start": "2026-12-28T14:00:00", "title": "Later"})
    assert old is not None
    assert new.uid == split_uid(m.uid, "20261228T080000Z") == "weekly_R20261228T080000Z@example.org"
    assert (new.start, new.end, new.title) == ("2026-12-28T14:00:00", "2026-12-28T15:00:00", "Later")
    assert old.exdates == ("20261214T080000Z",)
    assert new.exdates == ("20270104T130000Z",)  # the EXDATE moved with its instance
    old_i = expand(old, [], w(2026, 1, 1), w(2028, 1, 1))
    new_i = expand(new, [], w(2026, 1, 1), w(2028, 1, 1))
    assert [i.start for i in old_i] == ["2026-12-07T09:00:00", "2026-12-21T09:00:00"]
    # six instances in all: the remaining COUNT went to the new series, minus its EXDATE
    assert [i.start for i in new_i] == ["2026-12-28T14:00:00", "2027-01-11T14:00:00"]
    assert "COUNT" not in old.rrule and "UNTIL=20261228T075959Z" in old.rrule
    # two workers splitting the same series derive the same result
    assert split_this_and_future(m, "20261228T080000Z", {"start": "2026-12-28T14:00:00", "title": "Later"}) == \
        (old, new)


def test_split_of_an_open_ended_series_and_its_exceptions():
    m = weekly()
    moved = Event(uid=m.uid, recurrence_id="20270111T080000Z", start="2027-01-12T09:00:00",
                  end="2027-01-12T10:00:00", start_tz="Europe/Paris", title="Weekly")
    early = Event(uid=m.uid, recurrence_id="20261214T080000Z", status="cancelled")
    old, new = split_this_and_future(m, "20261228T080000Z", {"start": "2026-12-28T10:00:00"})
    assert old is not None and new.rrule == m.rrule
    kept, taken = exceptions_after_split([moved, early], m, "20261228T080000Z", new)
    assert kept == [early]
    assert [(e.uid, e.recurrence_id) for e in taken] == [(new.uid, "20270111T090000Z")]
    assert is_instance(new, taken[0].recurrence_id)
    window = (w(2026, 12, 1), w(2027, 1, 20))
    together = expand(old, kept, *window) + expand(new, taken, *window)
    assert [i.start for i in together] == ["2026-12-07T09:00:00", "2026-12-21T09:00:00",
                                           "2026-12-28T10:00:00", "2027-01-04T10:00:00",
                                           "2027-01-12T09:00:00", "2027-01-18T10:00:00"]


def test_split_at_the_first_instance_edits_the_whole_series():
    m = weekly(rrule="FREQ=WEEKLY;COUNT=3")
    old, new = split_this_and_future(m, "20261207T080000Z", {"title": "Renamed"})
    assert old is None and new.uid == m.uid and new.title == "Renamed" and new.rrule == m.rrule


def test_split_of_an_all_day_series_ends_the_day_before():
    m = Event(uid="ad@x", start="2026-12-01", end="2026-12-02", rrule="FREQ=DAILY;COUNT=10")
    old, new = split_this_and_future(m, "20261205", {})
    assert old is not None and "UNTIL=20261204" in old.rrule
    assert [i.start for i in expand(old, [], w(2026, 1, 1), w(2027, 1, 1))][-1] == "2026-12-04"
    assert [i.start for i in expand(new, [], w(2026, 1, 1), w(2027, 1, 1))] == \
        [f"2026-12-{d:02d}" for d in range(5, 11)]


def test_split_refuses_an_instance_the_series_does_not_have():
    with pytest.raises(RecurrenceError):
        split_this_and_future(weekly(), "20261208T080000Z", {})


# --- a series that changes zone ------------------------------------------------------


def test_a_series_moved_to_another_zone_keeps_its_wall_clock_and_its_exceptions():
    m = weekly(rrule="FREQ=WEEKLY;UNTIL=20261228T080000Z", exdates=("20261214T080000Z",))
    edited = Event(uid=m.uid, recurrence_id="20261221T080000Z", title="Agenda", start="2026-12-21T09:00:00",
                   end="2026-12-21T10:00:00", start_tz="Europe/Paris", end_tz="Europe/Paris")
    moved = Event(uid=m.uid, recurrence_id="20261207T080000Z", title="Weekly", start="2026-12-08T15:00:00",
                  end="2026-12-08T16:00:00", start_tz="Europe/Paris", end_tz="Europe/Paris")
    nm, exs = series_changes_zone(m, "America/New_York", [edited, moved])
    assert (nm.start, nm.start_tz, nm.end_tz) == ("2026-12-07T09:00:00", "America/New_York", "America/New_York")
    assert nm.exdates == ("20261214T140000Z",)
    assert "UNTIL=20261228T140000Z" in nm.rrule
    got = expand(nm, exs, w(2026, 12, 1), w(2027, 2, 1))
    assert [(i.recurrence_id, i.start, i.start_tz, i.title) for i in got] == [
        ("20261207T140000Z", "2026-12-08T15:00:00", "Europe/Paris", "Weekly"),   # moved: its own time
        ("20261221T140000Z", "2026-12-21T09:00:00", "America/New_York", "Agenda"),  # edited: follows
        ("20261228T140000Z", "2026-12-28T09:00:00", "America/New_York", "Weekly"),
    ]


def test_a_floating_series_given_a_zone_gets_utc_keys():
    m = Event(uid="f@x", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00", rrule="FREQ=DAILY;COUNT=2",
              exdates=("20261208T090000",))
    nm, _ = series_changes_zone(m, "America/New_York")
    assert nm.exdates == ("20261208T140000Z",)
    assert [i.recurrence_id for i in expand(nm, [], w(2026, 12, 1), w(2027, 1, 1))] == ["20261207T140000Z"]


def test_unknown_zone_and_unreadable_rule_raise_value_free_errors():
    with pytest.raises(RecurrenceError) as e1:
        series_changes_zone(weekly(), "Mars/Olympus_Mons")
    with pytest.raises(RecurrenceError) as e2:
        expand(weekly(rrule="FREQ=SOMETIMES"), [], w(2026, 1, 1), w(2027, 1, 1))
    assert "Olympus" not in str(e1.value) and "SOMETIMES" not in str(e2.value)
