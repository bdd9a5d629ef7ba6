"""Windows time zone names (what Microsoft Graph speaks) and IANA names (what Concord keeps).

The table is CLDR's windowsZones as icalendar ships it (`WINDOWS_TO_OLSON`): each
Windows name maps to its territory-001 ("golden") IANA zone, so that direction is
one lookup. The other direction has many IANA names per Windows zone
(Europe/Amsterdam, Europe/Berlin and Europe/Rome are all "W. Europe Standard
Time"); CLDR's per-territory rows are not in the table, so the choice is made the
same way every time:

1. the IANA zone is a golden zone: its Windows name;
2. else the first (sorted) zone icalendar knows as equivalent (same offsets and
   transitions since 1970, `get_equivalent_tzids`) that is golden;
3. else nothing (`None`): the caller writes the IANA name itself, which Graph accepts
   in `dateTimeTimeZone`, rather than guessing a zone with other rules.

An unknown Windows name is a `ZoneProblem`, never a guess and never a crash: the event
holding it is quarantined with a value-free problem instead of being moved in time.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar.timezone.tzid import get_equivalent_tzids
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

#: names Graph uses for UTC besides the table's "UTC" row
_UTC_NAMES = {"utc", "etc/utc", "etc/gmt", "gmt", "z"}


class ZoneProblem(ValueError):
    """A zone name we cannot map. The message names the kind of problem, never the value."""


@lru_cache(maxsize=1)
def _windows_by_lower() -> dict[str, str]:
    return {k.casefold(): k for k in WINDOWS_TO_OLSON}


@lru_cache(maxsize=1)
def _golden() -> dict[str, str]:
    """IANA -> Windows for the territory-001 zones (one Windows name each in CLDR)."""
    out: dict[str, str] = {}
    for windows, iana in sorted(WINDOWS_TO_OLSON.items()):
        out.setdefault(iana, windows)
    return out


def is_iana(name: str) -> bool:
    if not name or name.startswith("/") or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def to_iana(name: str) -> str:
    """The IANA zone of a Graph zone name (Windows, or already IANA); ZoneProblem if unknown.

    UTC in any spelling is "UTC".
    """
    text = (name or "").strip()
    if not text:
        raise ZoneProblem("empty time zone name")
    if text.casefold() in _UTC_NAMES:
        return "UTC"
    windows = _windows_by_lower().get(text.casefold())
    if windows is not None:
        iana = WINDOWS_TO_OLSON[windows]
        return "UTC" if iana == "Etc/UTC" else iana
    if is_iana(text):
        return text
    raise ZoneProblem("unknown time zone name")


@lru_cache(maxsize=512)
def to_windows(iana: str) -> str | None:
    """The Windows name for an IANA zone (see the module docstring for the choice), or None."""
    if not iana:
        return None
    if iana.casefold() in _UTC_NAMES:
        return "UTC"
    golden = _golden()
    if iana in golden:
        return golden[iana]
    for other in get_equivalent_tzids(iana)[1:]:
        if other in golden:
            return golden[other]
    return None


def graph_zone_name(iana: str) -> str:
    """What to send Graph for an IANA zone: its Windows name, else the IANA name itself."""
    return to_windows(iana) or iana
