"""Named fix rules for a platform's refusal of an event, like sync.fixes for contacts.

Each rule is pure and conservative: it rewrites only what a platform rule names and
only in the way the organisation configured, and returns None when it cannot help
(the event is then quarantined with the platform's error).

An organisation configures rules in its sync settings' `fix_rules`, and that list is
the one path from settings to fixes (the executor passes it, nothing else), so a
rule that needs a value carries it: `"default_project=PRJ-7"` files project-less
events under PRJ-7, `"clamp_duration=8"` caps a duration at 8 hours (`"=2d"` at two
days). A `{"name": ..., "value": ...}` entry is read the same way.

- `default_project`: an event the platform refuses for lacking a project gets the
  configured one (never overwriting a project a person chose);
- `end_after_start`: an end missing or not after the start becomes start + 1 hour
  (the next day for an all-day event);
- `clamp_duration`: an event longer than the maximum ends at start + maximum.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Callable

from models.event import Event

FixRule = Callable[[Event, str | None, str], Event | None]

DEFAULT_MAX_DURATION = timedelta(hours=24)
_TIME_FIELDS = (None, "start", "end", "duration")


def _text(value: date | datetime) -> str:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(timespec="seconds")
    return value.isoformat()


def _end_at(event: Event, end: date | datetime) -> Event:
    """`event` ending at `end` (a value in the start's zone), its end zone the start's."""
    update: dict[str, str] = {"end": _text(end)}
    if isinstance(end, datetime):
        update["end_tz"] = event.start_tz
    else:
        update["end_tz"] = ""
    return event.model_copy(update=update)


def default_project(event: Event, field: str | None, arg: str) -> Event | None:
    if field not in (None, "project") or event.project or not arg.strip():
        return None
    return event.model_copy(update={"project": arg.strip()})


def end_after_start(event: Event, field: str | None, arg: str = "") -> Event | None:
    if field not in _TIME_FIELDS:
        return None
    start, end = event.start_value(), event.end_value()
    if start is None:
        return None
    all_day = not isinstance(start, datetime)
    if end is not None and isinstance(end, datetime) != all_day:
        end = None  # an all-day end on a timed event (or the reverse) is no end at all
    if end is not None and isinstance(start, datetime) and (start.tzinfo is None) != (end.tzinfo is None):
        end = None
    if end is not None and end > start:
        return None
    return _end_at(event, start + (timedelta(days=1) if all_day else timedelta(hours=1)))


def _parse_duration(arg: str) -> timedelta | None:
    text = arg.strip().lower()
    if not text:
        return DEFAULT_MAX_DURATION
    try:
        if text.endswith("d"):
            value = timedelta(days=float(text[:-1]))
        else:
            value = timedelta(hours=float(text.removesuffix("h")))
    except ValueError:
        return None
    return value if value > timedelta(0) else None


def clamp_duration(event: Event, field: str | None, arg: str = "") -> Event | None:
    if field not in _TIME_FIELDS:
        return None
    limit = _parse_duration(arg)
    start, end = event.start_value(), event.end_value()
    if limit is None or start is None or end is None or isinstance(start, datetime) != isinstance(end, datetime):
        return None
    if isinstance(start, datetime):
        if (start.tzinfo is None) != (end.tzinfo is None):
            return None
        if start.tzinfo is None:
            return _end_at(event, start + limit) if end - start > limit else None
        # elapsed time (a DST change inside counts); the end written in the start's zone
        s_utc, e_utc = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
        return _end_at(event, (s_utc + limit).astimezone(start.tzinfo)) if e_utc - s_utc > limit else None
    days = max(1, limit.days)
    if (end - start).days <= days:
        return None
    return _end_at(event, start + timedelta(days=days))


FIX_RULES: dict[str, FixRule] = {
    "default_project": default_project,
    "end_after_start": end_after_start,
    "clamp_duration": clamp_duration,
}


def _named(entry: object) -> tuple[str, str]:
    if isinstance(entry, Mapping):
        return str(entry.get("name", "")), str(entry.get("value", "") or "")
    name, _, arg = str(entry).partition("=")
    return name.strip(), arg.strip()


def apply_fix_rules(event: Event, field: str | None, rule_names: tuple[str, ...], *,
                    default_project_id: str = "",
                    max_duration: timedelta | None = None) -> tuple[Event, list[str]] | None:
    """Apply every configured rule that changes something, in order; None if none did.

    `default_project_id` and `max_duration` supply a rule's value when its entry in
    `rule_names` carries none (a caller holding typed settings).
    """
    applied: list[str] = []
    current = event
    for entry in rule_names:
        name, arg = _named(entry)
        rule = FIX_RULES.get(name)
        if rule is None:
            continue
        if not arg and name == "default_project":
            arg = default_project_id
        if not arg and name == "clamp_duration" and max_duration is not None:
            arg = f"{max_duration.total_seconds() / 3600}"
        fixed = rule(current, field, arg)
        if fixed is not None and fixed != current:
            current, applied = fixed, applied + [name]
    return (current, applied) if applied else None
