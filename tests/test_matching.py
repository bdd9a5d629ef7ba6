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
    assert "email_agree" in score(a, b).reasons


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
    assert "company_agree" in s.reasons
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
    assert {"email_disagree", "phone_disagree"} <= set(score(a, b).reasons)


def test_shared_role_address_with_different_names_is_not_auto():
    a = C("Mary", "Jones", ["info@acme.com"])
    b = C("Peter", "Okafor", ["info@acme.com"])
    assert T.review <= score(a, b).score < T.auto


def test_shared_phone_with_different_names_is_weak():
    a = C("Mary", "Jones", phones=["(415) 555-0134"])
    b = C("Peter", "Jones", phones=["415 555 0134"])  # a family landline
    assert score(a, b).score < T.review


def test_nicknames_reach_review_on_names_and_employer_but_never_auto():
    # The nickname table (issue 11) makes Bob Robert; names and an employer alone are
    # still not enough to link without a person.
    a = C("Bob", "Smith", company="Acme")
    b = C("Robert", "Smith", company="Acme")
    s = score(a, b)
    assert T.review <= s.score < T.auto and "given_nickname" in s.reasons and not s.corroborated


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
    # An exact duplicate already in the CRM: a tie between two records nothing can
    # tell apart goes to review (naming the first), never to an arbitrary auto-link.
    m = best_match(C("John", "Smith", ["johnsmith@gmail.com"]), idx, T)
    assert m.kind == "review" and m.key == "k1" and "tie" in m.reasons
    assert best_match(C("John", "Smith", ["johnsmith@gmail.com"]), idx, T, exclude={"k1"}) == Match(
        "auto", "k2", m.score, tuple(r for r in m.reasons if r != "tie"))
    review = best_match(C("John", "Smith", ["john.smith@acme.com"], company="Acme"), idx, T)
    assert review.kind == "review" and review.key == "k3"
    none = best_match(C("Mary", "Jones", ["mary@else.org"]), idx, T)
    assert none.kind == "none" and none.key is None
    # Names and employer alone never auto-link, whatever the organisation's thresholds.
    lenient = best_match(C("John", "Smith", ["john.smith@acme.com"], company="Acme"), idx, Thresholds(auto=0.7, review=0.5))
    assert lenient.kind == "review"


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


# --- issue 11: every corroborating field, each corruption kind -------------------

from bench.duplicates import CORRUPTIONS, corrupt, make_population  # noqa: E402
from models.contact import PostalAddress  # noqa: E402
from sync.kinds.contacts import CONTACTS  # noqa: E402
from sync.matching import CandidateIndex as Index, _evaluate, decide  # noqa: E402
from sync.normalize import blocking_keys, normalize_email  # noqa: E402
from sync.policy import SyncSettings  # noqa: E402

HOME = PostalAddress(type="home", street="1200 Chestnut Street", city="Springfield", region="IL", postal_code="62704")


def full(**overrides) -> Contact:
    data = dict(given_name="Katherine", middle_name="Ann", family_name="Lindqvist", emails=["k.lindqvist@gmail.com"],
                phones=["(415) 555-0134"], company="Northwind", birthday="1984-03-17", addresses=[HOME])
    data.update(overrides)
    return Contact(**data)


NAMES_ADDR_BDAY = ("given_name", "middle_name", "family_name", "nickname", "addresses", "birthday")


def only(c: Contact, fields=NAMES_ADDR_BDAY) -> Contact:
    return Contact(**{k: v for k, v in c.model_dump().items() if k in fields})


@pytest.mark.parametrize(
    ("kind", "dup"),
    [
        ("typo_given", dict(given_name="Katherien")),
        ("typo_family", dict(family_name="Lindqvsit")),
        ("swap_names", dict(given_name="Lindqvist", family_name="Katherine")),
        ("initial_given", dict(given_name="K.")),
        ("drop_middle", dict(middle_name="")),
        ("nickname", dict(given_name="Kate")),
        ("move_address", dict(addresses=[PostalAddress(street="9 Elm Rd", city="Dover", postal_code="19901")])),
        ("drop_address", dict(addresses=[])),
        ("birthday_no_year", dict(birthday="--03-17")),
        ("birthday_slip", dict(birthday="1984-03-18")),
        ("drop_birthday", dict(birthday="")),
        ("street_abbreviated", dict(addresses=[HOME.model_copy(update={"street": "1200 Chestnut St."})])),
    ],
)
def test_each_corruption_of_names_address_birthday_is_found_and_auto_links(kind, dup):
    """Names + address + birthday: one corruption leaves enough to link automatically,
    and the pair shares a blocking key, so the index finds it."""
    a, b = only(full()), only(full(**dup))
    s = score(a, b)
    assert s.score >= T.auto and s.corroborated, (kind, s)
    assert blocking_keys(a) & blocking_keys(b), kind


def test_replaced_family_name_is_found_through_birthday_and_address():
    # Marriage: a new family name, the same person by birthday and home.
    a, b = only(full()), only(full(family_name="Okafor"))
    assert blocking_keys(a) & blocking_keys(b)
    assert score(a, b).score >= T.review
    assert score(a, b).score < T.auto  # a person confirms a changed family name
    # With the address gone only the given name and the full birthday are left: one in
    # millions of pairs by chance, so a person is asked, but never linked alone.
    c = only(full(family_name="Okafor", addresses=[]))
    assert T.review <= score(a, c).score < T.auto
    # A birthday without its year is one in 365: with a new family name that is nothing.
    d = only(full(family_name="Okafor", addresses=[], birthday="--03-17"))
    assert score(a, d).score < T.review
    # A move on top (the address now disagrees): not proposed either.
    moved = only(full(family_name="Okafor", middle_name="", addresses=[
        PostalAddress(street="9 Elm Road", city="Dover", postal_code="19901")]))
    assert score(a, moved).score < T.auto
    assert _evaluate(normalized(a), normalized(moved), pool_prior(100_000))[0] < T.review  # in a CRM of 100,000


def test_the_same_given_name_at_the_same_home_under_a_new_family_name_is_a_marriage_to_review():
    # Households in one home share a family name; the same given name there under another
    # family name is the person after a marriage: a person confirms it.
    a = only(full(birthday=""))
    b = only(full(family_name="Okafor", birthday=""))
    assert T.review <= score(a, b).score < T.auto
    other = only(full(given_name="Theodore", family_name="Okafor", birthday=""))
    assert score(a, other).score < T.review


def test_names_with_nothing_against_them_are_reviewed_when_likely():
    # A record typed again without its address or birthday: nothing contradicts the names,
    # so a likely pair goes to a person; the same names beside another address do not.
    a = only(full())
    bare = only(full(addresses=[], birthday="", middle_name=""))
    s = score(a, bare)
    assert T.review <= s.score < T.auto and not s.corroborated
    assert "names_agree_uncontradicted" in s.reasons
    elsewhere = only(full(birthday="", middle_name="", addresses=[
        PostalAddress(street="9 Elm Road", city="Dover", postal_code="19901")]))
    assert score(a, elsewhere).score < T.review


def test_a_household_member_called_by_a_nickname_is_not_auto_linked():
    # Melissa and Lisa (a nickname of Melissa) at one address with their own birthdays.
    a = only(full(given_name="Melissa", family_name="Wilson", birthday="1941-07-07"))
    b = only(full(given_name="Lisa", family_name="Wilson", birthday="1970-10-21"))
    assert score(a, b).score < T.auto


@pytest.mark.parametrize(
    "dup",
    [dict(phones=["+1 415.555.0134"], emails=[]), dict(emails=["K.Lindqvist+crm@googlemail.com"], phones=[]),
     dict(emails=["katherine@newjob.io"]), dict(company="")],
    ids=["reformatted-phone", "email-variant", "new-email-same-phone", "dropped-company"],
)
def test_identifier_corruptions_with_names_are_auto(dup):
    fields = ("given_name", "family_name", "emails", "phones", "company")
    a, b = only(full(), fields), only(full(**dup), fields)
    assert score(a, b).score >= T.auto


def test_names_only_exact_copy_reaches_review_but_never_auto():
    a = only(full(), ("given_name", "family_name"))
    s = score(a, a)
    assert T.review <= s.score < T.auto and not s.corroborated
    assert decide(s, Thresholds(auto=0.5, review=0.3)) == "review"


def test_namesakes_with_other_birthdays_and_homes_are_not_proposed():
    a = only(full())
    b = only(full(birthday="1990-11-02", addresses=[PostalAddress(street="4 Oak Ave", city="Reno", postal_code="89501")]))
    assert score(a, b).score < T.review


def test_household_members_are_not_merged():
    # Same family name, home and landline; another given name and birthday: a spouse or child.
    a = full()
    b = full(given_name="Peter", middle_name="", birthday="1981-06-02", emails=["peter.l@gmail.com"])
    assert score(a, b).score < T.review
    # Twins: even the birthday agrees.
    assert score(a, full(given_name="Elsa", middle_name="", emails=["elsa@x.org"])).score < T.review


def test_birthday_without_year_does_not_corroborate_names_alone():
    a = only(full(addresses=[]))
    b = only(full(addresses=[], birthday="--03-17"))
    s = score(a, b)
    assert T.review <= s.score < T.auto and not s.corroborated


# --- ties and clusters --------------------------------------------------------------


def test_exact_namesakes_tie_goes_to_review_not_to_the_smallest_key():
    idx: Index[str] = Index()
    idx.add("b", C("Ann", "Lee", phones=["212 555 0100"]))
    idx.add("a", C("Ann", "Lee", phones=["212 555 0100"]))
    m = best_match(C("Ann", "Lee", phones=["+1 212-555-0100"]), idx, T)
    assert m.kind == "review" and "tie" in m.reasons


def test_a_record_like_a_known_cluster_joins_the_cluster_not_a_member():
    idx: Index[str] = Index()
    idx.add("p-2", C("Ann", "Lee", phones=["212 555 0100"]))
    idx.add("p-1", C("Ann", "Lee", phones=["212 555 0100"]))
    idx.add("p-3", C("Ann", "Lee", phones=["212 555 0100"]), cluster="p-2")
    idx.join("p-2", "p-1")  # a person confirmed all three are one
    assert idx.cluster("p-1") == ["p-2", "p-3", "p-1"]
    m = best_match(C("Ann", "Lee", phones=["+12125550100"]), idx, T)
    assert m.kind == "auto" and m.key == "p-2" and "tie" not in m.reasons
    # Removing the anchor hands the cluster to the next member.
    idx.remove("p-2")
    assert idx.anchor("p-1") == "p-3" and best_match(C("Ann", "Lee", phones=["2125550100"]), idx, T).key == "p-3"


# --- organisation settings: phone region, punycode -----------------------------------


def test_phone_region_is_an_organisation_setting():
    uk = SyncSettings.from_dict({"phone_region": "gb"})
    assert uk.phone_region == "GB" and SyncSettings().phone_region == "US"
    with pytest.raises(ValueError):
        SyncSettings.from_dict({"phone_region": "Narnia"})
    a = C("Ann", "Lee", phones=["020 7946 0958"])
    b = C("Ann", "Lee", phones=["+44 20 7946 0958"])
    rules = CONTACTS.for_settings(uk)
    assert "p:+442079460958" in rules.keys(a)
    assert "p:+442079460958" not in CONTACTS.for_settings(SyncSettings()).keys(a)
    assert rules.score(a, b).score >= T.auto > CONTACTS.score(a, b).score
    idx = rules.new_index()
    idx.add("p1", b)
    assert idx.best(a, T).kind == "auto"


def test_punycode_domains_compare_equal_to_their_unicode_form():
    assert normalize_email("Ann@xn--mller-kva.de") == normalize_email("ann@müller.de") == "ann@müller.de"
    assert score(C("Ann", "Lee", ["ann@xn--mller-kva.de"]), C("Ann", "Lee", ["ann@MÜLLER.de"])).score >= T.auto


# --- properties --------------------------------------------------------------------

_population = make_population(300, seed=5)
people = st.sampled_from(_population)


@settings(max_examples=150, deadline=None)
@given(people, people, st.randoms(use_true_random=False))
def test_score_symmetric_bounded_on_generated_people(a, b, rnd):
    b2, _ = corrupt(b, rnd)
    for x, y in ((a, b), (a, b2), (b, b2)):
        assert score(x, y) == score(y, x)
        assert 0.0 <= score(x, y).score <= 1.0


@settings(max_examples=100, deadline=None)
@given(people)
def test_a_records_exact_copy_links(c):
    twin = Contact(**c.model_dump())
    s = score(c, twin)
    # Every generated person has an email, so an exact copy is corroborated and links.
    assert s.score >= T.auto and decide(s, T) == "auto"


@settings(max_examples=200, deadline=None)
@given(people, st.sampled_from([k for k in CORRUPTIONS if k not in ("replace_family", "identifiers_only")]),
       st.randoms(use_true_random=False),
       st.sampled_from(["names", "all"]))
def test_blocking_keys_shared_by_a_record_and_each_single_corruption(c, kind, rnd, fields):
    """One corruption of any kind leaves a shared blocking key, even with names alone."""
    if fields == "names":
        c = only(c, ("given_name", "family_name", "middle_name", "nickname"))
    dup, applied = corrupt(c, rnd, [kind])
    assert blocking_keys(c) & blocking_keys(dup), (kind, applied)


@settings(max_examples=100, deadline=None)
@given(people, st.sampled_from(["replace_family", "identifiers_only"]), st.randoms(use_true_random=False))
def test_a_replaced_or_dropped_name_still_shares_a_key_through_the_other_fields(c, kind, rnd):
    dup, _ = corrupt(c, rnd, [kind])
    assert blocking_keys(c) & blocking_keys(dup)


def test_key_count_per_contact_is_bounded():
    many = full(emails=[f"a{i}@x{i}.com" for i in range(10)], phones=[f"+1 415 555 01{i:02d}" for i in range(10)],
                addresses=[PostalAddress(street=f"{i} Main St", postal_code=f"1000{i}") for i in range(6)],
                given_name="Al", family_name="Smith")
    assert len(blocking_keys(many)) <= 25
    assert max(len(blocking_keys(c)) for c in _population) <= 25


# --- the pool's size and its name frequencies ----------------------------------------

import math  # noqa: E402

from bench.calibrate_matching import calibration_pool  # noqa: E402
from sync import match_weights  # noqa: E402
from sync.matching import TF_MIN_POOL, NameFrequencies, pool_prior, probability  # noqa: E402
from sync.normalize import _fold, _fold_unicode, normalized  # noqa: E402


def test_the_calibration_pool_is_the_one_the_weights_were_fitted_on():
    assert match_weights.CALIBRATION_POOL == calibration_pool()


@given(st.integers(min_value=0, max_value=10_000_000))
def test_pool_prior_lowers_odds_only_beyond_the_calibration_pool(n):
    prior = pool_prior(n)
    assert prior <= 0.0
    if n <= match_weights.CALIBRATION_POOL:
        assert prior == 0.0
    else:
        assert prior == pytest.approx(-math.log(n / match_weights.CALIBRATION_POOL))
        assert probability(5.0, prior) < probability(5.0)


def _filler(n: int, rng: random.Random, family: str | None = None) -> list[Contact]:
    from emulators.people_data import FIRST_NAMES, LAST_NAMES

    return [Contact(given_name=rng.choice(FIRST_NAMES), family_name=family or rng.choice(LAST_NAMES),
                    birthday=f"{rng.randint(1940, 2004)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
            for _ in range(n)]


def test_a_large_pool_needs_more_than_names_a_middle_name_and_a_slipped_birthday(monkeypatch):
    """A nickname, the family and middle names and a birthday with another year reach review between two
    records, but not in a pool ten times the calibration's: there the namesakes
    outnumber the true partners. A full birthday still links."""
    moved = [PostalAddress(street="9 Elm Rd", city="Dover", postal_code="19901")]
    a = only(full())
    b = only(full(given_name="Kate", birthday="1985-03-17", addresses=moved))
    assert T.review <= score(a, b).score < T.auto
    # The calibration's pool made small so that a quick index is ten times its size.
    monkeypatch.setattr(match_weights, "CALIBRATION_POOL", 100)
    idx: Index[str] = Index()
    idx.add("target", b)
    for i, c in enumerate(_filler(999, random.Random(3))):
        idx.add(f"f{i}", c)
    assert best_match(a, idx, T).kind == "none"
    assert best_match(only(full(given_name="Kate", birthday="1985-03-17", addresses=moved)), idx, T).kind == "auto"


def _norm(given: str, family: str):
    return normalized(Contact(given_name=given, family_name=family))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["ann", "bo", "cy", "dee", "eve"]),
                          st.sampled_from(["lee", "smith", "okafor", "varga"])),
                min_size=1, max_size=30),
       st.integers(min_value=0, max_value=10_000))
def test_name_frequency_terms_only_lower_and_fall_with_the_count(sample, cut):
    names = sample * (TF_MIN_POOL // len(sample) + 1)  # a pool large enough to count names in
    freq = NameFrequencies(_norm(g, f) for g, f in names)
    counts = {}
    for g, f in names:
        counts[f] = counts.get(f, 0) + 1
    terms = {f: freq.terms(_norm("ann", f))[1] for f in counts}
    assert all(t <= 0.0 for t in terms.values())
    for f1 in counts:
        for f2 in counts:
            if counts[f1] > counts[f2]:
                assert terms[f1] <= terms[f2]
    # Removing what was added (the index on remove) gives back the same terms.
    extra = _norm("zed", "smith")
    before = freq.terms(extra)
    freq.count(extra, +1)
    freq.count(extra, -1)
    assert freq.terms(extra) == before
    # A pool below TF_MIN_POOL is too small to count names in.
    few = NameFrequencies(_norm(g, f) for g, f in names[: cut % TF_MIN_POOL])
    assert few.terms(_norm("ann", "smith")) == (0.0, 0.0)


def test_a_common_surname_agreeing_is_weaker_than_a_rare_one_and_the_index_agrees_with_all_pairs():
    rng = random.Random(11)
    pool: dict[str, Contact] = {f"s{i}": c for i, c in enumerate(_filler(300, rng, family="Smith"))}
    pool.update({f"o{i}": c for i, c in enumerate(_filler(1500, rng))})
    # A nickname, the family and middle names, another address: review on a rare surname,
    # not on the one a sixth of the pool carries.
    moved = [PostalAddress(street="9 Elm Rd", city="Dover", postal_code="19901")]
    pool["smith"] = only(full(given_name="Kate", family_name="Smith", birthday="", addresses=moved))
    pool["rare"] = only(full(given_name="Kate", family_name="Quarshie", birthday="", addresses=moved))
    idx: Index[str] = Index()
    for k, c in pool.items():
        idx.add(k, c)
    common = only(full(family_name="Smith"))
    rare = only(full(family_name="Quarshie"))
    assert score(common, pool["smith"]).score == score(rare, pool["rare"]).score  # alike as a pair
    m_common, m_rare = best_match(common, idx, T), best_match(rare, idx, T)
    assert m_rare.key == "rare" and m_rare.kind == "review"
    assert m_common.kind == "none" and m_common.score < m_rare.score  # a sixth of the pool is a Smith
    for q in (common, rare):
        assert (best_match(q, idx, T).kind, best_match(q, idx, T).key) == \
            (match_all_pairs(q, pool, T).kind, match_all_pairs(q, pool, T).key)
        assert best_match(q, idx, T).score == match_all_pairs(q, pool, T).score
    idx.remove("s0")
    assert idx.names.size == len(pool) - 1


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_ascii_folding_fast_path_equals_the_unicode_path(text):
    assert _fold(text) == _fold_unicode(text)


def test_add_many_builds_the_same_index_and_restores_the_collector():
    import gc

    rng = random.Random(5)
    people = {f"k{i}": c for i, c in enumerate(_filler(300, rng))}
    one: Index[str] = Index()
    for k, c in people.items():
        one.add(k, c)
    many: Index[str] = Index()
    assert gc.isenabled()
    many.add_many(people.items())
    assert gc.isenabled()
    assert many.block_sizes() == one.block_sizes() and len(many) == len(one)
    gc.disable()
    try:
        Index().add_many(people.items())
        assert not gc.isenabled()  # a paused collector stays paused
    finally:
        gc.enable()
    with pytest.raises(AttributeError):
        Index().add_many([("bad", None)])
    assert gc.isenabled()


def test_the_benchmark_population_has_as_many_namesakes_as_real_people():
    """The matching figures depend on how often names repeat: the population must be near
    the census (a surname shared by two people about 1 in 1,000, a full name about 1 in
    300,000), not the demo lists' one namesake in every few thousand pairs."""
    from bench.names import collision_rates

    given, family, both = collision_rates(n=60_000, seed=3)
    assert 1 / 600 < given < 1 / 150
    assert 1 / 3000 < family < 1 / 500
    assert 1 / 2_000_000 < both < 1 / 100_000
