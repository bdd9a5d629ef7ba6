"""Three-way merge: one-sided changes win, two-sided ones go to the policy, sets never conflict."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.contact import Contact
from sync.merge import merge_sets, three_way_merge

BASE = Contact(given_name="Ada", family_name="Lovelace", emails=("ada@example.org",), company="Analytical",
               job_title="Countess")


def test_one_sided_changes_from_both_sides_combine():
    m = BASE.model_copy(update={"job_title": "Mathematician"})
    p = BASE.model_copy(update={"company": "Babbage & Co"})
    r = three_way_merge(BASE, m, p, "manual")
    assert r.merged.job_title == "Mathematician" and r.merged.company == "Babbage & Co"
    assert r.conflicts == () and r.unresolved == ()


@pytest.mark.parametrize("policy, m_time, p_time, expected", [
    ("platform_wins", 10, 1, "P"),
    ("mailbox_wins", 1, 10, "M"),
    ("newest_wins", 10, 1, "M"),
    ("newest_wins", 1, 10, "P"),
    ("newest_wins", 5, 5, "P"),      # a tie goes to the system of record
    ("newest_wins", None, 5, "P"),
])
def test_two_sided_change_settled_by_policy(policy, m_time, p_time, expected):
    m = BASE.model_copy(update={"company": "M"})
    p = BASE.model_copy(update={"company": "P"})
    r = three_way_merge(BASE, m, p, policy, mailbox_time=m_time, platform_time=p_time)
    assert r.merged.company == expected
    assert r.conflicts == ("company",) and r.unresolved == ()


def test_manual_policy_leaves_the_field_open_and_keeps_the_base():
    m = BASE.model_copy(update={"company": "M", "job_title": "Mathematician"})
    p = BASE.model_copy(update={"company": "P"})
    r = three_way_merge(BASE, m, p, "manual")
    assert r.unresolved == ("company",)
    assert r.merged.company == "Analytical" and r.merged.job_title == "Mathematician"


def test_a_persons_answer_settles_exactly_its_fields():
    m = BASE.model_copy(update={"company": "M"})
    p = BASE.model_copy(update={"company": "P"})
    r = three_way_merge(BASE, m, p, "manual", decided={"company": "Merged"})
    assert r.merged.company == "Merged" and r.unresolved == ()


def test_sets_apply_additions_and_removals_from_both_sides():
    base = ("a@x.org", "b@x.org")
    mine = ("a@x.org", "c@x.org")          # removed b, added c
    theirs = ("a@x.org", "b@x.org", "d@x.org")  # added d
    assert merge_sets(base, mine, theirs) == ("a@x.org", "c@x.org", "d@x.org")


def test_first_link_takes_the_union_and_fills_empty_fields():
    m = Contact(given_name="Ada", emails=("ada@example.org",), job_title="Countess")
    p = Contact(given_name="Ada", family_name="Lovelace", emails=("ada@analytical.example",))
    r = three_way_merge(None, m, p, "manual")
    assert r.merged.family_name == "Lovelace" and r.merged.job_title == "Countess"
    assert set(r.merged.emails) == {"ada@example.org", "ada@analytical.example"}
    assert r.unresolved == ()


contacts = st.builds(
    Contact,
    given_name=st.sampled_from(["", "Ada", "Alan"]),
    company=st.sampled_from(["", "X", "Y"]),
    emails=st.lists(st.sampled_from(["a@x.org", "b@x.org", "c@x.org"]), max_size=3),
)


@given(contacts, contacts)
def test_unchanged_side_means_the_other_side_wins_entirely(base, edited):
    for policy in ("platform_wins", "mailbox_wins", "newest_wins", "manual"):
        assert three_way_merge(base, edited, base, policy).merged == edited
        assert three_way_merge(base, base, edited, policy).merged == edited


@given(contacts, contacts, contacts)
def test_merge_of_equal_sides_is_that_side(base, a, _):
    assert three_way_merge(base, a, a, "manual").merged == a
