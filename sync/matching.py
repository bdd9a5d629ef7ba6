"""Similarity scoring and candidate search: is this incoming contact one we already have?

The score is a Fellegi-Sunter record-linkage score. Each corroborating field
(emails, phones, postal addresses, birthday, given / middle / family names,
company) is compared into an agreement *level* (agree, a typo, a nickname, missing,
disagree ...). Each level carries a weight log2(m/u): how much more often that
level is seen between two records of one person (m) than between two different
people (u). The weights are summed and mapped to a probability with a logistic
fit, so a score of 0.9 means about nine in ten candidate pairs at that score are
the same person. The m/u tables and the logistic fit are estimated on the
corrupted-record generator (bench/duplicates.py) by bench/calibrate_matching.py
and checked in as constants (sync/match_weights.py); rerun it to recalibrate.

Two corrections come from the pool being searched, not from the calibration: the
prior falls with the pool's size beyond the calibration's (`pool_prior`: a pool ten
times as large holds ten times the namesakes), and an exact given or family name
counts less the more of the pool carries it (`NameFrequencies`, Fellegi-Sunter
term-frequency adjustment, which only ever lowers). The index keeps the counts
as records are added and removed; `score` of a lone pair uses neither.

A naive-Bayes sum treats fields as independent. Three rules on top of it cover
where they are not, and every one only lowers a score:

- names alone never auto-link: without an agreeing email, phone, address or
  birthday a pair is at most `NAMES_ONLY_CAP` (review), and `corroborated` is
  False so `decide` never says auto even at an organisation's lower thresholds;
- conversely, when both names agree on two records that hold nothing but names
  (and employer), a pair is at least `NAMES_AGREE_FLOOR` (review): the
  calibrated probability is low where namesakes abound, but there is nothing
  else to go on and a person can tell. So is a pair whose names agree with
  nothing held by both records against them (a record typed again without its
  address or birthday) once the calibrated probability says more likely one
  person than not (`LIKELY`: the name frequencies of the pool decide); names
  beside another address or birthday get no floor;
- a different family name (a marriage) is at most review, and only on the same
  home (where the same given name is at least review: the members of one
  household share a family name), a shared email, two agreeing identifiers, or
  one agreeing identifier (a full birthday) with a calibrated probability of at
  least `NAMES_AGREE_FLOOR`; a different full birthday is at most review;
- a shared email address is at least review (a shared mailbox under other
  names is worth a look), and where a side has no name at all an agreeing email
  or phone decides alone (`IDENTIFIER_ONLY`): the fitted email weight is
  discounted for following the names, which a nameless record does not;
- different given names (not a nickname, typo or initial of each other) are
  twins, spouses, a parent and child: they share a surname, an address, a
  landline, even a birthday. Such a pair is at most `OTHER_PERSON_CAP` (below
  review), or review when they share an email address (a shared mailbox);
- different family names with nothing but names (and employer) agreeing are
  two people to a matcher (a marriage needs an address, birthday or email to
  be found): at most `OTHER_PERSON_CAP`;
- a pair that shares no blocking key is at most `OTHER_PERSON_CAP`, which is what
  makes the inverted index exact: every pair that can reach review shares a key.

`reasons` name the levels that decided, never values, so they may be logged.
Calibration targets live in tests/test_matching.py; the measured quality in
bench/matching.py.
"""

from __future__ import annotations

import gc
import math
from functools import lru_cache
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Hashable, Literal, TypeVar

from rapidfuzz.distance import JaroWinkler, OSA

from models.contact import Contact
from sync import match_weights as W
from sync.normalize import DEFAULT_REGION, NormalizedAddress, NormalizedContact, nickname_related, normalized

K = TypeVar("K", bound=Hashable)

#: without an agreeing identifier (email, phone, address, birthday): review at most
NAMES_ONLY_CAP = 0.85
#: both names agree (exactly, as a nickname or a typo) on two records that hold nothing
#: else: at least review, so that names-only records reach a person rather than being
#: created twice
NAMES_AGREE_FLOOR = 0.75
#: an agreeing (email, phone) where a side has no name: the identifier alone decides
IDENTIFIER_ONLY = (0.95, 0.90)
#: pools smaller than this get no term-frequency adjustment (too few names to count)
TF_MIN_POOL = 1000
#: names agreeing with nothing against them (one record lacks what the other holds)
#: reach review when the calibrated probability says more likely one person than not
LIKELY = 0.5
#: different given names, or no shared blocking key: below the default review threshold
OTHER_PERSON_CAP = 0.60


@dataclass(frozen=True)
class Thresholds:
    auto: float = 0.90
    review: float = 0.70


@dataclass(frozen=True)
class MatchScore:
    score: float
    reasons: tuple[str, ...]
    #: an identifier agrees (not names and employer alone): only then may a pair auto-link
    corroborated: bool = True


@dataclass(frozen=True)
class Match(Generic[K]):
    """The decision for one contact. For "none", `score`/`reasons` describe the best
    candidate seen (for diagnostics) but `key` is None so nobody links to it."""

    kind: Literal["auto", "review", "none"]
    key: K | None
    score: float
    reasons: tuple[str, ...]


NO_MATCH_SCORE = MatchScore(0.0, ())


def decide(ms: MatchScore, thresholds: Thresholds) -> Literal["auto", "review", "none"]:
    """The kind a score earns: auto needs corroboration as well as the threshold."""
    if ms.score >= thresholds.auto and ms.corroborated:
        return "auto"
    if ms.score >= thresholds.review:
        return "review"
    return "none"


def score(a: Contact, b: Contact, region: str = DEFAULT_REGION) -> MatchScore:
    """How likely `a` and `b` are the same person, in [0, 1], symmetric."""
    return score_normalized(normalized(a, region), normalized(b, region))


# --- field comparisons: each returns a level of match_weights.WEIGHTS[field] ----


@lru_cache(maxsize=262144)
def _close(x: str, y: str) -> bool:
    """One typo apart (insert, delete, substitute, swap two neighbours), or very alike."""
    if min(len(x), len(y)) < 3:
        return False
    if OSA.distance(x, y, score_cutoff=1) <= 1:
        return True
    return JaroWinkler.similarity(x, y) >= 0.94


@lru_cache(maxsize=262144)
def given_level(x: str, y: str) -> str:
    if not x or not y:
        return "missing"
    if x == y:
        return "exact"
    if len(x) == 1 or len(y) == 1:
        return "initial" if x[0] == y[0] else "disagree"
    if nickname_related(x, y):
        return "nickname"
    if _close(x, y):
        return "typo"
    return "disagree"


@lru_cache(maxsize=262144)
def family_level(x: str, y: str) -> str:
    if not x or not y:
        return "missing"
    if x == y or x.replace(" ", "") == y.replace(" ", ""):
        return "exact"
    if _close(x, y):
        return "typo"
    tx, ty = set(x.split()), set(y.split())
    if len(tx) != len(ty) and (tx <= ty or ty <= tx):
        return "typo"  # one of a double-barrelled name: "Garcia" / "Garcia Lopez"
    return "disagree"


def middle_level(x: str, y: str) -> str:
    if not x or not y:
        return "missing"
    if x == y:
        return "exact"
    if x[0] == y[0] and (len(x) == 1 or len(y) == 1):
        return "initial"
    return "exact" if _close(x, y) else "disagree"


def email_level(a: NormalizedContact, b: NormalizedContact) -> str:
    if not a.emails or not b.emails:
        return "missing"
    if not a.emails.isdisjoint(b.emails):
        return "agree"
    # The same local part at another domain (john.smith@ at work and at home) is no
    # evidence: local parts are made from names, so namesakes share them as often.
    return "disagree"


def phone_level(a: NormalizedContact, b: NormalizedContact) -> str:
    if not a.phones or not b.phones:
        return "missing"
    return "agree" if not a.phones.isdisjoint(b.phones) else "disagree"


def _address_pair(x: NormalizedAddress, y: NormalizedAddress) -> int:
    """3 same address, 2 same street elsewhere on it, 1 same area, 0 elsewhere."""
    same_postal = bool(x.postal_code) and x.postal_code == y.postal_code
    same_city = bool(x.city) and x.city == y.city
    if not (same_postal or same_city):
        return 0  # every level above "elsewhere" needs the same postcode or city
    same_street = bool(x.street) and (x.street == y.street or _close(x.street, y.street))
    same_number = bool(x.number) and x.number == y.number
    if same_number and (same_postal and (same_street or not (x.street and y.street)) or same_street and same_city):
        return 3
    if same_street and (same_postal or same_city):
        return 2
    if same_postal or same_city:
        return 1
    return 0


_ADDRESS_LEVELS = ("disagree", "area", "street", "agree")


def address_level(a: NormalizedContact, b: NormalizedContact) -> str:
    if not a.addresses or not b.addresses:
        return "missing"
    best = 0
    for x in a.addresses:
        for y in b.addresses:
            best = max(best, _address_pair(x, y))
            if best == 3:
                return "agree"
    return _ADDRESS_LEVELS[best]


def birthday_level(a: NormalizedContact, b: NormalizedContact) -> str:
    x, y = a.birthday, b.birthday
    if x is None or y is None:
        return "missing"
    (ya, ma, da), (yb, mb, db) = x, y
    if ma == mb and da == db:
        if ya is None or yb is None:
            return "month_day"
        if ya == yb:
            return "agree"
        return "near"  # the year mistyped
    if ya is not None and ya == yb and (ma, da) == (db, mb):
        return "near"  # day and month read the other way round
    if (ya is None or yb is None or ya == yb) and (ma == mb or da == db):
        return "near"  # one digit group mistyped
    return "disagree"


def company_level(a: NormalizedContact, b: NormalizedContact) -> str:
    if not a.domains.isdisjoint(b.domains):
        return "agree"
    if a.company and b.company:
        if a.company == b.company or _close(a.company, b.company):
            return "agree"
        return "disagree"
    return "missing"


def _names(a: NormalizedContact, b: NormalizedContact) -> tuple[str, str, bool]:
    """(given level, family level, swapped): the better of the straight and the crossed reading.

    Crossed, each of a's names is compared with the other of b's; both ways of
    assigning the given/family comparison are tried so that the result is symmetric.
    """
    g, f = given_level(a.first, b.first), family_level(a.last, b.last)
    wg, wf = W.WEIGHTS["given"], W.WEIGHTS["family"]
    if a.first and a.last and b.first and b.last and (g != "exact" or f != "exact"):
        options = [(given_level(a.first, b.last), family_level(a.last, b.first)),
                   (given_level(a.last, b.first), family_level(a.first, b.last))]
        gx, fx = max(options, key=lambda o: (wg[o[0]] + wf[o[1]], o))
        if wg[gx] + wf[fx] > wg[g] + wf[f] + 1e-9:
            return gx, fx, True
    if g == "missing" and a.nick and b.nick and a.nick == b.nick:
        g = "nickname"
    return g, f, False


FIELDS: tuple[str, ...] = ("email", "phone", "address", "birthday", "given", "family", "middle", "company")


def field_levels(a: NormalizedContact, b: NormalizedContact) -> dict[str, str]:
    """Every field's agreement level for the pair (the calibration script's input too)."""
    return dict(zip(FIELDS, _levels(a, b)[0]))


def _levels(a: NormalizedContact, b: NormalizedContact) -> tuple[tuple[str, ...], bool]:
    g, f, swapped = _names(a, b)
    return (email_level(a, b), phone_level(a, b), address_level(a, b), birthday_level(a, b), g, f,
            middle_level(a.middle, b.middle), company_level(a, b)), swapped


def total_weight(levels: Mapping[str, str]) -> float:
    return sum(W.WEIGHTS[field][level] for field, level in levels.items() if field in W.WEIGHTS)


def probability(weight: float, prior: float = 0.0) -> float:
    """The logistic fit from the calibration: P(same person | summed weight), with
    `prior` (see `pool_prior`) added to the log-odds."""
    z = W.SLOPE * weight + W.INTERCEPT + prior
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def pool_prior(pool_size: int) -> float:
    """The log-odds correction for searching `pool_size` records rather than the
    calibration's `CALIBRATION_POOL`.

    The fitted intercept is the prior odds that a candidate pair is one person, and
    it holds for a pool of the calibration's size: in a pool ten times as large every
    name has ten times the namesakes while a record still has one true partner, so
    each candidate is ten times less likely to be it (-ln 10). Without this, names
    plus a weak extra (a middle name from a short list, a birthday's day and month)
    read as a probable match in a CRM of 100,000 and flood review with namesakes.
    Smaller pools keep the calibrated prior: names are not trusted more than
    calibrated.
    """
    if pool_size <= W.CALIBRATION_POOL:
        return 0.0
    return -math.log(pool_size / W.CALIBRATION_POOL)


_TABLES = tuple(W.WEIGHTS[f] for f in FIELDS)
#: what corroborates names enough to auto-link. A birthday without its year does not:
#: a common name has many namesakes, and one in 365 of them shares the day.
_IDENTIFYING = frozenset({(0, "agree"), (1, "agree"), (2, "agree"), (3, "agree")})


def _evaluate(a: NormalizedContact, b: NormalizedContact, prior: float = 0.0,
              tf: tuple[float, float] = (0.0, 0.0)) -> tuple[float, tuple[str, ...], bool, bool, int, float]:
    """(score, levels, swapped, corroborated, caps applied as bits, probability before the
    caps and floors): the work of `score_normalized` without building reasons, which only
    the best candidate needs."""
    levels, swapped = _levels(a, b)
    weight = 0.0
    for table, level in zip(_TABLES, levels):
        weight += table[level]
    if not swapped:
        if levels[4] == "exact":
            weight += tf[0]
        if levels[5] == "exact":
            weight += tf[1]
    s = raw = probability(weight, prior)
    corroborated = ((0, levels[0]) in _IDENTIFYING or (1, levels[1]) in _IDENTIFYING
                    or (2, levels[2]) in _IDENTIFYING or (3, levels[3]) in _IDENTIFYING)
    caps = 0
    if levels[0] == "agree":
        # A shared mailbox is worth a person's look even under other names (info@).
        s = max(s, NAMES_AGREE_FLOOR)
    if not (a.has_name and b.has_name) and (levels[0] == "agree" or levels[1] == "agree"):
        # No name on a side: nothing correlates with the identifier (the fitted scale
        # discounts an email for following the names), so it counts in full.
        s = max(s, IDENTIFIER_ONLY[0] if levels[0] == "agree" else IDENTIFIER_ONLY[1])
        caps |= 32
    if not corroborated:
        if (levels[4] in _NAME_AGREES and levels[5] in _NAME_AGREES and levels[6] != "disagree"
                and (not (_has_more(a) or _has_more(b)) or (raw >= LIKELY and _uncontradicted(levels)))):
            s = max(s, NAMES_AGREE_FLOOR)
            caps |= 16
        s = min(s, NAMES_ONLY_CAP)
        caps |= 1
    if levels[4] == "disagree":
        s = min(s, NAMES_ONLY_CAP if levels[0] == "agree" else OTHER_PERSON_CAP)
        caps |= 2
    if levels[5] == "disagree":
        # A changed family name (a marriage) is confirmed by a person, never linked alone,
        # and proposed only on the same home, a shared email, or two agreeing identifiers:
        # a given name and a birthday agree by chance often enough in a large pool.
        agreeing = sum((i, levels[i]) in _IDENTIFYING for i in range(4))
        proposed = (agreeing >= 2 or levels[0] == "agree" or levels[2] == "agree"
                    or (agreeing == 1 and raw >= NAMES_AGREE_FLOOR))
        if levels[2] == "agree" and levels[4] in _GIVEN_AGREES:
            # The same given name at the same home under another family name: a marriage
            # (households in one home share a family name), a person's call.
            s = max(s, NAMES_AGREE_FLOOR)
        s = min(s, NAMES_ONLY_CAP if proposed else OTHER_PERSON_CAP)
        caps |= 8
    if levels[3] == "disagree":
        # Another full birthday: another person (a household member called by a
        # nickname of this one's name), or a typo a person should see.
        s = min(s, NAMES_ONLY_CAP)
        caps |= 64
    if a.keys.isdisjoint(b.keys):
        s = min(s, OTHER_PERSON_CAP)
        caps |= 4
    return round(min(1.0, max(0.0, s)), 6), levels, swapped, corroborated, caps, raw


_NAME_AGREES = frozenset({"exact", "nickname", "typo"})
_GIVEN_AGREES = frozenset({"exact", "nickname"})
#: levels of email, phone, address, birthday and company that speak against a pair
_AGAINST = ((0, "disagree"), (1, "disagree"), (2, "disagree"), (2, "area"), (3, "disagree"), (7, "disagree"))


def _uncontradicted(levels: tuple[str, ...]) -> bool:
    """No field both records hold disagrees: what one lacks the other cannot contradict."""
    return not any(levels[i] == level for i, level in _AGAINST)


def _has_more(n: NormalizedContact) -> bool:
    """Whether the record carries anything beyond names (and employer) to compare."""
    return bool(n.emails or n.phones or n.addresses or n.birthday)


_CONTRADICTED = frozenset({"disagree"})
_CAP_REASONS = ((64, "other_birthday"), (32, "identifier_without_name"), (16, "names_agree_uncontradicted"), (1, "names_only"), (2, "other_given_name"), (4, "no_shared_key"), (8, "other_family_name"))


def _as_score(evaluated: tuple[float, tuple[str, ...], bool, bool, int]) -> MatchScore:
    s, levels, swapped, corroborated, caps, _raw = evaluated
    reasons = [f"{field}_{level}" for field, level in zip(FIELDS, levels) if level != "missing"]
    if swapped:
        reasons.append("name_swapped")
    reasons += [text for bit, text in _CAP_REASONS if caps & bit]
    return MatchScore(s, tuple(sorted(reasons)), corroborated)


def score_normalized(a: NormalizedContact, b: NormalizedContact) -> MatchScore:
    if not (a.has_name or a.emails or a.phones) or not (b.has_name or b.emails or b.phones):
        # No name and no identifier on a side: an employer or an address alone identifies nobody.
        return NO_MATCH_SCORE
    return _as_score(_evaluate(a, b))


# --- candidate search ----------------------------------------------------------


class NameFrequencies:
    """How many records of a pool carry each given and family name (term frequencies)."""

    def __init__(self, contacts: Iterable[NormalizedContact] = ()) -> None:
        self.size = 0
        self._counts: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._squares = [0, 0]  # the sum of the squared counts, per name kind
        for norm in contacts:
            self.count(norm, +1)

    def count(self, norm: NormalizedContact, step: int) -> None:
        self.size += step
        for i, name in enumerate((norm.first, norm.last)):
            if len(name) > 1:
                counts = self._counts[i]
                c = counts.get(name, 0)
                self._squares[i] += (c + step) ** 2 - c * c
                if c + step:
                    counts[name] = c + step
                else:
                    del counts[name]

    def terms(self, norm: NormalizedContact) -> tuple[float, float]:
        """Term-frequency adjustments (log-odds) for an exact given / family name
        agreement with `norm`'s names.

        The calibrated weight of an exact name is that of an average name: agreeing
        on a name the pool holds often is weaker evidence than on a rare one (Smith
        against Okonkwo). As in Fellegi-Sunter term-frequency adjustment (Splink's
        tf adjustments), the average u-probability sum(p^2) is replaced by the
        name's own share p: ln(sum(p^2) / p). It only ever lowers a weight: a name
        rare in this pool may still be common among the people a new record could
        be (they are not drawn from the pool), so rarity earns no bonus, while a
        name the pool is full of certainly has many namesakes.
        """
        n = self.size
        out = [0.0, 0.0]
        if n < TF_MIN_POOL:
            return 0.0, 0.0
        for i, name in enumerate((norm.first, norm.last)):
            c = self._counts[i].get(name, 0)
            if c and self._squares[i]:
                out[i] = min(0.0, math.log(self._squares[i] / (n * c)))
        return out[0], out[1]


class CandidateIndex(Generic[K]):
    """Inverted index from blocking key to the contacts that have it.

    Blocks larger than `max_block` are skipped at lookup (like stop words): a
    surname shared by thousands would make matching quadratic, and the contacts
    in it are still reachable through their other keys. `capped_lookups` counts
    how often that happened.

    Records known to be one person (a cluster: a mailbox record and the platform
    record it is linked to, a duplicate a person confirmed) are joined with
    `join` or `add(..., cluster=)`. A contact like several members of one cluster
    is not ambiguous: it matches the cluster, reported under the cluster's first
    key, rather than whichever member happened to score highest.
    """

    def __init__(self, max_block: int = 100, region: str = DEFAULT_REGION) -> None:
        self.max_block = max_block
        self.region = region
        self.capped_lookups = 0
        self._entries: dict[K, tuple[Contact, NormalizedContact]] = {}
        #: the entries a contact can be scored against (a name or an identifier): the
        #: candidate loop's one lookup per candidate
        self._scorable: dict[K, NormalizedContact] = {}
        self._blocks: dict[str, set[K]] = {}
        self._cluster: dict[K, K] = {}  # member -> the cluster's anchor
        self._members: dict[K, list[K]] = {}  # anchor -> members in the order they joined
        self.names = NameFrequencies()

    def add(self, key: K, contact: Contact, *, cluster: K | None = None) -> None:
        if key in self._entries:
            self.remove(key)
        norm = normalized(contact, self.region)
        self._entries[key] = (contact, norm)
        if _identifiable(norm):
            self._scorable[key] = norm
        self.names.count(norm, +1)
        for bk in norm.keys:
            self._blocks.setdefault(bk, set()).add(key)
        if cluster is not None and cluster in self._entries and cluster != key:
            self.join(cluster, key)

    def add_many(self, items: Iterable[tuple[K, Contact]]) -> None:
        """`add` each (key, contact), with the cyclic garbage collector paused.

        Loading an organisation's contacts allocates millions of small objects
        (normalised views, key sets) and none of them form reference cycles; left
        on, the collector re-walks the growing index over and over, which doubles
        the build time of 100,000 records. Reference counting still frees garbage,
        and the collector's previous state is restored however the load ends.
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            for key, contact in items:
                self.add(key, contact)
        finally:
            if paused:
                gc.enable()

    def join(self, a: K, b: K) -> None:
        """Record that `a` and `b` are the same person; `a`'s cluster keeps its anchor."""
        ra, rb = self.anchor(a), self.anchor(b)
        if ra == rb:
            return
        moved = self._members.pop(rb, [rb])
        self._members.setdefault(ra, [ra]).extend(moved)
        for m in moved:
            self._cluster[m] = ra

    def anchor(self, key: K) -> K:
        return self._cluster.get(key, key)

    def cluster(self, key: K) -> list[K]:
        return list(self._members.get(self.anchor(key), [key]))

    def remove(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._scorable.pop(key, None)
        self.names.count(entry[1], -1)
        for bk in entry[1].keys:
            block = self._blocks.get(bk)
            if block is not None:
                block.discard(key)
                if not block:
                    del self._blocks[bk]
        anchor = self._cluster.pop(key, key)
        members = self._members.pop(anchor, None)
        if members is not None:
            rest = [m for m in members if m != key]
            if len(rest) > 1:
                self._members[rest[0]] = rest
            for m in rest:
                if len(rest) > 1:
                    self._cluster[m] = rest[0]
                else:
                    self._cluster.pop(m, None)

    def candidates(self, contact: Contact) -> set[K]:
        return self._candidates(normalized(contact, self.region))

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


def _before(a: object, b: object) -> bool:
    try:
        return _tie_key(a) < _tie_key(b)
    except TypeError:
        return repr(a) < repr(b)


def _rank(ms) -> tuple[float, float]:
    # Capped scores can be equal while the evidence is not: the probability before the
    # caps orders them (MatchScores from outside carry only their score).
    return ms.score, getattr(ms, "raw", ms.score)


def _pick(scored: Iterable[tuple[K, MatchScore]], thresholds: Thresholds,
          anchor=lambda k: k) -> Match[K]:
    """The best cluster. Two different clusters (people) with the same best evidence is
    a tie nothing in the records can settle: it goes to review (naming the first in
    key order, for a person to decide), never to auto."""
    best: dict[object, tuple[K, MatchScore]] = {}
    for key, ms in scored:
        a = anchor(key)
        held = best.get(a)
        if held is None or _rank(ms) > _rank(held[1]) or (_rank(ms) == _rank(held[1]) and _before(key, held[0])):
            best[a] = (key, ms)
    if not best:
        return Match("none", None, 0.0, ())
    top = max(_rank(ms) for _, ms in best.values())
    tied = [a for a, (_, ms) in best.items() if _rank(ms) == top]
    first = tied[0]
    for a in tied[1:]:
        if _before(a, first):
            first = a
    ms = best[first][1]
    kind = decide(ms, thresholds)
    reasons = ms.reasons
    if len(tied) > 1 and kind != "none":
        kind, reasons = "review", tuple(sorted((*reasons, "tie")))
    if kind == "none":
        return Match("none", None, ms.score, reasons)
    return Match(kind, first, ms.score, reasons)


@lru_cache(maxsize=262144)
def _name_verdict(af: str, al: str, bf: str, bl: str) -> int:
    """What the names alone say about the caps: 1 the given names differ however read,
    2 the family names differ however read, 0 neither. Cached: names repeat (a
    common surname's block is mostly a few dozen given names)."""
    if af and bf and given_level(af, bf) == "disagree" and not (
            al and bl and (given_level(af, bl) != "disagree" or given_level(al, bf) != "disagree")):
        return 1
    if not al or not bl or family_level(al, bl) != "disagree":
        return 0
    if af and bf and (family_level(al, bf) != "disagree" or family_level(af, bl) != "disagree"):
        return 0
    return 2


def _other_person(a: NormalizedContact, b: NormalizedContact) -> bool:
    """Whether a cap certainly holds the pair below review, by cheap tests (cached name
    comparisons, set intersections); it spares the full score for most of a common
    name's block. Exact: it only says True where `_evaluate` would cap."""
    return _capped_by_names(_name_verdict(a.first, a.last, b.first, b.last), a, b)


def _capped_by_names(verdict: int, a: NormalizedContact, b: NormalizedContact) -> bool:
    """`_other_person` once the names' verdict is known (the candidate loop caches it
    per query by the candidate's names: a common surname's block repeats a few dozen)."""
    if verdict == 0:
        return False
    if not a.emails.isdisjoint(b.emails):
        return False
    if verdict == 1:
        return True
    # The family names differ however read: capped unless an identifier agrees.
    if not a.phones.isdisjoint(b.phones):
        return False
    if a.birthday is not None and b.birthday is not None and birthday_level(a, b) == "agree":
        return False
    # An address agrees only at the same house number.
    return a.house_numbers.isdisjoint(b.house_numbers) or address_level(a, b) != "agree"


class _Scored:
    """A candidate's score with its reasons built only if it is the one returned."""

    __slots__ = ("score", "corroborated", "raw", "_evaluated")

    def __init__(self, evaluated) -> None:
        self._evaluated = evaluated
        self.score = evaluated[0]
        self.corroborated = evaluated[3]
        self.raw = evaluated[5]

    @property
    def reasons(self) -> tuple[str, ...]:
        return _as_score(self._evaluated).reasons


def _identifiable(n: NormalizedContact) -> bool:
    return n.has_name or bool(n.emails) or bool(n.phones)


def best_match(
    contact: Contact,
    index: CandidateIndex[K],
    thresholds: Thresholds = Thresholds(),
    *,
    exclude: Collection[K] = (),
) -> Match[K]:
    """The best existing contact (cluster) for `contact`; a tie between people goes to review."""
    norm = normalized(contact, index.region)
    if not _identifiable(norm):
        return Match("none", None, 0.0, ())
    excluded = set(exclude)
    prune = thresholds.review > OTHER_PERSON_CAP
    scored = []
    scorable = index._scorable
    verdicts: dict[tuple[str, str], int] = {}
    prior = pool_prior(len(index))
    tf = index.names.terms(norm)
    first, last = norm.first, norm.last
    for key in index._candidates(norm):
        other = scorable.get(key)
        if other is None or (excluded and key in excluded):
            continue
        if prune:
            names = (other.first, other.last)
            verdict = verdicts.get(names)
            if verdict is None:
                verdict = verdicts[names] = _name_verdict(first, last, *names)
            if verdict == 1:
                if not norm.emails or norm.emails.isdisjoint(other.emails):
                    continue  # other given names, no shared mailbox: capped below review
            elif verdict and _capped_by_names(verdict, norm, other):
                continue
        scored.append((key, _Scored(_evaluate(norm, other, prior, tf))))
    return _pick(scored, thresholds, index.anchor)


def match_all_pairs(contact: Contact, pool: Mapping[K, Contact], thresholds: Thresholds = Thresholds(),
                    region: str = DEFAULT_REGION) -> Match[K]:
    """Score against every contact in `pool`: the quadratic baseline the index must agree with.

    It skips the pairs `_other_person` proves capped below review, as the index
    does, so the two differ only in which pairs blocking lets through.
    """
    norm = normalized(contact, region)
    if not _identifiable(norm):
        return Match("none", None, 0.0, ())
    prune = thresholds.review > OTHER_PERSON_CAP
    prior = pool_prior(len(pool))
    norms = {key: normalized(c, region) for key, c in pool.items()}
    tf = NameFrequencies(norms.values()).terms(norm)
    scored = []
    for key, other in norms.items():
        if not _identifiable(other) or (prune and _other_person(norm, other)):
            continue
        scored.append((key, _Scored(_evaluate(norm, other, prior, tf))))
    return _pick(scored, thresholds)
