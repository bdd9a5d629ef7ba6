"""Field-level three-way merge of a record against the last synced snapshot.

Any kind's canonical model: its `str` fields are scalars, its `tuple[str, ...]`
fields sets. Scalars: a field changed on one side only takes that side's value;
changed differently on both sides it is a conflict that the policy settles (or
leaves open under the manual policy). Sets (a contact's emails and phones):
additions from either side are kept and removals from either side are applied,
which never conflicts and loses no edit.

A kind may name `manual_fields`, settled only by a person whatever the policy: the
fields of one fact that must not be half-taken from each side (an event's start,
end, zones and recurrence: picking a side silently moves a meeting). When both sides
changed any of them since the base, every one of them on which the sides now
disagree is a conflict left open, even if each side changed a different one (a
meeting moved on one side and lengthened on the other has no right answer).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, get_origin

from pydantic import BaseModel

from sync.policy import Policy


@dataclass(frozen=True)
class MergeResult:
    #: the merged record; fields left open by a manual policy keep the base value
    merged: Any
    #: fields changed differently on both sides (before any policy)
    conflicts: tuple[str, ...]
    #: conflicting fields the policy did not settle (manual) and a person must decide
    unresolved: tuple[str, ...]


@lru_cache(maxsize=None)
def field_kinds(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(scalar fields, set fields) of a canonical model, in declaration order."""
    scalars, sets = [], []
    for name, info in model.model_fields.items():
        (sets if get_origin(info.annotation) is tuple else scalars).append(name)
    return tuple(scalars), tuple(sets)


def merge_sets(base: tuple[str, ...] | None, mine: tuple[str, ...], theirs: tuple[str, ...]) -> tuple[str, ...]:
    if base is None:
        return tuple(sorted(set(mine) | set(theirs)))
    b, m, t = set(base), set(mine), set(theirs)
    removed = (b - m) | (b - t)
    return tuple(sorted((b | m | t) - removed))


def _settle(policy: Policy, mailbox_value: str, platform_value: str, mailbox_time: float | None, platform_time: float | None) -> str | None:
    if policy == "platform_wins":
        return platform_value
    if policy == "mailbox_wins":
        return mailbox_value
    if policy == "newest_wins":
        # Ties and unknown times go to the platform: it is the system of record.
        if mailbox_time is not None and (platform_time is None or mailbox_time > platform_time):
            return mailbox_value
        return platform_value
    return None  # manual


def _manual_conflicts(base: BaseModel | None, mailbox: BaseModel, platform: BaseModel,
                      manual_fields: Collection[str]) -> set[str]:
    """The manual fields a person must settle: those the sides disagree on, once both
    changed the group (a first link, with no base, counts as both having changed it)."""
    if not manual_fields:
        return set()
    differ = {f for f in manual_fields if getattr(mailbox, f) != getattr(platform, f)}
    if base is None:
        # An empty field is not an opinion, as for any field at first link.
        return {f for f in differ if getattr(mailbox, f) and getattr(platform, f)}
    m_changed = any(getattr(mailbox, f) != getattr(base, f) for f in manual_fields)
    p_changed = any(getattr(platform, f) != getattr(base, f) for f in manual_fields)
    return differ if m_changed and p_changed else set()


def three_way_merge(
    base: BaseModel | None,
    mailbox: BaseModel,
    platform: BaseModel,
    policy: Policy,
    *,
    mailbox_time: float | None = None,
    platform_time: float | None = None,
    decided: dict[str, str] | None = None,
    manual_fields: Collection[str] = (),
) -> MergeResult:
    """Merge both sides against `base` (None when two records are first linked).

    `decided` carries a person's answers for fields of an earlier manual conflict;
    they settle exactly those fields and nothing else. `manual_fields` (see the
    module docstring) are never settled by the policy.
    """
    decided = decided or {}
    model = type(mailbox)
    scalar_fields, set_fields = field_kinds(model)
    manual = _manual_conflicts(base, mailbox, platform, manual_fields)
    values: dict[str, object] = {}
    conflicts: list[str] = []
    unresolved: list[str] = []
    for name in scalar_fields:
        m, p = getattr(mailbox, name), getattr(platform, name)
        b = getattr(base, name) if base is not None else None
        if name in manual:
            conflicts.append(name)
            if name in decided:
                values[name] = decided[name]
            else:
                unresolved.append(name)
                values[name] = b if b is not None else p
        elif m == p:
            values[name] = m
        elif b is not None and m == b:
            values[name] = p
        elif b is not None and p == b:
            values[name] = m
        elif b is None and not m:
            values[name] = p  # first link: an empty field is not an opinion
        elif b is None and not p:
            values[name] = m
        else:
            conflicts.append(name)
            if name in decided:
                values[name] = decided[name]
                continue
            settled = _settle(policy, m, p, mailbox_time, platform_time)
            if settled is None:
                unresolved.append(name)
                values[name] = b if b is not None else p
            else:
                values[name] = settled
    for name in set_fields:
        b = getattr(base, name) if base is not None else None
        values[name] = merge_sets(b, getattr(mailbox, name), getattr(platform, name))
    return MergeResult(model(**values), tuple(conflicts), tuple(unresolved))
