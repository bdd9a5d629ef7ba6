"""The calendar kind's pure rules: what the generic core asks of an event.

Each series master and each exception is a record of its own (see models/event.py),
so the planner merges, links and quarantines them one by one. What differs from
contacts: similarity by time, title and people (`sync.calendar.matching`), the
problems of times and recurrence (`sync.calendar.problems`), fixes for a platform's
event rules (`sync.calendar.fixes`), and the meeting's time as fields only a person
settles when both sides changed it (`TIME_FIELDS`), whatever the policy.
"""

from __future__ import annotations

from models.event import TIME_FIELDS, Event
from sync.calendar.fixes import apply_fix_rules
from sync.calendar.matching import EventIndex, event_keys, score
from sync.calendar.problems import event_problems
from sync.kinds import KindRules
from sync.policy import SyncSettings


def _problems(event: Event, settings: SyncSettings) -> list[str]:
    return event_problems(event, max_field_len=settings.max_field_len)


CALENDAR: KindRules[Event] = KindRules(
    name="calendar",
    model=Event,
    problems=_problems,
    keys=event_keys,
    new_index=EventIndex,
    score=score,
    fix=apply_fix_rules,
    manual_fields=TIME_FIELDS,
    # two events of one calendar are two events: the provider gave each its own UID
    twins_within_side=False,
    keys_version="1",
)
