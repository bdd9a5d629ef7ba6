"""Per-organisation sync settings the pure core decides by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sync.fields import FieldMap

Policy = Literal["platform_wins", "mailbox_wins", "newest_wins", "manual"]
DeletePolicy = Literal["propagate", "unlink"]
PlatformScope = Literal["owned", "all", "linked"]

POLICIES: tuple[str, ...] = ("platform_wins", "mailbox_wins", "newest_wins", "manual")


@dataclass(frozen=True)
class SyncSettings:
    policy: Policy = "newest_wins"
    delete_policy: DeletePolicy = "propagate"
    #: similarity score at or above which records are linked automatically
    auto_threshold: float = 0.90
    #: score at or above which (and below auto) a possible duplicate waits for review
    review_threshold: float = 0.70
    #: which platform records a mailbox receives: those its user owns, all, or only linked ones
    platform_scope: PlatformScope = "owned"
    #: the connection's user id on the platform (owner of what it creates there)
    owner: str = ""
    #: a cycle that would delete more than this share of a side's links is held...
    mass_delete_ratio: float = 0.5
    #: ...once it deletes at least this many
    mass_delete_min: int = 10
    max_field_len: int = 1000
    #: named fix rules tried on a platform validation error before quarantining
    fix_rules: tuple[str, ...] = field(default_factory=tuple)
    #: which platform field each canonical field maps to, and which way it flows
    field_map: FieldMap = field(default_factory=FieldMap)
    #: the region (ISO 3166 alpha-2) a phone number written without a country code is read
    #: in, for matching: the organisation's country. Set it on the organisation, not on a
    #: connection: the organisation's platform mirror is keyed with it.
    phone_region: str = "US"

    @classmethod
    def from_dict(cls, data: dict | None, *, owner: str = "") -> "SyncSettings":
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "fix_rules" in kwargs:
            kwargs["fix_rules"] = tuple(kwargs["fix_rules"])
        if not isinstance(kwargs.get("field_map", FieldMap()), FieldMap):
            kwargs["field_map"] = FieldMap.from_dict(kwargs["field_map"])
        kwargs.setdefault("owner", owner)
        if kwargs.get("policy", "newest_wins") not in POLICIES:
            raise ValueError(f"unknown conflict policy {kwargs['policy']!r}")
        if "phone_region" in kwargs:
            kwargs["phone_region"] = _region(kwargs["phone_region"])
        return cls(**kwargs)


def mailbox_settings(org_settings: dict | None, connection_settings: dict | None) -> dict:
    """The raw settings a mailbox syncs with: its organisation's, each overridden by its
    connection's `sync` section (the one place that says which wins)."""
    return {**(org_settings or {}), **(connection_settings or {}).get("sync", {})}


def _region(value: object) -> str:
    """An upper-case region phonenumbers knows; a wrong one would silently mis-read numbers."""
    import phonenumbers

    region = str(value or "").strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("unknown phone region: use an ISO 3166 alpha-2 code such as US, GB or DE")
    return region
