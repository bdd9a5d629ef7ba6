"""The calendar kind through the real pipeline: Google Calendar emulator (real client
library), the real store, the reference platform's PM calendar in both flavours.

What a product team checks first: a series with its exceptions arrives whole, the
same meeting on two calendars is one platform record (also when both sync at the same
moment), an attendee adds only their answer, a platform event reaches the user's
calendar, a time changed on both sides waits for a person, and a platform rule is
answered by a fix or a visible quarantine.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from connectors.protocols import WriteRequest
from models.event import Event, instance_key
from platforms.reference_crm.pm_rules import PmRule
from store import calendar as claims
from tests.calendar_world import DOMAIN, TZ, CalendarWorld, soon, timed

ANN, CY = f"ann@{DOMAIN}", f"cy@{DOMAIN}"


@pytest.fixture(params=["native", "singles"])
def world(request, tmp_path):
    w = CalendarWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}", flavour=request.param)
    yield w
    w.close()


def _weekly_with_exceptions(w: CalendarWorld) -> tuple[str, list[str]]:
    """Ann's weekly series of 6 with its 2nd instance moved, 3rd retitled, 4th cancelled,
    made in her calendar (through the API, as Google's UI would)."""
    start = soon(7)
    wall = lambda d: d.replace(tzinfo=None).isoformat()  # noqa: E731
    master = Event(title="Weekly sync", organizer=ANN, start=wall(start), end=wall(start + timedelta(hours=1)),
                   start_tz=TZ, end_tz=TZ, rrule="FREQ=WEEKLY;COUNT=6")
    ui = w.ui(ANN)
    (rec,) = [r.record for r in ui.create_many([WriteRequest(key="s", content=master)])]
    uid = rec.content.uid
    keys = [instance_key(start + timedelta(weeks=i)) for i in range(6)]
    at = lambda i, h=0: start + timedelta(weeks=i, hours=h)  # noqa: E731
    moved = master.model_copy(update={"uid": uid, "recurrence_id": keys[1], "rrule": "", "start": wall(at(1, 2)),
                                      "end": wall(at(1, 3))})
    edited = master.model_copy(update={"uid": uid, "recurrence_id": keys[2], "rrule": "",
                                       "title": "Weekly sync: planning", "start": wall(at(2)), "end": wall(at(2, 1))})
    cancelled = Event(uid=uid, recurrence_id=keys[3], status="cancelled")
    results = ui.create_many([WriteRequest(key=f"x{i}", content=e) for i, e in enumerate((moved, edited, cancelled))])
    assert [r.error for r in results] == [None] * 3
    return uid, keys


def test_a_series_with_moved_edited_and_cancelled_instances_arrives_whole(world):
    ann = world.connect("ann")
    uid, keys = _weekly_with_exceptions(world)
    world.settle(ann, rounds=2)
    recs = world.records()
    assert set(recs) == {(uid, ""), (uid, keys[1]), (uid, keys[2]), (uid, keys[3])}
    assert recs[(uid, "")].content.rrule.startswith("FREQ=WEEKLY")
    assert recs[(uid, keys[2])].content.title == "Weekly sync: planning"
    assert recs[(uid, keys[3])].content.status == "cancelled"
    moved = recs[(uid, keys[1])].content
    assert moved.start_value() - (soon(7) + timedelta(weeks=1)) == timedelta(hours=2)
    # nothing left over: every item applied, and a further cycle writes nothing
    again = world.cycle(ann)["write"]
    assert sum(again.created.values()) == sum(again.updated.values()) == 0


def _meeting(w: CalendarWorld, title: str = "Roadmap review", day: int = 3) -> str:
    copies = w.google.invite(ANN, timed(title, soon(day), attendees=[{"email": ANN, "responseStatus": "accepted"},
                                                                  {"email": CY}]))
    return copies[ANN]["iCalUID"]


def test_one_meeting_on_two_calendars_is_one_record_and_the_attendee_adds_only_their_answer(world):
    ann, cy = world.connect("ann"), world.connect("cy")
    uid = _meeting(world)
    world.settle(cy, ann, rounds=2)  # the attendee's copy first: it creates, the organizer's joins
    recs = world.records()
    assert list(recs) == [(uid, "")]
    # Cy accepts in his calendar: only his answer reaches the record
    cy_copy = next(e for e in world.google.calendar(CY).events.values() if not e.deleted)
    world.google.calendar(CY)  # noqa: B018 - his calendar exists
    from connectors.protocols import WriteRequest
    connector = world._connector(type("I", (), {"account_ref": CY, "connection_id": cy})())
    mine = {r.content.uid: r for r in connector.list_changes(None).records if r.content}[uid]
    res = connector.update_many([WriteRequest(key="k", content=mine.content.with_response(CY, "accepted"),
                                              external_id=mine.external_id, etag=mine.etag)])
    assert res[0].error is None
    world.settle(cy, ann, rounds=2)
    rec = world.records()[(uid, "")].content
    assert rec.response_of(CY) == "accepted" and rec.title == "Roadmap review"
    assert cy_copy is not None
    with world.sessions() as s:
        assert claims.count(s, world.org) == 1


def test_two_calendars_syncing_the_same_meeting_at_once_make_one_record(world):
    ann, cy = world.connect("ann"), world.connect("cy")
    topics = ["Roadmap review", "Hiring panel", "Budget check-in", "Customer escalation", "Design critique"]
    uids = [_meeting(world, title, day=2 + i) for i, title in enumerate(topics)]
    refs = {cid: world.ref(cid) for cid in (ann, cy)}
    p = world.pipeline
    for cid, ref in refs.items():
        p.fetch_mailbox(ref)
        p.fetch_platform(ref)
        p.plan(ref)  # both plan a create: neither sees the other's record yet
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(ref):
        try:
            barrier.wait()
            p.write(ref)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(ref,)) for ref in refs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    world.settle(ann, cy, rounds=2)
    recs = world.records()
    assert sorted(k[0] for k in recs) == sorted(uids)  # one record per meeting
    with world.sessions() as s:
        from store import repo
        for cid in (ann, cy):
            links = repo.count_links(s, cid, kind="calendar")
            assert links == 5, (cid, links)  # both calendars linked to the same records


def test_a_platform_event_reaches_its_owners_calendar(world):
    ann = world.connect("ann")
    world.cycle(ann)
    start = soon(5, 14)
    world.crm.calendar.user_create(world.org, "ann", title="Site visit", start=start.replace(tzinfo=None).isoformat(),
                                   end=(start + timedelta(hours=2)).replace(tzinfo=None).isoformat(),
                                   start_tz="Europe/Paris", end_tz="Europe/Paris", attendees=[CY])
    world.settle(ann, rounds=2)
    events = [e for e in world.google.calendar(ANN).events.values() if not e.deleted]
    assert [e.body.get("summary") for e in events] == ["Site visit"]
    # the provider sends the invitation: Cy (in the emulator's domain) has his copy
    assert world.google.send_updates["all"] >= 1


def test_a_time_changed_on_both_sides_waits_for_a_person(world):
    ann = world.connect("ann")
    start = soon(4)
    ev = world.google.put_event(ANN, timed("Budget", start))
    world.settle(ann, rounds=1)
    (rec,) = world.records().values()
    world.crm.calendar.user_edit(world.org, rec.external_id, start=(start + timedelta(hours=1)).replace(tzinfo=None).isoformat(),
                                 end=(start + timedelta(hours=2)).replace(tzinfo=None).isoformat())
    ui = world.ui(ANN)
    mine = ui.get(ev["id"])
    wall = lambda d: d.replace(tzinfo=None).isoformat()  # noqa: E731
    moved = mine.content.model_copy(update={"start": wall(start + timedelta(hours=3)),
                                            "end": wall(start + timedelta(hours=4))})
    assert ui.update_many([WriteRequest(key="u", content=moved, external_id=mine.external_id,
                                        etag=mine.etag)])[0].error is None
    world.settle(ann, rounds=1)
    conflicts = [i for i in world.items(ann).values() if i.status == "conflict"]
    assert len(conflicts) == 2 and len({i.review_id for i in conflicts}) == 1  # both sides, one review
    # neither side was overwritten while it waits
    assert world.records()[(rec.content.uid, "")].content.start == wall(start + timedelta(hours=1))
    assert ui.get(ev["id"]).content.start == wall(start + timedelta(hours=3))


def test_a_platform_rule_is_answered_by_a_fix_or_a_visible_quarantine(tmp_path):
    w = CalendarWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}")
    try:
        project = w.crm.calendar.create_project(w.org, "General")
        w.crm.calendar.configure_rules(w.org, [PmRule.project_required(), PmRule.max_duration("max 8 h", minutes=480)])
        fixed = w.connect("ann", sync={"fix_rules": [f"default_project={project}"]})
        w.google.put_event(ANN, timed("No project yet", soon(2)))
        w.google.put_event(ANN, timed("Offsite", soon(3), hours=30))  # longer than the rule allows, no fix named
        w.settle(fixed, rounds=2)
        recs = {r.content.title: r.content for r in w.records().values()}
        assert recs["No project yet"].project == project
        assert "Offsite" not in recs
        quarantined = [i for i in w.items(fixed).values() if i.status == "quarantined"]
        assert len(quarantined) == 1 and quarantined[0].error_code == "validation_rejected:max 8 h"
    finally:
        w.close()


def test_a_this_and_following_edit_on_the_platform_splits_the_series_everywhere(world):
    ann = world.connect("ann")
    uid, keys = _weekly_with_exceptions(world)
    world.settle(ann, rounds=2)
    master = world.records()[(uid, "")]
    later = soon(7) + timedelta(weeks=4)
    # a project manager moves the 5th meeting and every later one an hour later, renamed
    world.crm.calendar.user_edit_instance(world.org, master.external_id, keys[4], range="THISANDFUTURE",
                                          title="Weekly sync (new slot)",
                                          start=(later + timedelta(hours=1)).replace(tzinfo=None).isoformat(),
                                          end=(later + timedelta(hours=2)).replace(tzinfo=None).isoformat())
    world.settle(ann, rounds=3)
    recs = world.records()
    assert not [r for r in recs.values() if r.content.range]  # no THISANDFUTURE record is left
    old = recs[(uid, "")].content
    new = [r.content for k, r in recs.items() if k[0] != uid and r.content.is_series]
    assert "UNTIL=" in old.rrule and len(new) == 1
    assert new[0].title == "Weekly sync (new slot)" and new[0].start.endswith("10:00:00")
    # Ann's calendar holds the same two series, and the same instances as the platform
    from sync.calendar.recurrence import expand
    from datetime import datetime, timezone
    window = (datetime.now(timezone.utc), datetime.now(timezone.utc) + timedelta(days=120))
    ui = world.ui(ANN)
    mine = [r.content for r in ui.list_changes(None).records if r.content is not None]

    def instances(events):
        masters = [e for e in events if e.is_series]
        out = set()
        for m in masters:
            exs = [e for e in events if e.uid == m.uid and e.recurrence_id]
            out |= {(i.title, i.start_value().astimezone(timezone.utc).isoformat()) for i in expand(m, exs, *window)
                    if i.status != "cancelled"}
        return out

    assert instances(mine) == instances([r.content for r in recs.values()])
    assert len(instances(mine)) == 5  # 6 weekly, one cancelled: 3 before the split, 2 after (moved an hour)


def test_an_expired_sync_token_resyncs_with_no_duplicates(world):
    ann, cy = world.connect("ann"), world.connect("cy")
    uid, keys = _weekly_with_exceptions(world)
    meeting = _meeting(world)
    world.settle(ann, cy, rounds=2)
    before = {k: r.external_id for k, r in world.records().items()}
    world.google.expire_sync_tokens()  # Google answers the next list with 410 fullSyncRequired
    results = [world.cycle(cid) for cid in (ann, cy)]
    assert all(r["fetch"].full_resync for r in results)
    after = {k: r.external_id for k, r in world.records().items()}
    assert after == before  # the same records: nothing created twice, nothing deleted
    assert (meeting, "") in after and (uid, keys[1]) in after
    for r in results:
        assert sum(r["write"].created.values()) == sum(r["write"].deleted.values()) == 0


def test_a_quarantined_create_gives_its_meeting_claim_up(tmp_path):
    w = CalendarWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}")
    try:
        w.crm.calendar.configure_rules(w.org, [PmRule.max_duration("max 8 h", minutes=480)])
        ann = w.connect("ann")
        w.google.put_event(ANN, timed("Offsite", soon(3), hours=30))
        w.settle(ann, rounds=1)
        assert [i.status for i in w.items(ann).values()] == ["quarantined"]
        with w.sessions() as s:
            assert claims.count(s, w.org) == 0  # another calendar's copy is not left waiting on it
    finally:
        w.close()


def test_the_organisations_read_rolls_a_single_events_horizon_forward(tmp_path):
    import time as _time
    w = CalendarWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}", flavour="singles")
    try:
        w.org = f"org-old-{w.org}"  # an organisation set up 60 days ago: its horizon ends in 30 days
        w.crm.calendar.configure(w.org, "singles", now=_time.time() - 60 * 86400)
        from store import repo
        with w.sessions.begin() as s:
            repo.create_org(s, w.org, "Old", {})
        ann = w.connect("ann")
        start = soon(1)
        master = Event(title="Daily standup", organizer=ANN, start=start.replace(tzinfo=None).isoformat(),
                       end=(start + timedelta(minutes=15)).replace(tzinfo=None).isoformat(), start_tz=TZ, end_tz=TZ,
                       rrule="FREQ=DAILY")
        w.ui(ANN).create_many([WriteRequest(key="s", content=master)])
        w.settle(ann, rounds=1)
        rows = w.crm.calendar.list_events(w.org)
        last = max(r.event.start for r in rows if r.event.title == "Daily standup")
        # the read rolled the horizon to 90 days from now: instances reach past the old 30
        assert last >= (soon(80)).replace(tzinfo=None).isoformat()
        assert w.crm.calendar.settings(w.org).horizon_until >= _time.time() + 89 * 86400
    finally:
        w.close()


def test_a_meeting_made_separately_on_the_platform_and_in_a_calendar_is_found_by_similarity(world):
    ann = world.connect("ann")
    world.cycle(ann)
    start = soon(6, 15)
    wall = lambda d: d.replace(tzinfo=None).isoformat()  # noqa: E731
    world.crm.calendar.user_create(world.org, "ann", title="Quarterly planning", start=wall(start),
                                   end=wall(start + timedelta(hours=1)), start_tz=TZ, end_tz=TZ,
                                   attendees=[ANN, CY])
    world.ui(ANN).create_many([WriteRequest(key="s", content=Event(
        title="Quarterly Planning", organizer=ANN, start=wall(start), end=wall(start + timedelta(hours=1)),
        start_tz=TZ, end_tz=TZ, attendees=[ANN, CY]))])
    plan = world.cycle(ann)["plan"]
    assert plan.rules == {"linked_by_similarity": 1}
    world.settle(ann, rounds=2)
    assert world.calendar_titles(ANN) == ["Quarterly Planning"]  # not a second copy in the calendar
    (rec,) = world.records().values()  # nor on the platform, which keeps its own UID
    assert rec.content.uid != next(iter(world.google.calendar(ANN).events.values())).body["iCalUID"]


def test_two_alike_events_in_one_calendar_are_two_records(world):
    """One calendar's events are distinct by their UIDs: two alike ones (a standing slot
    booked twice) both reach the platform instead of waiting as each other's duplicate."""
    ann = world.connect("ann")
    start = soon(8, 13)
    body = timed("Sync", start, attendees=[{"email": ANN}, {"email": CY}])
    world.google.put_event(ANN, dict(body))
    world.google.put_event(ANN, dict(body, summary="Sync "))
    world.settle(ann, rounds=1)
    assert len(world.records()) == 2
    assert not [i for i in world.items(ann).values() if i.status == "duplicate"]


def test_a_meeting_deleted_from_the_platform_gives_its_claim_up(tmp_path):
    w = CalendarWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}")
    try:
        ann = w.connect("ann")
        ev = w.google.put_event(ANN, timed("Retro", soon(3)))
        w.settle(ann, rounds=1)
        with w.sessions() as s:
            assert claims.count(s, w.org) == 1
        w.ui(ANN).delete_many([WriteRequest(key="d", external_id=ev["id"])])
        w.settle(ann, rounds=1)
        assert w.records() == {}
        with w.sessions() as s:
            assert claims.count(s, w.org) == 0  # the same meeting brought back later is created again
    finally:
        w.close()
