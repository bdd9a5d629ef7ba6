"""Changing an organisation's field mapping, under the mass-change guard.

The mapping lives in the organisation's settings (`field_map`, read into
`SyncSettings.field_map`). A change is weighed first: the linked records holding a
value in a field whose platform field or direction changes are the records it would
rewrite. Past the mass-delete guard's share (`mass_delete_ratio`, at least
`mass_delete_min` records) the change is held as `pending_field_map` until a person
approves it, as the guard holds deletions.

An applied change never rewrites both sides blindly. A direction change acts only
when a record next changes. A field moved to another platform field keeps its value
in the mailbox: the links forget the field's last synced value (their snapshot), so
the new platform field's emptiness reads as "no opinion", not as a deletion to carry
to every mailbox, and the mailbox's value fills it when the record next syncs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models.contact import Contact
from store import repo
from store.schema import links
from sync.fields import CUSTOM_PREFIX, FieldMap, changed_rules, mapping_change_held, mapping_change_impact, put
from sync.policy import SyncSettings


class UnknownOrganisation(LookupError):
    pass


@dataclass
class MappingChange:
    #: "applied", "held" (waits for approval) or "unchanged"
    outcome: str
    changed: list[str] = field(default_factory=list)
    #: linked records holding a value in a changed field
    impact: int = 0
    links: int = 0
    #: links whose snapshot forgot a moved field
    rebased: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "changed": self.changed, "impact": self.impact, "links": self.links,
                "rebased": self.rebased}


def _org_links(s: Session, org_id: str) -> list[Any]:
    return list(s.execute(sa.select(links.c.id, links.c.snapshot).where(
        links.c.org_id == org_id, links.c.kind == "contacts")))


def change_field_map(s: Session, org_id: str, new_map: dict | None, *, approve: bool = False) -> MappingChange:
    """Apply `new_map` (or, with `new_map` None and `approve`, the held one) to the organisation."""
    org = repo.get_org(s, org_id)
    if org is None:
        raise UnknownOrganisation("unknown organisation")
    settings = dict(org.settings or {})
    if new_map is None:
        if not approve or "pending_field_map" not in settings:
            return MappingChange("unchanged")
        new_map = settings["pending_field_map"]
    old, new = FieldMap.from_dict(settings.get("field_map")), FieldMap.from_dict(new_map)
    changed = sorted(changed_rules(old, new))
    if not changed:
        settings.pop("pending_field_map", None)
        repo.set_org_settings(s, org_id, settings)
        return MappingChange("unchanged")
    rows = _org_links(s, org_id)
    snapshots = [Contact.model_validate(r.snapshot) for r in rows]
    impact = mapping_change_impact(old, new, snapshots)
    guard = SyncSettings.from_dict(settings)
    if not approve and mapping_change_held(impact, len(rows), ratio=guard.mass_delete_ratio,
                                           minimum=guard.mass_delete_min):
        settings["pending_field_map"] = new.to_dict()
        repo.set_org_settings(s, org_id, settings)
        return MappingChange("held", changed, impact, len(rows))
    moved = [n for n in changed if old.platform_name(n) != new.platform_name(n)]
    rebased = 0
    for row, snap in zip(rows, snapshots):
        forgot = snap
        for name in moved:
            forgot = put(forgot, name, "" if name.startswith(CUSTOM_PREFIX) else type(getattr(forgot, name))())
        if forgot != snap:
            s.execute(sa.update(links).where(links.c.id == row.id).values(snapshot=forgot.model_dump(mode="json")))
            rebased += 1
    settings["field_map"] = new.to_dict()
    settings.pop("pending_field_map", None)
    repo.set_org_settings(s, org_id, settings)
    return MappingChange("applied", changed, impact, len(rows), rebased)
