"""Fit the matcher's weights on the corrupted-record generator and write sync/match_weights.py.

Run: `python -m bench.calibrate_matching` (about a minute). Deterministic: the same
seed and generator give the same file, so a diff of match_weights.py shows what a
change to the generator or the comparisons did to the scores.

Fellegi-Sunter: for each field and agreement level, m = P(level | same person),
estimated on true pairs (a person and a corrupted record of them), and
u = P(level | different people), estimated on random pairs of the population. The
weight of a level is log2(m/u) with add-one smoothing, m floored at `M_FLOOR`,
and partial agreements capped at their full agreement's weight (`ORDER`);
"missing" is 0 by definition (an absent field says nothing). A summed weight is then mapped to a
probability by a logistic regression (Newton's method) of the label on the
levels, on the candidate pairs blocking produces, labelled by the generator: one
weight per field level, shrunk toward its log2(m/u) (see `fit_levels`), and an
intercept. That is the pair population the score is
used on, so a score reads as the share of such pairs that are the same person. Fields are fitted on all three benchmark field sets
together (names only; with emails and phones; with address and birthday).
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from pathlib import Path

from bench.duplicates import CONFIGS, corrupt, make_population, project
from sync.normalize import normalized

SEED = 424242  # not the benchmark's seed: the weights are not fitted on what they are measured on
POPULATION = 20_000
TRUE_PAIRS = 8_000
RANDOM_PAIRS = 200_000
PLATT_QUERIES = 2_000

LEVELS: dict[str, tuple[str, ...]] = {
    "email": ("agree", "disagree", "missing"),
    "phone": ("agree", "disagree", "missing"),
    "address": ("agree", "street", "area", "disagree", "missing"),
    "birthday": ("agree", "month_day", "near", "disagree", "missing"),
    "given": ("exact", "nickname", "typo", "initial", "disagree", "missing"),
    "family": ("exact", "typo", "disagree", "missing"),
    "middle": ("exact", "initial", "disagree", "missing"),
    "company": ("agree", "disagree", "missing"),
}

#: m is floored: the generator cannot know every way two records of one person differ,
#: and no level may count as impossible for one (a weight of -12 would veto a match)
M_FLOOR = 0.005
#: (better, worse) level pairs whose weights must not invert
ORDER: dict[str, tuple[tuple[str, str], ...]] = {
    "given": (("exact", "typo"), ("exact", "nickname"), ("typo", "initial"), ("nickname", "initial")),
    "family": (("exact", "typo"),),
    "middle": (("exact", "initial"),),
    "birthday": (("agree", "month_day"), ("month_day", "near")),
    "address": (("agree", "street"), ("street", "area")),
}

OUT = Path(__file__).resolve().parent.parent / "sync" / "match_weights.py"


def _levels(a, b) -> dict[str, str]:
    from sync.matching import field_levels

    return field_levels(normalized(a), normalized(b))


def estimate(people, rng: random.Random) -> tuple[dict, dict, dict]:
    m: dict[str, Counter] = {f: Counter() for f in LEVELS}
    u: dict[str, Counter] = {f: Counter() for f in LEVELS}
    for _ in range(TRUE_PAIRS):
        person = people[rng.randrange(len(people))]
        dup, _kinds = corrupt(person, rng)
        for f, level in _levels(person, dup).items():
            m[f][level] += 1
    for _ in range(RANDOM_PAIRS):
        i, j = rng.randrange(len(people)), rng.randrange(len(people))
        if i == j:
            continue
        for f, level in _levels(people[i], people[j]).items():
            u[f][level] += 1
    weights: dict[str, dict[str, float]] = {}
    for f, levels in LEVELS.items():
        mt, ut = sum(m[f].values()), sum(u[f].values())
        weights[f] = {}
        for level in levels:
            if level == "missing":
                weights[f][level] = 0.0
                continue
            pm = max(M_FLOOR, (m[f][level] + 1) / (mt + len(levels)))
            pu = (u[f][level] + 1) / (ut + len(levels))
            weights[f][level] = round(math.log2(pm / pu), 3)
        # A partial agreement is never stronger evidence than the full one (an initial
        # is rarer than a name among strangers, which says nothing about identity).
        for better, worse in ORDER.get(f, ()):
            weights[f][worse] = min(weights[f][worse], weights[f][better])
    return weights, m, u


def fit_levels(samples: list[tuple[tuple[str, ...], int]], prior: dict[str, dict[str, float]],
               ridge: float = 20.0) -> tuple[dict[str, dict[str, float]], float]:
    """Logistic regression of the label on the levels (one weight per field level) and
    an intercept, starting from and shrunk toward the Fellegi-Sunter weights.

    Summed log-likelihood ratios assume fields independent; they are not (an email
    local part follows the names, a household shares address and surname), and a
    disagreeing email is common for one person while an agreeing one is proof: one
    weight per level, fitted on the candidate pairs, corrects both. Identical level
    combinations are grouped first, so Newton's method runs over a few thousand
    distinct rows rather than every pair. The ridge toward the m/u weights keeps
    levels the candidates rarely show (or separate perfectly, like an agreeing
    email) at their Fellegi-Sunter value instead of at infinity; steps are damped
    for the same reason. "missing" stays 0.
    """
    from sync.matching import FIELDS

    columns = [(f, lv) for f in FIELDS for lv in LEVELS[f] if lv != "missing"]
    index = {c: i for i, c in enumerate(columns)}
    groups: dict[tuple[str, ...], list[int]] = {}
    for x, y in samples:
        g = groups.setdefault(x, [0, 0])
        g[0] += 1
        g[1] += y
    rows = []
    for levels, (n, pos) in groups.items():
        active = [index[(f, lv)] for f, lv in zip(FIELDS, levels) if lv != "missing"]
        rows.append((active, n, pos))
    k = len(columns) + 1  # the last is the intercept
    target = [prior[f][lv] for f, lv in columns]
    beta = target[:] + [-10.0]
    for _ in range(200):
        grad = [0.0] * k
        hess = [[0.0] * k for _ in range(k)]
        for active, n, pos in rows:
            z = beta[-1] + sum(beta[i] for i in active)
            p = 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0
            r = n * p - pos
            wgt = n * p * (1 - p)
            cols = active + [k - 1]
            for i in cols:
                grad[i] += r
                for j in cols:
                    hess[i][j] += wgt
        for i in range(k - 1):
            grad[i] += ridge * (beta[i] - target[i])
            hess[i][i] += ridge
        step = _solve(hess, grad)
        biggest = max(abs(s) for s in step)
        if biggest > 2.0:
            step = [s * 2.0 / biggest for s in step]
        beta = [b - s for b, s in zip(beta, step)]
        if biggest < 1e-7:
            break
    fitted = {f: {lv: 0.0 for lv in LEVELS[f]} for f in FIELDS}
    for (f, lv), b in zip(columns, beta):
        fitted[f][lv] = round(b, 3)
    for f in FIELDS:
        for better, worse in ORDER.get(f, ()):
            fitted[f][worse] = min(fitted[f][worse], fitted[f][better])
    return fitted, round(beta[-1], 4)


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the system is small)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        if abs(m[c][c]) < 1e-12:
            continue
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            for j in range(c, n + 1):
                m[r][j] -= f * m[c][j]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        if abs(m[r][r]) < 1e-12:
            continue
        x[r] = (m[r][n] - sum(m[r][j] * x[j] for j in range(r + 1, n))) / m[r][r]
    return x


def candidate_samples(people, weights, rng: random.Random) -> list[tuple[tuple[str, ...], int]]:
    """(each field's level, same person?) for the candidate pairs blocking yields, per field set."""
    from sync.matching import FIELDS, CandidateIndex

    samples: list[tuple[float, int]] = []
    pool_size = calibration_pool()
    for fields in CONFIGS.values():
        index: CandidateIndex[int] = CandidateIndex()
        for i in range(pool_size):
            index.add(i, project(people[i], fields))
        for q in range(PLATT_QUERIES):
            if q % 2 == 0:
                person = rng.randrange(pool_size)
                query = project(corrupt(people[person], rng)[0], fields)
            else:
                person = pool_size + rng.randrange(len(people) - pool_size)
                query = project(people[person], fields)
            nq = normalized(query)
            for key in index.candidates(query):
                levels = _levels_norm(nq, index.normalized(key))
                samples.append((tuple(levels[f] for f in FIELDS), int(key == person)))
    return samples


def calibration_pool() -> int:
    """How many records the calibration's candidate pairs were searched among: the
    matcher lowers the prior for larger pools (`sync.matching.pool_prior`)."""
    return POPULATION // 2


def _levels_norm(a, b):
    from sync.matching import field_levels

    return field_levels(a, b)


def render(weights, slope, intercept, m, u, prior) -> str:
    lines = [
        '"""Fellegi-Sunter weights and the logistic fit of the matcher: GENERATED, do not edit.',
        "",
        "Written by `python -m bench.calibrate_matching` (see its docstring for the method)",
        f"from seed {SEED}: {POPULATION:,} generated people, {TRUE_PAIRS:,} true pairs for m,",
        f"{RANDOM_PAIRS:,} random pairs for u; WEIGHTS[field][level] starts at log2(m/u) and is",
        "fitted by logistic regression on candidate pairs; a pair's score is the logistic of",
        "SLOPE * (sum of its levels' weights) + INTERCEPT, fitted on candidates from",
        f"CALIBRATION_POOL = {calibration_pool():,} records (the prior of a larger pool is lower).",
        "",
        "Fellegi-Sunter log2(m/u) before the fit:",
        *(f"    {f}: " + ", ".join(f"{lv} {w}" for lv, w in t.items() if lv != "missing") for f, t in prior.items()),
        "",
        "m and u (counts) as measured, for review:",
    ]
    for f in LEVELS:
        mt, ut = sum(m[f].values()) or 1, sum(u[f].values()) or 1
        parts = ", ".join(f"{lv} {m[f][lv] / mt:.3f}/{u[f][lv] / ut:.4f}" for lv in LEVELS[f])
        lines.append(f"    {f}: {parts}")
    lines += ['"""', "", "WEIGHTS: dict[str, dict[str, float]] = {"]
    for f, table in weights.items():
        lines.append(f"    {f!r}: {{" + ", ".join(f"{k!r}: {v}" for k, v in table.items()) + "},")
    lines += ["}", f"SLOPE = {slope}", f"INTERCEPT = {intercept}", f"CALIBRATION_POOL = {calibration_pool()}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    # No options: a mistyped one must not start a two-minute run that rewrites the weights.
    argparse.ArgumentParser(prog="python -m bench.calibrate_matching",
                            description=f"fit the matcher's weights and write {OUT.name}").parse_args(argv)
    rng = random.Random(SEED)
    people = make_population(POPULATION, SEED)
    weights, m, u = estimate(people, rng)
    # The comparisons read the current tables (the name orientation picks by weight):
    # install the new ones before collecting candidate samples.
    from sync import match_weights

    match_weights.WEIGHTS.clear()
    match_weights.WEIGHTS.update(weights)
    samples = candidate_samples(people, weights, rng)
    fitted, intercept = fit_levels(samples, weights)
    slope = 1.0
    OUT.write_text(render(fitted, slope, intercept, m, u, weights))
    positives = sum(y for _, y in samples)
    print(f"wrote {OUT} from {len(samples):,} candidate pairs ({positives:,} true): "
          f"slope {slope}, intercept {intercept}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
