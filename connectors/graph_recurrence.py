"""Graph's `patternedRecurrence` <-> an RFC 5545 RRULE value (pure, no I/O).

Graph describes a series by a pattern (daily, weekly, absoluteMonthly,
relativeMonthly, absoluteYearly, relativeYearly, with an interval, days of the week,
a day of the month, a month, an index first..last and `firstDayOfWeek`) and a range
(`endDate` inclusive in the series' zone, `numbered`, `noEnd`). Every Graph pattern
has an RRULE; only some RRULEs have a Graph pattern. An RRULE Graph cannot express
raises `RecurrenceProblem` (a `ValueError` whose message is a fixed code, never the
rule): the write is refused as ValidationRejected rather than silently sending a
different series.

Choices that keep both directions exact (the property tests in
tests/test_graph_recurrence.py check them against dateutil):

- `endDate` is a date in the series' zone; UNTIL is that date at the series' start
  time, in UTC for a zoned series (RFC 5545 wants UTC there), a date for an all-day
  series. Read back, an UNTIL earlier in its day than the start time ends the series
  the day before.
- `dayOfMonth` 29..31: Outlook places the instance on the last day of a shorter month
  (UNCONFIRMED for Graph; the emulator does the same), RFC 5545 skips the month. The
  RRULE is therefore `BYMONTHDAY=28,...,d;BYSETPOS=-1` (the last existing of those
  days), which dateutil expands like Outlook; a plain `BYMONTHDAY=30` cannot be
  expressed and is refused.
- relativeMonthly / relativeYearly with one day: `BYDAY=2TU` (`-1TU` for "last");
  with several days (Outlook's "first weekday"): `BYDAY=MO,...,FR;BYSETPOS=1`.
- `firstDayOfWeek` is WKST; RFC's default is Monday, so WKST is written for weekly
  rules only, and only when it is not Monday (it changes nothing elsewhere).
- INTERVAL is written only when above 1.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
RFC_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
INDEXES = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_INDEX_NAMES = {v: k for k, v in INDEXES.items()}
PATTERNS = ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly")
_SUPPORTED_PARTS = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYSETPOS", "WKST"}
NO_END_DATE = "0001-01-01"


class RecurrenceProblem(ValueError):
    """A recurrence one side cannot express or read. `code` names it; no values inside."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------------- Graph -> RRULE


def _int(value: Any, code: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise RecurrenceProblem(code) from None
    if not lo <= n <= hi:
        raise RecurrenceProblem(code)
    return n


def _days(values: Any) -> list[str]:
    if not isinstance(values, list) or not values:
        raise RecurrenceProblem("recurrence_days_missing")
    out = set()
    for v in values:
        name = str(v).strip().lower()
        if name not in DAYS:
            raise RecurrenceProblem("recurrence_day_unknown")
        out.add(name)
    return [RFC_DAYS[DAYS.index(d)] for d in DAYS if d in out]


def _monthday_parts(day: int) -> list[str]:
    if day <= 28:
        return [f"BYMONTHDAY={day}"]
    return ["BYMONTHDAY=" + ",".join(str(d) for d in range(28, day + 1)), "BYSETPOS=-1"]


def _relative_parts(pattern: dict[str, Any]) -> list[str]:
    days = _days(pattern.get("daysOfWeek"))
    index = INDEXES.get(str(pattern.get("index") or "first").strip().lower())
    if index is None:
        raise RecurrenceProblem("recurrence_index_unknown")
    if len(days) == 1:
        return [f"BYDAY={index}{days[0]}"]
    return ["BYDAY=" + ",".join(days), f"BYSETPOS={index}"]


def _until(end: date, start: date | datetime, zone: ZoneInfo | None) -> str:
    if not isinstance(start, datetime):
        return end.strftime("%Y%m%d")
    wall = datetime.combine(end, start.time())
    if zone is None:
        return wall.strftime("%Y%m%dT%H%M%S")
    return wall.replace(tzinfo=zone).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def pattern_to_rrule(recurrence: dict[str, Any], start: date | datetime, zone: ZoneInfo | None) -> str:
    """The RRULE value (no "RRULE:" prefix) of a Graph `patternedRecurrence`.

    `start` is the series' start as a date (all-day) or a naive wall-clock datetime in
    `zone` (None: floating). Raises RecurrenceProblem for a pattern it cannot read.
    """
    if not isinstance(recurrence, dict) or not isinstance(recurrence.get("pattern"), dict):
        raise RecurrenceProblem("recurrence_pattern_missing")
    pattern, rng = recurrence["pattern"], recurrence.get("range") or {}
    if not isinstance(rng, dict):
        raise RecurrenceProblem("recurrence_range_malformed")
    kind = str(pattern.get("type") or "")
    interval = _int(pattern.get("interval", 1) or 1, "recurrence_interval_invalid", 1, 999)
    parts: list[str]
    if kind == "daily":
        parts = ["FREQ=DAILY"]
    elif kind == "weekly":
        parts = ["FREQ=WEEKLY", "BYDAY=" + ",".join(_days(pattern.get("daysOfWeek")))]
        first = str(pattern.get("firstDayOfWeek") or "sunday").strip().lower()
        if first not in DAYS:
            raise RecurrenceProblem("recurrence_day_unknown")
        if first != "monday":
            parts.append("WKST=" + RFC_DAYS[DAYS.index(first)])
    elif kind == "absoluteMonthly":
        parts = ["FREQ=MONTHLY"] + _monthday_parts(_int(pattern.get("dayOfMonth"), "recurrence_monthday_invalid", 1, 31))
    elif kind == "relativeMonthly":
        parts = ["FREQ=MONTHLY"] + _relative_parts(pattern)
    elif kind == "absoluteYearly":
        month = _int(pattern.get("month"), "recurrence_month_invalid", 1, 12)
        parts = ["FREQ=YEARLY", f"BYMONTH={month}"] + _monthday_parts(
            _int(pattern.get("dayOfMonth"), "recurrence_monthday_invalid", 1, 31))
    elif kind == "relativeYearly":
        month = _int(pattern.get("month"), "recurrence_month_invalid", 1, 12)
        parts = ["FREQ=YEARLY", f"BYMONTH={month}"] + _relative_parts(pattern)
    else:
        raise RecurrenceProblem("recurrence_type_unknown")
    if interval > 1:
        parts.insert(1, f"INTERVAL={interval}")
    range_type = str(rng.get("type") or "noEnd")
    if range_type == "numbered":
        parts.append(f"COUNT={_int(rng.get('numberOfOccurrences'), 'recurrence_count_invalid', 1, 999_999)}")
    elif range_type == "endDate":
        try:
            end = date.fromisoformat(str(rng.get("endDate")))
        except ValueError:
            raise RecurrenceProblem("recurrence_end_invalid") from None
        parts.append("UNTIL=" + _until(end, start, zone))
    elif range_type != "noEnd":
        raise RecurrenceProblem("recurrence_range_unknown")
    return ";".join(parts)


# ---------------------------------------------------------------------------- RRULE -> Graph


def _split(rrule: str) -> dict[str, str]:
    text = rrule.strip()
    if text.upper().startswith("RRULE:"):
        text = text[6:]
    parts: dict[str, str] = {}
    for piece in text.split(";"):
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        key = key.strip().upper()
        if not sep or key in parts:
            raise RecurrenceProblem("rrule_malformed")
        parts[key] = value.strip().upper()
    if "FREQ" not in parts:
        raise RecurrenceProblem("rrule_malformed")
    return parts


def _ints(value: str, code: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise RecurrenceProblem(code) from None


def _byday(value: str) -> list[tuple[int | None, str]]:
    out = []
    for item in value.split(","):
        item = item.strip()
        day, num = item[-2:], item[:-2]
        if day not in RFC_DAYS:
            raise RecurrenceProblem("rrule_byday_invalid")
        try:
            n = int(num) if num not in ("", "+") else None
        except ValueError:
            raise RecurrenceProblem("rrule_byday_invalid") from None
        out.append((n, DAYS[RFC_DAYS.index(day)]))
    return out


def _ordered(days: list[str]) -> list[str]:
    return [d for d in DAYS if d in set(days)]


def _until_to_end(value: str, start: date | datetime, zone: ZoneInfo | None) -> date:
    try:
        if len(value) == 8:
            return datetime.strptime(value, "%Y%m%d").date()
        if value.endswith("Z"):
            when = datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            wall = when.astimezone(zone).replace(tzinfo=None) if zone is not None else when.replace(tzinfo=None)
        else:
            wall = datetime.strptime(value, "%Y%m%dT%H%M%S")
    except ValueError:
        raise RecurrenceProblem("rrule_until_invalid") from None
    if not isinstance(start, datetime):
        return wall.date()
    return wall.date() if wall.time() >= start.time() else wall.date() - timedelta(days=1)


def _monthday_pattern(parts: dict[str, str], start_day: int) -> int:
    """dayOfMonth for an absolute rule: BYMONTHDAY=d (d <= 28), or the "last of 28..d" form."""
    if "BYMONTHDAY" not in parts:
        if start_day > 28:
            raise RecurrenceProblem("rrule_monthday_past_28")
        if "BYSETPOS" in parts:
            raise RecurrenceProblem("rrule_bysetpos_unsupported")
        return start_day
    days = _ints(parts["BYMONTHDAY"], "rrule_bymonthday_invalid")
    setpos = parts.get("BYSETPOS")
    if days == [-1] and setpos is None:
        return 31
    if len(days) == 1 and 1 <= days[0] <= 28 and setpos is None:
        return days[0]
    if setpos == "-1" and len(days) >= 2 and days == list(range(28, days[-1] + 1)) and days[-1] <= 31:
        return days[-1]
    if len(days) == 1 and days[0] > 28:
        raise RecurrenceProblem("rrule_monthday_past_28")
    raise RecurrenceProblem("rrule_bymonthday_unsupported")


def _relative_pattern(parts: dict[str, str]) -> tuple[list[str], str]:
    byday = _byday(parts["BYDAY"])
    setpos = parts.get("BYSETPOS")
    if len(byday) == 1 and byday[0][0] is not None and setpos is None:
        n, day = byday[0]
        if n not in _INDEX_NAMES:
            raise RecurrenceProblem("rrule_byday_ordinal_unsupported")
        return [day], _INDEX_NAMES[n]
    if any(n is not None for n, _ in byday) or setpos is None:
        raise RecurrenceProblem("rrule_byday_unsupported")
    pos = _ints(setpos, "rrule_bysetpos_invalid")
    if len(pos) != 1 or pos[0] not in _INDEX_NAMES:
        raise RecurrenceProblem("rrule_bysetpos_unsupported")
    return _ordered([d for _, d in byday]), _INDEX_NAMES[pos[0]]


def rrule_to_pattern(rrule: str, start: date | datetime, zone: ZoneInfo | None, zone_name: str) -> dict[str, Any]:
    """Graph's `patternedRecurrence` for an RRULE value, or RecurrenceProblem.

    `start`/`zone` as for `pattern_to_rrule`; `zone_name` is what goes in
    `recurrenceTimeZone` (the Windows name of the series' zone).
    """
    parts = _split(rrule)
    if set(parts) - _SUPPORTED_PARTS:
        raise RecurrenceProblem("rrule_part_unsupported")
    try:
        dtstart = start if isinstance(start, datetime) else datetime.combine(start, time(0))
        rrulestr(";".join(f"{k}={v}" for k, v in parts.items() if k != "UNTIL"), dtstart=dtstart)
    except (ValueError, TypeError):
        raise RecurrenceProblem("rrule_malformed") from None
    interval = _int(parts.get("INTERVAL", "1"), "rrule_interval_invalid", 1, 999)
    start_day = start if not isinstance(start, datetime) else start.date()
    freq = parts["FREQ"]
    wkst = parts.get("WKST", "MO")
    if wkst not in RFC_DAYS:
        raise RecurrenceProblem("rrule_wkst_invalid")
    pattern: dict[str, Any] = {"type": "", "interval": interval, "month": 0, "dayOfMonth": 0, "daysOfWeek": [],
                               "firstDayOfWeek": DAYS[RFC_DAYS.index(wkst)], "index": "first"}
    if freq == "DAILY":
        if {"BYMONTHDAY", "BYMONTH", "BYSETPOS"} & set(parts):
            raise RecurrenceProblem("rrule_daily_by_unsupported")
        if "BYDAY" in parts:
            byday = _byday(parts["BYDAY"])
            if interval != 1 or any(n is not None for n, _ in byday):
                raise RecurrenceProblem("rrule_daily_by_unsupported")
            pattern.update(type="weekly", daysOfWeek=_ordered([d for _, d in byday]))
        else:
            pattern["type"] = "daily"
    elif freq == "WEEKLY":
        if {"BYMONTHDAY", "BYMONTH", "BYSETPOS"} & set(parts):
            raise RecurrenceProblem("rrule_weekly_by_unsupported")
        byday = _byday(parts["BYDAY"]) if "BYDAY" in parts else [(None, DAYS[start_day.weekday()])]
        if any(n is not None for n, _ in byday):
            raise RecurrenceProblem("rrule_weekly_by_unsupported")
        pattern.update(type="weekly", daysOfWeek=_ordered([d for _, d in byday]))
    elif freq in ("MONTHLY", "YEARLY"):
        yearly = freq == "YEARLY"
        if yearly and "BYMONTH" not in parts and ({"BYMONTHDAY", "BYDAY"} & set(parts)):
            raise RecurrenceProblem("rrule_yearly_without_bymonth")  # every month's day, or every such weekday
        if yearly:
            months = _ints(parts["BYMONTH"], "rrule_bymonth_invalid") if "BYMONTH" in parts else [start_day.month]
            if len(months) != 1 or not 1 <= months[0] <= 12:
                raise RecurrenceProblem("rrule_bymonth_unsupported")
            pattern["month"] = months[0]
        elif "BYMONTH" in parts:
            raise RecurrenceProblem("rrule_bymonth_unsupported")
        if "BYDAY" in parts:
            if "BYMONTHDAY" in parts:
                raise RecurrenceProblem("rrule_byday_unsupported")
            days, index = _relative_pattern(parts)
            pattern.update(type="relativeYearly" if yearly else "relativeMonthly", daysOfWeek=days, index=index)
        else:
            pattern.update(type="absoluteYearly" if yearly else "absoluteMonthly",
                           dayOfMonth=_monthday_pattern(parts, start_day.day))
    else:
        raise RecurrenceProblem("rrule_freq_unsupported")
    if pattern["type"] != "weekly":
        pattern["firstDayOfWeek"] = "sunday"  # what Graph reports when it does not matter
    rng: dict[str, Any] = {"type": "noEnd", "startDate": start_day.isoformat(), "endDate": NO_END_DATE,
                           "recurrenceTimeZone": zone_name, "numberOfOccurrences": 0}
    if "COUNT" in parts and "UNTIL" in parts:
        raise RecurrenceProblem("rrule_malformed")
    if "COUNT" in parts:
        rng.update(type="numbered", numberOfOccurrences=_int(parts["COUNT"], "rrule_count_invalid", 1, 999_999))
    elif "UNTIL" in parts:
        end = _until_to_end(parts["UNTIL"], start, zone)
        if end < start_day:
            raise RecurrenceProblem("rrule_until_before_start")
        rng.update(type="endDate", endDate=end.isoformat())
    return {"pattern": pattern, "range": rng}


def comparable(recurrence: dict[str, Any]) -> dict[str, Any]:
    """A pattern with the fields that do not change its instances dropped (tests, change checks)."""
    p, r = dict(recurrence.get("pattern") or {}), dict(recurrence.get("range") or {})
    kind = p.get("type")
    keep = {"type", "interval"}
    keep |= {"weekly": {"daysOfWeek", "firstDayOfWeek"}, "absoluteMonthly": {"dayOfMonth"},
             "relativeMonthly": {"daysOfWeek", "index"}, "absoluteYearly": {"month", "dayOfMonth"},
             "relativeYearly": {"month", "daysOfWeek", "index"}}.get(kind, set())
    out_p = {k: v for k, v in p.items() if k in keep}
    if "daysOfWeek" in out_p:
        out_p["daysOfWeek"] = _ordered([str(d).lower() for d in out_p["daysOfWeek"]])
    out_p.setdefault("interval", 1)
    if kind == "weekly" and p.get("interval", 1) == 1:
        out_p.pop("firstDayOfWeek", None)  # with one week per step the week start changes nothing
    rkind = r.get("type", "noEnd")
    out_r: dict[str, Any] = {"type": rkind}
    if rkind == "numbered":
        out_r["numberOfOccurrences"] = r.get("numberOfOccurrences")
    if rkind == "endDate":
        out_r["endDate"] = r.get("endDate")
    return {"pattern": out_p, "range": out_r}
