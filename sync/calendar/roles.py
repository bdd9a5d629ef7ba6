"""Whose copy of a meeting speaks for it: the organizer's, for content; each attendee's,
for that attendee's answer only.

A meeting on several connected calendars is one platform record. Every copy is linked
to it, but they are not equals: an attendee cannot edit the meeting (the provider keeps
their copy in step with the organizer's), so an attendee's copy that differs from the
record is stale or local, not an edit to spread. Pushing it back would let the last
attendee to sync undo the organizer's change. The rules here are pure; the calendar
pipeline applies them around the generic planner (activities/calendar.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.event import Event
from models.plan import Decision
from sync.kinds import KindRules
from sync.merge import MergeResult
from sync.policy import Policy


def is_attendee_copy(event: Event | None, me: str) -> bool:
    """A copy organized by someone else than the connected user (whose address is `me`)."""
    if event is None or not me:
        return False
    return bool(event.organizer) and event.organizer != me.casefold()


def attendee_merge(base: Event | None, mine: Event, platform: Event, me: str) -> Event:
    """The record after an attendee's copy is read: the platform's content, with this
    attendee's answer taken from the copy when it changed since the last sync."""
    answer = mine.response_of(me)
    before = base.response_of(me) if base is not None else None
    if answer is None or answer == before or answer == platform.response_of(me):
        return platform
    return platform.with_response(me, answer)


@dataclass(frozen=True)
class CalendarRulesFor(KindRules):
    """The calendar's rules as seen from one connected calendar: its owner's address
    decides whether a copy is the organizer's (merged both ways) or an attendee's."""

    me: str = ""

    def merge(self, base, mailbox, platform, policy: Policy, *, mailbox_time=None, platform_time=None,
              decided=None, **more) -> MergeResult:
        if is_attendee_copy(mailbox, self.me) or is_attendee_copy(platform, self.me):
            return MergeResult(attendee_merge(base, mailbox, platform, self.me), (), ())
        result = super().merge(base, mailbox, platform, policy, mailbox_time=mailbox_time,
                               platform_time=platform_time, decided=decided, **more)
        return MergeResult(keep_identity(result.merged, platform), result.conflicts, result.unresolved)


def keep_identity(merged: Event, platform: Event) -> Event:
    """(UID, RECURRENCE-ID) are who a record is, not a value to merge: two events linked
    by similarity keep their own (the provider assigned one, the platform the other, and
    neither lets it change). The link's snapshot carries the platform's."""
    if platform.uid and (merged.uid, merged.recurrence_id) != (platform.uid, platform.recurrence_id):
        return merged.model_copy(update={"uid": platform.uid, "recurrence_id": platform.recurrence_id})
    return merged


def restrict_attendee_writes(d: Decision, me: str, mailbox: Event | None) -> Decision:
    """Drop what an attendee's copy must not cause: writes into the copy (the organizer's
    provider updates it) and the platform record's deletion when the attendee removed
    their copy (they left the meeting; it goes on). The decision keeps its rule, so the
    item still ends in a named state; what was dropped is named in `problems`."""
    content = mailbox or d.snapshot or next((w.content for w in d.writes if w.content is not None), None)
    if not is_attendee_copy(content, me):
        return d
    kept, dropped = [], []
    for w in d.writes:
        if w.side == "mailbox" or (w.side == "platform" and w.op == "delete"):
            dropped.append(f"{w.side}_{w.op}")
        else:
            kept.append(w)
    if not dropped:
        return d
    update: dict = {"writes": kept}
    if any(x == "platform_delete" for x in dropped):
        update.update(unlink=True, link=False, rule="attendee_left_meeting")
    elif not kept:
        update["rule"] = "attendee_copy_follows_organizer"
    return d.model_copy(update=update)
