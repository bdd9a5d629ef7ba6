"""Similarity scoring and candidate search: is this incoming contact one we already have?

The score is a hand-calibrated combination of evidence, not a learned model, so
that every number can be explained by its `reasons` (which carry no personal
data and may be logged):

- a shared normalised email is near-proof; the names only modulate it (a shared
  `info@` between two different names lands in review, not auto);
- a shared phone is strong when the names agree (a family landline is not);
- with neither, names and employer can at most reach review, and only when the
  names agree on a blocking key (same last name and first initial, or the same
  phonetic tokens in any order). That rule is what makes the inverted index
  exact: every pair that could reach review shares a blocking key;
- conflicting evidence lowers the score: different emails and phones on both
  sides, different employers, and above all different emails at the same company
  under different names (colleagues, not duplicates).

Calibration targets live in tests/test_matching.py.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Hashable, Literal, TypeVar

from rapidfuzz.distance import Indel
from rapidfuzz import fuzz

from models.contact import Contact
from sync.normalize import NormalizedContact, normalized

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Thresholds:
    auto: float = 0.90
    review: float = 0.70


@dataclass(frozen=True)
class MatchScore:
    score: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Match(Generic[K]):
    """The decision for one contact. For "none", `score`/`reasons` describe the best
    candidate seen (for diagnostics) but `key` is None so nobody links to it."""

    kind: Literal["auto", "review", "none"]
    key: K | None
    score: float
    reasons: tuple[str, ...]


NO_MATCH_SCORE = MatchScore(0.0, ())


def score(a: Contact, b: Contact) -> MatchScore:
    """How likely `a` and `b` are the same person, in [0, 1], symmetric."""
    return score_normalized(normalized(a), normalized(b))


def _sim(x: str, y: str) -> float:
    return Indel.normalized_similarity(x, y)


def _first_sim(x: str, y: str) -> float:
    if not x or not y:
        return 0.5 if x == y else 0.0
    tx, ty = x.split()[0], y.split()[0]
    if tx == ty:
        return 1.0 if x == y else max(0.9, _sim(x, y))  # middle names come and go
    if len(tx) == 1 or len(ty) == 1:  # an initial: "J" vs "John"
        return 0.85 if tx[0] == ty[0] else 0.0
    return max(_sim(x, y), _sim(tx, ty))


def name_similarity(a: NormalizedContact, b: NormalizedContact) -> tuple[float, bool] | None:
    """(similarity, swapped) of the two names, or None if either has no name.

    First and last names are compared separately (so "John Smith" / "Mary Smith"
    is not 70 % alike as whole strings would be), and also crosswise for records
    whose given/family fields were filled the wrong way round.
    """
    if not a.has_name or not b.has_name:
        return None
    if a.first and a.last and b.first and b.last:
        straight = 0.4 * _first_sim(a.first, b.first) + 0.6 * _sim(a.last, b.last)
        crossed = 0.5 * (_sim(a.first, b.last) + _sim(a.last, b.first))
        if crossed > straight:
            return crossed, True
        return straight, False
    return fuzz.token_sort_ratio(a.full_name, b.full_name) / 100.0, False


def score_normalized(a: NormalizedContact, b: NormalizedContact) -> MatchScore:
    reasons: list[str] = []
    same_email = not a.emails.isdisjoint(b.emails)
    same_phone = not a.phones.isdisjoint(b.phones)
    email_conflict = bool(a.emails and b.emails) and not same_email
    phone_conflict = bool(a.phones and b.phones) and not same_phone
    same_domain = not a.domains.isdisjoint(b.domains)
    same_company_name = bool(a.company and b.company) and (
        a.company == b.company or _sim(a.company, b.company) >= 0.9
    )
    same_company = same_domain or same_company_name
    company_conflict = (
        not same_company
        and bool(a.domains or a.company)
        and bool(b.domains or b.company)
        and (bool(a.domains and b.domains) or bool(a.company and b.company))
    )

    names = name_similarity(a, b)
    ns = names[0] if names else None
    if names and names[1]:
        reasons.append("name_swapped")

    if same_email:
        reasons.append("same_email")
        s = 0.95 if ns is None else 0.75 + 0.25 * ns
        if same_phone:
            reasons.append("same_phone")
            s += 0.05
    elif same_phone:
        reasons.append("same_phone")
        # Steep in the name: households and switchboards share numbers, not names.
        s = 0.90 if ns is None else ns - 0.05
        if same_company:
            reasons.append("same_company")
            s += 0.05
        if email_conflict:
            reasons.append("different_emails")
            s -= 0.03
    elif ns is None:
        # No identifier and no name to compare: an employer alone identifies nobody.
        s = 0.2 if same_company else 0.0
        if same_company:
            reasons.append("same_company")
    else:
        names_agree = not a.name_keys.isdisjoint(b.name_keys)
        s = (0.65 if names_agree else 0.45) * ns
        if same_company:
            reasons.append("same_company")
            s += 0.15
        elif company_conflict:
            reasons.append("different_company")
            s -= 0.05
        if email_conflict and same_domain:
            # Two addresses at one company: colleagues, unless the names agree.
            reasons.append("different_emails_same_company")
            s -= 0.3 * (1.0 - ns)
        elif email_conflict:
            reasons.append("different_emails")
            s -= 0.05
        if phone_conflict:
            reasons.append("different_phones")
            s -= 0.05
        if not names_agree:
            s = min(s, 0.6)
    if ns is not None:
        reasons.append(f"name={ns:.2f}")
    s = round(min(1.0, max(0.0, s)), 6)
    return MatchScore(s, tuple(reasons))


# --- candidate search ----------------------------------------------------------


class CandidateIndex(Generic[K]):
    """Inverted index from blocking key to the contacts that have it.

    Blocks larger than `max_block` are skipped at lookup (like stop words): a
    surname shared by thousands would make matching quadratic, and the contacts
    in it are still reachable through their emails, phones, employer+surname and
    phonetic keys. `capped_lookups` counts how often that happened.
    """

    def __init__(self, max_block: int = 256) -> None:
        self.max_block = max_block
        self.capped_lookups = 0
        self._entries: dict[K, tuple[Contact, NormalizedContact]] = {}
        self._blocks: dict[str, set[K]] = {}

    def add(self, key: K, contact: Contact) -> None:
        if key in self._entries:
            self.remove(key)
        norm = normalized(contact)
        self._entries[key] = (contact, norm)
        for bk in norm.keys:
            self._blocks.setdefault(bk, set()).add(key)

    def remove(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for bk in entry[1].keys:
            block = self._blocks.get(bk)
            if block is not None:
                block.discard(key)
                if not block:
                    del self._blocks[bk]

    def candidates(self, contact: Contact) -> set[K]:
        return self._candidates(normalized(contact))

    def _candidates(self, norm: NormalizedContact) -> set[K]:
        found: set[K] = set()
        for bk in norm.keys:
            block = self._blocks.get(bk)
            if not block:
                continue
            if len(block) > self.max_block:
                self.capped_lookups += 1
                continue
            found |= block
        return found

    def get(self, key: K) -> Contact:
        return self._entries[key][0]

    def normalized(self, key: K) -> NormalizedContact:
        return self._entries[key][1]

    def best(self, contact: Contact, thresholds: Thresholds = Thresholds(), *,
             exclude: Collection[K] = ()) -> "Match[K]":
        """The best contact here for `contact` (see `best_match`)."""
        return best_match(contact, self, thresholds, exclude=exclude)

    def block_sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._blocks.items()}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def _tie_key(key: object) -> tuple:
    # Deterministic across processes (no hash order): natural order within a type,
    # and types ordered by name when keys are mixed.
    return (type(key).__name__, key)


def _pick(scored: Iterable[tuple[K, MatchScore]], thresholds: Thresholds) -> Match[K]:
    best_key: K | None = None
    best: MatchScore | None = None
    for key, ms in scored:
        if best is None or ms.score > best.score or (ms.score == best.score and _before(key, best_key)):
            best_key, best = key, ms
    if best is None:
        return Match("none", None, 0.0, ())
    if best.score >= thresholds.auto:
        return Match("auto", best_key, best.score, best.reasons)
    if best.score >= thresholds.review:
        return Match("review", best_key, best.score, best.reasons)
    return Match("none", None, best.score, best.reasons)


def _before(a: object, b: object) -> bool:
    try:
        return _tie_key(a) < _tie_key(b)
    except TypeError:
        return repr(a) < repr(b)


def best_match(
    contact: Contact,
    index: CandidateIndex[K],
    thresholds: Thresholds = Thresholds(),
    *,
    exclude: Collection[K] = (),
) -> Match[K]:
    """The best existing contact for `contact`; ties go to the smallest key."""
    norm = normalized(contact)
    excluded = set(exclude)
    scored = (
        (key, score_normalized(norm, index.normalized(key)))
        for key in index._candidates(norm)
        if key not in excluded
    )
    return _pick(scored, thresholds)


def match_all_pairs(contact: Contact, pool: Mapping[K, Contact], thresholds: Thresholds = Thresholds()) -> Match[K]:
    """Score against every contact in `pool`: the quadratic baseline the index must agree with."""
    norm = normalized(contact)
    return _pick(((key, score_normalized(norm, normalized(c))) for key, c in pool.items()), thresholds)
