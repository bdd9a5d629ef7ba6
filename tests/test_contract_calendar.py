"""One contract every calendar connector passes (Google Calendar through
google-api-python-client, Microsoft 365 through httpx, each against its emulator on a
real port): what the calendar pipeline relies on, asked the same way of both.

Each test gets a fresh calendar and a new connector per step, as the worker builds one
per activity.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import pytest

from connectors.google_calendar import GoogleCalendar
from connectors.graph_calendar import GraphCalendar
from connectors.protocols import WriteRequest
from emulators.google_calendar import CalendarState
from emulators.google_calendar import create_app as google_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import serve
from models.errors import CursorExpired, PreconditionFailed
from models.event import Event, instance_key
from tests.calendar_world import TZ, soon

ME = "ann@acme.example"


@dataclass
class Calendar:
    new: Callable[[], object]  # a new connector, as each activity builds one
    expire: Callable[[], None]  # the provider forgets every sync cursor
    stop: Callable[[], None]


def _google() -> Calendar:
    state = CalendarState(default_user=ME, time_zone=TZ)
    token = f"t-{uuid.uuid4().hex[:6]}"
    state.add_token(token, ME)
    server = serve(google_app(state))
    return Calendar(lambda: GoogleCalendar.for_emulator(server.base_url + "calendar/v3/", token=token,
                                                        account=uuid.uuid4().hex),
                    state.expire_sync_tokens, server.stop)


def _graph() -> Calendar:
    state = GraphState(tokens=set())
    token = f"t-{uuid.uuid4().hex[:6]}"
    state.calendar.add_user(ME, token=token)
    server = serve(graph_app(state))
    return Calendar(lambda: GraphCalendar(server.base_url, lambda: token, address=ME, mailbox_key=uuid.uuid4().hex),
                    lambda: state.expire_delta_tokens(410, "syncStateNotFound"), server.stop)


@pytest.fixture(params=["google", "microsoft"])
def cal(request):
    c = {"google": _google, "microsoft": _graph}[request.param]()
    yield c
    c.stop()


def _wall(d) -> str:
    return d.replace(tzinfo=None).isoformat()


def _event(title: str, day: int, hours: float = 1.0, **more) -> Event:
    start = soon(day, 10)
    return Event(title=title, organizer=ME, start=_wall(start), end=_wall(start + timedelta(hours=hours)),
                 start_tz=TZ, end_tz=TZ, **more)


def _drain(connector, cursor):
    records, page = [], None
    while True:
        got = connector.list_changes(cursor, page)
        records += got.records
        if got.next_page is None:
            return records, got.cursor
        page = got.next_page


def _create(connector, *events: Event, markers: dict | None = None):
    results = connector.create_many([WriteRequest(key=f"k{i}", content=e, marker=(markers or {}).get(i))
                                     for i, e in enumerate(events)])
    assert [r.error for r in results] == [None] * len(events)
    return [r.record for r in results]


def test_a_full_listing_then_a_delta_reports_only_what_changed(cal):
    made = _create(cal.new(), _event("Kickoff", 2), _event("Review", 3))
    listed, cursor = _drain(cal.new(), None)
    assert {r.content.title for r in listed if r.content} == {"Kickoff", "Review"}
    changed = made[0].content.model_copy(update={"title": "Kickoff (moved room)", "location": "Room 4"})
    assert cal.new().update_many([WriteRequest(key="u", content=changed, external_id=made[0].external_id,
                                               etag=made[0].etag)])[0].error is None
    delta, _ = _drain(cal.new(), cursor)
    assert [r.content.title for r in delta if r.content] == ["Kickoff (moved room)"]


def test_an_expired_cursor_raises_and_a_full_listing_brings_the_same_records(cal):
    _create(cal.new(), _event("One", 2), _event("Two", 4))
    first, cursor = _drain(cal.new(), None)
    cal.expire()
    with pytest.raises(CursorExpired):
        _drain(cal.new(), cursor)
    again, _ = _drain(cal.new(), None)
    assert sorted(r.content.key for r in again if r.content) == sorted(r.content.key for r in first if r.content)


def test_a_series_and_its_moved_edited_and_cancelled_instances_come_back_as_written(cal):
    start = soon(7, 10)
    (master,) = _create(cal.new(), _event("Weekly", 7, rrule="FREQ=WEEKLY;COUNT=5"))
    uid = master.content.uid
    keys = [instance_key(start + timedelta(weeks=i)) for i in range(5)]
    at = lambda i, h=0.0: start + timedelta(weeks=i, hours=h)  # noqa: E731
    base = master.content.model_copy(update={"rrule": ""})
    moved = base.model_copy(update={"recurrence_id": keys[1], "start": _wall(at(1, 2)), "end": _wall(at(1, 3))})
    edited = base.model_copy(update={"recurrence_id": keys[2], "title": "Weekly (retro)", "start": _wall(at(2)),
                                     "end": _wall(at(2, 1))})
    cancelled = Event(uid=uid, recurrence_id=keys[3], status="cancelled")
    _create(cal.new(), moved, edited, cancelled)
    listed, _ = _drain(cal.new(), None)
    got = {r.content.key: r.content for r in listed if r.content}
    assert set(got) == {f"{uid}|", moved.key, edited.key, cancelled.key}
    assert got[moved.key].start == moved.start and got[edited.key].title == "Weekly (retro)"
    assert got[cancelled.key].status == "cancelled"
    assert got[f"{uid}|"].rrule.startswith("FREQ=WEEKLY")


def test_a_stale_etag_is_precondition_failed_and_the_fresh_one_writes(cal):
    (rec,) = _create(cal.new(), _event("Budget", 3))
    first = rec.content.model_copy(update={"title": "Budget v2"})
    assert cal.new().update_many([WriteRequest(key="a", content=first, external_id=rec.external_id,
                                               etag=rec.etag)])[0].error is None
    stale = cal.new().update_many([WriteRequest(key="b", content=rec.content.model_copy(update={"title": "v3"}),
                                                external_id=rec.external_id, etag=rec.etag)])
    assert isinstance(stale[0].error, PreconditionFailed)
    current = cal.new().get(rec.external_id)
    assert current.content.title == "Budget v2"


def test_markers_find_a_create_whose_answer_was_lost(cal):
    _create(cal.new(), _event("Lost answer", 5), _event("Other", 6), markers={0: "concord:key-1"})
    found = cal.new().find_by_markers(["concord:key-1", "concord:never"])
    assert list(found) == ["concord:key-1"] and found["concord:key-1"].content.title == "Lost answer"


def test_a_delete_is_a_tombstone_in_the_next_delta(cal):
    (rec,) = _create(cal.new(), _event("Cancelled lunch", 2))
    _, cursor = _drain(cal.new(), None)
    assert cal.new().delete_many([WriteRequest(key="d", external_id=rec.external_id)])[0].error is None
    delta, _ = _drain(cal.new(), cursor)
    assert [r.external_id for r in delta if r.deleted] == [rec.external_id]
