"""Validation rules an organisation configures on its PM calendar.

They are the refusals a project-management product really makes ("an event needs a
project", "end after start", "no event longer than a day"), so the calendar kind's
per-item quarantine path meets them. A rejection names the rule and the field and
never the value: it ends up in quarantine lists and workflow history.

Time rules skip cancelled events: a cancelled instance only says "not this one".
An exception without a project of its own is filed under its series' project, which
is what the `project` check is given as `inherited_project`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

from models.errors import Fatal, ValidationRejected
from models.event import Event

KINDS = ("project_required", "end_after_start", "max_duration")


@dataclass(frozen=True)
class PmRule:
    """One configured rule; `name` is the customer's own label, reported on rejection."""

    name: str
    kind: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def project_required(cls, name: str = "an event needs a project") -> "PmRule":
        """The event's project must be set and be one of the organisation's projects."""
        return cls(name, "project_required")

    @classmethod
    def end_after_start(cls, name: str = "end after start") -> "PmRule":
        return cls(name, "end_after_start")

    @classmethod
    def max_duration(cls, name: str, *, minutes: int) -> "PmRule":
        return cls(name, "max_duration", {"minutes": int(minutes)})

    def to_row(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_row(cls, row: Any) -> "PmRule":
        return cls(row.name, row.kind, dict(row.params or {}))


def validate_definition(rule: PmRule) -> None:
    """A rule that could never apply is a misconfiguration (Fatal), not a per-item error."""
    if not rule.name:
        raise Fatal("a rule needs a name")
    if rule.kind not in KINDS:
        raise Fatal(f"unknown calendar rule kind {rule.kind!r}")
    if rule.kind == "max_duration" and int(rule.params.get("minutes", 0)) <= 0:
        raise Fatal(f"rule {rule.name!r}: minutes must be > 0")


def _instant(value: date | datetime) -> datetime:
    """Comparable form: dates at midnight, naive (floating) wall clocks read as UTC."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def duration(event: Event) -> timedelta | None:
    """End minus start, or None when either is missing or unreadable.

    A floating start with a zoned end (or the reverse) is compared wall clock to
    wall clock: there is no instant to compare.
    """
    start, end = event.start_value(), event.end_value()
    if start is None or end is None:
        return None
    if isinstance(start, datetime) and isinstance(end, datetime) and (start.tzinfo is None) != (end.tzinfo is None):
        return end.replace(tzinfo=None) - start.replace(tzinfo=None)
    return _instant(end) - _instant(start)


def check(rule: PmRule, event: Event, *, projects: frozenset[str], inherited_project: str = "") -> ValidationRejected | None:
    if rule.kind == "project_required":
        project = event.project or inherited_project
        if not project or project not in projects:
            return ValidationRejected(f"rule {rule.name!r}: field 'project' must name a project of the organisation",
                                      field="project", rule=rule.name)
        return None
    if event.status == "cancelled":
        return None
    if rule.kind == "end_after_start":
        if event.start_value() is None:
            return ValidationRejected(f"rule {rule.name!r}: field 'start' is required", field="start", rule=rule.name)
        d = duration(event)
        if d is None or d <= timedelta(0):
            return ValidationRejected(f"rule {rule.name!r}: field 'end' must be after the start",
                                      field="end", rule=rule.name)
    elif rule.kind == "max_duration":
        d = duration(event)
        limit = timedelta(minutes=int(rule.params["minutes"]))
        if d is not None and d > limit:
            return ValidationRejected(f"rule {rule.name!r}: field 'end' is further from the start than "
                                      f"{int(rule.params['minutes'])} minutes", field="end", rule=rule.name)
    return None


def first_violation(rules: Iterable[PmRule], event: Event, *, projects: frozenset[str],
                    inherited_project: str = "") -> ValidationRejected | None:
    """The first broken rule in configured order (a product reports one error per save)."""
    for rule in rules:
        err = check(rule, event, projects=projects, inherited_project=inherited_project)
        if err is not None:
            return err
    return None
