"""Names drawn as often as people really carry them, for the matching benchmark's population.

Whether two records that agree only on a name are one person depends on how many
namesakes the pool holds, so the name distribution decides what a matcher can do
with names alone. The demo's short lists (emulators/people_data: ~200 given x
~250 family names) give a pool of 100,000 about fourteen namesakes per full name,
some forty times what real populations show: the US census puts the chance that
two people share a surname near 1 in 1,000 (sum of squared shares; Smith alone is
0.8 %) and a given name near 1 in 300, so a full name near 1 in 300,000.

Here, from Faker's tables (its en_US lists carry the census and SSA frequencies):
- given names: 75 % by the US frequencies, 25 % from the given names of thirty other
  locales (an international CRM);
- family names: 50 % by the census frequencies of the 1,000 commonest US surnames
  (which cover about half of the US population), 50 % from the long tail, here the
  surnames of those locales (about 16,000, evenly).

`collision_rates` prints what that gives (python -m bench.names).
"""

from __future__ import annotations

import importlib
import itertools
import random
from functools import lru_cache

#: Latin-script locales whose person providers hold given and family names
LOCALES = (
    "en_GB", "en_IE", "de_DE", "de_AT", "fr_FR", "fr_CA", "es_ES", "es_MX", "it_IT", "nl_NL", "pl_PL",
    "pt_BR", "pt_PT", "sv_SE", "da_DK", "no_NO", "fi_FI", "cs_CZ", "hu_HU", "ro_RO", "tr_TR", "hr_HR",
    "sk_SK", "sl_SI", "et_EE", "lt_LT", "lv_LV", "en_IN", "id_ID", "ga_IE",
)
US_GIVEN_SHARE = 0.75
CENSUS_FAMILY_SHARE = 0.50


def _provider(locale: str):
    return importlib.import_module(f"faker.providers.person.{locale}").Provider


@lru_cache(maxsize=1)
def tables() -> tuple[tuple[list[str], list[float]], list[str], tuple[list[str], list[float]], list[str]]:
    """((US given names, cumulative weights), other given names, (census surnames,
    cumulative weights), tail surnames): sorted so that a seed draws the same names
    whatever order Faker keeps them in."""
    us = _provider("en_US")
    given: dict[str, float] = {}
    for table in (us.first_names_female, us.first_names_male):
        for name, weight in table.items():
            given[name] = given.get(name, 0.0) + float(weight)
    census = {name: float(w) for name, w in us.last_names.items()}
    other_given: set[str] = set()
    tail: set[str] = set()
    for locale in LOCALES:
        p = _provider(locale)
        other_given.update(_names(getattr(p, "first_names", ())))
        tail.update(_names(getattr(p, "last_names", ())))
    other_given -= set(given)
    tail -= set(census)
    return (_cumulative(given), sorted(other_given), _cumulative(census), sorted(tail))


def _names(table) -> list[str]:
    from emulators.people_data import _slug

    # A few locales list only a placeholder; email addresses are made from the
    # names, so each needs letters an address can carry.
    return [n.strip() for n in table if isinstance(n, str) and len(n.strip()) > 1 and _slug(n)]


def _cumulative(weights: dict[str, float]) -> tuple[list[str], list[float]]:
    names = sorted(weights)
    return names, list(itertools.accumulate(weights[n] for n in names))


def draw_name(rng: random.Random) -> tuple[str, str]:
    """(given, family) for one person of the population."""
    (us_given, us_cum), other_given, (census, census_cum), tail = tables()
    if rng.random() < US_GIVEN_SHARE:
        given = rng.choices(us_given, cum_weights=us_cum)[0]
    else:
        given = rng.choice(other_given)
    if rng.random() < CENSUS_FAMILY_SHARE:
        family = rng.choices(census, cum_weights=census_cum)[0]
    else:
        family = rng.choice(tail)
    return given, family


def collision_rates(n: int = 200_000, seed: int = 1) -> tuple[float, float, float]:
    """Measured chance that two people share the given name, the family name, both."""
    rng = random.Random(seed)
    drawn = [draw_name(rng) for _ in range(n)]

    def rate(items) -> float:
        counts: dict = {}
        for item in items:
            counts[item] = counts.get(item, 0) + 1
        return sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))

    return rate(g for g, _ in drawn), rate(f for _, f in drawn), rate(drawn)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(prog="python -m bench.names",
                            description="how often two people of the population share a name").parse_args()
    g, f, both = collision_rates()
    print(f"given name shared by two people: 1 in {1 / g:,.0f}")
    print(f"family name: 1 in {1 / f:,.0f}")
    print(f"full name: 1 in {1 / both:,.0f}  (a pool of 100,000 holds {100_000 * both:.2f} namesakes per person)")
