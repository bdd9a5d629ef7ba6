"""Each named rule of the planner, on concrete cases (the SyncMachine covers the properties)."""

from __future__ import annotations

from models.contact import Contact, ContactRecord
from models.record import SideRecord
from sync.fixes import apply_fix_rules
from sync.kinds.contacts import CONTACTS
from sync.planner import LinkState, PlanInput, Review, plan
from sync.policy import SyncSettings

ADA = Contact(given_name="Ada", family_name="Lovelace", emails=("ada@analytical.example",), phones=("+14155550100",))
ALAN = Contact(given_name="Alan", family_name="Turing", emails=("alan@bletchley.example",))
S = SyncSettings(owner="u1")


def rec(side, i, contact=None, deleted=False, **kw):
    return ContactRecord(side=side, external_id=i, content=contact, deleted=deleted, **kw)


def link(contact=ADA, lid=1, m="m1", p="p1"):
    h = contact.canonical_hash()
    return LinkState(lid, m, p, contact, h, h)


def one(inp: PlanInput):
    result = plan(inp)
    assert len(result.decisions) == 1, result.decisions
    return result.decisions[0]


def linked_input(mailbox=None, platform=None, settings=S, **kw):
    lk = link()
    return PlanInput(rules=CONTACTS, mailbox=mailbox or {}, platform=platform or {}, settings=settings,
                     links_by_mailbox={"m1": lk}, links_by_platform={"p1": lk}, link_count=1, **kw)


def test_own_write_echo_is_skipped():
    d = one(linked_input(mailbox={"m1": rec("mailbox", "m1", ADA)}))
    assert (d.outcome, d.rule, d.writes) == ("skip", "echo_of_own_write", [])


def test_mailbox_edit_updates_the_platform_only():
    edited = ADA.model_copy(update={"job_title": "Countess"})
    d = one(linked_input(mailbox={"m1": rec("mailbox", "m1", edited)}))
    assert d.outcome == "apply" and d.rule == "mailbox_change"
    assert [(w.side, w.op, w.external_id) for w in d.writes] == [("platform", "update", "p1")]
    assert d.snapshot == edited


def test_mailbox_delete_propagates_or_unlinks_by_policy():
    gone = {"m1": rec("mailbox", "m1", deleted=True)}
    d = one(linked_input(mailbox=gone))
    assert d.rule == "deleted_on_mailbox" and d.unlink
    assert [(w.side, w.op, w.external_id) for w in d.writes] == [("platform", "delete", "p1")]
    d = one(linked_input(mailbox=gone, settings=SyncSettings(owner="u1", delete_policy="unlink")))
    assert d.rule == "unlinked_on_delete" and d.unlink and d.writes == []


def test_an_edit_beats_a_delete_on_the_other_side():
    edited = ADA.model_copy(update={"notes": "still a customer"})
    d = one(linked_input(mailbox={"m1": rec("mailbox", "m1", deleted=True)},
                         platform={"p1": rec("platform", "p1", edited, owner="u1")}))
    assert d.rule == "edit_beats_delete" and d.unlink and d.link
    assert [(w.side, w.op) for w in d.writes] == [("mailbox", "create")]
    assert d.mailbox_id == "m1" and d.platform_id == "p1"  # both rows get their outcome


def test_manual_conflict_waits_and_names_the_fields():
    m = ADA.model_copy(update={"company": "M"})
    p = ADA.model_copy(update={"company": "P"})
    d = one(linked_input(mailbox={"m1": rec("mailbox", "m1", m)}, platform={"p1": rec("platform", "p1", p)},
                         settings=SyncSettings(owner="u1", policy="manual")))
    assert (d.outcome, d.fields, d.writes) == ("conflict", ["company"], [])


def test_a_resolved_conflict_is_applied_to_both_ends():
    m = ADA.model_copy(update={"company": "M"})
    p = ADA.model_copy(update={"company": "P"})
    review = Review(7, "conflict", "m1", "p1", {"choice": "mailbox"})
    d = one(linked_input(mailbox={"m1": rec("mailbox", "m1", m)}, platform={"p1": rec("platform", "p1", p)},
                         settings=SyncSettings(owner="u1", policy="manual"),
                         reviews={("mailbox", "m1"): review, ("platform", "p1"): review}))
    assert d.outcome == "apply" and d.rule == "conflict_resolved_by_person" and d.review_id == 7
    assert d.snapshot.company == "M"
    assert [(w.side, w.op) for w in d.writes] == [("platform", "update")]


def test_mass_delete_guard_holds_most_of_a_side_until_approved():
    links = {f"m{i}": link(ADA.model_copy(update={"notes": str(i)}), i, f"m{i}", f"p{i}") for i in range(20)}
    inp = PlanInput(rules=CONTACTS, mailbox={f"m{i}": rec("mailbox", f"m{i}", deleted=True) for i in range(15)}, platform={},
                    settings=SyncSettings(owner="u1", mass_delete_min=10),
                    links_by_mailbox=links, links_by_platform={l.platform_id: l for l in links.values()},
                    link_count=20)
    held = plan(inp)
    assert held.guard_tripped and held.held_deletes == 15
    assert {d.outcome for d in held.decisions} == {"held"}
    inp.approve_mass_delete = True
    assert {d.rule for d in plan(inp).decisions} == {"deleted_on_mailbox"}


def test_new_mailbox_contact_links_to_a_near_duplicate_instead_of_creating():
    crm = ADA.model_copy(update={"emails": ("ADA@analytical.example",), "phones": ("(415) 555-0100",)})
    d = one(PlanInput(rules=CONTACTS, mailbox={"m9": rec("mailbox", "m9", ADA)}, platform={}, settings=S,
                      platform_candidates={"p9": rec("platform", "p9", crm, owner="u2")}))
    assert d.rule == "linked_by_similarity" and d.platform_id == "p9" and d.link


def test_unknown_new_contact_is_created_on_the_platform():
    d = one(PlanInput(rules=CONTACTS, mailbox={"m9": rec("mailbox", "m9", ALAN)}, platform={}, settings=S,
                      platform_candidates={"p9": rec("platform", "p9", ADA, owner="u1")}))
    assert d.rule == "created_on_platform"
    assert [(w.side, w.op) for w in d.writes] == [("platform", "create")]


def test_a_middle_band_match_waits_for_review():
    jon = Contact(given_name="Jon", family_name="Smith", company="Contoso", emails=("jon@contoso.example",))
    john = Contact(given_name="John", family_name="Smith", company="Contoso", emails=("jsmith@contoso.example",))
    d = one(PlanInput(rules=CONTACTS, mailbox={"m9": rec("mailbox", "m9", jon)}, platform={}, settings=S,
                      platform_candidates={"p9": rec("platform", "p9", john, owner="u1")}))
    assert d.outcome == "duplicate" and d.rule == "possible_duplicate" and d.candidate_id == "p9"


def test_platform_records_outside_the_users_scope_stay_out_of_the_mailbox():
    d = one(PlanInput(rules=CONTACTS, mailbox={}, platform={"p9": rec("platform", "p9", ALAN, owner="someone-else")}, settings=S))
    assert (d.outcome, d.rule) == ("skip", "out_of_scope")
    d = one(PlanInput(rules=CONTACTS, mailbox={}, platform={"p9": rec("platform", "p9", ALAN, owner="u1")}, settings=S))
    assert d.rule == "created_in_mailbox"


def test_malformed_input_is_quarantined_with_a_message_naming_the_field():
    bad = Contact(given_name="Broken", emails=("not an address",))
    d = one(PlanInput(rules=CONTACTS, mailbox={"m9": rec("mailbox", "m9", bad)}, platform={}, settings=S))
    assert d.outcome == "quarantine" and d.rule == "malformed_input"
    assert any("emails" in p for p in d.problems)
    assert not any("not an address" in p for p in d.problems)


def test_a_renamed_mailbox_id_keeps_its_link():
    d = one(linked_input(mailbox={"m2": rec("mailbox", "m2", ADA, previous_ids=("m1",))}))
    assert d.rule == "mailbox_id_changed" and d.mailbox_id == "m2" and d.renamed_from == "m1" and d.link


def test_fix_rules_normalise_phones_but_never_drop_the_only_address():
    c = Contact(given_name="Ada", phones=("(415) 555-0100",), emails=("bad@@x",))
    fixed, rules = apply_fix_rules(c, "phones", ("normalize_phones", "drop_invalid_emails"))
    assert fixed.phones == ("+14155550100",) and rules == ["normalize_phones"]
    assert apply_fix_rules(c, "emails", ("drop_invalid_emails",)) is None


def test_a_twin_held_for_review_stays_held_when_its_match_echoes_back():
    """Cycle 1 created ADA on the platform (p1) and held her twin m2. In cycle 2 the
    platform reports p1 (our own write coming back) in the same batch as the re-offered
    twin: the twin must still be a duplicate of the linked record, not a new record."""
    twin = ADA.model_copy(update={"emails": ("ADA@analytical.example",)})
    lk = link()
    d = {x.mailbox_id or x.platform_id: x for x in plan(PlanInput(rules=CONTACTS, 
        mailbox={"m2": rec("mailbox", "m2", twin)},
        platform={"p1": rec("platform", "p1", ADA, owner="u1")},
        settings=S, links_by_mailbox={"m1": lk}, links_by_platform={"p1": lk}, link_count=1,
    )).decisions}
    assert d["m2"].outcome == "duplicate" and d["m2"].rule == "duplicate_of_linked"
    assert d["p1"].rule == "echo_of_own_write"


def _held(candidate_id: str, choice: str | None):
    jon = Contact(given_name="Jon", family_name="Smith", company="Contoso", emails=("jon@contoso.example",))
    john = Contact(given_name="John", family_name="Smith", company="Contoso", emails=("jsmith@contoso.example",))
    review = Review(5, "duplicate", "m9", None, {"choice": choice} if choice else None, candidate_id=candidate_id)
    return plan(PlanInput(rules=CONTACTS, mailbox={"m9": rec("mailbox", "m9", jon)}, platform={}, settings=S,
                          reviews={("mailbox", "m9"): review},
                          platform_candidates={"p9": rec("platform", "p9", john, owner="u1")})).decisions


def test_a_reviewer_links_a_possible_duplicate_to_its_candidate():
    (d,) = _held("p9", "link")
    assert (d.outcome, d.rule, d.platform_id, d.review_id) == ("apply", "linked_by_reviewer", "p9", 5)


def test_a_reviewer_can_keep_them_apart_or_ignore_the_contact():
    (d,) = _held("p9", "create")
    assert d.rule == "created_by_reviewer" and [(w.side, w.op) for w in d.writes] == [("platform", "create")]
    (d,) = _held("p9", "ignore")
    assert (d.outcome, d.rule) == ("skip", "ignored_by_reviewer")


def test_an_unanswered_review_keeps_its_candidate_even_if_the_index_misses_it():
    """The candidate named by an open review is re-scored directly: the blocking index is
    an approximation and must not turn a held duplicate into a second record."""
    (d,) = _held("p9", None)
    assert d.outcome == "duplicate" and d.candidate_id == "p9" and d.review_id == 5



def test_oversized_fields_and_broken_unicode_are_quarantined_with_clear_errors():
    long_notes = Contact(given_name="Ada", emails=("ada@analytical.example",), notes="x" * 5000)
    broken = Contact(given_name="Ad\ud800a", emails=("ada@analytical.example",))
    result = plan(PlanInput(rules=CONTACTS, mailbox={"m1": rec("mailbox", "m1", long_notes), "m2": rec("mailbox", "m2", broken)},
                            platform={}, settings=S))
    by_id = {d.mailbox_id: d for d in result.decisions}
    assert by_id["m1"].outcome == "quarantine" and any("notes" in p for p in by_id["m1"].problems)
    assert by_id["m2"].outcome == "quarantine" and any("given_name" in p for p in by_id["m2"].problems)
    assert not any("x" * 20 in p for p in by_id["m1"].problems), "a message never quotes the content"


JON = Contact(given_name="Jon", family_name="Smith", company="Contoso", emails=("jon@contoso.example",))
JOHN = Contact(given_name="John", family_name="Smith", company="Contoso", emails=("jsmith@contoso.example",))


def test_a_platform_record_a_review_names_waits_with_it_in_the_same_batch():
    """The mailbox contact is held as a possible duplicate of p9; creating p9 in the
    mailbox in that same cycle would make the twin the review asks about."""
    decisions = plan(PlanInput(rules=CONTACTS, mailbox={"m9": rec("mailbox", "m9", JON)},
                               platform={"p9": rec("platform", "p9", JOHN, owner="u1")}, settings=S)).decisions
    by = {d.mailbox_id or d.platform_id: d for d in decisions}
    assert by["m9"].outcome == "duplicate" and by["m9"].candidate_id == "p9"
    assert (by["p9"].outcome, by["p9"].rule, by["p9"].writes) == ("held", "held_by_open_review", [])


def test_a_platform_record_an_earlier_review_names_waits_until_it_is_answered():
    review = Review(5, "duplicate", "m9", None, None, candidate_id="p9")
    unanswered = plan(PlanInput(rules=CONTACTS, mailbox={}, platform={"p9": rec("platform", "p9", JOHN, owner="u1")}, settings=S,
                                reviews={("mailbox", "m9"): review})).decisions
    assert [(d.outcome, d.rule) for d in unanswered] == [("held", "held_by_open_review")]
    answered = Review(5, "duplicate", "m9", None, {"choice": "create"}, candidate_id="p9")
    (d,) = plan(PlanInput(rules=CONTACTS, mailbox={}, platform={"p9": rec("platform", "p9", JOHN, owner="u1")}, settings=S,
                          reviews={("mailbox", "m9"): answered})).decisions
    assert d.rule == "created_in_mailbox"


def test_a_record_the_connector_could_not_read_is_quarantined_not_skipped():
    unreadable = rec("mailbox", "m9", None, problems=("emailAddresses[0]: not a string",))
    d = one(PlanInput(rules=CONTACTS, mailbox={"m9": unreadable}, platform={}, settings=S))
    assert (d.outcome, d.rule) == ("quarantine", "malformed_input")
    # ... also when it is linked: an unreadable change is never taken for an echo.
    d = one(linked_input(mailbox={"m1": rec("mailbox", "m1", None, problems=("names: not a list",))}))
    assert (d.outcome, d.rule) == ("quarantine", "malformed_input")


def test_a_link_removed_in_this_plan_is_no_duplicate_candidate():
    """Both sides of the Ada pair were deleted; a new Ada on the platform is a new person
    for the mailbox now, not a duplicate of the pair that is going away."""
    lk = link()
    decisions = plan(PlanInput(rules=CONTACTS, 
        mailbox={"m1": rec("mailbox", "m1", deleted=True)},
        platform={"p1": rec("platform", "p1", deleted=True), "p2": rec("platform", "p2", ADA, owner="u1")},
        settings=S, links_by_mailbox={"m1": lk}, links_by_platform={"p1": lk}, neighbour_links={1: lk},
        link_count=1)).decisions
    by = {d.platform_id: d for d in decisions}
    assert by["p1"].rule == "deleted_on_both_sides"
    assert by["p2"].rule == "created_in_mailbox"


def test_a_record_deleted_in_this_plan_is_no_match_for_a_new_one():
    """The mailbox deleted m1 (propagates to p1) and holds a new Ada: she must not be
    linked to p1, the record this same plan deletes."""
    lk = link()
    decisions = plan(PlanInput(rules=CONTACTS, 
        mailbox={"m1": rec("mailbox", "m1", deleted=True), "m4": rec("mailbox", "m4", ADA)}, platform={},
        settings=S, links_by_mailbox={"m1": lk}, links_by_platform={"p1": lk}, neighbour_links={1: lk},
        platform_candidates={"p1": rec("platform", "p1", ADA, owner="u1")}, link_count=1)).decisions
    by = {d.mailbox_id: d for d in decisions}
    assert by["m1"].rule == "deleted_on_mailbox"
    assert by["m4"].rule == "created_on_platform"
