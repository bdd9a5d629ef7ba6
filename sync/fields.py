"""Which fields flow where: per-organisation field mapping and direction, and what each
side can hold. Pure: the planner asks it before and after the three-way merge.

Two problems share one mechanism, "this side's value for this field is not an opinion":

- A side that cannot hold a field (Graph has three address slots and one mobile
  number, the platform may not map a birthday) reports it empty or reduced. Read
  literally, that is a deletion which the merge would carry to the other side.
  `restore` puts back, from the last synced snapshot, what the side could not hold.
- A direction (`platform_to_mailbox`, `mailbox_to_platform`, `none`) blocks one
  side's changes to a field. `align` masks a blocked change with the snapshot value
  before the merge and names the field, so the decision carries it (rule
  `direction_blocked`) instead of the change vanishing.

After the merge, `keep_for` lists the fields a write must leave as the side holds
them: those that do not flow into that side, and those the merge did not change.
Connectors leave such fields untouched, so an earlier blocked edit on the receiving
side is not overwritten by a write about another field.

Field names are canonical `Contact` fields; one custom field is `custom:<name>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from models.contact import FIELDS, SET_FIELDS, EmailAddress, PhoneNumber, PostalAddress
from models.record import Side

Direction = Literal["two_way", "platform_to_mailbox", "mailbox_to_platform", "none"]
DIRECTIONS: tuple[str, ...] = ("two_way", "platform_to_mailbox", "mailbox_to_platform", "none")
CUSTOM_PREFIX = "custom:"


# --- field access, a custom field as a field of its own ------------------------------


def get(content: Any, name: str) -> Any:
    if name.startswith(CUSTOM_PREFIX):
        return content.custom_fields().get(name[len(CUSTOM_PREFIX):], "")
    return getattr(content, name)


def put(content: Any, name: str, value: Any) -> Any:
    if name.startswith(CUSTOM_PREFIX):
        key = name[len(CUSTOM_PREFIX):]
        kept = [c for c in content.custom if c.partition("=")[0].strip().casefold() != key.casefold()]
        if value:
            kept.append(f"{key}={value}")
        return content.model_copy(update={"custom": type(content).model_validate({"custom": kept}).custom})
    return content.model_copy(update={name: value})


def _empty(name: str) -> Any:
    return () if name in SET_FIELDS else ""


# --- the per-organisation mapping -------------------------------------------------------


@dataclass(frozen=True)
class FieldRule:
    """One canonical field (or `custom:<name>`) of an organisation's mapping."""

    field: str
    #: the platform field it maps to; "" = the platform does not hold it
    platform: str
    direction: Direction = "two_way"
    #: custom fields only: the People `userDefined` key and the Graph extended property name
    people_key: str = ""
    graph_property: str = ""


@dataclass(frozen=True)
class FieldMap:
    """An organisation's mapping; a field it does not name maps to itself, two-way."""

    rules: tuple[FieldRule, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "FieldMap":
        """`{"birthday": {"platform": "dob", "direction": "mailbox_to_platform"}, "custom:tier": {...}}`."""
        rules = []
        for name, spec in sorted((data or {}).items()):
            name = str(name)
            if name not in FIELDS and not (name.startswith(CUSTOM_PREFIX) and len(name) > len(CUSTOM_PREFIX)):
                # a configuration name, not a person's data: naming it helps whoever typed it
                raise ValueError(f"unknown contact field {name[:60]!r} in the field mapping "
                                 f"(known: {', '.join(FIELDS)}, or {CUSTOM_PREFIX}NAME)")
            spec = dict(spec or {})
            direction = spec.get("direction", "two_way")
            if direction not in DIRECTIONS:
                raise ValueError("field mapping has an unknown direction")
            default = name[len(CUSTOM_PREFIX):] if name.startswith(CUSTOM_PREFIX) else name
            platform = spec.get("platform", default)
            rules.append(FieldRule(name, "" if platform is None else str(platform), direction,
                                   str(spec.get("people_key") or ""), str(spec.get("graph_property") or "")))
        return cls(tuple(rules))

    def to_dict(self) -> dict[str, dict[str, str]]:
        out = {}
        for r in self.rules:
            d = {"platform": r.platform, "direction": r.direction}
            if r.people_key:
                d["people_key"] = r.people_key
            if r.graph_property:
                d["graph_property"] = r.graph_property
            out[r.field] = d
        return out

    def rule(self, name: str) -> FieldRule:
        for r in self.rules:
            if r.field == name:
                return r
        default = name[len(CUSTOM_PREFIX):] if name.startswith(CUSTOM_PREFIX) else name
        return FieldRule(name, default)

    def direction(self, name: str) -> str:
        return self.rule(name).direction

    def flows_into(self, name: str, side: Side) -> bool:
        d = self.direction(name)
        return d == "two_way" or d == ("platform_to_mailbox" if side == "mailbox" else "mailbox_to_platform")

    def directional(self) -> list[str]:
        """Fields (`custom` as a whole, or `custom:<name>`) whose direction is not two-way."""
        return [r.field for r in self.rules if r.direction != "two_way"]

    def platform_name(self, name: str) -> str:
        return self.rule(name).platform

    def custom_names(self) -> list[str]:
        """Custom fields the mapping names."""
        return [r.field[len(CUSTOM_PREFIX):] for r in self.rules if r.field.startswith(CUSTOM_PREFIX)]

    def not_on_platform(self) -> frozenset[str]:
        return frozenset(r.field for r in self.rules if not r.platform)

    def mailbox_key(self, custom_name: str, key_field: str) -> str:
        """A custom field's key in a mailbox: the rule's `key_field` ("people_key",
        "graph_property"; the provider's registry entry says which), or its own name."""
        r = self.rule(CUSTOM_PREFIX + custom_name)
        return str(getattr(r, key_field, "") or "") or custom_name


def changed_rules(old: FieldMap, new: FieldMap) -> set[str]:
    """Fields whose platform field or direction a mapping change alters."""
    names = {r.field for r in old.rules} | {r.field for r in new.rules}
    return {n for n in names if old.rule(n) != new.rule(n)
            or old.direction(n) != new.direction(n)}


def mapping_change_impact(old: FieldMap, new: FieldMap, snapshots: list[Any]) -> int:
    """How many linked records a mapping change touches: those holding a value in a changed field."""
    changed = changed_rules(old, new)
    plain = [n for n in changed if not n.startswith(CUSTOM_PREFIX)]
    custom = [n for n in changed if n.startswith(CUSTOM_PREFIX)]
    return sum(1 for s in snapshots if s is not None and (
        any(get(s, n) for n in plain) or any(get(s, n) for n in custom)))


def mapping_change_held(impact: int, link_count: int, *, ratio: float, minimum: int) -> bool:
    """The mass-change guard's test (the mass-delete guard's thresholds) for a mapping change."""
    return impact >= minimum and impact > ratio * max(link_count, 1)


# --- what a side can hold -----------------------------------------------------------------

#: field value -> {element: how the side holds it, or None when it cannot}
Projection = Callable[[Any], Mapping[Any, Any]]


@dataclass(frozen=True)
class Holds:
    """What a side can hold: fields it lacks entirely, and how it reduces others."""

    missing: frozenset[str] = frozenset()
    projections: Mapping[str, Projection] = field(default_factory=dict)

    def project(self, name: str, value: Any) -> Any:
        """`value` as this side would hold it (what reading it back gives)."""
        if name in self.missing:
            return _empty(name)
        proj = self.projections.get(name)
        if proj is None:
            return value
        held = proj(value)
        if name in SET_FIELDS:
            return tuple(sorted({v for v in held.values() if v is not None}))
        return held.get(value) or _empty(name)


#: Outlook's email slots on a contact (Graph refuses a fourth with a 400: "The multi
#: value property EmailAddresses has 4 entries, that exceeds the max allowed value of 3")
GRAPH_EMAIL_SLOTS = 3


def graph_emails(values: tuple) -> dict:
    """Each email -> the untyped one Graph holds, or None past its three slots (the first
    three in the set's order: the same three every time, whichever side asks)."""
    return {e: (EmailAddress(address=e.address, name=e.name) if i < GRAPH_EMAIL_SLOTS else None)
            for i, e in enumerate(sorted(values))}


#: Outlook's phone slots on a contact: one mobile, two business, two home
GRAPH_PHONE_SLOTS = {"mobile": 1, "work": 2, "home": 2}


def graph_phones(values: tuple) -> dict:
    """Each number -> the typed number Graph holds it as, or None when its slots are full.

    Graph keeps one mobile number; a further mobile, an "other" and an untyped number
    are business phones there (from a platform they usually are work numbers).
    """
    out: dict = {}
    used = {"mobile": 0, "work": 0, "home": 0}
    ordered = sorted(values, key=lambda p: (p.type != "mobile", p.type != "home", p.type != "work", p._order()))
    for p in ordered:
        slot = p.type if p.type in ("mobile", "home") else "work"
        if slot == "mobile" and used["mobile"] >= GRAPH_PHONE_SLOTS["mobile"]:
            slot = "work"
        if used[slot] >= GRAPH_PHONE_SLOTS[slot]:
            out[p] = None
            continue
        used[slot] += 1
        out[p] = PhoneNumber(number=p.number, type=slot)
    return out


def graph_addresses(values: tuple) -> dict:
    """Each address -> the one Graph holds in its home, business or other slot, or None."""
    out: dict = {}
    taken: set[str] = set()
    for a in sorted(values, key=lambda a: (a.type != "work", a.type != "home", a._order())):
        slot = a.type if a.type in ("work", "home") else "other"
        out[a] = None if slot in taken else PostalAddress(**{**a.model_dump(), "type": slot})
        taken.add(slot)
    return out


def first_only(values: tuple) -> dict:
    return {v: (v if i == 0 else None) for i, v in enumerate(sorted(values))}


def _dated(value: str) -> dict:
    # Graph's birthday is a date-time: a birthday without a year has no place there
    return {value: value if value and not value.startswith("--") else None}


def _named_only(names: frozenset[str]) -> Projection:
    def project(values: tuple) -> dict:
        return {c: (c if c.partition("=")[0].strip() in names else None) for c in values}
    return project


def holds_everything(fmap: FieldMap | None = None) -> Holds:
    """A mailbox that holds every field as it is (Google People)."""
    return Holds()


def graph_holds(fmap: FieldMap | None = None) -> Holds:
    """What a Microsoft 365 contact holds: three untyped emails, phone and address slots, one
    website, dated birthdays, and a custom field only when the mapping names it (an
    extended property is found by its name; there is no listing them all)."""
    names = frozenset(fmap.custom_names()) if fmap is not None else frozenset()
    return Holds(projections={
        "emails": graph_emails, "phones": graph_phones, "addresses": graph_addresses,
        "websites": first_only, "birthday": _dated, "custom": _named_only(names),
    })


def platform_holds(fmap: FieldMap) -> Holds:
    """What the platform holds under the mapping: a field mapped to no platform field is
    missing there, and so is a custom field mapped to none."""
    missing = fmap.not_on_platform()
    dropped = frozenset(n[len(CUSTOM_PREFIX):] for n in missing if n.startswith(CUSTOM_PREFIX))
    projections: dict[str, Projection] = {}
    if dropped:
        projections["custom"] = lambda values: {c: (None if c.partition("=")[0].strip() in dropped else c)
                                                for c in values}
    return Holds(missing=frozenset(n for n in missing if n in FIELDS), projections=projections)


def restore(content: Any, base: Any, holds: Holds) -> Any:
    """`content` as a side reported it, with what the side cannot hold taken from `base`.

    A value the side holds in reduced form (an email without its type in Graph)
    counts as the base value when it is exactly what the base reduces to.
    """
    if base is None or content is None:
        return content
    update: dict[str, Any] = {}
    for name in holds.missing:
        if name in FIELDS:
            update[name] = get(base, name)
    for name, proj in holds.projections.items():
        b, now = get(base, name), get(content, name)
        if name in SET_FIELDS:
            held = proj(b)
            back = {v: e for e, v in held.items() if v is not None}
            restored = [back.get(v, v) for v in now] + [e for e, v in held.items() if v is None]
            update[name] = tuple(sorted(set(restored)))
        else:
            held_b = proj(b).get(b)  # how the side holds the base value
            if held_b is None:
                if not now:
                    update[name] = b  # it cannot hold it and shows nothing: not an opinion
            elif now == held_b:
                update[name] = b
    if not update:
        return content
    return type(content).model_validate({**dict(content), **update})


# --- direction -------------------------------------------------------------------------


@dataclass(frozen=True)
class Aligned:
    #: what the merge takes from each side (restored, then masked by direction)
    mailbox: Any
    platform: Any
    #: fields (or custom:<name>) whose change a direction kept from the other side
    blocked: tuple[str, ...] = ()
    #: each side as it holds the record (restored only): what a write is compared with
    mailbox_seen: Any = None
    platform_seen: Any = None


def align(base: Any, mailbox: Any, platform: Any, fmap: FieldMap, *, mailbox_holds: Holds,
          platform_holds_: Holds) -> Aligned:
    """Both sides' contents as the merge should see them (see the module docstring)."""
    m = restore(mailbox, base, mailbox_holds)
    p = restore(platform, base, platform_holds_)
    blocked: list[str] = []
    for name in fmap.directional():
        d = fmap.direction(name)
        bv = get(base, name) if base is not None else None
        mv, pv = get(m, name), get(p, name)
        if d == "none":
            target = bv if base is not None else pv
            if base is not None and (mv != target or pv != target):
                blocked.append(name)
            m, p = put(m, name, target), put(p, name, target)
        elif d in ("platform_to_mailbox", "mailbox_to_platform"):
            src_is_platform = d == "platform_to_mailbox"
            other_v = mv if src_is_platform else pv
            target = bv if base is not None else (pv if src_is_platform else mv)
            if other_v != target:
                if base is not None or other_v:
                    blocked.append(name)
                if src_is_platform:
                    m = put(m, name, target)
                else:
                    p = put(p, name, target)
    return Aligned(m, p, tuple(blocked), restore(mailbox, base, mailbox_holds), restore(platform, base, platform_holds_))


def keep_for(side: Side, base: Any, merged: Any, fmap: FieldMap) -> tuple[str, ...]:
    """Fields a write to `side` leaves as the side holds them."""
    keep = {n for n in fmap.directional() if not fmap.flows_into(n, side)}
    if base is not None:
        keep |= {n for n in FIELDS if get(base, n) == get(merged, n)}
        if "custom" not in keep:
            names = set(base.custom_fields()) | set(merged.custom_fields())
            keep |= {f"{CUSTOM_PREFIX}{k}" for k in names
                     if get(base, CUSTOM_PREFIX + k) == get(merged, CUSTOM_PREFIX + k)}
    return tuple(sorted(keep))


def differs(seen: Any, merged: Any, keep: tuple[str, ...] | list[str]) -> bool:
    """Whether writing `merged` (minus the kept fields) changes what the side holds."""
    kept = set(keep)
    if any(get(seen, n) != get(merged, n) for n in FIELDS if n not in kept and n != "custom"):
        return True
    if "custom" in kept:
        return False
    names = set(seen.custom_fields()) | set(merged.custom_fields())
    return any(get(seen, CUSTOM_PREFIX + k) != get(merged, CUSTOM_PREFIX + k) for k in names if CUSTOM_PREFIX + k not in kept)


def outbound(content: Any, target: Side, fmap: FieldMap) -> Any:
    """A record created on `target`: fields that do not flow there are left empty."""
    out = content
    for name in fmap.directional():
        if not fmap.flows_into(name, target):
            out = put(out, name, "" if name.startswith(CUSTOM_PREFIX) else _empty(name))
    return out


__all__ = ["Aligned", "FieldMap", "FieldRule", "Holds", "align", "changed_rules", "graph_holds", "holds_everything",
           "keep_for", "mapping_change_held", "mapping_change_impact", "outbound", "platform_holds", "restore"]
