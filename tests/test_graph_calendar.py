"""GraphCalendar against the Graph emulator's calendars over real HTTP (httpx, uvicorn).

Each test seeds events as a user would in Outlook (Windows zone names, series with
moved, edited and cancelled instances, invitations), steers the emulator (expired
tokens, faults) and checks what the connector makes of it.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from connectors.graph_calendar import CANCELLED, MARKER_PROPERTY_ID, GraphCalendar
from connectors.protocols import WriteRequest
from emulators.graph_calendar import DEFAULT_USER
from emulators.server import serve
from models.errors import CursorExpired, PreconditionFailed, RateLimited, ValidationRejected
from models.event import Event
from tests.graph_emulator import TOKEN, running_graph

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc).timestamp()
PARIS = "Romance Standard Time"


@pytest.fixture
def graph():
    with running_graph(seed=11) as running:
        yield running


def _conn(base: str, token: str = TOKEN, **kw) -> GraphCalendar:
    kw.setdefault("page_size", 4)
    return GraphCalendar(base, lambda: token, days_back=30, days_ahead=120, clock=lambda: NOW, **kw)


@pytest.fixture
def conn(graph):
    c = _conn(graph[1])
    yield c
    c.close()


def _when(text: str, zone: str = PARIS) -> dict:
    return {"dateTime": text, "timeZone": zone}


def _single(subject: str, day: str, zone: str = PARIS, **extra) -> dict:
    return {"subject": subject, "start": _when(f"{day}T09:00:00", zone), "end": _when(f"{day}T10:00:00", zone), **extra}


def _weekly(subject: str = "Standup", count: int = 6) -> dict:
    return {"subject": subject, "start": _when("2026-12-07T09:00:00"), "end": _when("2026-12-07T09:30:00"),
            "recurrence": {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"],
                                       "firstDayOfWeek": "sunday"},
                           "range": {"type": "numbered", "startDate": "2026-12-07", "numberOfOccurrences": count}}}


def _round(conn: GraphCalendar, cursor: str | None):
    records, token = [], None
    while True:
        page = conn.list_changes(cursor, token)
        records.extend(page.records)
        if page.next_page:
            token = page.next_page
            continue
        return records, page.cursor


def _keys(records) -> set[tuple[str, str]]:
    return {(r.content.uid, r.content.recurrence_id) for r in records if r.content is not None}


def _series_with_changes(state) -> tuple[str, dict]:
    """A weekly series (Paris, 09:00, 6 Mondays) with the 2nd instance moved, the 3rd
    retitled and the 4th cancelled."""
    cal = state.calendar
    (master,) = cal.seed([_weekly()])
    inst = cal.instances(master, datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 2, 1, tzinfo=timezone.utc))
    cal.user_edit(inst[1]["id"], {"start": _when("2026-12-15T14:00:00"), "end": _when("2026-12-15T14:30:00")})
    cal.user_edit(inst[2]["id"], {"subject": "Standup (retro)"})
    cal.user_delete(inst[3]["id"])
    return master, cal.event(master)


# --------------------------------------------------------------------------- reading


def test_full_listing_gives_masters_exceptions_cancelled_instances_and_singles_not_occurrences(graph, conn):
    state, _ = graph
    cal = state.calendar
    (single,) = cal.seed([_single("Lunch", "2026-12-03", "Pacific Standard Time")])
    master_id, master = _series_with_changes(state)
    uid = master["iCalUId"]
    state.reset_stats()

    records, cursor = _round(conn, None)

    assert cursor
    assert _keys(records) == {
        (cal.event(single)["iCalUId"], ""), (uid, ""),
        (uid, "20261214T080000Z"),  # moved: keyed by where it was (09:00 Paris = 08:00 UTC)
        (uid, "20261221T080000Z"),  # retitled
        (uid, "20261228T080000Z"),  # cancelled
    }
    by_key = {(r.content.uid, r.content.recurrence_id): r for r in records}
    m = by_key[(uid, "")].content
    assert (m.rrule, m.start, m.start_tz, m.end) == ("FREQ=WEEKLY;BYDAY=MO;WKST=SU;COUNT=6", "2026-12-07T09:00:00",
                                                     "Europe/Paris", "2026-12-07T09:30:00")
    moved = by_key[(uid, "20261214T080000Z")].content
    assert (moved.start, moved.end, moved.title, moved.rrule) == ("2026-12-15T14:00:00", "2026-12-15T14:30:00",
                                                                  "Standup", "")
    assert by_key[(uid, "20261221T080000Z")].content.title == "Standup (retro)"
    gone = by_key[(uid, "20261228T080000Z")]
    assert gone.content.status == "cancelled" and gone.external_id == f"{master_id}{CANCELLED}20261228T080000Z"
    lunch = by_key[(cal.event(single)["iCalUId"], "")].content
    assert (lunch.start, lunch.start_tz) == ("2026-12-03T09:00:00", "America/Los_Angeles")
    # the master and its instances were read once, although its instances span several pages
    master_reads = [e for e in state.request_log if e["path"].endswith(master_id) and e["method"] == "GET"]
    assert len(master_reads) == 1
    assert not any(r.external_id.startswith("AAMkAGocc") for r in records)  # no occurrence is a record


def test_delta_reports_only_what_changed_and_reads_a_changed_series_once(graph, conn):
    state, _ = graph
    cal = state.calendar
    singles = cal.seed([_single(f"Call {i}", f"2026-12-0{i + 2}") for i in range(5)])
    master_id, master = _series_with_changes(state)
    _, cursor = _round(conn, None)

    records, cursor = _round(conn, cursor)
    assert records == []

    cal.user_edit(singles[0], {"subject": "Call zero"})
    cal.user_edit(master_id, {"subject": "Daily sync"})  # a title: exceptions survive
    calls = conn.calls_made
    records, cursor = _round(conn, cursor)
    titles = {(r.content.recurrence_id, r.content.title) for r in records if r.content}
    assert ("", "Call zero") in titles and ("", "Daily sync") in titles
    assert ("20261228T080000Z", "Daily sync") in titles  # the cancelled instance follows its master
    assert {r.external_id for r in records if r.content and not r.content.uid == master["iCalUId"]} == {singles[0]}
    assert conn.calls_made - calls <= 3  # delta pages + one $batch for the series

    cal.user_delete(singles[1])
    records, _ = _round(conn, cursor)
    assert [(r.external_id, r.deleted) for r in records] == [(singles[1], True)]


def test_steady_state_costs_at_most_one_point_one_calls_per_changed_event(graph):
    state, base = graph
    cal = state.calendar
    ids = cal.seed([_single(f"Event {i}", f"2026-12-{(i % 28) + 1:02d}") for i in range(60)])
    series = cal.seed([_weekly(f"Series {i}") for i in range(10)])
    conn = _conn(base, page_size=100)
    _, cursor = _round(conn, None)
    for i in ids[:40]:
        cal.user_edit(i, {"subject": "changed"})
    for m in series:
        cal.user_edit(m, {"subject": "changed series"})
    before = conn.calls_made
    records, _ = _round(conn, cursor)
    changed = [r for r in records if r.content is not None]
    assert len(changed) == 50
    assert (conn.calls_made - before) / len(changed) <= 1.1


def test_expired_delta_token_is_cursor_expired_and_a_full_resync_has_the_same_keys(graph, conn):
    state, _ = graph
    state.calendar.seed([_single("Lunch", "2026-12-03"), _single("Review", "2026-12-04")])
    _series_with_changes(state)
    first, cursor = _round(conn, None)
    state.expire_delta_tokens(status=410, code="syncStateNotFound")
    with pytest.raises(CursorExpired):
        conn.list_changes(cursor)
    again, _ = _round(conn, None)
    assert _keys(again) == _keys(first)
    assert len(again) == len(first)
    # also the other spellings Graph uses
    for status, code in ((400, "resyncRequired"), (404, "SyncStateNotFound")):
        _, cursor = _round(conn, None)
        state.expire_delta_tokens(status=status, code=code)
        with pytest.raises(CursorExpired):
            _round(conn, cursor)
    with pytest.raises(CursorExpired):
        conn.list_changes("not our cursor")


def test_an_event_leaving_the_window_is_an_update_not_a_delete(graph, conn):
    state, _ = graph
    (eid,) = state.calendar.seed([_single("Offsite", "2026-12-10")])
    _, cursor = _round(conn, None)
    state.calendar.user_edit(eid, {"start": _when("2027-09-01T09:00:00"), "end": _when("2027-09-01T10:00:00")})
    records, _ = _round(conn, cursor)
    assert [(r.external_id, r.deleted, r.content.start) for r in records] == [(eid, False, "2027-09-01T09:00:00")]


def test_all_day_events_are_dates_without_a_zone_both_ways(graph, conn):
    state, _ = graph
    state.calendar.seed([{"subject": "Holiday", "isAllDay": True, "start": _when("2026-12-24T00:00:00"),
                          "end": _when("2026-12-26T00:00:00")}])
    (rec,) = _round(conn, None)[0]
    assert (rec.content.start, rec.content.end, rec.content.start_tz, rec.content.all_day) == (
        "2026-12-24", "2026-12-26", "", True)
    ev = Event(title="Trip", start="2027-01-05", end="2027-01-07")
    (res,) = conn.create_many([WriteRequest(key="k1", content=ev)])
    assert res.error is None
    stored = state.calendar.event(res.record.external_id)
    assert stored["isAllDay"] is True and stored["start"]["dateTime"].startswith("2027-01-05T00:00:00")
    assert (res.record.content.start, res.record.content.end) == ("2027-01-05", "2027-01-07")


def test_windows_zone_names_are_read_as_iana_and_written_as_windows(graph, conn):
    state, base = graph
    state.calendar.seed([_single("Sydney", "2026-12-03", "AUS Eastern Standard Time"),
                         _single("Delhi", "2026-12-04", "India Standard Time")])
    got = {r.content.title: (r.content.start, r.content.start_tz) for r in _round(conn, None)[0]}
    # a client asking for another zone gets that zone's wall clock and its name back
    with httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        first = c.get("/me/events", headers={"Prefer": 'outlook.timezone="Pacific Standard Time"'}).json()["value"][0]
    assert first["start"] == {"dateTime": "2026-12-02T14:00:00.0000000", "timeZone": "Pacific Standard Time"}
    assert first["originalStartTimeZone"] == "AUS Eastern Standard Time"
    # CLDR's golden zone for India keeps the older IANA name (a link to Asia/Kolkata)
    assert got == {"Sydney": ("2026-12-03T09:00:00", "Australia/Sydney"), "Delhi": ("2026-12-04T09:00:00", "Asia/Calcutta")}
    ev = Event(title="Paris", start="2026-12-08T15:00:00", end="2026-12-08T16:00:00", start_tz="Europe/Paris",
               end_tz="Europe/Paris")
    (res,) = conn.create_many([WriteRequest(key="k", content=ev)])
    stored = state.calendar.event(res.record.external_id)
    assert stored["originalStartTimeZone"] == "Romance Standard Time"
    assert stored["start"] == {"dateTime": "2026-12-08T14:00:00.0000000", "timeZone": "UTC"}
    assert (res.record.content.start, res.record.content.start_tz) == ("2026-12-08T15:00:00", "Europe/Paris")


def test_an_unknown_zone_name_quarantines_that_event_only(graph, conn):
    state, _ = graph
    ids = state.calendar.seed([_single("Custom", "2026-12-03"), _single("Fine", "2026-12-04")])
    with state.lock:  # what Outlook desktop writes for a zone it defined itself
        state.calendar.user().items[ids[0]].start.label = "Customized Time Zone"
    records = {r.external_id: r for r in _round(conn, None)[0]}
    assert records[ids[0]].content is None and records[ids[0]].problems
    assert "Custom" not in " ".join(records[ids[0]].problems)
    assert records[ids[1]].content.title == "Fine"


# --------------------------------------------------------------------------- writing


def test_a_series_with_moved_edited_and_cancelled_instances_round_trips_through_create_and_read(graph, conn):
    state, base = graph
    master = Event(title="Planning", start="2026-12-02T10:00:00", end="2026-12-02T11:00:00", start_tz="Europe/Paris",
                   end_tz="Europe/Paris", rrule="FREQ=WEEKLY;INTERVAL=2;BYDAY=WE;WKST=SU;COUNT=5",
                   attendees=("ann@example.test",), organizer=DEFAULT_USER)
    (made,) = conn.create_many([WriteRequest(key="m", content=master, marker="mk-1")])
    assert made.error is None
    uid = made.record.content.uid
    moved = master.model_copy(update={"uid": uid, "recurrence_id": "20261216T090000Z", "rrule": "",
                                      "start": "2026-12-17T15:00:00", "end": "2026-12-17T16:00:00"})
    edited = master.model_copy(update={"uid": uid, "recurrence_id": "20261230T090000Z", "rrule": "",
                                       "title": "Planning (long)", "start": "2026-12-30T10:00:00",
                                       "end": "2026-12-30T12:00:00"})
    cancelled = master.model_copy(update={"uid": uid, "recurrence_id": "20270113T090000Z", "rrule": "",
                                          "status": "cancelled", "start": "2027-01-13T10:00:00",
                                          "end": "2027-01-13T11:00:00"})
    results = conn.create_many([WriteRequest(key=k, content=e) for k, e in
                                (("a", moved), ("b", edited), ("c", cancelled))])
    assert [r.error for r in results] == [None, None, None]
    assert results[2].record.external_id.endswith(CANCELLED + "20270113T090000Z")

    fresh = _conn(base)
    records, _ = _round(fresh, None)
    got = {(r.content.uid, r.content.recurrence_id): r.content for r in records}
    assert set(got) == {(uid, ""), (uid, "20261216T090000Z"), (uid, "20261230T090000Z"), (uid, "20270113T090000Z")}
    assert got[(uid, "")].rrule == master.rrule
    assert got[(uid, "")].attendees == ("ann@example.test",)
    for want in (moved, edited):
        have = got[(uid, want.recurrence_id)]
        assert (have.start, have.end, have.start_tz, have.title) == (want.start, want.end, want.start_tz, want.title)
    assert got[(uid, "20270113T090000Z")].status == "cancelled"
    # writing an exception again (a retried activity) changes nothing
    (again,) = conn.create_many([WriteRequest(key="a2", content=moved)])
    assert again.error is None and again.record.content.start == moved.start
    assert {(r.content.uid, r.content.recurrence_id) for r in _round(_conn(base), None)[0]} == set(got)


def test_exdates_of_a_new_series_become_cancelled_instances(graph, conn):
    _, base = graph
    ev = Event(title="Gym", start="2026-12-01T07:00:00", end="2026-12-01T08:00:00", start_tz="Europe/Paris",
               end_tz="Europe/Paris", rrule="FREQ=DAILY;COUNT=5", exdates=("20261203T060000Z",))
    (res,) = conn.create_many([WriteRequest(key="g", content=ev)])
    assert res.error is None
    recs = _round(_conn(base), None)[0]
    assert {r.content.recurrence_id: r.content.status for r in recs} == {"": "confirmed", "20261203T060000Z": "cancelled"}


def test_stale_etag_is_precondition_failed_and_a_fresh_one_writes(graph, conn):
    state, _ = graph
    (eid,) = state.calendar.seed([_single("Lunch", "2026-12-03")])
    rec = conn.get(eid)
    state.calendar.user_edit(eid, {"subject": "Lunch (moved room)"})
    (res,) = conn.update_many([WriteRequest(key="u", external_id=eid, etag=rec.etag,
                                            content=rec.content.model_copy(update={"title": "Ours"}))])
    assert isinstance(res.error, PreconditionFailed)
    assert state.calendar.event(eid)["subject"] == "Lunch (moved room)"
    now = conn.get(eid)
    (res,) = conn.update_many([WriteRequest(key="u2", external_id=eid, etag=now.etag,
                                            content=now.content.model_copy(update={"title": "Ours"}))])
    assert res.error is None and res.record.content.title == "Ours"
    (res,) = conn.delete_many([WriteRequest(key="d", external_id=eid, etag=rec.etag)])
    assert isinstance(res.error, PreconditionFailed)
    (res,) = conn.delete_many([WriteRequest(key="d2", external_id=eid, etag=res.error and conn.get(eid).etag)])
    assert res.error is None and res.record.deleted
    (res,) = conn.delete_many([WriteRequest(key="d3", external_id=eid)])
    assert res.error is None and res.record.deleted  # already gone counts as deleted


def test_markers_find_created_events_again_by_filter_and_by_listing(graph, conn):
    evs = [Event(title=f"E{i}", start="2026-12-09T09:00:00", end="2026-12-09T10:00:00", start_tz="Europe/Paris")
           for i in range(25)]
    made = conn.create_many([WriteRequest(key=f"k{i}", content=e, marker=f"mark-{i}") for i, e in enumerate(evs)])
    assert all(r.error is None for r in made)
    few = conn.find_by_markers(["mark-3", "mark-7", "missing"])
    assert {m: r.content.title for m, r in few.items()} == {"mark-3": "E3", "mark-7": "E7"}
    many = conn.find_by_markers([f"mark-{i}" for i in range(25)] + ["absent"])
    assert len(many) == 25 and many["mark-24"].external_id == made[24].record.external_id
    assert conn.find_by_marker("nope") is None
    props = graph[0].calendar.user().items[made[0].record.external_id].data["singleValueExtendedProperties"]
    assert props == [{"id": MARKER_PROPERTY_ID, "value": "mark-0"}]


def test_what_graph_cannot_hold_is_refused_by_name_without_a_call(conn):
    base = Event(title="X", start="2026-12-09T09:00:00", end="2026-12-09T10:00:00", start_tz="Europe/Paris")
    cases = {
        "floating_time_unsupported": base.model_copy(update={"start_tz": ""}),
        "rdate_unsupported": base.model_copy(update={"rrule": "FREQ=DAILY", "rdates": ("20261220T080000Z",)}),
        "rrule_part_unsupported": base.model_copy(update={"rrule": "FREQ=DAILY;BYHOUR=9,15"}),
        "rrule_monthday_past_28": base.model_copy(update={"rrule": "FREQ=MONTHLY;BYMONTHDAY=30"}),
        "thisandfuture_unsupported": base.model_copy(update={"uid": "u1", "recurrence_id": "20261209T080000Z",
                                                             "range": "THISANDFUTURE"}),
    }
    before = conn.calls_made
    results = conn.create_many([WriteRequest(key=k, content=e) for k, e in cases.items()])
    assert [(type(r.error), r.error.rule) for r in results] == [(ValidationRejected, k) for k in cases]
    assert conn.calls_made == before
    assert all("X" not in r.error.message for r in results)


def test_throttling_is_rate_limited_with_retry_after(graph, conn):
    state, _ = graph
    state.calendar.seed([_single("Lunch", "2026-12-03")])
    state.inject_fault(429, count=1, retry_after=7, path="calendarView/delta")
    with pytest.raises(RateLimited) as err:
        conn.list_changes(None)
    assert err.value.retry_after == 7
    assert _round(conn, None)[0]  # the next try goes through
    ev = Event(title="Y", start="2026-12-09T09:00:00", end="2026-12-09T10:00:00", start_tz="Europe/Paris")
    # one item of a $batch throttled: that item alone fails, with its own Retry-After
    state.inject_fault(429, count=1, retry_after=3, method="POST", path="^/me/events$", where="batch_item")
    res = conn.create_many([WriteRequest(key=f"y{i}", content=ev) for i in range(3)])
    assert [isinstance(r.error, RateLimited) for r in res].count(True) == 1
    assert next(r.error.retry_after for r in res if r.error) == 3
    # the whole $batch call throttled: every item in it gets the error
    state.inject_fault(429, count=1, retry_after=5, method="POST", path="batch")
    res = conn.create_many([WriteRequest(key=f"z{i}", content=ev) for i in range(2)])
    assert all(isinstance(r.error, RateLimited) and r.error.retry_after == 5 for r in res)


# --------------------------------------------------------------------------- several users


def test_a_meeting_in_two_calendars_has_one_uid_and_each_copy_its_owner_answer(graph):
    state, base = graph
    cal = state.calendar
    cal.add_user("bob@contoso.example", token="bob-token")
    (mid,) = cal.seed([_single("Kickoff", "2026-12-09", attendees=[{"emailAddress": {"address": "carol@x.test"}}])])
    copies = cal.invite(mid, ["bob@contoso.example"])
    cal.respond("bob@contoso.example", copies["bob@contoso.example"], "tentativelyAccepted")
    mine = _round(_conn(base, address=DEFAULT_USER), None)[0]
    bobs = _round(_conn(base, token="bob-token", address="bob@contoso.example"), None)[0]
    assert [r.content.uid for r in mine] == [r.content.uid for r in bobs]
    assert bobs[0].external_id != mine[0].external_id
    assert bobs[0].content.response_of("bob@contoso.example") == "tentative"
    assert mine[0].content.response_of("bob@contoso.example") == "tentative"
    assert mine[0].content.response_of("carol@x.test") == "needsAction"
    assert bobs[0].content.organizer == DEFAULT_USER
    cal.organizer_cancel(mine[0].content.uid)
    assert _round(_conn(base, token="bob-token"), None)[0][0].content.status == "cancelled"


# --------------------------------------------------------------------------- subscriptions


def test_subscription_on_events_is_notified_of_changes(graph, conn):
    state, _ = graph
    notes: list[dict] = []
    got = threading.Event()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        if "validationToken" in request.query_params:
            return PlainTextResponse(request.query_params["validationToken"])
        notes.extend((await request.json())["value"])
        got.set()
        return Response(status_code=202)

    server = serve(app)
    try:
        sub = conn.create_subscription(server.base_url + "hook", "secret-state")
        assert sub["resource"] == "me/events"
        (eid,) = state.calendar.seed([_single("Lunch", "2026-12-03")])
        state.calendar.user_edit(eid, {"subject": "Lunch 2"})
        assert got.wait(5)
        assert notes[0]["clientState"] == "secret-state" and notes[0]["resourceData"]["id"] == eid
        conn.delete_subscription(sub["id"])
    finally:
        server.stop()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("method,path,body,params", [
    ("POST", "/me/events", {"subject": "x", "colour": "red"}, None),
    ("POST", "/me/events", {"subject": "x", "start": _when("2026-12-01T09:00:00", "Mars Standard Time"),
                            "end": _when("2026-12-01T10:00:00")}, None),
    ("POST", "/me/events", {"subject": "x", "start": _when("2026-12-01T09:00:00"), "end": _when("2026-12-01T08:00:00")},
     None),
    ("POST", "/me/events", {"subject": "x", "start": _when("2026-12-01T09:00:00"), "end": _when("2026-12-01T10:00:00"),
                            "recurrence": {"pattern": {"type": "hourly"}, "range": {}}}, None),
    ("POST", "/me/events", {"subject": "x", "start": _when("yesterday"), "end": _when("2026-12-01T10:00:00")}, None),
    ("POST", "/me/events", {"subject": "x", "isAllDay": True, "start": _when("2026-12-01T09:00:00"),
                            "end": _when("2026-12-02T00:00:00")}, None),
    ("POST", "/me/events", {"subject": ["x"], "start": _when("2026-12-01T09:00:00"), "end": _when("2026-12-01T10:00:00")},
     None),
    ("POST", "/me/events", [1, 2], None),
    ("POST", "/me/events", {"attendees": [{"emailAddress": {}}]}, None),
    ("GET", "/me/calendarView/delta", None, None),
    ("GET", "/me/calendarView/delta", None, {"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2026-11-01T00:00:00Z"}),
    ("GET", "/me/calendarView/delta", None, {"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2027-01-01T00:00:00Z",
                                             "$filter": "subject eq 'x'"}),
    ("GET", "/me/events", None, {"$filter": "subject eq 'x'"}),
    ("GET", "/me/events", None, {"$top": "many"}),
])
def test_bad_input_is_400_with_a_graph_error_body(graph, method, path, body, params):
    _, base = graph
    with httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        resp = c.request(method, path, json=body, params=params)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"]


def test_bad_patches_and_unknown_ids_never_500(graph):
    state, base = graph
    (eid,) = state.calendar.seed([_single("Lunch", "2026-12-03")])
    (mid,) = state.calendar.seed([_weekly()])
    with httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        assert c.patch(f"/me/events/{eid}", json="text").status_code == 400
        assert c.patch(f"/me/events/{eid}", json={"showAs": "maybe"}).status_code == 400
        assert c.patch(f"/me/events/{eid}", json={"isAllDay": True}).status_code == 400
        assert c.get(f"/me/events/{mid}/instances").status_code == 400
        assert c.get(f"/me/events/{eid}/instances",
                     params={"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2027-01-01T00:00:00Z"}).status_code == 400
        assert c.get("/me/events/AAMkAGoccnot-base64!").status_code == 404
        assert c.delete("/me/events/nope").status_code == 404
        assert c.post("/me/events", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
        assert c.get("/users/nobody@x.test/events").status_code == 404


def test_admin_routes_steer_calendars_over_http(graph):
    state, base = graph
    with httpx.Client(base_url=base.rstrip("/")) as admin:
        assert admin.post("/_emulator/calendar/users", json={"address": "dan@contoso.example", "token": "dan-token"}
                          ).status_code == 200
        (eid,) = admin.post("/_emulator/calendar/seed", json={"events": [_single("Sync", "2026-12-03")]}).json()["ids"]
        copies = admin.post(f"/_emulator/calendar/events/{eid}/invite",
                            json={"attendees": ["dan@contoso.example"]}).json()["copies"]
        dan_copy = copies["dan@contoso.example"]
        assert admin.post(f"/_emulator/calendar/events/{dan_copy}/respond",
                          json={"user": "dan@contoso.example", "response": "declined"}).json() == {"ok": True}
        assert admin.post(f"/_emulator/calendar/events/{eid}/edit", json={"changes": {"subject": "Sync!"}}).status_code == 200
        dans = _conn(base, token="dan-token", address="dan@contoso.example")
        (rec,), cursor = _round(dans, None)
        assert (rec.content.title, rec.content.response_of("dan@contoso.example")) == ("Sync", "declined")
        assert admin.post("/_emulator/expire-delta", json={"status": 410}).json()["expired"] >= 1
        with pytest.raises(CursorExpired):
            dans.list_changes(cursor)
        # bad admin input is a 400, not a crash
        assert admin.post("/_emulator/calendar/seed", content=b"[1]").status_code == 400
        assert admin.post("/_emulator/calendar/seed", json={"events": [{"subject": "no times"}]}).status_code == 400
        assert admin.post("/_emulator/calendar/events/nope/edit", json={"changes": {}}).status_code == 400
        assert admin.post(f"/_emulator/calendar/events/{eid}/respond", json={"user": DEFAULT_USER,
                                                                            "response": "maybe"}).status_code == 400


def test_a_lone_surrogate_in_a_title_is_stored_and_served_escaped(graph, conn):
    _, base = graph
    raw = ('{"subject": "A\\ud800B", "start": {"dateTime": "2026-12-03T09:00:00", "timeZone": "UTC"},'
           ' "end": {"dateTime": "2026-12-03T10:00:00", "timeZone": "UTC"}}')
    with httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        resp = c.post("/me/events", content=raw.encode("ascii"), headers={"Content-Type": "application/json"})
        assert resp.status_code == 201 and "\\ud800" in resp.text
    (rec,) = _round(conn, None)[0]
    assert rec.content.title == "A\ud800B"


def test_a_series_across_a_dst_change_keeps_its_wall_clock_and_keys_instances_in_utc(graph, conn):
    state, _ = graph
    cal = state.calendar
    (mid,) = cal.seed([{"subject": "Spring", "start": _when("2027-03-15T09:00:00"), "end": _when("2027-03-15T10:00:00"),
                        "recurrence": {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                                       "range": {"type": "endDate", "startDate": "2027-03-15",
                                                 "endDate": "2027-03-29"}}}])
    inst = cal.instances(mid, datetime(2027, 3, 1, tzinfo=timezone.utc), datetime(2027, 4, 30, tzinfo=timezone.utc))
    assert [i["originalStart"] for i in inst] == ["2027-03-15T08:00:00Z", "2027-03-22T08:00:00Z", "2027-03-29T07:00:00Z"]
    cal.user_delete(inst[2]["id"])  # after the clocks went forward: 09:00 Paris is 07:00 UTC
    records = _round(conn, None)[0]
    got = {r.content.recurrence_id: r.content for r in records}
    assert set(got) == {"", "20270329T070000Z"}
    assert got[""].rrule == "FREQ=WEEKLY;BYDAY=MO;WKST=SU;UNTIL=20270329T070000Z"
    assert (got["20270329T070000Z"].status, got["20270329T070000Z"].start) == ("cancelled", "2027-03-29T09:00:00")


def test_an_attendee_copy_writes_only_its_owners_answer(graph):
    state, base = graph
    cal = state.calendar
    cal.add_user("erin@contoso.example", token="erin-token")
    (mid,) = cal.seed([_single("Board", "2026-12-10")])
    copy_id = cal.invite(mid, ["erin@contoso.example"])["erin@contoso.example"]
    erin = _conn(base, token="erin-token", address="erin@contoso.example")
    rec = erin.get(copy_id)
    assert rec.content.response_of("erin@contoso.example") == "needsAction"
    wanted = rec.content.with_response("erin@contoso.example", "accepted").model_copy(update={"title": "Mine now"})
    (res,) = erin.update_many([WriteRequest(key="r", external_id=copy_id, etag=rec.etag, content=wanted)])
    assert res.error is None
    assert res.record.content.response_of("erin@contoso.example") == "accepted"
    assert res.record.content.title == "Board"  # the attendee's copy pushes no content
    organizer_view = _conn(base, address=DEFAULT_USER).get(mid).content
    assert organizer_view.response_of("erin@contoso.example") == "accepted"
    with httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        assert c.post(f"/me/events/{mid}/accept", json={}).status_code == 400  # the organizer cannot answer


@pytest.mark.parametrize("page_size", [2, 50])  # its series read on an earlier page of the round, or the same
def test_an_exception_moved_out_of_the_window_is_reported_where_it_went_not_as_cancelled(graph, page_size):
    state, base = graph
    conn = _conn(base, page_size=page_size)
    cal = state.calendar
    master_id, master = _series_with_changes(state)
    _, cursor = _round(conn, None)
    inst = cal.instances(master_id, datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 2, 1, tzinfo=timezone.utc))
    moved = next(i for i in inst if i["type"] == "exception" and i["originalStart"] == "2026-12-14T08:00:00Z")
    cal.user_edit(moved["id"], {"start": _when("2027-08-02T09:00:00"), "end": _when("2027-08-02T09:30:00")})
    records, _ = _round(conn, cursor)
    final = {r.external_id: r for r in records}  # the caller keeps the last state of each id
    got = {r.content.recurrence_id: r.content for r in final.values() if r.content}
    assert not final.get(f"{master_id}{CANCELLED}20261214T080000Z") or final[
        f"{master_id}{CANCELLED}20261214T080000Z"].deleted
    assert got["20261214T080000Z"].status == "confirmed"
    assert got["20261214T080000Z"].start == "2027-08-02T09:00:00"
    assert got["20261228T080000Z"].status == "cancelled"  # the really cancelled one stays so


def test_replays_and_empty_pages_inside_a_round_change_nothing(graph, conn):
    state, base = graph
    state.calendar.seed([_single(f"Call {i}", f"2026-12-{i + 2:02d}") for i in range(6)])
    _series_with_changes(state)
    clean = _round(_conn(base), None)[0]
    state.delta_replays, state.delta_empty_pages = 4, 2
    noisy = _round(conn, None)[0]
    assert {r.external_id: r.content for r in noisy} == {r.external_id: r.content for r in clean}


def test_batched_writes_land_in_the_calendar_of_the_token_that_sent_them(graph):
    state, base = graph
    state.calendar.add_user("fay@contoso.example", token="fay-token")
    fay = _conn(base, token="fay-token", address="fay@contoso.example")
    ev = Event(title="Fay's", start="2026-12-09T09:00:00", end="2026-12-09T10:00:00", start_tz="Europe/Paris")
    (res,) = fay.create_many([WriteRequest(key="f", content=ev)])
    assert res.error is None
    assert res.record.external_id in state.calendar.user("fay@contoso.example").items
    assert not state.calendar.user().items



def test_a_full_listing_also_lists_events_outside_the_window_once(graph, conn):
    state, _ = graph
    cal = state.calendar
    near, far = cal.seed([_single("Near", "2026-12-03"), _single("Far", "2028-06-01")])
    (far_series,) = cal.seed([dict(_weekly("Far series"), start=_when("2028-01-03T09:00:00"),
                                   end=_when("2028-01-03T09:30:00"),
                                   recurrence={"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                                               "range": {"type": "noEnd", "startDate": "2028-01-03"}})])
    _series_with_changes(state)
    records, cursor = _round(conn, None)
    ids = [r.external_id for r in records]
    assert len(ids) == len(set(ids))  # nothing listed twice
    assert {near, far, far_series} <= set(ids)
    # a delta round does not watch outside the window: the next full listing brings the change
    cal.user_edit(far, {"subject": "Far, renamed"})
    assert _round(conn, cursor)[0] == []
    assert {r.external_id: r.content.title for r in _round(conn, None)[0]}[far] == "Far, renamed"


def test_users_paths_name_a_calendar_and_its_links_keep_naming_it(graph):
    state, base = graph
    state.calendar.add_user("gus@contoso.example")
    state.calendar.seed([_single(f"G{i}", f"2026-12-0{i + 1}") for i in range(3)], user="gus@contoso.example")
    state.calendar.seed([_single("Default user's", "2026-12-02")])
    with httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}",
                                                                     "Prefer": "odata.maxpagesize=2"}) as c:
        body = c.get("/users/gus@contoso.example/calendarView/delta",
                     params={"startDateTime": "2026-11-01T00:00:00Z", "endDateTime": "2027-01-01T00:00:00Z"}).json()
        subjects = [v["subject"] for v in body["value"]]
        assert "/users/gus@contoso.example/calendarView/delta?$skiptoken=" in body["@odata.nextLink"]
        subjects += [v["subject"] for v in c.get(body["@odata.nextLink"]).json()["value"]]
    assert subjects == ["G0", "G1", "G2"]
