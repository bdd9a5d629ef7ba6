"""Whose copy speaks for a meeting: the organizer's for content, an attendee's for its
own answer only (sync/calendar/roles.py, activities/calendar.adopt)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from activities.calendar import adopt
from models.event import Event
from models.plan import Decision, Write
from sync.calendar.roles import attendee_merge, is_attendee_copy, restrict_attendee_writes

ANN, BOB, CY = "ann@acme.test", "bob@acme.test", "cy@other.test"

MEETING = Event(uid="m1@acme.test", title="Roadmap", organizer=ANN, start="2026-12-07T09:00:00",
                end="2026-12-07T10:00:00", start_tz="Europe/Paris", end_tz="Europe/Paris",
                attendees=[ANN, BOB, CY], responses=[f"{ANN}=accepted", f"{BOB}=needsAction", f"{CY}=needsAction"],
                project="P-1")


def test_a_copy_is_an_attendees_when_someone_else_organizes_it():
    assert is_attendee_copy(MEETING, BOB)
    assert not is_attendee_copy(MEETING, ANN)
    assert not is_attendee_copy(MEETING, "ANN@acme.test")  # addresses compare case-folded
    assert not is_attendee_copy(MEETING.model_copy(update={"organizer": ""}), BOB)  # platform-made: no organizer yet


def test_an_attendee_adds_only_their_answer():
    bobs = MEETING.model_copy(update={"title": "Roadmap (Bob's local title)", "start": "2026-12-07T11:00:00"})
    bobs = bobs.with_response(BOB, "accepted")
    merged = attendee_merge(MEETING, bobs, MEETING, BOB)
    assert merged.response_of(BOB) == "accepted"
    assert merged.title == "Roadmap" and merged.start == MEETING.start  # content stays the organizer's


def test_an_unchanged_answer_leaves_the_record_alone():
    platform = MEETING.with_response(BOB, "declined")  # Bob answered on the platform since
    bobs = MEETING  # his calendar still shows the answer of the last sync
    assert attendee_merge(MEETING, bobs, platform, BOB) == platform


@given(st.sampled_from(["needsAction", "accepted", "tentative", "declined"]),
       st.sampled_from(["needsAction", "accepted", "tentative", "declined"]))
def test_attendee_merge_never_changes_anything_but_that_attendees_answer(before, after):
    base = MEETING.with_response(BOB, before)
    bobs = base.model_copy(update={"title": "changed", "location": "elsewhere"}).with_response(BOB, after)
    merged = attendee_merge(base, bobs, MEETING, BOB)
    assert merged.model_copy(update={"responses": MEETING.responses}) == MEETING
    assert {r for r in merged.responses if not r.startswith(BOB)} == {r for r in MEETING.responses if not r.startswith(BOB)}


def _decision(*writes: Write, snapshot: Event = MEETING, **kw) -> Decision:
    fields = {"outcome": "apply", "rule": "merged", "mailbox_id": "g1", "platform_id": "p1", "link_id": 1,
              "link": True, "writes": list(writes), "snapshot": snapshot, **kw}
    return Decision[Event](**fields)


def test_writes_into_an_attendees_copy_are_dropped_by_a_named_rule():
    d = _decision(Write[Event](side="mailbox", op="update", external_id="g1", content=MEETING))
    out = restrict_attendee_writes(d, BOB, MEETING)
    assert out.writes == [] and out.rule == "attendee_copy_follows_organizer" and out.link
    # the organizer's own copy is written as planned
    assert restrict_attendee_writes(d, ANN, MEETING) == d


def test_an_attendee_removing_their_copy_never_deletes_the_meeting():
    d = _decision(Write[Event](side="platform", op="delete", external_id="p1"), link=False, unlink=True)
    out = restrict_attendee_writes(d, BOB, None)
    assert out.writes == [] and out.unlink and out.rule == "attendee_left_meeting"


def test_an_attendees_answer_still_reaches_the_platform():
    d = _decision(Write[Event](side="platform", op="update", external_id="p1", content=MEETING.with_response(BOB, "accepted")),
                  Write[Event](side="mailbox", op="update", external_id="g1", content=MEETING))
    out = restrict_attendee_writes(d, BOB, MEETING)
    assert [(w.side, w.op) for w in out.writes] == [("platform", "update")]


def test_a_second_copy_joining_a_meeting_adds_what_its_role_allows():
    created_from_bobs = MEETING.model_copy(update={"title": "Roadmap (old)", "project": "P-1"})
    # Ann's (the organizer's) copy arrives second: its content wins, the project and Bob's answer stay
    joined = adopt(MEETING.model_copy(update={"project": ""}), created_from_bobs.with_response(BOB, "accepted"), ANN)
    assert joined.title == "Roadmap" and joined.project == "P-1" and joined.response_of(BOB) == "accepted"
    # Cy's copy arrives second: only Cy's answer is added
    cys = MEETING.model_copy(update={"title": "whatever Cy sees"}).with_response(CY, "tentative")
    joined = adopt(cys, MEETING, CY)
    assert joined == MEETING.with_response(CY, "tentative")
