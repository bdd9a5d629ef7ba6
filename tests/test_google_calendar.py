"""The Google Calendar connector against the Calendar emulator on a real port.

Everything goes through google-api-python-client (discovery, batch, errors) as
against Google; only the endpoint differs (`api_endpoint` = `.../calendar/v3/`).
These tests pin what a calendar connector is judged on: a sync-token delta, a 410
resync without duplicates, series with moved, edited and cancelled instances that
come back as they were written, all-day dates, etags, markers, push channels, and an
emulator that answers bad input with 400s.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from hypothesis import given, settings, strategies as st

from connectors.google_calendar import (GoogleCalendar, read_recurrence, read_time, write_recurrence,
                                        write_time)
from connectors.protocols import WriteRequest
from emulators.google_calendar import CalendarState, create_app
from emulators.server import serve
from models.errors import CursorExpired, PreconditionFailed
from models.event import Event, instance_key

USER = "me@acme.example"
OTHER = "bob@acme.example"
TZ = "Europe/Paris"


@pytest.fixture
def emu():
    state = CalendarState(default_user=USER, time_zone=TZ)
    state.add_token("bob-token", OTHER)
    server = serve(create_app(state))
    yield state, server.base_url
    server.stop()


def connector(base: str, token: str = "emulator-token", **kw) -> GoogleCalendar:
    # a fresh account per connector: nothing cached by an earlier one helps it
    return GoogleCalendar.for_emulator(base + "calendar/v3/", token=token, account=uuid.uuid4().hex, **kw)


def raw_client(base: str, token: str = "emulator-token"):
    return build("calendar", "v3", credentials=Credentials(token=token), static_discovery=True,
                 cache_discovery=False, client_options={"api_endpoint": base + "calendar/v3/"})


def drain(cal: GoogleCalendar, cursor: str | None):
    records, page = [], None
    while True:
        result = cal.list_changes(cursor, page)
        records.extend(result.records)
        if result.next_page is None:
            return records, result.cursor
        page = result.next_page


def timed(summary: str, day: int, hour: int = 9, **extra) -> dict:
    start = datetime(2026, 12, day, hour, tzinfo=ZoneInfo(TZ))
    return {"summary": summary, "start": {"dateTime": start.isoformat(), "timeZone": TZ},
            "end": {"dateTime": (start + timedelta(hours=1)).isoformat(), "timeZone": TZ}, **extra}


def by_key(records):
    return {r.content.key: r for r in records if r.content is not None}


def create(cal: GoogleCalendar, *events: Event, markers=None):
    results = cal.create_many([WriteRequest(key=f"k{i}", content=e, marker=(markers or {}).get(i))
                               for i, e in enumerate(events)])
    assert [r.error for r in results] == [None] * len(events)
    return [r.record for r in results]


# ---- delta -----------------------------------------------------------------------------------------


def test_full_listing_then_delta_reports_only_what_changed(emu):
    state, base = emu
    ids = [state.put_event(USER, timed(f"meeting {d}", d))["id"] for d in range(1, 6)]
    cal = connector(base, page_size=2)
    first, cursor = drain(cal, None)
    assert sorted(r.external_id for r in first) == sorted(ids)
    assert cal.calls_made == 3  # 5 events, pages of 2
    assert first[0].content.start_tz == TZ and first[0].content.start.endswith("T09:00:00")

    svc = raw_client(base)
    svc.events().patch(calendarId="primary", eventId=ids[1], body={"summary": "renamed"}).execute()
    svc.events().delete(calendarId="primary", eventId=ids[3]).execute()
    before = cal.calls_made
    delta, cursor2 = drain(cal, cursor)
    assert cal.calls_made - before == 1
    assert {r.external_id: (r.deleted, r.content.title if r.content else None) for r in delta} == {
        ids[1]: (False, "renamed"), ids[3]: (True, None)}
    again, _ = drain(cal, cursor2)
    assert again == []


def test_expired_token_is_cursor_expired_and_a_resync_has_no_duplicates(emu):
    state, base = emu
    cal = connector(base, page_size=3)
    master, = create(cal, Event(title="weekly", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00",
                                start_tz=TZ, end_tz=TZ, rrule="FREQ=WEEKLY;COUNT=6", organizer=USER))
    uid = master.content.uid
    moved = Event(uid=uid, recurrence_id=instance_key(datetime(2026, 12, 14, 9, tzinfo=ZoneInfo(TZ))),
                  title="weekly", start="2026-12-14T11:00:00", end="2026-12-14T12:00:00", start_tz=TZ, end_tz=TZ,
                  organizer=USER)
    create(cal, moved)
    for d in (2, 3, 4):
        state.put_event(USER, timed(f"single {d}", d))
    first, cursor = drain(cal, None)
    state.expire_sync_tokens(USER)
    with pytest.raises(CursorExpired):
        cal.list_changes(cursor)
    resync, new_cursor = drain(cal, None)
    keys = [r.content.key for r in resync]
    assert len(keys) == len(set(keys)) == len(first) == 5
    assert set(keys) == {r.content.key for r in first}
    assert {r.external_id for r in resync} == {r.external_id for r in first}
    assert drain(cal, new_cursor)[0] == []


# ---- series --------------------------------------------------------------------------------------------


def test_series_with_moved_edited_and_cancelled_instances_round_trips(emu):
    state, base = emu
    cal = connector(base)
    paris = ZoneInfo(TZ)
    exdate = instance_key(datetime(2027, 1, 4, 9, tzinfo=paris))
    master = Event(title="standup", description="daily notes", location="room 1", organizer=USER,
                   start="2026-12-07T09:00:00", end="2026-12-07T09:30:00", start_tz=TZ, end_tz=TZ,
                   rrule="FREQ=WEEKLY;BYDAY=MO;UNTIL=20270301T000000Z", exdates=(exdate,),
                   attendees=(USER, OTHER), responses=(f"{USER}=accepted", f"{OTHER}=tentative"),
                   transparency="transparent", visibility="private")
    rec, = create(cal, master)
    uid = rec.content.uid
    assert rec.content == master.model_copy(update={"uid": uid})

    def key(day: int, month: int = 12, year: int = 2026) -> str:
        return instance_key(datetime(year, month, day, 9, tzinfo=paris))

    moved = master.model_copy(update={"uid": uid, "recurrence_id": key(14), "rrule": "", "exdates": (),
                                      "start": "2026-12-15T14:00:00", "end": "2026-12-15T14:30:00"})
    edited = master.model_copy(update={"uid": uid, "recurrence_id": key(21), "rrule": "", "exdates": (),
                                       "title": "standup (retro)", "start": "2026-12-21T09:00:00",
                                       "end": "2026-12-21T09:30:00"})
    cancelled = Event(uid=uid, recurrence_id=key(28), status="cancelled")
    written = create(cal, moved, edited, cancelled)
    assert [r.content for r in written] == [moved, edited, cancelled]

    listed, _ = drain(connector(base), None)
    got = by_key(listed)
    assert set(got) == {master.model_copy(update={"uid": uid}).key, moved.key, edited.key, cancelled.key}
    assert got[f"{uid}|"].content == master.model_copy(update={"uid": uid})
    assert got[moved.key].content == moved
    assert got[edited.key].content == edited
    assert got[cancelled.key].content == cancelled
    assert got[cancelled.key].external_id == f"{rec.external_id}_{key(28)}"

    # on the wire: Google's shapes
    items = raw_client(base).events().list(calendarId="primary").execute()["items"]
    wire = {i["id"]: i for i in items}
    assert set(wire[f"{rec.external_id}_{key(28)}"]) <= {"kind", "etag", "id", "status", "recurringEventId",
                                                         "originalStartTime"}
    assert wire[rec.external_id]["iCalUID"] == f"{rec.external_id}@google.com"
    assert "EXDATE;TZID=Europe/Paris:20270104T090000" in wire[rec.external_id]["recurrence"]
    assert wire[f"{rec.external_id}_{key(14)}"]["originalStartTime"]["timeZone"] == TZ


def test_cancelled_instance_in_a_delta_gets_its_series_uid_with_one_batched_get(emu):
    state, base = emu
    master = state.put_event(USER, {**timed("series", 7), "recurrence": ["RRULE:FREQ=DAILY;COUNT=10"],
                                    "iCalUID": "imported-123@example.org"})
    cal = connector(base)
    _, cursor = drain(cal, None)
    svc = raw_client(base)
    for day in (8, 9):
        iid = f"{master['id']}_{instance_key(datetime(2026, 12, day, 9, tzinfo=ZoneInfo(TZ)))}"
        svc.events().delete(calendarId="primary", eventId=iid).execute()
    fresh = connector(base)  # knows nothing of the master
    delta, _ = drain(fresh, cursor)
    assert {(r.content.uid, r.content.status) for r in delta} == {("imported-123@example.org", "cancelled")}
    assert len(delta) == 2
    assert fresh.calls_made == 2  # the list, then one get of the master for both instances

    svc.events().delete(calendarId="primary", eventId=master["id"]).execute()
    gone, _ = drain(fresh, cursor)
    assert all(r.deleted for r in gone) and {r.external_id for r in gone} >= {master["id"]}


def test_all_day_events_and_series_keep_their_dates(emu):
    _, base = emu
    cal = connector(base)
    single = Event(title="offsite", start="2026-12-10", end="2026-12-12", organizer=USER)
    series = Event(title="payday", start="2026-12-01", end="2026-12-02", rrule="FREQ=MONTHLY;COUNT=12",
                   exdates=("20270201",), rdates=("20261224",), organizer=USER)
    recs = create(cal, single, series)
    exception = Event(uid=recs[1].content.uid, recurrence_id="20270301", title="payday (moved)",
                      start="2027-03-02", end="2027-03-03", organizer=USER)
    create(cal, exception)
    got = by_key(drain(connector(base), None)[0])
    assert got[f"{recs[0].content.uid}|"].content == single.model_copy(update={"uid": recs[0].content.uid})
    assert got[f"{recs[1].content.uid}|"].content == series.model_copy(update={"uid": recs[1].content.uid})
    assert got[exception.key].content == exception
    assert got[exception.key].external_id == f"{recs[1].external_id}_20270301"


# ---- concurrency, markers ---------------------------------------------------------------------------------


def test_stale_etag_is_precondition_failed_and_a_fresh_one_writes(emu):
    _, base = emu
    cal = connector(base)
    rec, = create(cal, Event(title="a", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00", start_tz=TZ,
                             organizer=USER))
    raw_client(base).events().patch(calendarId="primary", eventId=rec.external_id, body={"location": "x"}).execute()
    edit = rec.content.model_copy(update={"title": "b"})
    stale = cal.update_many([WriteRequest(key="u", content=edit, external_id=rec.external_id, etag=rec.etag)])
    assert isinstance(stale[0].error, PreconditionFailed)
    gone = cal.delete_many([WriteRequest(key="d", external_id=rec.external_id, etag=rec.etag)])
    assert isinstance(gone[0].error, PreconditionFailed)
    current = cal.get(rec.external_id)
    assert current.content.title == "a" and current.content.location == "x"
    ok = cal.update_many([WriteRequest(key="u", content=edit, external_id=rec.external_id, etag=current.etag)])
    assert ok[0].error is None and ok[0].record.content.title == "b" and ok[0].record.etag != current.etag
    deleted = cal.delete_many([WriteRequest(key="d", external_id=rec.external_id, etag=ok[0].record.etag)])
    assert deleted[0].error is None and deleted[0].record.deleted
    again = cal.delete_many([WriteRequest(key="d", external_id=rec.external_id)])
    assert again[0].error is None and again[0].record.deleted
    assert cal.get(rec.external_id).deleted


def test_markers_find_a_create_whose_answer_was_lost(emu):
    _, base = emu
    cal = connector(base)
    ev = Event(title="from the platform", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00", start_tz=TZ,
               organizer=USER)
    rec, = create(cal, ev, markers={0: "act-1"})
    create(cal, ev.model_copy(update={"title": "other"}), markers={0: "act-2"})
    after_crash = connector(base)
    found = after_crash.find_by_markers(["act-1", "act-3", "act-2"])
    assert set(found) == {"act-1", "act-2"}
    assert found["act-1"].external_id == rec.external_id and found["act-1"].content.title == "from the platform"
    assert after_crash.calls_made == 1  # all markers in one batch call


def test_writes_are_batched(emu):
    state, base = emu
    cal = connector(base)
    events = [Event(title=f"e{i}", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00", start_tz=TZ,
                    organizer=USER) for i in range(60)]
    recs = create(cal, *events)
    assert cal.calls_made == 2  # 50 + 10
    assert len({r.external_id for r in recs}) == 60
    results = cal.delete_many([WriteRequest(key=str(i), external_id=r.external_id) for i, r in enumerate(recs)])
    assert all(r.error is None for r in results) and cal.calls_made == 4
    assert state.stats()["events"][USER] == 0


# ---- invitations ----------------------------------------------------------------------------------------------


def test_an_invitation_is_the_same_uid_in_both_calendars_and_an_answer_reaches_the_organizer(emu):
    state, base = emu
    state.calendar(OTHER, TZ)
    copies = state.invite(USER, timed("planning", 9, attendees=[{"email": USER, "responseStatus": "accepted"},
                                                                {"email": OTHER}]))
    assert copies[USER]["iCalUID"] == copies[OTHER]["iCalUID"]
    assert copies[USER]["id"] != copies[OTHER]["id"]
    assert copies[OTHER]["organizer"] == {"email": USER}
    assert [a.get("self") for a in copies[OTHER]["attendees"] if a["email"] == OTHER] == [True]

    bob = connector(base, token="bob-token")
    mine = drain(bob, None)[0]
    assert len(mine) == 1 and mine[0].content.organizer == USER
    answer = mine[0].content.with_response(OTHER, "accepted")
    res = bob.update_many([WriteRequest(key="a", content=answer, external_id=mine[0].external_id,
                                        etag=mine[0].etag)])
    assert res[0].error is None
    organizer_view = drain(connector(base), None)[0]
    assert organizer_view[0].content.response_of(OTHER) == "accepted"
    assert organizer_view[0].content.uid == mine[0].content.uid


# ---- push -------------------------------------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_watch_posts_sync_then_exists_with_the_channel_headers_and_stop_ends_it(emu):
    state, base = emu
    received: list[dict] = []
    lock = threading.Lock()
    receiver = FastAPI()

    @receiver.post("/webhooks/calendar")
    async def hook(request: Request) -> Response:
        with lock:
            received.append({k.lower(): v for k, v in request.headers.items()})
        return Response(status_code=200)

    server = serve(receiver)
    try:
        cal = connector(base)
        sub = cal.create_subscription(server.base_url + "webhooks/calendar", "s3cret", minutes=60)
        assert sub["id"] and sub["resource"] and sub["expirationDateTime"].endswith("Z")
        first = wait_for(lambda: list(received))
        assert first[0]["x-goog-resource-state"] == "sync"
        assert first[0]["x-goog-channel-id"] == sub["id"]
        assert first[0]["x-goog-channel-token"] == "s3cret"
        assert first[0]["x-goog-resource-id"] == sub["resource"]
        assert first[0]["x-goog-message-number"] == "1"
        state.put_event(USER, timed("new", 3))
        second = wait_for(lambda: received[1:])
        assert second[0]["x-goog-resource-state"] == "exists"
        assert second[0]["x-goog-message-number"] == "2"
        assert second[0]["x-goog-channel-id"] == sub["id"]

        cal.stop_channel(sub["id"], sub["resource"])
        sent = len(state.notifications)
        state.put_event(USER, timed("after stop", 4))
        assert len(state.notifications) == sent  # recorded at send time: no message was queued
        cal.stop_channel(sub["id"], sub["resource"])  # stopping twice is fine
    finally:
        server.stop()


# ---- the emulator refuses bad input with 400s ---------------------------------------------------------------------


@pytest.mark.parametrize("method,path,params,body", [
    ("POST", "calendars/primary/events", {}, b"{not json"),
    ("POST", "calendars/primary/events", {}, b'{"summary": "no times"}'),
    ("POST", "calendars/primary/events", {}, b'{"start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "Mars/Base"},'
                                             b' "end": {"dateTime": "2026-12-07T10:00:00", "timeZone": "UTC"}}'),
    ("POST", "calendars/primary/events", {}, b'{"start": {"date": "2026-12-08"}, "end": {"date": "2026-12-07"}}'),
    ("POST", "calendars/primary/events", {}, b'{"start": {"date": "2026-12-07"}, "end": {"date": "2026-12-08"},'
                                             b' "recurrence": ["RRULE:FREQ=SOMETIMES"]}'),
    ("POST", "calendars/primary/events", {}, b'{"start": {"date": "2026-12-07"}, "end": {"date": "2026-12-08"},'
                                             b' "attendees": [{"email": 5}]}'),
    ("POST", "calendars/primary/events", {}, b'[1, 2]'),
    ("POST", "calendars/primary/events", {}, b'{"id": "UPPER_case!", "start": {"date": "2026-12-07"},'
                                             b' "end": {"date": "2026-12-08"}}'),
    ("GET", "calendars/primary/events", {"maxResults": "abc"}, b""),
    ("GET", "calendars/primary/events", {"pageToken": "garbage"}, b""),
    ("GET", "calendars/primary/events", {"syncToken": "x", "timeMin": "2026-01-01T00:00:00Z"}, b""),
    ("GET", "calendars/primary/events", {"syncToken": "x", "privateExtendedProperty": "a=b"}, b""),
    ("GET", "calendars/primary/events", {"orderBy": "startTime"}, b""),
    ("GET", "calendars/primary/events", {"showDeleted": "maybe"}, b""),
    ("POST", "calendars/primary/events/watch", {}, b'{"id": "c1", "type": "carrier_pigeon", "address": "x"}'),
    ("POST", "channels/stop", {}, b'{"id": 1}'),
])
def test_bad_input_is_a_400_not_a_500(emu, method, path, params, body):
    _, base = emu
    r = httpx.request(method, base + "calendar/v3/" + path, params=params, content=body,
                      headers={"Authorization": "Bearer emulator-token", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["errors"][0]["reason"]


def test_sync_token_rules_on_the_wire(emu):
    state, base = emu
    svc = raw_client(base)
    page = svc.events().list(calendarId="primary", maxResults=5000).execute()
    assert "nextSyncToken" in page and "nextPageToken" not in page
    state.expire_sync_tokens()
    r = httpx.get(base + "calendar/v3/calendars/primary/events", params={"syncToken": page["nextSyncToken"]},
                  headers={"Authorization": "Bearer emulator-token"})
    assert r.status_code == 410
    assert r.json()["error"]["errors"][0] == {"domain": "calendar", "reason": "fullSyncRequired",
                                              "message": r.json()["error"]["message"]}


# ---- translation (pure) ------------------------------------------------------------------------------------------

ZONES = st.sampled_from(["Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"])
WALL = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)).map(
    lambda d: d.replace(microsecond=0))


@settings(max_examples=150, deadline=None)
@given(wall=WALL, tz=ZONES)
def test_time_written_then_read_keeps_wall_clock_and_zone(wall, tz):
    # a wall clock that does not exist (DST gap) or exists twice is written as Python
    # resolves it (fold=0); reading gives back the same instant
    written = write_time(wall.isoformat(), tz, "UTC")
    text, zone_name = read_time(written, "UTC")
    assert zone_name == tz
    back = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))
    assert back.astimezone(ZoneInfo("UTC")) == wall.replace(tzinfo=ZoneInfo(tz)).astimezone(ZoneInfo("UTC"))


@settings(max_examples=100, deadline=None)
@given(tz=ZONES, days=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=5, unique=True),
       all_day=st.booleans())
def test_exdates_and_rdates_survive_recurrence_lines(tz, days, all_day):
    start = datetime(2026, 3, 2, 9, 30)
    if all_day:
        keys = tuple(instance_key((start + timedelta(days=d)).date()) for d in days)
        ev = Event(start="2026-03-02", end="2026-03-03", rrule="FREQ=DAILY", exdates=keys, rdates=keys[:1])
        master_tz = ""
    else:
        keys = tuple(instance_key((start + timedelta(days=d)).replace(tzinfo=ZoneInfo(tz))) for d in days)
        ev = Event(start=start.isoformat(), end=(start + timedelta(hours=1)).isoformat(), start_tz=tz,
                   rrule="FREQ=DAILY", exdates=keys, rdates=keys[:1])
        master_tz = tz
    rrule, exdates, rdates, problems = read_recurrence(write_recurrence(ev, "UTC"), master_tz)
    assert (rrule, tuple(sorted(exdates)), tuple(rdates), problems) == ("FREQ=DAILY", ev.exdates, ev.rdates[:1], [])


# ---- more wire behaviour -------------------------------------------------------------------------------------------


def test_a_change_during_pagination_is_not_lost(emu):
    state, base = emu
    ids = [state.put_event(USER, timed(f"m{d}", d))["id"] for d in range(1, 6)]
    cal = connector(base, page_size=2)
    page = cal.list_changes(None)
    seen = {r.external_id for r in page.records}
    svc = raw_client(base)
    later = next(i for i in ids if i not in seen)
    svc.events().patch(calendarId="primary", eventId=later, body={"summary": "edited mid-round"}).execute()
    records = list(page.records)
    while page.next_page:
        page = cal.list_changes(None, page.next_page)
        records.extend(page.records)
    delta, _ = drain(cal, page.cursor)
    titles = {r.external_id: r.content.title for r in records + delta}  # later records win
    assert set(titles) == set(ids)
    assert titles[later] == "edited mid-round"
    assert later in {r.external_id for r in delta}


def test_instance_keys_follow_the_zone_across_dst(emu):
    _, base = emu
    cal = connector(base)
    master, = create(cal, Event(title="weekly", start="2027-03-15T09:00:00", end="2027-03-15T10:00:00", start_tz=TZ,
                                end_tz=TZ, rrule="FREQ=WEEKLY;COUNT=6", organizer=USER))
    before_dst = instance_key(datetime(2027, 3, 22, 9, tzinfo=ZoneInfo(TZ)))
    after_dst = instance_key(datetime(2027, 4, 5, 9, tzinfo=ZoneInfo(TZ)))
    assert (before_dst, after_dst) == ("20270322T080000Z", "20270405T070000Z")
    edits = [Event(uid=master.content.uid, recurrence_id=k, title="moved", start=s, end=e, start_tz=TZ, end_tz=TZ,
                   organizer=USER)
             for k, s, e in ((before_dst, "2027-03-22T10:00:00", "2027-03-22T11:00:00"),
                             (after_dst, "2027-04-05T10:00:00", "2027-04-05T11:00:00"))]
    recs = create(cal, *edits)
    assert [r.external_id for r in recs] == [f"{master.external_id}_{before_dst}", f"{master.external_id}_{after_dst}"]
    got = by_key(drain(connector(base), None)[0])
    assert [got[e.key].content for e in edits] == edits
    # an instance the series does not have is refused, not invented
    wrong = edits[0].model_copy(update={"recurrence_id": "20270322T090000Z"})
    result = cal.create_many([WriteRequest(key="w", content=wrong)])
    assert result[0].error is not None and result[0].error.code == "not_found"


def test_organizer_edits_reach_the_attendee_copy_and_deletion_removes_it(emu):
    state, base = emu
    state.calendar(OTHER, TZ)
    copies = state.invite(USER, {**timed("weekly sync", 7), "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=4"],
                                 "attendees": [{"email": USER}, {"email": OTHER}]})
    uid = copies[USER]["iCalUID"]
    bob = connector(base, token="bob-token")
    _, bob_cursor = drain(bob, None)
    ada = connector(base)
    k14, k21 = (instance_key(datetime(2026, 12, d, 9, tzinfo=ZoneInfo(TZ))) for d in (14, 21))
    master = drain(ada, None)[0][0].content
    edited = master.model_copy(update={"recurrence_id": k14, "rrule": "", "title": "weekly sync (demo)",
                                       "start": "2026-12-14T09:00:00", "end": "2026-12-14T10:00:00"})
    create(ada, edited, Event(uid=uid, recurrence_id=k21, status="cancelled"))
    delta, bob_cursor = drain(bob, bob_cursor)
    got = by_key(delta)
    assert got[f"{uid}|{k14}"].content.title == "weekly sync (demo)"
    assert got[f"{uid}|{k21}"].content.status == "cancelled"
    assert got[f"{uid}|{k14}"].external_id.startswith(copies[OTHER]["id"] + "_")

    ada.delete_many([WriteRequest(key="d", external_id=copies[USER]["id"])])
    gone, _ = drain(bob, bob_cursor)
    assert gone and all(r.deleted for r in gone)
    assert copies[OTHER]["id"] in {r.external_id for r in gone}


def test_a_guest_taken_off_the_list_loses_the_copy(emu):
    state, base = emu
    state.calendar(OTHER, TZ)
    copies = state.invite(USER, timed("1:1", 9, attendees=[{"email": USER}, {"email": OTHER}]))
    bob = connector(base, token="bob-token")
    _, cursor = drain(bob, None)
    ada = connector(base)
    mine, = drain(ada, None)[0]
    solo = mine.content.model_copy(update={"attendees": (USER,), "responses": ()})
    assert ada.update_many([WriteRequest(key="u", content=solo, external_id=mine.external_id)])[0].error is None
    delta, _ = drain(bob, cursor)
    assert [(r.external_id, r.deleted) for r in delta] == [(copies[OTHER]["id"], True)]


def test_an_attendee_content_edit_is_refused_for_that_item_only(emu):
    state, base = emu
    state.calendar(OTHER, TZ)
    state.invite(USER, timed("review", 9, attendees=[{"email": OTHER}]))
    state.put_event(OTHER, timed("bob's own", 10))
    bob = connector(base, token="bob-token")
    copy_, own = sorted(drain(bob, None)[0], key=lambda r: r.content.title)[::-1]
    assert copy_.content.title == "review" and own.content.title == "bob's own"
    results = bob.update_many([
        WriteRequest(key="a", content=copy_.content.model_copy(update={"title": "my title"}),
                     external_id=copy_.external_id),
        WriteRequest(key="b", content=own.content.model_copy(update={"title": "renamed"}), external_id=own.external_id),
    ])
    assert results[0].error is not None and getattr(results[0].error, "rule", None) == "organizer_only"
    assert results[1].error is None and results[1].record.content.title == "renamed"
    state.configure(attendee_edits="local")
    again = bob.update_many([WriteRequest(key="a", content=copy_.content.model_copy(update={"title": "my title"}),
                                          external_id=copy_.external_id)])
    assert again[0].error is None
    assert drain(connector(base), None)[0][0].content.title == "review"  # the organizer's copy is untouched


def test_provider_refusals_become_recovery_classes(emu):
    from models.errors import AuthExpired, RateLimited, Transient, ValidationRejected

    state, base = emu
    cal = connector(base)
    state.inject_fault("429", "list")
    with pytest.raises(RateLimited):
        cal.list_changes(None)
    state.inject_fault("503", "list")
    with pytest.raises(Transient):
        cal.list_changes(None)
    ev = Event(title="x", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00", start_tz=TZ)
    state.inject_fault("403_rate", "insert")
    results = cal.create_many([WriteRequest(key="a", content=ev), WriteRequest(key="b", content=ev)])
    assert isinstance(results[0].error, RateLimited) and results[1].error is None  # one batch, per-item answers
    bad = ev.model_copy(update={"end": "2026-12-07T08:00:00"})
    refused = cal.create_many([WriteRequest(key="c", content=bad), WriteRequest(key="d", content=ev)])
    assert isinstance(refused[0].error, ValidationRejected) and refused[1].error is None
    split = ev.model_copy(update={"uid": "u@x", "recurrence_id": "20261207T080000Z", "range": "THISANDFUTURE"})
    assert cal.create_many([WriteRequest(key="t", content=split)])[0].error.rule == "this_and_future"
    with pytest.raises(AuthExpired):
        connector(base, token="nobody").list_changes(None)


def test_times_without_a_zone_read_in_the_calendar_zone(emu):
    state, base = emu
    state.put_event(USER, {"summary": "offset only", "start": {"dateTime": "2026-12-07T09:00:00+01:00"},
                           "end": {"dateTime": "2026-12-07T10:00:00+01:00"}})
    cal = connector(base)
    rec, = drain(cal, None)[0]
    assert (rec.content.start, rec.content.start_tz) == ("2026-12-07T09:00:00", TZ)
    # Google has no floating times: a floating event is written in the calendar's zone
    floating, = create(cal, Event(title="floating", start="2026-12-08T09:00:00", end="2026-12-08T10:00:00"))
    assert (floating.content.start, floating.content.start_tz) == ("2026-12-08T09:00:00", TZ)


def test_single_events_expand_a_series_without_its_master(emu):
    state, base = emu
    master = state.put_event(USER, {**timed("daily", 7), "recurrence": ["RRULE:FREQ=DAILY;COUNT=5"]})
    state.put_event(USER, {"summary": "next year", "start": {"date": "2027-02-01"}, "end": {"date": "2027-02-02"}})
    svc = raw_client(base)
    k = [instance_key(datetime(2026, 12, d, 9, tzinfo=ZoneInfo(TZ))) for d in range(7, 12)]
    svc.events().delete(calendarId="primary", eventId=f"{master['id']}_{k[1]}").execute()
    svc.events().patch(calendarId="primary", eventId=f"{master['id']}_{k[2]}", body={"summary": "moved"}).execute()
    items = svc.events().list(calendarId="primary", singleEvents=True, orderBy="startTime",
                              timeMin="2026-12-01T00:00:00Z", timeMax="2027-01-01T00:00:00Z").execute()["items"]
    assert [i["id"] for i in items] == [f"{master['id']}_{x}" for x in (k[0], k[2], k[3], k[4])]
    assert all(i["recurringEventId"] == master["id"] and i["iCalUID"] == master["iCalUID"] for i in items)
    assert items[1]["summary"] == "moved"
    plain = svc.events().list(calendarId="primary", timeMax="2027-01-01T00:00:00Z").execute()["items"]
    assert {i["id"] for i in plain} == {master["id"], f"{master['id']}_{k[1]}", f"{master['id']}_{k[2]}"}


def test_a_get_in_a_new_process_reads_zoneless_times_as_the_listing_did(emu):
    state, base = emu
    made = state.put_event(USER, {"summary": "offset only", "start": {"dateTime": "2026-12-07T09:00:00+01:00"},
                                  "end": {"dateTime": "2026-12-07T10:00:00+01:00"}})
    listed = drain(connector(base), None)[0][0]
    fresh = connector(base)  # no listing yet: it asks the calendar for its zone once
    assert fresh.get(made["id"]).content == listed.content
    assert fresh.calls_made == 2
    fresh.get(made["id"])
    assert fresh.calls_made == 3


def test_admin_routes_over_http(emu):
    state, base = emu
    admin = httpx.Client(base_url=base + "_emulator/", timeout=10)
    assert admin.post("users", json={"user": "carol@acme.example", "token": "carol-token",
                                     "time_zone": "America/New_York"}).json() == {
        "user": "carol@acme.example", "timeZone": "America/New_York"}
    made = admin.post("events", json={"user": USER, "events": [timed("a", 1), timed("b", 2)]}).json()["items"]
    assert [m["summary"] for m in made] == ["a", "b"]
    copies = admin.post("invite", json={"organizer": USER, "event": timed(
        "meet", 3, attendees=[{"email": "carol@acme.example"}])}).json()
    assert set(copies) == {USER, "carol@acme.example"}
    carol = connector(base, token="carol-token")
    rec, = drain(carol, None)[0]
    assert rec.content.uid == copies[USER]["iCalUID"] and rec.content.start_tz == TZ
    _, cursor = drain(connector(base), None)
    assert admin.post("expire_sync_tokens", json={"user": USER}).status_code == 200
    with pytest.raises(CursorExpired):
        connector(base).list_changes(cursor)
    assert admin.post("events", json={"user": USER}).status_code == 400  # no event
    assert admin.post("events", json={"user": USER, "event": {"summary": "no times"}}).status_code == 400
    assert admin.post("config", json={"deleted_shape": "weird"}).status_code == 400
    assert admin.get("stats").json()["events"][USER] == 3


@pytest.mark.parametrize("status", [400, 410])
def test_a_token_google_never_issued_is_cursor_expired_either_way(emu, status):
    state, base = emu
    state.configure(invalid_sync_token_status=status)
    with pytest.raises(CursorExpired):
        connector(base).list_changes("not-a-token")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
EVENT_KEYS = st.sampled_from(["summary", "start", "end", "recurrence", "attendees", "status", "id", "iCalUID",
                              "extendedProperties", "transparency", "visibility", "sequence", "originalStartTime"])
WHEN = st.fixed_dictionaries({}, optional={"date": st.sampled_from(["2026-12-07", "2026-13-01", "x", 5]),
                                           "dateTime": st.sampled_from(["2026-12-07T09:00:00", "2026-12-07T09:00:00Z",
                                                                        "2026-12-07T25:00:00+01:00", "", None]),
                                           "timeZone": st.sampled_from(["Europe/Paris", "Nowhere/City", "", 3])})
BODIES = st.dictionaries(EVENT_KEYS, JSON | WHEN | st.lists(st.sampled_from(
    ["RRULE:FREQ=DAILY", "RRULE:FREQ=WEEKLY;UNTIL=20270101", "EXDATE:2026", "RDATE;VALUE=DATE:20261209",
     "EXDATE;TZID=Nowhere:20261207T090000", "DTSTART:20261207"]), max_size=3), max_size=8)


@settings(max_examples=200, deadline=None)
@given(body=BODIES, op=st.sampled_from(["insert", "patch", "update", "list"]),
       params=st.dictionaries(st.sampled_from(["maxResults", "syncToken", "pageToken", "showDeleted", "singleEvents",
                                               "orderBy", "timeMin", "timeMax", "privateExtendedProperty", "iCalUID"]),
                              st.text(max_size=10), max_size=3))
def test_the_emulator_never_answers_500_to_what_a_client_sends(body, op, params):
    import json as _json

    from emulators.google_calendar import dispatch

    state = CalendarState(default_user=USER, time_zone=TZ)
    series = state.put_event(USER, {**timed("s", 7), "recurrence": ["RRULE:FREQ=DAILY;COUNT=3"]})
    auth = {"authorization": "Bearer emulator-token"}
    path = "/calendar/v3/calendars/primary/events"
    target = f"{path}/{series['id']}_{instance_key(datetime(2026, 12, 8, 9, tzinfo=ZoneInfo(TZ)))}"
    raw = _json.dumps(body).encode()
    if op == "insert":
        status, _, _ = dispatch(state, "POST", path, {}, auth, raw)
    elif op == "list":
        status, _, _ = dispatch(state, "GET", path, {k: [v] for k, v in params.items()}, auth, b"")
    else:
        status, _, _ = dispatch(state, "PATCH" if op == "patch" else "PUT", target, {}, auth, raw)
    assert status in (200, 400, 403, 404, 409, 410, 412)


def test_a_platform_event_with_a_guest_reaches_the_guest_and_google_sends_the_invitation(emu):
    state, base = emu
    state.calendar(OTHER, TZ)
    cal = connector(base)
    rec, = create(cal, Event(title="kickoff", start="2026-12-07T09:00:00", end="2026-12-07T10:00:00", start_tz=TZ,
                             end_tz=TZ, attendees=(USER, OTHER), organizer=USER))
    assert state.send_updates == {"all": 1}
    theirs, = drain(connector(base, token="bob-token"), None)[0]
    assert theirs.content.uid == rec.content.uid and theirs.external_id != rec.external_id
    assert theirs.content.response_of(OTHER) == "needsAction"
    quiet = connector(base, send_updates="none")
    quiet.delete_many([WriteRequest(key="d", external_id=rec.external_id)])
    assert state.send_updates == {"all": 1, "none": 1}


def test_a_busy_delta_round_costs_about_one_call_per_page_not_per_event(emu):
    state, base = emu
    masters = [state.put_event(USER, {**timed(f"series {n}", 1 + n), "recurrence": ["RRULE:FREQ=DAILY;COUNT=30"]})
               for n in range(5)]
    _, cursor = drain(connector(base), None)
    svc = raw_client(base)
    for n, m in enumerate(masters):  # 4 cancelled instances per series, via Google
        for day in range(4):
            when = datetime(2026, 12, 2 + n + day, 9, tzinfo=ZoneInfo(TZ))
            svc.events().delete(calendarId="primary", eventId=f"{m['id']}_{instance_key(when)}").execute()
    for n in range(180):
        state.put_event(USER, timed(f"new {n}", 1 + n % 28))
    fresh = connector(base)
    delta, _ = drain(fresh, cursor)
    assert len(delta) == 200
    assert sum(1 for r in delta if r.content and r.content.status == "cancelled") == 20
    assert fresh.calls_made == 2  # one page, one batch get for the five series' UIDs
    assert fresh.calls_made / len(delta) <= 1.1


def test_an_invitation_from_outside_is_an_attendee_copy(emu):
    state, base = emu
    state.put_event(USER, timed("vendor call", 9, organizer={"email": "Sales@Vendor.example"},
                                attendees=[{"email": "sales@vendor.example", "responseStatus": "accepted"},
                                           {"email": USER}]))
    rec, = drain(connector(base), None)[0]
    assert rec.content.organizer == "sales@vendor.example"
    wire = raw_client(base).events().get(calendarId="primary", eventId=rec.external_id).execute()
    assert "self" not in wire["organizer"]
    assert [a for a in wire["attendees"] if a.get("self")] == [{"email": USER, "responseStatus": "needsAction",
                                                                 "self": True}]
