"""The calendar stages of `make demo`: meetings flow between an organisation's calendars
(Google Calendar and Microsoft 365) and its project-management platform, and each stage
prints what a platform user now sees. `tests/test_calendar_e2e.py` runs the same stages
and checks them.

Every stage wakes the calendars the way a push notification would (`sync_now`: the
organisation's workflow reads the platform, each calendar cycles) and reads the result
from the platform, never from workflow history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

from models.event import Event, instance_key
from store import repo
from workers import client as api
from workers.calendar_scenario import KINDS, TZ, CalendarScenario, soon, wall
from workers.stages import Stages


@dataclass
class Observed:
    """What each stage produced, for the test to check on the platform."""

    series_uid: str = ""
    instance_keys: list[str] = field(default_factory=list)
    meeting_uid: str = ""
    platform_event_id: str = ""
    conflict_review: int | None = None
    conflict_uid: str = ""
    unfixable_title: str = ""
    fixed_title: str = ""
    #: strings that must never appear in workflow history
    secrets: list[str] = field(default_factory=list)


class CalendarStages(Stages):
    kinds = KINDS

    def __init__(self, client, sc: CalendarScenario, say: Callable[[str], None], **kwargs) -> None:
        super().__init__(client, sc, say, **kwargs)
        self.seen = Observed()

    # -- plumbing ----------------------------------------------------------------
    def item(self, who: str, side: str, external_id: str):
        with self.sc.sessions() as s:
            return repo.get_items(s, self.sc.connections[who], side, [external_id], kind="calendar").get(external_id)

    def show(self, key: tuple[str, str], label: str = "") -> None:
        rec = self.sc.records().get(key)
        if rec is None:
            self.say(f"   {label or 'event'}: not on the platform")
            return
        e: Event = rec.content
        head = f"   {label + ': ' if label else ''}{rec.external_id}"
        if e.status == "cancelled":
            self.say(f"{head} cancelled (the instance of {e.recurrence_id})")
            return
        extra = f", rule {e.rrule}" if e.rrule else ""
        project = self.sc.project_names.get(e.project, e.project or "none")
        answers = ", ".join(r.replace("=", ": ") for r in e.responses)
        self.say(f"{head} {e.title!r} at {e.start} {e.start_tz}{extra}, project {project}"
                 f"{', answers ' + answers if answers else ''}")

    # -- the stages ----------------------------------------------------------------
    async def run(self) -> Observed:
        await self.start()
        await self.series()
        await self.shared_meeting()
        await self.platform_event()
        await self.conflict_and_rules()
        return self.seen

    async def series(self) -> None:
        sc, o = self.sc, self.seen
        start = soon(7)
        master = Event(title="Weekly product sync", description="agenda in the doc", organizer=sc.people["ann"].email,
                       start=wall(start), end=wall(start + timedelta(hours=1)), start_tz=TZ, end_tz=TZ,
                       rrule="FREQ=WEEKLY;COUNT=8")
        (rec,) = sc.write("ann", master)
        o.series_uid = uid = rec.content.uid
        o.instance_keys = keys = [instance_key(start + timedelta(weeks=i)) for i in range(8)]
        at = lambda i, h=0.0: start + timedelta(weeks=i, hours=h)  # noqa: E731
        sc.write("ann",
                 master.model_copy(update={"uid": uid, "recurrence_id": keys[1], "rrule": "",
                                           "start": wall(at(1, 3)), "end": wall(at(1, 4))}),
                 master.model_copy(update={"uid": uid, "recurrence_id": keys[2], "rrule": "",
                                           "title": "Weekly product sync: launch review",
                                           "start": wall(at(2)), "end": wall(at(2, 1))}),
                 Event(uid=uid, recurrence_id=keys[3], status="cancelled"))
        o.secrets += ["Weekly product sync", "agenda in the doc", "launch review"]
        await self.sync_in_order("ann")
        self.say("\n== calendar 1: Ann's weekly series in Google Calendar, one instance moved, one retitled, "
                 "one cancelled")
        self.say(f"   the platform ({sc.flavour} flavour) holds the series and its three exceptions (Google keeps no "
                 "project: the organisation's fix files them under General):")
        self.show((uid, ""), "series")
        self.show((uid, keys[1]), "moved")
        self.show((uid, keys[2]), "edited")
        self.show((uid, keys[3]), "cancelled")

    async def shared_meeting(self) -> None:
        sc, o = self.sc, self.seen
        o.meeting_uid = uid = sc.invite("ann", "Pricing workshop", soon(3, 14), 1.5, ["cy", "bob"])
        o.secrets += ["Pricing workshop"]
        await self.sync("bob", "cy", "ann")  # at the same moment
        self.say("\n== calendar 2: Ann (Google) invites Cy (Google) and Bob (Microsoft 365); the meeting is on "
                 "three calendars with one iCalUID")
        same = [k for k in sc.records() if k[0] == uid]
        self.say(f"   the three calendars synced at the same moment: {len(same)} platform record for the meeting")
        self.show((uid, ""), "meeting")
        sc.answer("cy", uid, "accepted")
        sc.answer("bob", uid, "tentative")
        await self.sync_in_order("cy", "bob")
        self.say("   Cy accepts in Google Calendar, Bob answers tentatively in Outlook; each copy adds only "
                 "its owner's answer:")
        self.show((uid, ""), "meeting")

    async def platform_event(self) -> None:
        sc, o = self.sc, self.seen
        start = soon(5, 10)
        made = sc.crm.calendar.user_create(sc.org_id, "ann", title="Customer site visit", start=wall(start),
                                           end=wall(start + timedelta(hours=2)), start_tz=TZ, end_tz=TZ,
                                           project=sc.launch, attendees=[sc.people["cy"].email])
        o.platform_event_id = made.id
        o.secrets += ["Customer site visit"]
        await self.sync_in_order("ann")
        self.say("\n== calendar 3: a project manager schedules a site visit for Ann on the platform")
        mine = [e for e in sc.calendar_events("ann") if e.title == "Customer site visit"]
        if mine:
            e = mine[0]
            self.say(f"   it is in Ann's Google Calendar at {e.start} {e.start_tz}, organizer {e.organizer}; "
                     f"Google sends Cy the invitation ({len([x for x in sc.calendar_events('cy') if x.uid == e.uid])}"
                     " copy in his calendar)")
        else:
            self.say("   not in Ann's calendar yet")

    async def conflict_and_rules(self) -> None:
        sc, o = self.sc, self.seen
        start = soon(4, 11)
        (rec,) = sc.write("ann", Event(title="Budget review", organizer=sc.people["ann"].email, start=wall(start),
                                       end=wall(start + timedelta(hours=1)), start_tz=TZ, end_tz=TZ))
        o.conflict_uid = rec.content.uid
        o.fixed_title, o.unfixable_title = "Budget review", "Offsite planning"
        sc.write("ann", Event(title="Offsite planning", organizer=sc.people["ann"].email, start=wall(soon(9)),
                              end=wall(soon(9) + timedelta(hours=30)), start_tz=TZ, end_tz=TZ))
        o.secrets += ["Budget review", "Offsite planning"]
        await self.sync_in_order("ann")
        self.say("\n== calendar 4: platform rules, and a time changed on both sides")
        self.say("   'an event needs a project': Ann's new event had none, the organisation's fix filed it:")
        self.show((o.conflict_uid, ""), "budget review")
        with sc.sessions() as s:
            quarantined = [r for r in repo.items_by_status(s, sc.connections["ann"], ["quarantined"], kind="calendar")]
        for q in quarantined:
            self.say(f"   a 30-hour event breaks 'at most 8 hours' (no fix named): item {q.id} quarantined, "
                     f"{q.error_code}")
        platform_rec = sc.records()[(o.conflict_uid, "")]
        sc.crm.calendar.user_edit(sc.org_id, platform_rec.external_id, start=wall(start + timedelta(hours=1)),
                                  end=wall(start + timedelta(hours=2)))
        ui = sc.ui("ann")
        mine = ui.get(rec.external_id)
        moved = mine.content.model_copy(update={"start": wall(start + timedelta(hours=3)),
                                                "end": wall(start + timedelta(hours=4))})
        ui.update_many([__import__("connectors.protocols", fromlist=["WriteRequest"]).WriteRequest(
            key="move", content=moved, external_id=mine.external_id, etag=mine.etag)])
        await self.sync_in_order("ann")
        item = self.item("ann", "mailbox", rec.external_id)
        o.conflict_review = item.review_id if item is not None else None
        self.say(f"   the platform moves it to {wall(start + timedelta(hours=1))[11:16]}, Ann to "
                 f"{wall(start + timedelta(hours=3))[11:16]} in her calendar: "
                 f"{item.status if item else 'not seen'}, review {o.conflict_review} (neither side overwritten)")
        if o.conflict_review is not None:
            self.say(f"   answering review {o.conflict_review} with 'mailbox' (signal 'resolve': review id and choice)")
            await api.resolve(self.client, sc.sessions, sc.connections["ann"], o.conflict_review, "mailbox")
            await self.sync_in_order("ann")
            for _ in range(50):
                if sc.records()[(o.conflict_uid, "")].content.start == moved.start:
                    break
                await asyncio.sleep(0.1)
            self.show((o.conflict_uid, ""), "budget review")
