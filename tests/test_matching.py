"""Scoring calibration, candidate index, and the index-vs-all-pairs guarantees."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulators.people_data import make_near_duplicate, make_people
from models.contact import Contact
from sync.matching import (
    CandidateIndex,
    Match,
    MatchScore,
    Thresholds,
    best_match,
    match_all_pairs,
    score,
)

T = Thresholds()


def C(given="", family="", emails=(), phones=(), company="") -> Contact:
    return Contact(given_name=given, family_name=family, emails=emails, phones=phones, company=company)


# --- calibration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (C("John", "Smith", ["john.smith@gmail.com"]), C("John", "Smith", ["JohnSmith+crm@googlemail.com"])),
        (C("John", "Smith", ["j.smith@gmail.com"]), C("JOHN", "SMITH", ["J.Smith@Gmail.com"])),
        (C("Ann", "Lee", ["ann+news@outlook.com"]), C("Ann", "Lee", ["ANN@outlook.com"])),
        (C("José", "García", ["jose@acme.com"]), C("Jose", "Garcia", ["Jose@ACME.com"])),
        (C("John", "Smith", ["js@acme.com"]), C("Smith, John", "", ["JS@acme.com"])),
        (C("John", "Smith", ["js@acme.com"]), C("Smith", "John", ["js@acme.com"])),
        (C("Jonathan", "Smith", ["js@acme.com"]), C("Jonathon", "Smtih", ["js@acme.com"])),
    ],
    ids=["gmail-dots-plus", "case", "outlook-plus", "accents", "last-comma-first", "swapped", "typos"],
)
def test_same_person_same_email_variants_is_auto(a, b):
    assert score(a, b).score >= T.auto
    assert "same_email" in score(a, b).reasons


def test_same_name_same_phone_other_format_is_auto():
    a = C("Maria", "Rossi", phones=["(415) 555-0134"])
    b = C("María", "Rossi", phones=["+1 415.555.0134"])
    assert score(a, b).score >= T.auto
    # Even with a work address on one side and a personal one on the other.
    a2 = C("Maria", "Rossi", ["maria@acme.com"], ["(415) 555-0134"])
    b2 = C("Maria", "Rossi", ["maria.rossi@gmail.com"], ["+14155550134"])
    assert score(a2, b2).score >= T.auto


def test_jon_john_same_company_without_shared_email_is_review():
    a = C("Jon", "Smith", ["jon.smith@acme.com"], company="Acme")
    b = C("John", "Smith", ["john.smith@acme.com"], company="ACME Inc.")
    s = score(a, b)
    assert T.review <= s.score < T.auto, s
    assert "same_company" in s.reasons
    # Without any address on one side too.
    assert T.review <= score(C("Jon", "Smith", company="Acme"), b).score < T.auto


def test_colleagues_sharing_only_a_company_domain_are_below_review():
    a = C("Mary", "Jones", ["mary.jones@acme.com"], company="Acme")
    b = C("John", "Smith", ["john.smith@acme.com"], company="Acme")
    assert score(a, b).score < T.review
    # Same surname, different first name, same company: still colleagues.
    c = C("Mary", "Smith", ["mary.smith@acme.com"], company="Acme")
    assert score(c, b).score < T.review


def test_namesakes_with_different_emails_and_phones_are_below_auto():
    a = C("John", "Smith", ["john.smith@gmail.com"], ["(415) 555-0134"])
    b = C("John", "Smith", ["jsmith@yahoo.com"], ["+44 20 7946 0958"])
    assert score(a, b).score < T.auto
    assert score(a, b).score < T.review
    assert {"different_emails", "different_phones"} <= set(score(a, b).reasons)


def test_shared_role_address_with_different_names_is_not_auto():
    a = C("Mary", "Jones", ["info@acme.com"])
    b = C("Peter", "Okafor", ["info@acme.com"])
    assert T.review <= score(a, b).score < T.auto


def test_shared_phone_with_different_names_is_weak():
    a = C("Mary", "Jones", phones=["(415) 555-0134"])
    b = C("Peter", "Jones", phones=["415 555 0134"])  # a family landline
    assert score(a, b).score < T.review


def test_nicknames_are_not_expected_to_match_on_name_alone():
    a = C("Bob", "Smith", company="Acme")
    b = C("Robert", "Smith", company="Acme")
    assert score(a, b).score < T.review


def test_identifiers_without_names():
    assert score(C(emails=["ann@x.com"]), C("Ann", "Lee", ["ANN@x.com"])).score >= T.auto
    assert score(C(company="Acme"), C(company="Acme")).score < T.review
    assert score(C(), C()) == MatchScore(0.0, ())


def test_reasons_carry_no_personal_data():
    a = C("Zebedee", "Quartermaine", ["zq@acme.com"], ["(415) 555-0134"], "Acme")
    b = C("Zebedee", "Quartermaine", ["zq@acme.com"], ["(415) 555-0134"], "Acme")
    text = " ".join(score(a, b).reasons).casefold()
    for fragment in ("zebedee", "quartermaine", "zq", "acme", "415"):
        assert fragment not in text


# --- property tests: score ------------------------------------------------------

_names = st.sampled_from(["", "John", "Jon", "JÖHN", "Mary", "Smith", "Smyth", "García", "Garcia", "Lee", "O'Brien", "J."])
_emails = st.sampled_from(
    ["john.smith@gmail.com", "JohnSmith+x@googlemail.com", "jsmith@acme.com", "mary@acme.com", "info@acme.com", "john@other.org", "bad", "lee@outlook.com"]
)
_phones = st.sampled_from(["(415) 555-0134", "+14155550134", "212-555-0100", "+44 20 7946 0958", "n/a"])
_companies = st.sampled_from(["", "Acme", "ACME Inc.", "Other Org"])

small_world_contacts = st.builds(
    Contact,
    given_name=st.one_of(_names, st.builds(lambda f, l: f"{l}, {f}", _names, _names)),
    family_name=_names,
    emails=st.lists(_emails, max_size=2),
    phones=st.lists(_phones, max_size=2),
    company=_companies,
)
any_text_contacts = st.builds(
    Contact,
    given_name=st.text(max_size=15),
    family_name=st.text(max_size=15),
    emails=st.lists(st.text(max_size=15), max_size=2),
    phones=st.lists(st.text(max_size=12), max_size=2),
    company=st.text(max_size=10),
)
contacts = st.one_of(small_world_contacts, any_text_contacts)


@settings(max_examples=300)
@given(contacts, contacts)
def test_score_symmetric_and_bounded(a, b):
    ab, ba = score(a, b), score(b, a)
    assert ab.score == ba.score
    assert sorted(ab.reasons) == sorted(ba.reasons)
    assert 0.0 <= ab.score <= 1.0


@given(small_world_contacts)
def test_contact_with_an_identifier_matches_itself_at_auto(c):
    s = score(c, c).score
    if any(e != "bad" for e in c.emails) or any(p != "n/a" for p in c.phones):
        assert s >= T.auto
    # And nothing scores higher against it than itself.
    other = C("Mary", "Lee", ["mary@acme.com"])
    assert score(c, other).score <= max(s, score(other, other).score)


@given(contacts)
def test_equal_contacts_built_separately_score_identically(c):
    twin = Contact(**c.model_dump())
    assert score(c, twin) == score(c, c)


# --- candidate index -------------------------------------------------------------


def test_index_add_remove_contains_len():
    idx: CandidateIndex[str] = CandidateIndex()
    john = C("John", "Smith", ["john@acme.com"])
    idx.add("a", john)
    idx.add("b", C("Mary", "Jones", ["mary@acme.com"]))
    assert len(idx) == 2 and "a" in idx and "z" not in idx
    assert idx.candidates(C("John", "Smith")) == {"a"}
    assert idx.candidates(C(emails=["JOHN@acme.com"])) == {"a"}
    idx.add("a", C("Peter", "Okafor"))  # re-adding replaces: old keys are gone
    assert idx.candidates(C(emails=["john@acme.com"])) == set()
    assert len(idx) == 2
    idx.remove("a")
    idx.remove("a")  # removing twice is harmless
    assert len(idx) == 1 and "a" not in idx
    assert idx.candidates(C("Peter", "Okafor")) == set()
    assert not any(k.startswith(("n:okafor", "t:")) and v == 0 for k, v in idx.block_sizes().items())


def test_index_caps_huge_blocks_but_keeps_selective_keys():
    idx: CandidateIndex[int] = CandidateIndex(max_block=10)
    for i in range(50):
        idx.add(i, C("John", "Smith", [f"john{i}@example.com"]))
    # The name block (50 > 10) is skipped; the email still finds its contact.
    assert idx.candidates(C("John", "Smith", ["john7@example.com"])) == {7}
    assert idx.capped_lookups > 0
    assert best_match(C("John", "Smith", ["JOHN7@example.com"]), idx, T).key == 7


def test_best_match_kinds_exclude_and_ties():
    idx: CandidateIndex[str] = CandidateIndex()
    same = C("John", "Smith", ["john.smith@gmail.com"])
    idx.add("k2", same)
    idx.add("k1", same)  # an exact duplicate already in the CRM: tie
    idx.add("k3", C("Jon", "Smith", company="Acme"))
    m = best_match(C("John", "Smith", ["johnsmith@gmail.com"]), idx, T)
    assert m == Match("auto", "k1", 1.0, m.reasons)
    assert best_match(C("John", "Smith", ["johnsmith@gmail.com"]), idx, T, exclude={"k1"}).key == "k2"
    review = best_match(C("John", "Smith", ["john.smith@acme.com"], company="Acme"), idx, T)
    assert review.kind == "review" and review.key == "k3"
    none = best_match(C("Mary", "Jones", ["mary@else.org"]), idx, T)
    assert none.kind == "none" and none.key is None
    lenient = best_match(C("John", "Smith", ["john.smith@acme.com"], company="Acme"), idx, Thresholds(auto=0.7, review=0.5))
    assert lenient.kind == "auto"


def test_best_match_on_empty_index():
    assert best_match(C("Ann"), CandidateIndex(), T) == Match("none", None, 0.0, ())
    assert match_all_pairs(C("Ann"), {}, T) == Match("none", None, 0.0, ())


# --- index vs all pairs: recall and agreement ------------------------------------


def _world(people: list[Contact], rng: random.Random, n_dup: int) -> tuple[dict[int, Contact], list[Contact]]:
    pool = dict(enumerate(people))
    queries = [make_near_duplicate(people[rng.randrange(len(people))], rng) for _ in range(n_dup)]
    return pool, queries


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), extra=st.lists(small_world_contacts, max_size=8), rnd=st.randoms(use_true_random=False))
def test_blocking_loses_no_pair_that_scores_review_or_better(seed, extra, rnd):
    """Every pair all-pairs would propose (>= review) shares a blocking key, and
    best_match through the index returns exactly what all-pairs returns."""
    people = make_people(40, seed) + extra
    pool, queries = _world(people, rnd, 15)
    queries += extra
    idx: CandidateIndex[int] = CandidateIndex()
    for key, contact in pool.items():
        idx.add(key, contact)
    for q in queries:
        cands = idx.candidates(q)
        for key, contact in pool.items():
            if score(q, contact).score >= T.review:
                assert key in cands
        via_index, naive = best_match(q, idx, T), match_all_pairs(q, pool, T)
        assert (via_index.kind, via_index.key) == (naive.kind, naive.key)
        if naive.kind != "none":
            assert via_index == naive


def test_measured_recall_and_precision_on_generated_near_duplicates():
    """Against known ground truth: 3,000 existing, 600 incoming of which 200 are duplicates."""
    rng = random.Random(7)
    people = make_people(3_400, seed=11)
    pool = dict(enumerate(people[:3_000]))
    idx: CandidateIndex[int] = CandidateIndex()
    for key, contact in pool.items():
        idx.add(key, contact)
    truth: dict[int, int] = {}
    queries: list[Contact] = list(people[3_000:])
    for key in rng.sample(sorted(pool), 200):
        truth[len(queries)] = key
        queries.append(make_near_duplicate(pool[key], rng))

    results = [best_match(q, idx, T) for q in queries]
    proposed = {i: m.key for i, m in enumerate(results) if m.kind != "none"}
    auto = {i: m.key for i, m in enumerate(results) if m.kind == "auto"}
    recall = sum(proposed.get(i) == k for i, k in truth.items()) / len(truth)
    auto_recall = sum(auto.get(i) == k for i, k in truth.items()) / len(truth)
    auto_precision = sum(truth.get(i) == k for i, k in auto.items()) / len(auto)
    assert recall >= 0.97, recall
    assert auto_recall >= 0.93, auto_recall
    assert auto_precision >= 0.99, auto_precision

    # Blocking recall vs all-pairs on a sample: what all-pairs proposes, the index proposes.
    for i in range(0, len(queries), 12):
        naive = match_all_pairs(queries[i], pool, T)
        assert (results[i].kind, results[i].key) == (naive.kind, naive.key)
