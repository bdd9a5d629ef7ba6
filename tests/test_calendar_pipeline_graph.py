"""The calendar kind through the real pipeline with Microsoft 365 calendars: the Graph
emulator's calendars reached by GraphCalendar (httpx), the real store, the reference
platform's PM calendar in both flavours (tests/test_calendar_pipeline.py does the same
with Google Calendar).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from activities.calendar import CalendarPipeline
from connectors.graph_calendar import GraphCalendar
from connectors.protocols import WriteRequest
from emulators.graph import GraphState, create_app
from emulators.server import serve
from models.event import Event, instance_key
from platforms.reference_crm.pm_adapter import ReferenceCrmCalendar
from platforms.reference_crm.service import ReferenceCrm
from store import calendar as claims
from store import repo
from store.db import make_engine, migrate, session_factory
from sync.kinds.calendar import CALENDAR
from tests.calendar_world import DOMAIN, TZ, CalendarWorld, soon

ANN, CY = f"ann@{DOMAIN}", f"cy@{DOMAIN}"


class GraphWorld(CalendarWorld):
    """`CalendarWorld` with its calendars on the Graph emulator."""

    def __init__(self, store_url: str, crm_url: str, *, flavour: str = "native") -> None:  # noqa: D107
        migrate(store_url)
        self.sessions = session_factory(make_engine(store_url))
        self.crm = ReferenceCrm(crm_url)
        self.platform = ReferenceCrmCalendar(self.crm)
        self.org = f"org-{uuid.uuid4().hex[:8]}"
        self.crm.calendar.configure(self.org, flavour)
        self.graph = GraphState(tokens=set())
        self.server = serve(create_app(self.graph))
        self.pipeline = CalendarPipeline(self.sessions, CALENDAR, self.platform, self._connector, wait=lambda s: None)
        with self.sessions.begin() as s:
            repo.create_org(s, self.org, "Acme", {})
        self.tokens: dict[str, str] = {}

    def _connector(self, info) -> GraphCalendar:
        token = self.tokens[info.account_ref]
        return GraphCalendar(self.server.base_url, lambda: token, address=info.account_ref,
                             mailbox_key=info.connection_id)

    def connect(self, user: str, *, sync: dict | None = None) -> str:
        address = f"{user}@{DOMAIN}"
        token = f"tok-{user}-{uuid.uuid4().hex[:6]}"
        self.graph.calendar.add_user(address, token=token)
        self.tokens[address] = token
        cid = f"cal-{user}-{uuid.uuid4().hex[:6]}"
        with self.sessions.begin() as s:
            repo.create_connection(s, id=cid, org_id=self.org, user_id=user, provider="microsoft", account_ref=address,
                                   settings={"token": token, "sync": sync or {}})
        return cid

    def ui(self, address: str) -> GraphCalendar:
        """What the user does in Outlook, through the API (its own client)."""
        token = self.tokens[address]
        return GraphCalendar(self.server.base_url, lambda: token, address=address)


@pytest.fixture(params=["native", "singles"])
def world(request, tmp_path):
    w = GraphWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}", flavour=request.param)
    yield w
    w.close()


def _wall(d: datetime) -> str:
    return d.replace(tzinfo=None).isoformat()


def test_a_series_with_moved_edited_and_cancelled_instances_arrives_whole(world):
    ann = world.connect("ann")
    start = soon(7)
    master = Event(title="Weekly sync", organizer=ANN, start=_wall(start), end=_wall(start + timedelta(hours=1)),
                   start_tz=TZ, end_tz=TZ, rrule="FREQ=WEEKLY;COUNT=6")
    ui = world.ui(ANN)
    (made,) = ui.create_many([WriteRequest(key="s", content=master)])
    uid = made.record.content.uid
    keys = [instance_key(start + timedelta(weeks=i)) for i in range(6)]
    at = lambda i, h=0: start + timedelta(weeks=i, hours=h)  # noqa: E731
    moved = master.model_copy(update={"uid": uid, "recurrence_id": keys[1], "rrule": "", "start": _wall(at(1, 2)),
                                      "end": _wall(at(1, 3))})
    edited = master.model_copy(update={"uid": uid, "recurrence_id": keys[2], "rrule": "",
                                       "title": "Weekly sync: planning", "start": _wall(at(2)), "end": _wall(at(2, 1))})
    cancelled = Event(uid=uid, recurrence_id=keys[3], status="cancelled")
    results = ui.create_many([WriteRequest(key=f"x{i}", content=e) for i, e in enumerate((moved, edited, cancelled))])
    assert [r.error for r in results] == [None] * 3

    world.settle(ann, rounds=2)
    recs = world.records()
    assert set(recs) == {(uid, ""), (uid, keys[1]), (uid, keys[2]), (uid, keys[3])}
    assert recs[(uid, "")].content.rrule.startswith("FREQ=WEEKLY")
    assert recs[(uid, keys[2])].content.title == "Weekly sync: planning"
    assert recs[(uid, keys[3])].content.status == "cancelled"
    assert recs[(uid, keys[1])].content.start_value() - (start + timedelta(weeks=1)) == timedelta(hours=2)
    again = world.cycle(ann)["write"]
    assert sum(again.created.values()) == sum(again.updated.values()) == 0


def test_an_expired_delta_token_resyncs_without_duplicates(world):
    ann = world.connect("ann")
    world.graph.calendar.seed([{"subject": f"Call {i}", "start": {"dateTime": _wall(soon(i + 1)), "timeZone": TZ},
                                "end": {"dateTime": _wall(soon(i + 1, 10)), "timeZone": TZ}} for i in range(4)],
                              user=ANN)
    world.settle(ann, rounds=2)
    before = world.records()
    world.graph.expire_delta_tokens(410, "syncStateNotFound")
    out = world.cycle(ann)
    assert sum(out["write"].created.values()) == 0
    assert world.records().keys() == before.keys() and len(before) == 4


def test_one_meeting_on_two_calendars_is_one_record_and_the_attendee_adds_only_their_answer(world):
    ann, cy = world.connect("ann"), world.connect("cy")
    cal = world.graph.calendar
    (eid,) = cal.seed([{"subject": "Roadmap review", "start": {"dateTime": _wall(soon(3)), "timeZone": TZ},
                        "end": {"dateTime": _wall(soon(3, 10)), "timeZone": TZ}}], user=ANN)
    cy_copy = cal.invite(eid, [CY], organizer=ANN)[CY]
    uid = cal.event(eid, user=ANN)["iCalUId"]
    world.settle(cy, ann, rounds=2)  # the attendee's copy first: it creates, the organizer's joins
    assert list(world.records()) == [(uid, "")]
    mine = world.ui(CY).get(cy_copy)
    res = world.ui(CY).update_many([WriteRequest(key="k", content=mine.content.with_response(CY, "accepted"),
                                                 external_id=cy_copy, etag=mine.etag)])
    assert res[0].error is None
    world.settle(cy, ann, rounds=2)
    rec = world.records()[(uid, "")].content
    assert rec.response_of(CY) == "accepted" and rec.title == "Roadmap review"
    with world.sessions() as s:
        assert claims.count(s, world.org) == 1


def test_a_platform_event_reaches_its_owners_calendar(world):
    ann = world.connect("ann")
    world.cycle(ann)
    start = soon(5, 14)
    world.crm.calendar.user_create(world.org, "ann", title="Site visit", start=_wall(start),
                                   end=_wall(start + timedelta(hours=2)), start_tz=TZ, end_tz=TZ, attendees=[CY])
    world.settle(ann, rounds=2)
    mine = [e for e in world.graph.calendar.user(ANN).items.values()]
    assert [e.data.get("subject") for e in mine] == ["Site visit"]
    assert mine[0].data["attendees"][0]["emailAddress"]["address"] == CY
    assert mine[0].start.label == "Romance Standard Time"  # written with the Windows name


def test_an_event_beyond_the_window_survives_a_full_resync(world):
    ann = world.connect("ann")
    world.cycle(ann)
    start = soon(400, 14)  # further ahead than the connector's delta window
    world.crm.calendar.user_create(world.org, "ann", title="Far", start=_wall(start),
                                   end=_wall(start + timedelta(hours=1)), start_tz=TZ, end_tz=TZ)
    world.settle(ann, rounds=2)
    assert [r.content.title for r in world.records().values()] == ["Far"]
    world.graph.expire_delta_tokens(410, "syncStateNotFound")
    world.settle(ann, rounds=2)
    assert [r.content.title for r in world.records().values()] == ["Far"]
    assert [e.data["subject"] for e in world.graph.calendar.user(ANN).items.values()] == ["Far"]
