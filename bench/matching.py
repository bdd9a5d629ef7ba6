"""Duplicate detection at CRM scale: 10,000 incoming contacts against 100,000 existing.

Prints: index build time, matching throughput through the blocking index,
precision/recall against the generated ground truth (auto only, and auto+review),
and the naive all-pairs baseline timed on a sample and extrapolated, with the
speed-up and how often the two agree on that sample.

Run: `python -m bench.matching` (about a minute on two cores).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from emulators.people_data import make_near_duplicate, make_people
from models.contact import Contact
from sync.matching import CandidateIndex, Match, Thresholds, best_match, match_all_pairs

Report = Callable[..., None]

EXISTING = 100_000
INCOMING = 10_000
DUPLICATE_SHARE = 0.20
SEED = 20240601


def make_workload(existing: int = EXISTING, incoming: int = INCOMING, seed: int = SEED):
    """(existing contacts by key, incoming contacts, truth: incoming position -> existing key)."""
    rng = random.Random(seed)
    n_dup = int(incoming * DUPLICATE_SHARE)
    people = make_people(existing + incoming - n_dup, seed)
    pool = {f"crm-{i:06d}": c for i, c in enumerate(people[:existing])}
    keys = list(pool)
    fresh = people[existing:]
    incoming_list: list[Contact] = []
    truth: dict[int, str] = {}
    dup_sources = rng.sample(keys, n_dup)
    slots = set(rng.sample(range(incoming), n_dup))
    fresh_iter, dup_iter = iter(fresh), iter(dup_sources)
    for pos in range(incoming):
        if pos in slots:
            key = next(dup_iter)
            incoming_list.append(make_near_duplicate(pool[key], rng))
            truth[pos] = key
        else:
            incoming_list.append(next(fresh_iter))
    return pool, incoming_list, truth


def _quality(results: list[Match[str]], truth: dict[int, str], kinds: set[str]) -> tuple[float, float]:
    predicted = [(i, m.key) for i, m in enumerate(results) if m.kind in kinds]
    correct = sum(1 for i, key in predicted if truth.get(i) == key)
    precision = correct / len(predicted) if predicted else 1.0
    recall = correct / len(truth) if truth else 1.0
    return precision, recall


def run(report: Report = print, *, existing: int = EXISTING, incoming: int = INCOMING, sample: int = 50) -> dict[str, float]:
    """Run the benchmark; `report(name, value, unit)` receives each figure (print works)."""
    thresholds = Thresholds()
    figures: dict[str, float] = {}

    def emit(name: str, value: float, unit: str = "") -> None:
        figures[name] = value
        report(name, round(value, 4) if isinstance(value, float) else value, unit)

    t0 = time.perf_counter()
    pool, incoming_list, truth = make_workload(existing, incoming)
    emit("matching.datagen_s", time.perf_counter() - t0, "s")

    t0 = time.perf_counter()
    index: CandidateIndex[str] = CandidateIndex()
    for key, contact in pool.items():
        index.add(key, contact)
    build = time.perf_counter() - t0
    emit("matching.index_build_s", build, "s")
    emit("matching.index_build_rate", existing / build, "contacts/s")
    sizes = sorted(index.block_sizes().values())
    emit("matching.blocks", len(sizes), "")
    emit("matching.largest_block", sizes[-1] if sizes else 0, "contacts")

    t0 = time.perf_counter()
    candidates_scored = 0
    results: list[Match[str]] = []
    for contact in incoming_list:
        results.append(best_match(contact, index, thresholds))
    match_time = time.perf_counter() - t0
    capped = index.capped_lookups
    for contact in incoming_list[:1000]:
        candidates_scored += len(index.candidates(contact))
    emit("matching.match_s", match_time, "s")
    emit("matching.match_rate", incoming / match_time, "contacts/s")
    emit("matching.mean_candidates", candidates_scored / min(1000, incoming), "per contact")
    emit("matching.capped_lookups", capped, "block lookups skipped")

    for label, kinds in (("auto", {"auto"}), ("auto_or_review", {"auto", "review"})):
        precision, recall = _quality(results, truth, kinds)
        emit(f"matching.precision_{label}", precision, "")
        emit(f"matching.recall_{label}", recall, "")
    emit("matching.review_share", sum(m.kind == "review" for m in results) / incoming, "")

    rng = random.Random(SEED + 1)
    dup_positions = sorted(truth)
    other_positions = [i for i in range(incoming) if i not in truth]
    half = sample // 2
    picks = rng.sample(dup_positions, min(half, len(dup_positions))) + rng.sample(other_positions, min(sample - half, len(other_positions)))
    t0 = time.perf_counter()
    baseline = {i: match_all_pairs(incoming_list[i], pool, thresholds) for i in picks}
    per_contact = (time.perf_counter() - t0) / len(picks)
    agree = sum(
        (baseline[i].kind, baseline[i].key) == (results[i].kind, results[i].key) for i in picks
    )
    emit("matching.all_pairs_sample", len(picks), "contacts")
    emit("matching.all_pairs_per_contact_s", per_contact, "s")
    emit("matching.all_pairs_extrapolated_s", per_contact * incoming, "s")
    emit("matching.speedup", per_contact * incoming / match_time, "x")
    emit("matching.index_agrees_with_all_pairs", agree / len(picks), "")
    return figures


if __name__ == "__main__":
    started = time.perf_counter()
    run(lambda name, value, unit="": print(f"{name:42s} {value:>14} {unit}"))
    print(f"{'matching.total_s':42s} {time.perf_counter() - started:>14.1f} s")
