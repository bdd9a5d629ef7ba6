"""The canonical contact as the reference CRM's fields, under an organisation's mapping.

The CRM has a column for every canonical field and a set of named custom fields.
A `sync.fields.FieldMap` says which CRM field each canonical field is: its own
column (the default), another column, a CRM custom field (a scalar only), or none
("" : the CRM does not get it, and the sync core treats it as a field this side
cannot hold). A canonical custom field (`custom:<name>`) maps the same way.
"""

from __future__ import annotations

from typing import Iterable

from models.contact import FIELDS, SCALAR_FIELDS, Contact
from sync.fields import CUSTOM_PREFIX, FieldMap

#: canonical fields that are CRM columns (everything but the custom set)
COLUMNS = tuple(f for f in FIELDS if f != "custom")


def check(fmap: FieldMap) -> None:
    """A mapping this CRM can carry out: a set field maps to its own column or nowhere,
    and no two fields share a CRM field."""
    seen: dict[str, str] = {}
    for name in list(FIELDS) + [r.field for r in fmap.rules if r.field.startswith(CUSTOM_PREFIX)]:
        if name == "custom":
            continue
        target = fmap.platform_name(name)
        if not target:
            continue
        if name not in SCALAR_FIELDS and not name.startswith(CUSTOM_PREFIX) and target != name:
            raise ValueError("a multi-valued field can only map to its own platform field")
        if target in seen:
            raise ValueError("two fields map to one platform field")
        seen[target] = name


def _target(fmap: FieldMap, name: str) -> tuple[str, str] | None:
    """("column", name) or ("custom", name) on the CRM, or None."""
    target = fmap.platform_name(name)
    if not target:
        return None
    return ("column", target) if target in COLUMNS else ("custom", target)


def to_crm(contact: Contact, fmap: FieldMap) -> Contact:
    """Canonical -> the CRM's contact (its columns; its custom fields in `custom`)."""
    if not fmap.rules:
        return contact
    columns: dict[str, object] = {}
    custom: dict[str, str] = {}
    for name in COLUMNS:
        where = _target(fmap, name)
        if where is not None:
            (columns if where[0] == "column" else custom)[where[1]] = getattr(contact, name)
    for key, value in contact.custom_fields().items():
        where = _target(fmap, CUSTOM_PREFIX + key)
        if where is not None:
            (columns if where[0] == "column" else custom)[where[1]] = value
    return Contact(**columns, custom=[f"{k}={v}" for k, v in custom.items() if v])


def from_crm(contact: Contact, fmap: FieldMap) -> Contact:
    """The CRM's contact -> canonical (its custom fields no rule claims keep their names)."""
    if not fmap.rules:
        return contact
    crm_custom = contact.custom_fields()
    claimed: set[str] = set()
    values: dict[str, object] = {}
    custom: dict[str, str] = {}

    def read(where: tuple[str, str]) -> object:
        if where[0] == "column":
            return getattr(contact, where[1])
        claimed.add(where[1])
        return crm_custom.get(where[1], "")

    for name in COLUMNS:
        where = _target(fmap, name)
        if where is not None:
            values[name] = read(where)
    for name in fmap.custom_names():
        where = _target(fmap, CUSTOM_PREFIX + name)
        if where is not None:
            custom[name] = str(read(where) or "")
    for key, value in crm_custom.items():
        if key not in claimed and not any(fmap.platform_name(CUSTOM_PREFIX + n) == key for n in fmap.custom_names()):
            custom.setdefault(key, value)
    return Contact(**values, custom=[f"{k}={v}" for k, v in custom.items() if v])


def keep_on_crm(keep: Iterable[str], fmap: FieldMap) -> tuple[str, ...]:
    """Canonical field names a write keeps -> the CRM fields to keep."""
    out: set[str] = set()
    for name in keep:
        if name == "custom":
            out.add("custom")
            continue
        where = _target(fmap, name)
        if where is not None:
            out.add(where[1] if where[0] == "column" else CUSTOM_PREFIX + where[1])
    return tuple(sorted(out))
