"""The reference platform's PM calendar and its PlatformSide[Event] adapter, on PostgreSQL.

Both flavours ("native" series, "singles" expanded over a horizon) must present the
same canonical records; the singles flavour's instance rows are checked against the
series' own expansion (dateutil, via sync.calendar.recurrence), never against a
hand-computed list alone.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from connectors.protocols import PlatformSide, WriteRequest
from models.errors import CursorExpired, Fatal, NotFound, PreconditionFailed, ValidationRejected
from models.event import Event, instance_key
from platforms.reference_crm import IdempotencyKeyReused, PmRule, ReferenceCrm, ReferenceCrmCalendar
from platforms.reference_crm.pm_expand import derive_instance, occurrence_of, unedited_instances
from sync.calendar.recurrence import instance_keys, occurrence_starts

ORG, OTHER = "org_a", "org_b"
#: the platform's "now" for the horizon: fixed, so the expected instances do not follow the clock
NOW = datetime(2027, 1, 1, tzinfo=timezone.utc)
UID = "weekly-standup@mail.example"
PARIS = "Europe/Paris"


@pytest.fixture
def pm_crm(pg_url):
    service = ReferenceCrm(pg_url)
    yield service
    service.engine.dispose()


@pytest.fixture(params=["native", "singles"])
def flavour(request) -> str:
    return request.param


@pytest.fixture
def world(pm_crm, flavour):
    cal = pm_crm.calendar
    cal.configure(ORG, flavour, now=NOW.timestamp())
    project = cal.create_project(ORG, "Launch")
    return pm_crm, cal, ReferenceCrmCalendar(pm_crm), project


def weekly(project: str, **kw) -> Event:
    fields = dict(uid=UID, title="Standup", organizer="ann@corp.example", attendees=("bob@corp.example",),
                  responses=("bob@corp.example=accepted",), start="2027-01-04T09:00:00",
                  end="2027-01-04T09:30:00", start_tz=PARIS, end_tz=PARIS, rrule="FREQ=WEEKLY;BYDAY=MO",
                  project=project, exdates=("20270301T080000Z",))
    return Event(**{**fields, **kw})


def exceptions(project: str) -> list[Event]:
    """A moved, an edited, a cancelled instance and a "this and following" split (09:00 Paris = 08:00Z)."""
    base = weekly(project).model_copy(update={"rrule": "", "exdates": ()})
    return [
        base.model_copy(update={"recurrence_id": "20270111T080000Z", "start": "2027-01-12T10:00:00",
                                "end": "2027-01-12T10:30:00"}),
        base.model_copy(update={"recurrence_id": "20270118T080000Z", "start": "2027-01-18T09:00:00",
                                "end": "2027-01-18T09:30:00", "title": "Standup with demo", "location": "Room 4"}),
        base.model_copy(update={"recurrence_id": "20270125T080000Z", "start": "2027-01-25T09:00:00",
                                "end": "2027-01-25T09:30:00", "status": "cancelled"}),
        base.model_copy(update={"recurrence_id": "20270208T080000Z", "range": "THISANDFUTURE",
                                "start": "2027-02-08T10:00:00", "end": "2027-02-08T11:00:00",
                                "title": "Standup v2"}),
    ]


def write(adapter, events, org=ORG, owner="user_1", prefix="k"):
    results = adapter.upsert_many(org, [WriteRequest(key=f"{prefix}{i}", content=e, owner=owner)
                                        for i, e in enumerate(events)])
    assert all(r.error is None for r in results), [r.error for r in results]
    return [r.record for r in results]


def drain(adapter, cursor=None, org=ORG, limit=500):
    records = []
    while True:
        page = adapter.changes_since(org, cursor, limit)
        records += page.records
        cursor = page.cursor
        if not page.next_page:
            return records, cursor


def canonical(records) -> dict[str, Event]:
    return {r.content.key: r.content for r in records if not r.deleted}


def instance_rows(cal, uid=UID):
    return {r.event.recurrence_id: r for r in cal.list_events(ORG, kinds=("instance",), uid=uid)}


def test_adapter_satisfies_the_protocol(world):
    _, _, adapter, _ = world
    for name in [n for n in dir(PlatformSide) if not n.startswith("_")]:
        assert callable(getattr(adapter, name)), name


# ------------------------------------------------------------------ canonical round trips


def test_series_with_moved_edited_cancelled_and_split_round_trips(world, flavour):
    _, cal, adapter, project = world
    master = weekly(project)
    written = [master, *exceptions(project)]
    records = write(adapter, written)
    assert len({r.external_id for r in records}) == 5
    assert all(r.owner == "user_1" for r in records)

    feed, _ = drain(adapter)
    assert canonical(feed) == {e.key: e for e in written}
    assert len(feed) == 5  # nothing else: in "singles" the instance rows are not records
    by_id = {r.external_id: r for r in adapter.get_many(ORG, [r.external_id for r in records])}
    assert canonical(by_id.values()) == {e.key: e for e in written}
    assert all(r.owner == "user_1" for r in feed)


SHAPES = {
    # an all-day series: keys are dates; an exception moved by a day
    "all_day": (Event(uid="allday@x", title="Release day", start="2027-01-05", end="2027-01-06",
                      rrule="FREQ=WEEKLY;COUNT=6"),
                [("20270112", {"start": "2027-01-13", "end": "2027-01-14"}),
                 ("20270119", {"status": "cancelled"})]),
    # a floating series: keys are wall clocks; one instance retitled, one split
    "floating": (Event(uid="float@x", title="Stretch", start="2027-01-04T07:30:00", end="2027-01-04T07:45:00",
                       rrule="FREQ=DAILY;INTERVAL=2"),
                 [("20270106T073000", {"title": "Long stretch", "end": "2027-01-06T08:15:00"}),
                  ("20270112T073000", {"range": "THISANDFUTURE", "start": "2027-01-12T08:00:00",
                                       "end": "2027-01-12T08:15:00"})]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("exceptions_first", [False, True])
def test_all_day_and_floating_series_round_trip_in_any_write_order(world, flavour, shape, exceptions_first):
    _, cal, adapter, project = world
    master, edits = SHAPES[shape]
    master = master.model_copy(update={"project": project})
    excs = []
    for key, change in edits:
        occ = derive_instance(master, occurrence_of(master, key))
        assert occ is not None and occ.recurrence_id == key
        excs.append(occ.model_copy(update=change))
    written = [*excs, master] if exceptions_first else [master, *excs]
    write(adapter, written)
    feed, _ = drain(adapter)
    assert canonical(feed) == {e.key: e for e in written} and len(feed) == len(written)
    if flavour == "singles":
        lo, hi = cal.settings(ORG).window()
        rows = instance_rows(cal, master.uid)
        assert set(rows) == set(instance_keys(master, lo, hi)) | {k for k, _ in edits}
        assert all(r.series_id == cal.find_by_key(ORG, master.uid).id for r in rows.values())
        assert {k for k, r in rows.items() if r.edited} == {k for k, _ in edits}


def test_singles_expands_the_series_over_the_horizon_around_its_exceptions(pm_crm):
    cal = pm_crm.calendar
    cal.configure(ORG, "singles", now=NOW.timestamp())
    project = cal.create_project(ORG, "Launch")
    adapter = ReferenceCrmCalendar(pm_crm)
    master = weekly(project)
    write(adapter, [master, *exceptions(project)])

    lo, hi = cal.settings(ORG).window()
    assert hi == NOW + timedelta(days=90)
    expected_keys = set(instance_keys(master, lo, hi))
    rows = instance_rows(cal)
    # every occurrence (EXDATE left out by dateutil) has one row, and no other row exists
    assert set(rows) == expected_keys and "20270301T080000Z" not in rows
    assert rows["20270111T080000Z"].event.start == "2027-01-12T10:00:00" and rows["20270111T080000Z"].edited
    assert rows["20270125T080000Z"].event.status == "cancelled"
    assert rows["20270104T080000Z"].event.start == "2027-01-04T09:00:00" and not rows["20270104T080000Z"].edited
    # after the split every unedited instance is an hour later, an hour long, and renamed
    later = [k for k in expected_keys if k > "20270208T080000Z"]
    assert later
    for key in later:
        ev = rows[key].event
        assert not rows[key].edited and ev.title == "Standup v2"
        original = datetime.strptime(key, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        moved = original.astimezone(ev.start_value().tzinfo) + timedelta(hours=1)
        assert ev.start_value() == moved and ev.end_value() - ev.start_value() == timedelta(hours=1)
    for key in expected_keys - set(later) - {"20270111T080000Z", "20270118T080000Z", "20270125T080000Z",
                                             "20270208T080000Z"}:
        assert rows[key].event.title == "Standup" and rows[key].event.start.endswith("T09:00:00")


def test_a_platform_users_instance_edits_reach_the_feed_as_exceptions(world, flavour):
    _, cal, adapter, project = world
    series = cal.user_create(ORG, "user_9", **weekly(project, uid="").model_dump(exclude={"uid"}))
    _, cursor = drain(adapter)
    moved = cal.user_edit_instance(ORG, series.id, "20270111T080000Z", start="2027-01-11T11:00:00",
                                   end="2027-01-11T11:30:00")
    cal.user_edit_instance(ORG, series.id, "20270118T080000Z", title="Planning")
    cal.user_cancel_instance(ORG, series.id, "20270125T080000Z")
    feed, _ = drain(adapter, cursor)
    uid = series.event.uid
    got = canonical(feed)
    assert set(got) == {f"{uid}|20270111T080000Z", f"{uid}|20270118T080000Z", f"{uid}|20270125T080000Z"}
    assert got[f"{uid}|20270111T080000Z"].start == "2027-01-11T11:00:00"
    assert got[f"{uid}|20270118T080000Z"].title == "Planning"
    assert got[f"{uid}|20270118T080000Z"].start == "2027-01-18T09:00:00"
    assert got[f"{uid}|20270125T080000Z"].status == "cancelled"
    assert all(r.owner == "user_9" for r in feed)
    # editing the exception again updates the same record
    cal.user_edit_instance(ORG, series.id, "20270111T080000Z", title="Moved standup")
    again, _ = drain(adapter, cursor)
    ids = {r.content.key: r.external_id for r in again}
    assert ids[f"{uid}|20270111T080000Z"] == moved.id


def test_singles_instance_row_edited_on_the_platform_becomes_an_exception(pm_crm):
    cal = pm_crm.calendar
    cal.configure(ORG, "singles", now=NOW.timestamp())
    project = cal.create_project(ORG, "Launch")
    adapter = ReferenceCrmCalendar(pm_crm)
    [master] = write(adapter, [weekly(project)])
    _, cursor = drain(adapter)
    row = instance_rows(cal)["20270118T080000Z"]
    assert adapter.get_many(ORG, [row.id])[0].deleted  # an unedited instance is not a record
    cal.user_edit(ORG, row.id, title="Retro")
    feed, cursor = drain(adapter, cursor)
    assert [(r.external_id, r.content.recurrence_id, r.content.title) for r in feed] == [
        (row.id, "20270118T080000Z", "Retro")]
    # a platform user deleting one unedited occurrence cancels it
    other = instance_rows(cal)["20270125T080000Z"]
    cal.user_cancel(ORG, other.id)
    feed, _ = drain(adapter, cursor)
    assert [(r.content.recurrence_id, r.content.status) for r in feed] == [("20270125T080000Z", "cancelled")]
    assert master.external_id not in {r.external_id for r in feed}


# ------------------------------------------------------------------ series edits and the horizon (singles)


def test_singles_series_edit_moves_and_removes_instances_without_touching_exceptions(pm_crm):
    cal = pm_crm.calendar
    cal.configure(ORG, "singles", now=NOW.timestamp())
    project = cal.create_project(ORG, "Launch")
    adapter = ReferenceCrmCalendar(pm_crm)
    master = weekly(project, exdates=())
    [rec] = write(adapter, [master])
    cal.user_edit_instance(ORG, rec.external_id, "20270118T080000Z", title="Demo day")
    _, cursor = drain(adapter)
    lo, hi = cal.settings(ORG).window()

    moved_master = master.model_copy(update={"start": "2027-01-04T10:00:00", "end": "2027-01-04T11:00:00",
                                             "title": "Daily sync"})
    [upd] = adapter.upsert_many(ORG, [WriteRequest(key="move", external_id=rec.external_id,
                                                   content=moved_master, etag=rec.etag)])
    assert upd.error is None and upd.record.etag == "2"
    rows = instance_rows(cal)
    new_keys = set(instance_keys(moved_master, lo, hi))
    assert set(rows) == new_keys | {"20270118T080000Z"}  # 10:00 Paris is 09:00Z: every key moved
    for key in new_keys:
        assert rows[key].event.title == "Daily sync" and rows[key].event.start.endswith("T10:00:00")
        assert rows[key].event.end_value() - rows[key].event.start_value() == timedelta(hours=1)
    assert rows["20270118T080000Z"].event.title == "Demo day"  # the exception is kept as it was
    feed, cursor = drain(adapter, cursor)
    assert [r.external_id for r in feed] == [rec.external_id]  # one change: the series

    short = moved_master.model_copy(update={"rrule": "FREQ=WEEKLY;BYDAY=MO;COUNT=2"})
    [upd] = adapter.upsert_many(ORG, [WriteRequest(key="shorten", external_id=rec.external_id, content=short,
                                                   etag=upd.record.etag)])
    assert upd.error is None
    assert set(instance_rows(cal)) == {"20270104T090000Z", "20270111T090000Z", "20270118T080000Z"}


def test_horizon_roll_adds_instances_and_no_feed_entries(pm_crm):
    cal = pm_crm.calendar
    cal.configure(ORG, "singles", now=NOW.timestamp())
    project = cal.create_project(ORG, "Launch")
    adapter = ReferenceCrmCalendar(pm_crm)
    master = weekly(project, exdates=())
    [rec] = write(adapter, [master, *exceptions(project)])[:1]
    _, cursor = drain(adapter)
    before = instance_rows(cal)
    lo, hi = cal.settings(ORG).window()

    until = hi + timedelta(days=60)
    added = adapter.extend_horizon(ORG, until)
    after = instance_rows(cal)
    assert added == len(after) - len(before) > 0
    assert set(after) == set(instance_keys(master, lo, until))
    assert {k: r.id for k, r in before.items()} == {k: after[k].id for k in before}  # nothing re-created
    assert all(r.event.title == "Standup v2" for k, r in after.items() if k not in before)  # the split holds
    page = adapter.changes_since(ORG, cursor)
    assert page.records == [] and page.cursor == cursor
    assert adapter.get_many(ORG, [rec.external_id])[0].etag == rec.etag
    assert adapter.extend_horizon(ORG, until - timedelta(days=10)) == 0  # never backwards


def test_deleting_an_exception_gives_the_instance_back_to_its_series(world, flavour):
    _, cal, adapter, project = world
    recs = write(adapter, [weekly(project), *exceptions(project)])
    edited = recs[2]
    _, cursor = drain(adapter)
    [res] = adapter.delete_many(ORG, [WriteRequest(key="d1", external_id=edited.external_id, etag=edited.etag)])
    assert res.error is None and res.record.deleted
    feed, cursor = drain(adapter, cursor)
    assert [(r.external_id, r.deleted) for r in feed] == [(edited.external_id, True)]
    if flavour == "singles":
        row = instance_rows(cal)["20270118T080000Z"]
        assert not row.edited and row.event.title == "Standup" and row.id != edited.external_id
    # deleting the master takes every exception with it
    [res] = adapter.delete_many(ORG, [WriteRequest(key="d2", external_id=recs[0].external_id)])
    assert res.error is None
    feed, _ = drain(adapter, cursor)
    assert {r.external_id for r in feed} == {recs[0].external_id, recs[1].external_id, recs[3].external_id,
                                             recs[4].external_id}
    assert all(r.deleted for r in feed)
    assert cal.list_events(ORG) == []


# ------------------------------------------------------------------ validation rules


def test_rules_refuse_items_one_by_one_naming_field_and_rule(world):
    _, cal, adapter, project = world
    cal.configure_rules(ORG, [PmRule.project_required(), PmRule.end_after_start(),
                              PmRule.max_duration("at most a day", minutes=24 * 60)])
    good = Event(uid="ok@x", title="Kickoff secret", start="2027-01-05T09:00:00", end="2027-01-05T10:00:00",
                 start_tz=PARIS, end_tz=PARIS, project=project)
    batch = [
        good,
        good.model_copy(update={"uid": "p@x", "project": ""}),
        good.model_copy(update={"uid": "q@x", "project": "pm_p_unknown"}),
        good.model_copy(update={"uid": "e@x", "end": "2027-01-05T08:00:00"}),
        good.model_copy(update={"uid": "d@x", "end": "2027-01-06T12:00:00"}),
        Event(uid="ad@x", title="Offsite", start="2027-01-05", end="2027-01-06", project=project),
    ]
    results = adapter.upsert_many(ORG, [WriteRequest(key=f"v{i}", content=e) for i, e in enumerate(batch)])
    assert results[0].error is None and results[5].error is None
    got = [(type(r.error), r.error.field, r.error.rule) for r in results[1:5]]
    assert got == [
        (ValidationRejected, "project", "an event needs a project"),
        (ValidationRejected, "project", "an event needs a project"),
        (ValidationRejected, "end", "end after start"),
        (ValidationRejected, "end", "at most a day"),
    ]
    assert not any("Kickoff" in str(r.error) or "secret" in str(r.error) for r in results[1:5])
    feed, _ = drain(adapter)
    assert set(canonical(feed)) == {"ok@x|", "ad@x|"}  # a one-day all-day event is within a day


def test_an_exception_without_its_own_project_is_filed_under_its_series(world):
    _, cal, adapter, project = world
    cal.configure_rules(ORG, [PmRule.project_required()])
    exc = exceptions(project)[1].model_copy(update={"project": ""})
    [orphan] = adapter.upsert_many(ORG, [WriteRequest(key="o", content=exc)])
    assert isinstance(orphan.error, ValidationRejected) and orphan.error.field == "project"
    results = adapter.upsert_many(ORG, [WriteRequest(key="m", content=weekly(project)),
                                        WriteRequest(key="x", content=exc)])
    assert [r.error for r in results] == [None, None]
    assert results[1].record.content.project == ""  # stored as written: the round trip stays equal


# ------------------------------------------------------------------ meeting key, idempotency, etags, feed


def test_a_second_create_of_the_same_meeting_returns_the_first_record(world):
    _, cal, adapter, project = world
    first, = write(adapter, [weekly(project)], owner="organizer")
    second, = write(adapter, [weekly(project, title="Attendee copy")], owner="attendee", prefix="other")
    assert second.external_id == first.external_id
    assert second.content.title == "Standup" and second.owner == "organizer" and second.etag == first.etag
    assert len(cal.list_events(ORG, kinds=("event", "series"))) == 1


def test_concurrent_claims_of_one_meeting_make_one_record(world):
    _, cal, adapter, project = world
    ids, errors = [], []
    barrier = threading.Barrier(4)

    def claim(i: int) -> None:
        barrier.wait()
        [r] = adapter.upsert_many(ORG, [WriteRequest(key=f"c{i}", content=exceptions(project)[1], owner=f"u{i}")])
        (errors if r.error else ids).append(r.error or r.record.external_id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(set(ids)) == 1


def test_writes_are_idempotent_by_key(world):
    _, cal, adapter, project = world
    ev = Event(uid="once@x", title="Review", start="2027-01-05T09:00:00", end="2027-01-05T10:00:00",
               start_tz=PARIS, project=project)
    first = adapter.upsert_many(ORG, [WriteRequest(key="same", content=ev)])[0].record
    again = adapter.upsert_many(ORG, [WriteRequest(key="same", content=ev)])[0].record
    assert again == first
    upd = ev.model_copy(update={"title": "Review 2"})
    r1 = adapter.upsert_many(ORG, [WriteRequest(key="u", content=upd, external_id=first.external_id,
                                                etag=first.etag)])[0]
    r2 = adapter.upsert_many(ORG, [WriteRequest(key="u", content=upd, external_id=first.external_id,
                                                etag=first.etag)])[0]
    assert r1.error is None and r2.record == r1.record and r1.record.etag == "2"
    [reused] = adapter.upsert_many(ORG, [WriteRequest(key="same", content=upd)])
    assert isinstance(reused.error, IdempotencyKeyReused)
    feed, _ = drain(adapter)
    assert [r.content.title for r in feed] == ["Review 2"]


def test_stale_or_foreign_etag_is_a_precondition_failure(world):
    _, cal, adapter, project = world
    [rec] = write(adapter, [weekly(project)])
    cal.user_edit(ORG, rec.external_id, title="Renamed on the platform")
    for etag in (rec.etag, "not-a-version"):
        [res] = adapter.upsert_many(ORG, [WriteRequest(key=f"stale-{etag}", external_id=rec.external_id,
                                                       content=weekly(project, title="From the mailbox"),
                                                       etag=etag)])
        assert isinstance(res.error, PreconditionFailed)
    [res] = adapter.delete_many(ORG, [WriteRequest(key="stale-del", external_id=rec.external_id, etag=rec.etag)])
    assert isinstance(res.error, PreconditionFailed)
    assert adapter.get_many(ORG, [rec.external_id])[0].content.title == "Renamed on the platform"
    [res] = adapter.upsert_many(ORG, [WriteRequest(key="gone", external_id="pm_e_404", content=weekly(project))])
    assert isinstance(res.error, NotFound)


def test_feed_pages_resume_exactly_and_refuse_foreign_cursors(world):
    _, cal, adapter, project = world
    recs = write(adapter, [Event(uid=f"e{i}@x", title=f"E{i}", start=f"2027-01-0{i + 1}", end=f"2027-01-0{i + 2}",
                                 project=project) for i in range(5)])
    first = adapter.changes_since(ORG, None, limit=2)
    assert [r.external_id for r in first.records] == [r.external_id for r in recs[:2]]
    assert first.next_page == first.cursor and first.cursor.startswith("cal:")
    rest, cursor = drain(adapter, first.next_page, limit=2)
    assert [r.external_id for r in rest] == [r.external_id for r in recs[2:]]
    assert adapter.changes_since(ORG, cursor).records == []
    assert adapter.changes_since(OTHER, None).records == []  # organisations do not see each other
    for foreign in ("17", "cal:x", "cal:-1", f"cal:{int(cursor[4:]) + 1000}", "contacts:3"):
        with pytest.raises(CursorExpired):
            adapter.changes_since(ORG, foreign)


# ------------------------------------------------------------------ pure expansion (hypothesis)


@hsettings(max_examples=60, deadline=None)
@given(
    freq=st.sampled_from(["DAILY", "WEEKLY", "WEEKLY;BYDAY=MO,TH", "MONTHLY;BYMONTHDAY=30"]),
    tz=st.sampled_from([PARIS, "America/New_York", "Australia/Sydney", ""]),
    day=st.integers(0, 400),
    hour=st.integers(0, 23),
    minutes=st.integers(15, 26 * 60),
)
def test_unedited_instances_keep_the_wall_clock_and_duration_of_their_series(freq, tz, day, hour, minutes):
    start = datetime(2026, 1, 1, hour) + timedelta(days=day)
    end = start + timedelta(minutes=minutes)
    master = Event(uid="p@x", start=start.isoformat(), end=end.isoformat(), start_tz=tz, end_tz=tz,
                   rrule=f"FREQ={freq};COUNT=40")
    lo, hi = datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2029, 1, 1, tzinfo=timezone.utc)
    got = unedited_instances(master, (), lo, hi)
    assert list(got) == instance_keys(master, lo, hi)
    for occ in occurrence_starts(master, lo, hi):
        inst = got[instance_key(occ)]
        wall = inst.start_value().replace(tzinfo=None)
        assert wall == occ.replace(tzinfo=None) and wall.time() == start.time()  # 09:00 stays 09:00 across DST
        assert inst.end_value().replace(tzinfo=None) - wall == timedelta(minutes=minutes)
        assert inst.rrule == "" and inst.uid == "p@x"


@hsettings(max_examples=40, deadline=None)
@given(split_at=st.integers(1, 9), shift_h=st.integers(-3, 3))
def test_a_split_shifts_exactly_the_later_instances(split_at, shift_h):
    master = Event(uid="s@x", title="A", start="2027-03-01T09:00:00", end="2027-03-01T10:00:00", start_tz=PARIS,
                   end_tz=PARIS, rrule="FREQ=WEEKLY;COUNT=10")
    lo, hi = datetime(2027, 1, 1, tzinfo=timezone.utc), datetime(2028, 1, 1, tzinfo=timezone.utc)
    occs = occurrence_starts(master, lo, hi)
    at = occs[split_at]
    moved = (at + timedelta(hours=shift_h)).replace(tzinfo=None)
    split = master.model_copy(update={"recurrence_id": instance_key(at), "range": "THISANDFUTURE", "rrule": "",
                                      "title": "B", "start": moved.isoformat(),
                                      "end": (moved + timedelta(hours=1)).isoformat()})
    for i, occ in enumerate(occs):
        inst = derive_instance(master, occ, [split])
        expect = occ + timedelta(hours=shift_h) if i >= split_at else occ
        assert inst.title == ("B" if i >= split_at else "A")
        assert inst.start_value().replace(tzinfo=None) == expect.replace(tzinfo=None)


def test_flavour_is_fixed_once_events_exist_and_singles_refuses_what_it_cannot_expand(world, flavour):
    _, cal, adapter, project = world
    bad = weekly(project, uid="bad@x", rrule="FREQ=FORTNIGHTLY")
    [res] = adapter.upsert_many(ORG, [WriteRequest(key="bad", content=bad)])
    if flavour == "singles":
        assert isinstance(res.error, ValidationRejected) and res.error.field == "rrule"
    else:
        assert res.error is None  # native stores the series as it is: expanding is the mailbox's job
    write(adapter, [weekly(project)])
    other = "singles" if flavour == "native" else "native"
    with pytest.raises(Fatal):
        cal.configure(ORG, other, now=NOW.timestamp())
    assert cal.settings(ORG).flavour == flavour
