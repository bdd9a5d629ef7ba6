"""Is this event one we already have? Duplicate search for events without a shared UID.

Copies of one meeting share its UID (an invitation carries it), and the same UID and
RECURRENCE-ID is the same event, full stop. Events created separately (a meeting
typed into the platform and into a mailbox) share nothing but what they describe,
so the score combines, with every number explained by a value-free reason:

- time: how much the two intervals overlap (intersection over union, in UTC; a
  floating time is read in the other event's zone; an all-day event against a timed
  one counts as a weaker agreement when the timed one falls on its days). Events at
  clearly different times are never linked, however alike their titles: a weekly
  "Standup" has a twin every week;
- title: rapidfuzz's token-sort ratio of the normalised titles (case, accents,
  punctuation and "Invitation:"-style prefixes aside);
- people: the Jaccard overlap of attendees and organizer; two disjoint guest lists
  are two meetings ("Lunch" at noon with different people).

Without people on either side the score stays below the automatic threshold: a
title and a time alone send a pair to review.

Blocking keys: the UID (with its RECURRENCE-ID) and the days the event covers, with a
day either side, so records that may match share a key and the index is never
all-pairs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from datetime import date, datetime, timedelta, timezone
from typing import Generic, Hashable, TypeVar

from rapidfuzz import fuzz

from models.event import Event, zone
from sync.matching import Match, MatchScore, Thresholds

K = TypeVar("K", bound=Hashable)

#: below this overlap (intersection over union) two events are at different times
MIN_TIME_OVERLAP = 0.5
#: the most a pair scores without agreeing on time, on people, or on recurrence
CAP_DISAGREEING = 0.6

_PREFIX = re.compile(r"^(?:(?:re|fw|fwd|aw|wg|tr|invitation|updated invitation|invitation mise a jour|"
                     r"canceled|cancelled|annule|accepted|declined|tentative)\s*:\s*)+")
_NON_WORD = re.compile(r"[\W_]+")


def normalized_title(title: str) -> str:
    text = unicodedata.normalize("NFKD", title.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).strip()
    text = _PREFIX.sub("", text)
    return _NON_WORD.sub(" ", text).strip()


def title_similarity(a: str, b: str) -> float | None:
    """In [0, 1]; None when either title is empty (no evidence either way)."""
    na, nb = normalized_title(a), normalized_title(b)
    if not na or not nb:
        return None
    return fuzz.token_sort_ratio(na, nb) / 100.0


def _people(e: Event) -> frozenset[str]:
    return frozenset(e.attendees) | ({e.organizer} if e.organizer else frozenset())


def attendee_overlap(a: Event, b: Event) -> float | None:
    """Jaccard overlap of attendees and organizer; None when either side lists nobody."""
    pa, pb = _people(a), _people(b)
    if not pa or not pb:
        return None
    return len(pa & pb) / len(pa | pb)


# --- time ------------------------------------------------------------------------


def _timed_interval(e: Event, other: Event) -> tuple[datetime, datetime] | None:
    """A timed event's interval in UTC; a floating one read in the other's zone."""
    start, end = e.start_value(), e.end_value()
    if not isinstance(start, datetime):
        return None
    if not isinstance(end, datetime):
        end = start
    read_in = zone(other.start_tz) if not other.all_day else None
    read_in = read_in or timezone.utc

    def utc(v: datetime) -> datetime:
        return (v if v.tzinfo else v.replace(tzinfo=read_in)).astimezone(timezone.utc)

    s, t = utc(start), utc(end)
    return s, max(s, t)


def _days(e: Event) -> tuple[date, date] | None:
    start, end = e.start_value(), e.end_value()
    if start is None or isinstance(start, datetime):
        return None
    last = end if isinstance(end, date) and not isinstance(end, datetime) and end > start else start + timedelta(1)
    return start, last


def _iou(a: tuple, b: tuple) -> float:
    (s1, e1), (s2, e2) = a, b
    if e1 == s1 or e2 == s2:  # an instant: the same instant or nothing
        return 1.0 if (s1 == s2 and e1 == e2) else (0.5 if s1 == s2 else 0.0)
    inter = min(e1, e2) - max(s1, s2)
    if inter <= type(inter)(0):
        return 0.0
    return inter / (max(e1, e2) - min(s1, s2))


def time_overlap(a: Event, b: Event) -> tuple[float, str | None]:
    """(overlap in [0, 1], a reason when the kinds of time differ)."""
    da, db = _days(a), _days(b)
    if da is not None and db is not None:
        return _iou(da, db), None
    if da is None and db is None:
        ia, ib = _timed_interval(a, b), _timed_interval(b, a)
        if ia is None or ib is None:
            return 0.0, "no_time"
        return _iou(ia, ib), None
    # all-day against timed: the timed one's local day inside the all-day days
    days, timed = (da, b) if da is not None else (db, a)
    value = timed.start_value()
    if not isinstance(value, datetime):
        return 0.0, "no_time"
    local_day = value.date()
    return (0.6 if days[0] <= local_day < days[1] else 0.0), "all_day_vs_timed"


# --- the score ---------------------------------------------------------------------


def _recurrence(e: Event) -> frozenset[str]:
    return frozenset(p.strip().upper() for p in e.rrule.removeprefix("RRULE:").split(";") if p.strip())


def score(a: Event, b: Event) -> MatchScore:
    """How likely `a` and `b` are the same event, in [0, 1], symmetric."""
    if a.uid and a.uid == b.uid:
        if a.recurrence_id == b.recurrence_id:
            return MatchScore(1.0, ("same_uid",))
        return MatchScore(0.0, ("same_uid_other_instance",))
    reasons: list[str] = []
    t, why = time_overlap(a, b)
    if why:
        reasons.append(why)
    ts = title_similarity(a.title, b.title)
    att = attendee_overlap(a, b)
    title = 0.5 if ts is None else ts  # no title on a side: neutral, not a match
    if att is None:
        s = 0.5 * title + 0.38 * t
    else:
        s = 0.4 * title + 0.35 * t + 0.25 * att
    reasons.append(f"time={t:.2f}")
    if ts is not None:
        reasons.append(f"title={ts:.2f}")
    if att is not None:
        reasons.append(f"attendees={att:.2f}")
    capped = False
    if t < MIN_TIME_OVERLAP:
        reasons.append("different_time")
        capped = True
    if att == 0.0:
        reasons.append("different_attendees")
        capped = True
    if a.is_series != b.is_series or a.is_exception != b.is_exception:
        reasons.append("series_vs_single")
        capped = True
    elif a.is_series and _recurrence(a) != _recurrence(b):
        reasons.append("different_recurrence")
        capped = True
    if t == 0.0:
        s = min(s, 0.25 * title)
    elif capped:
        s = min(s, CAP_DISAGREEING)
    return MatchScore(round(min(1.0, max(0.0, s)), 6), tuple(reasons))


# --- candidate search -------------------------------------------------------------


#: an event is keyed on at most this many days (a months-long "vacation" block is not
#: worth a key per day; such pairs are still found by their first weeks)
MAX_KEYED_DAYS = 31


def _day(value: date | datetime) -> date:
    """A time's date: UTC for zoned times, the wall date for floating and all-day ones."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).date() if value.tzinfo else value.date()
    return value


def _covered_days(e: Event) -> list[date]:
    start = e.start_value()
    if start is None:
        return []
    first = _day(start)
    end = e.end_value()
    last = _day(end) if end is not None else first
    if not isinstance(start, datetime) and last > first:
        last -= timedelta(days=1)  # an all-day end is exclusive
    days = max(0, min((last - first).days, MAX_KEYED_DAYS - 1))
    return [first + timedelta(days=d) for d in range(days + 1)]


def event_keys(e: Event) -> set[str]:
    """Blocking keys: events that may be duplicates share at least one.

    Every day an event covers is a key, with a day either side: a pair can only
    reach review when its times overlap (see `score`), and overlapping events share
    a covered day; the extra day covers a floating or all-day event against a zoned
    one, whose dates differ by at most a day. So the index misses no pair the
    all-pairs search would send to review (tests/test_calendar_rules.py checks it).
    """
    keys: set[str] = set()
    if e.uid:
        keys.add(f"uid:{e.uid}|{e.recurrence_id}")
    for day in _covered_days(e):
        keys.update(f"day:{(day + timedelta(days=d)).isoformat()}" for d in (-1, 0, 1))
    return keys


class EventIndex(Generic[K]):
    """Events by blocking key, for the planner's duplicate search (the MatchIndex protocol).

    Blocks larger than `max_block` are skipped at lookup, as for contacts: a day with
    thousands of events in one organisation would make the search quadratic, and the
    same meeting is still found by its UID. `capped_lookups` counts how often.
    """

    def __init__(self, max_block: int = 512) -> None:
        self.max_block = max_block
        self.capped_lookups = 0
        self._entries: dict[K, tuple[Event, frozenset[str]]] = {}
        self._blocks: dict[str, set[K]] = {}

    def add(self, key: K, event: Event) -> None:
        if key in self._entries:
            self.remove(key)
        keys = frozenset(event_keys(event))
        self._entries[key] = (event, keys)
        for bk in keys:
            self._blocks.setdefault(bk, set()).add(key)

    def remove(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for bk in entry[1]:
            block = self._blocks.get(bk)
            if block is not None:
                block.discard(key)
                if not block:
                    del self._blocks[bk]

    def candidates(self, event: Event) -> set[K]:
        found: set[K] = set()
        for bk in event_keys(event):
            block = self._blocks.get(bk)
            if not block:
                continue
            if len(block) > self.max_block and not bk.startswith("uid:"):
                self.capped_lookups += 1
                continue
            found |= block
        return found

    def get(self, key: K) -> Event:
        return self._entries[key][0]

    def best(self, event: Event, thresholds: Thresholds = Thresholds(), *,
             exclude: Collection[K] = ()) -> Match[K]:
        """The best event here for `event`; ties go to the smallest key."""
        excluded = set(exclude)
        best_key: K | None = None
        best: MatchScore | None = None
        for key in _sorted(self.candidates(event) - excluded):
            ms = score(event, self._entries[key][0])
            if best is None or ms.score > best.score:
                best_key, best = key, ms
        if best is None:
            return Match("none", None, 0.0, ())
        if best.score >= thresholds.auto:
            return Match("auto", best_key, best.score, best.reasons)
        if best.score >= thresholds.review:
            return Match("review", best_key, best.score, best.reasons)
        return Match("none", None, best.score, best.reasons)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def _sorted(keys: set) -> list:
    # deterministic across processes (no hash order): natural order, or by text when mixed
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=lambda k: (type(k).__name__, repr(k)))
