"""The pure planner: staged changes + links + reviews in, one Decision per item out.

Like vdirsyncer's sync, planning is separated from doing: this module performs no
I/O, so every rule below is tested directly and by the hypothesis state machine in
tests/test_sync_machine.py, and the executor (activities) only carries decisions out.

Order of rules for an item, first that applies wins:
  linked items:   mass-delete guard -> deletions (edit beats delete) -> own-write
                  echoes -> three-way merge -> policy / open conflict
  unlinked items: malformed input -> tombstone of an unknown item -> a person's
                  review answer -> held while a review names it -> similarity
                  (auto link / review / create)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from typing import Any

from models.plan import Decision, Write
from models.record import Side, SideRecord
from sync.kinds import KindRules, MatchIndex
from sync.matching import Match, Thresholds, decide
from sync.policy import SyncSettings


@dataclass(frozen=True)
class LinkState:
    link_id: int
    mailbox_id: str
    platform_id: str
    snapshot: Any  # the kind's content, as last synced
    mailbox_hash: str
    platform_hash: str
    mailbox_etag: str | None = None
    platform_etag: str | None = None


@dataclass(frozen=True)
class Review:
    review_id: int
    kind: str  # "conflict" | "duplicate"
    mailbox_id: str | None
    platform_id: str | None
    #: {"choice": "mailbox"|"platform"|"merged"|"link"|"create"|"ignore", "fields": {...}} once answered
    resolution: dict | None = None
    #: the record a duplicate review proposes to link to
    candidate_id: str | None = None


@dataclass
class PlanInput:
    mailbox: Mapping[str, SideRecord]
    platform: Mapping[str, SideRecord]
    settings: SyncSettings
    #: the kind's pure rules (problems, merge, matching, hash)
    rules: KindRules
    links_by_mailbox: Mapping[str, LinkState] = field(default_factory=dict)
    links_by_platform: Mapping[str, LinkState] = field(default_factory=dict)
    #: open reviews by the item they hold: ("mailbox"|"platform", external id)
    reviews: Mapping[tuple[Side, str], Review] = field(default_factory=dict)
    #: live platform records outside this batch that share a blocking key with a new mailbox record
    platform_candidates: Mapping[str, SideRecord] = field(default_factory=dict)
    #: links (any, in this connection) whose snapshot shares a key with a new record
    neighbour_links: Mapping[int, LinkState] = field(default_factory=dict)
    #: number of links of this connection, for the mass-delete guard
    link_count: int = 0
    #: a person approved the deletions the guard held
    approve_mass_delete: bool = False
    #: what the mailbox can hold (`sync.fields.Holds`, from the provider's registry entry);
    #: None: every field as it is
    mailbox_holds: Any = None


@dataclass
class Plan:
    decisions: list[Decision]
    #: set when the mass-delete guard held this cycle's deletions
    guard_tripped: bool = False
    held_deletes: int = 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.decisions:
            out[d.outcome] = out.get(d.outcome, 0) + 1
        return out


def _problems(record: SideRecord, inp: PlanInput) -> list[str]:
    problems = list(record.problems)
    if record.content is not None:
        problems += inp.rules.problems(record.content, inp.settings)
    return problems


def _resolve_link(
    record: SideRecord, by_id: Mapping[str, LinkState]
) -> tuple[LinkState | None, str | None]:
    link = by_id.get(record.external_id)
    if link is not None:
        return link, None
    for old in record.previous_ids:
        if old in by_id:
            return by_id[old], old
    return None, None


def plan(inp: PlanInput) -> Plan:
    settings = inp.settings
    decisions: list[Decision] = []

    # --- group changes by link ------------------------------------------------
    linked: dict[int, dict] = {}
    new_mailbox: list[SideRecord] = []
    new_platform: list[SideRecord] = []
    for rec in sorted(inp.mailbox.values(), key=lambda r: r.external_id):
        link, old_id = _resolve_link(rec, inp.links_by_mailbox)
        if link is None:
            new_mailbox.append(rec)
        else:
            g = linked.setdefault(link.link_id, {"link": link})
            g["m"], g["renamed_from"] = rec, old_id
    for rec in sorted(inp.platform.values(), key=lambda r: r.external_id):
        link = inp.links_by_platform.get(rec.external_id)
        if link is None:
            new_platform.append(rec)
        else:
            linked.setdefault(link.link_id, {"link": link})["p"] = rec

    # --- mass-delete guard ----------------------------------------------------
    held: set[int] = set()
    if settings.delete_policy == "propagate" and not inp.approve_mass_delete:
        for side_key in ("m", "p"):
            deleting = [
                lid for lid, g in linked.items()
                if g.get(side_key) is not None and g[side_key].deleted
                and not _changed(g, "p" if side_key == "m" else "m", inp.rules)
            ]
            total = max(inp.link_count, len(linked))
            if len(deleting) >= settings.mass_delete_min and len(deleting) > settings.mass_delete_ratio * total:
                held.update(deleting)
    for lid in sorted(linked):
        g = linked[lid]
        if lid in held:
            link = g["link"]
            decisions.append(Decision(
                outcome="held", rule="mass_delete_guard", link_id=lid,
                mailbox_id=link.mailbox_id if g.get("m") else None,
                platform_id=link.platform_id if g.get("p") else None,
            ))
            continue
        decisions.append(_plan_linked(g, inp))

    # --- unlinked records: similarity ---------------------------------------
    # A link this plan removes (both sides deleted, unlinked on delete) no longer holds
    # its records: a new record like its snapshot is not a duplicate of it.
    # Platform records it deletes are no match candidates.
    unlinking = {d.link_id for d in decisions if d.unlink and not d.link and d.link_id is not None}
    deleting = {w.external_id for d in decisions for w in d.writes
                if w.op == "delete" and w.side == "platform" and w.external_id}
    decisions += _plan_unlinked(new_mailbox, new_platform, inp, unlinking, deleting)
    return Plan(decisions, guard_tripped=bool(held), held_deletes=len(held))


def _changed(group: dict, key: str, rules: KindRules) -> bool:
    """Whether the group holds a real (non-echo) change on that side."""
    rec: SideRecord | None = group.get(key)
    if rec is None:
        return False
    link: LinkState = group["link"]
    if rec.deleted:
        return True
    if rec.content is None:
        return bool(rec.problems)  # a change the connector could not read: quarantined, not skipped
    own_hash = link.mailbox_hash if key == "m" else link.platform_hash
    return rec.content is not None and rules.hash(rec.content) != own_hash


def _plan_linked(g: dict, inp: PlanInput) -> Decision:
    settings = inp.settings
    link: LinkState = g["link"]
    m: SideRecord | None = g.get("m")
    p: SideRecord | None = g.get("p")
    renamed_from = g.get("renamed_from")
    mailbox_id = m.external_id if m else link.mailbox_id
    base = dict(
        link_id=link.link_id,
        mailbox_id=m.external_id if m else None,
        platform_id=p.external_id if p else None,
        renamed_from=renamed_from,
    )
    review = inp.reviews.get(("mailbox", link.mailbox_id)) or inp.reviews.get(("platform", link.platform_id))
    if review is not None and review.kind == "conflict":
        base["review_id"] = review.review_id

    m_changed, p_changed = _changed(g, "m", inp.rules), _changed(g, "p", inp.rules)
    m_deleted = m is not None and m.deleted
    p_deleted = p is not None and p.deleted

    # Deletions. An edit on the other side beats a delete: nothing is lost.
    if m_deleted and p_deleted:
        return Decision(outcome="apply", rule="deleted_on_both_sides", unlink=True, **base)
    if m_deleted or p_deleted:
        gone_side: Side = "mailbox" if m_deleted else "platform"
        survivor = p if m_deleted else m
        survivor_changed = p_changed if m_deleted else m_changed
        if survivor_changed and survivor is not None and survivor.content is not None:
            problems = _problems(survivor, inp)
            if problems:
                return Decision(outcome="quarantine", rule="malformed_input", problems=problems, **base)
            content = inp.rules.outbound(survivor.content, gone_side, settings)
            # The deleted side gets the record back; the link is re-made to the new id.
            return Decision(
                outcome="apply", rule="edit_beats_delete", unlink=True, link=True,
                writes=[Write(side=gone_side, op="create", content=content)],
                snapshot=content, link_id=link.link_id, renamed_from=renamed_from,
                review_id=base.get("review_id"),
                mailbox_id=m.external_id if m else None,
                platform_id=p.external_id if p else None,
            )
        if settings.delete_policy == "unlink":
            # The decision names only the deleted side; the survivor stays, unsynced.
            gone = {"mailbox_id": m.external_id, "platform_id": None} if m_deleted else \
                {"mailbox_id": None, "platform_id": p.external_id if p else None}
            return Decision(outcome="apply", rule="unlinked_on_delete", unlink=True, **{**base, **gone})
        other: Side = "platform" if m_deleted else "mailbox"
        target = link.platform_id if m_deleted else mailbox_id
        # The freshest version known: a re-read after a stale etag brings the current
        # one in the batch, and the link's own would be refused again and again.
        survivor_rec = p if m_deleted else m
        etag = (survivor_rec.etag if survivor_rec is not None and survivor_rec.etag
                else (link.platform_etag if m_deleted else link.mailbox_etag))
        return Decision(
            outcome="apply", rule=f"deleted_on_{gone_side}", unlink=True,
            writes=[Write(side=other, op="delete", external_id=target, etag=etag)],
            **base,
        )

    if not m_changed and not p_changed:
        if renamed_from:
            # Same content under a new id: keep the link, take the new id.
            return Decision(outcome="apply", rule="mailbox_id_changed", link=True,
                            snapshot=link.snapshot, **{**base, "mailbox_id": mailbox_id})
        return Decision(outcome="skip", rule="echo_of_own_write", **base)

    for rec in (m if m_changed else None, p if p_changed else None):
        if rec is not None:
            problems = _problems(rec, inp)
            if problems:
                return Decision(outcome="quarantine", rule="malformed_input", problems=problems, **base)

    mailbox_now = m.content if m_changed and m and m.content else link.snapshot
    platform_now = p.content if p_changed and p and p.content else link.snapshot
    # What a side cannot hold is not a deletion; a change a direction blocks is masked, and named.
    aligned = inp.rules.align(link.snapshot, mailbox_now, platform_now, settings, inp.mailbox_holds)
    mailbox_now, platform_now = aligned.mailbox, aligned.platform
    decided = _decided_fields(review, mailbox_now, platform_now)
    result = inp.rules.merge(
        link.snapshot, mailbox_now, platform_now, settings.policy,
        mailbox_time=m.updated_at if m else None,
        platform_time=p.updated_at if p else None,
        decided=decided,
    )
    if result.unresolved:
        return Decision(outcome="conflict", rule=_conflict_rule(settings), fields=list(result.unresolved),
                        **{**base, "mailbox_id": mailbox_id, "platform_id": link.platform_id})
    merged = result.merged
    writes: list[Write] = []
    # Writes carry the freshest version each side reported (a record can come back with
    # a new etag and the same content; the link's older etag would be refused forever).
    keep_p = inp.rules.keep("platform", link.snapshot, merged, settings)
    if inp.rules.differs(aligned.platform_seen, merged, keep_p):
        writes.append(Write(side="platform", op="update", external_id=link.platform_id, content=merged,
                            etag=(p.etag if p and p.etag else link.platform_etag), keep=list(keep_p)))
    keep_m = inp.rules.keep("mailbox", link.snapshot, merged, settings)
    if inp.rules.differs(aligned.mailbox_seen, merged, keep_m):
        writes.append(Write(side="mailbox", op="update", external_id=mailbox_id, content=merged,
                            etag=(m.etag if m and m.etag else link.mailbox_etag), keep=list(keep_m)))
    if result.conflicts:
        rule = f"conflict_settled_{settings.policy}" if not decided else "conflict_resolved_by_person"
    elif aligned.blocked and not writes:
        rule = "direction_blocked"  # the only change was one a direction keeps on its side
    else:
        rule = "merged" if (m_changed and p_changed) else ("mailbox_change" if m_changed else "platform_change")
    return Decision(outcome="apply", rule=rule, link=True, writes=writes, snapshot=merged,
                    fields=list(result.conflicts), blocked=list(aligned.blocked),
                    mailbox_etag=m.etag if m else link.mailbox_etag,
                    platform_etag=p.etag if p else link.platform_etag,
                    **{**base, "mailbox_id": mailbox_id if m else None})


def _conflict_rule(settings: SyncSettings) -> str:
    """Why a conflict waits for a person: the policy says so, or (under any other policy)
    the kind's manual fields, such as a meeting's time, changed on both sides."""
    return "manual_policy" if settings.policy == "manual" else "manual_fields"


def _decided_fields(review: Review | None, mailbox: Any, platform: Any) -> dict[str, str] | None:
    if review is None or review.kind != "conflict" or not review.resolution:
        return None
    choice = review.resolution.get("choice")
    if choice == "mailbox":
        return {f: getattr(mailbox, f) for f in mailbox.model_fields}
    if choice == "platform":
        return {f: getattr(platform, f) for f in platform.model_fields}
    if choice == "merged":
        return {str(k): str(v) for k, v in (review.resolution.get("fields") or {}).items()}
    return None


def _in_scope(rec: SideRecord, settings: SyncSettings) -> bool:
    if settings.platform_scope == "all":
        return True
    if settings.platform_scope == "owned":
        return rec.owner is not None and rec.owner == settings.owner
    return False


def _plan_unlinked(
    new_mailbox: list[SideRecord], new_platform: list[SideRecord], inp: PlanInput, unlinking: set[int],
    deleting: set[str],
) -> list[Decision]:
    settings = inp.settings
    thresholds = Thresholds(auto=settings.auto_threshold, review=settings.review_threshold)
    out: list[Decision] = []

    def outbound(content: Any, target: str) -> Any:
        return inp.rules.outbound(content, target, settings)

    # The pool mailbox records are matched against: platform records new in this
    # batch plus live platform records found by blocking key. Keys are ("p", id).
    rules = inp.rules.for_settings(settings)
    pool: MatchIndex[str] = rules.new_index()
    pool_records: dict[str, SideRecord] = {}
    linked_platform = set(inp.links_by_platform)
    # Linked platform records in this batch (often our own writes echoing back) are in
    # the pool too: a new mailbox record like one of them is a duplicate, not a new person.
    for rec in list(inp.platform.values()) + list(inp.platform_candidates.values()):
        if rec.deleted or rec.content is None or rec.external_id in pool_records or rec.external_id in deleting:
            continue
        pool.add(rec.external_id, rec.content)
        pool_records[rec.external_id] = rec
    neighbour_links = {lid: link for lid, link in inp.neighbour_links.items() if lid not in unlinking}
    linked_platform -= {link.platform_id for link in inp.links_by_platform.values() if link.link_id in unlinking}
    for link in neighbour_links.values():
        linked_platform.add(link.platform_id)
    consumed: set[str] = set()
    # Platform records an unanswered duplicate review names: created in the mailbox now,
    # they would be the very twin the review asks a person about. They wait with it.
    named_by_review: set[str] = {
        r.candidate_id for (side, _), r in inp.reviews.items()
        if side == "mailbox" and r.kind == "duplicate" and r.resolution is None and r.candidate_id
    }
    # records this cycle is about to create on the other side, to catch twins in one batch
    batch_new: MatchIndex[str] = rules.new_index()

    for m in new_mailbox:
        review = inp.reviews.get(("mailbox", m.external_id))
        rid = review.review_id if review else None
        problems = _problems(m, inp)
        if m.deleted or (m.content is None and not problems):
            out.append(Decision(outcome="skip", rule="deleted_before_linked", mailbox_id=m.external_id, review_id=rid))
            continue
        if problems:
            out.append(Decision(outcome="quarantine", rule="malformed_input", mailbox_id=m.external_id,
                                problems=problems, review_id=rid))
            continue
        if review and review.kind == "conflict" and review.resolution and review.platform_id in pool_records:
            # A person settled the fields two similar records disagreed on: link them so.
            target = pool_records[review.platform_id]
            assert target.content is not None
            out.append(_link_pair(m, target, inp, rule="conflict_resolved_by_person", review_id=rid,
                                  decided=_decided_fields(review, m.content, target.content)))
            consumed.add(target.external_id)
            continue
        answer = (review.resolution or {}).get("choice") if review and review.kind == "duplicate" else None
        if answer == "ignore":
            out.append(Decision(outcome="skip", rule="ignored_by_reviewer", mailbox_id=m.external_id, review_id=rid))
            continue
        match = None
        held = review.candidate_id if review and review.kind == "duplicate" else None
        if answer == "link" and held in pool_records and held not in linked_platform:
            target = pool_records[held]
            out.append(_link_pair(m, target, inp, rule="linked_by_reviewer", review_id=rid))
            consumed.add(target.external_id)
            continue
        if answer != "create":
            match = pool.best(m.content, thresholds, exclude=consumed)
            if held in pool_records and held not in consumed and match.key != held:
                # The index is an approximation (capped blocks): re-score the candidate a
                # review already names rather than let a held duplicate become a record.
                direct = rules.score(m.content, pool_records[held].content)
                if direct.score >= thresholds.review and direct.score > match.score:
                    match = Match(decide(direct, thresholds), held, direct.score, direct.reasons)
        if match is not None and match.kind != "none" and match.key is not None:
            target = pool_records[match.key]
            if match.kind == "auto" and match.key not in linked_platform:
                out.append(_link_pair(m, target, inp, rule="linked_by_similarity",
                                      score=match.score, review_id=rid))
                consumed.add(match.key)
                continue
            out.append(Decision(
                outcome="duplicate",
                rule="duplicate_of_linked" if match.key in linked_platform else "possible_duplicate",
                mailbox_id=m.external_id, candidate_side="platform", candidate_id=match.key,
                score=round(match.score, 4), review_id=rid,
            ))
            named_by_review.add(match.key)
            continue
        out.append(_create_unless_twin(m, batch_new, thresholds, answer, rid, outbound,
                                       twins=rules.twins_within_side))

    # Platform records no mailbox record claimed. Compare them with the mailbox
    # contacts already linked here, so a CRM-side duplicate does not become a
    # second contact in the mailbox.
    neighbours: MatchIndex[int] = rules.new_index()
    for lid, link in neighbour_links.items():
        neighbours.add(lid, link.snapshot)
    batch_new_p: MatchIndex[str] = rules.new_index()
    for p in new_platform:
        if p.external_id in consumed:
            continue
        review = inp.reviews.get(("platform", p.external_id))
        rid = review.review_id if review else None
        problems = _problems(p, inp)
        if p.deleted or (p.content is None and not problems):
            out.append(Decision(outcome="skip", rule="deleted_before_linked", platform_id=p.external_id, review_id=rid))
            continue
        if not _in_scope(p, settings):
            out.append(Decision(outcome="skip", rule="out_of_scope", platform_id=p.external_id, review_id=rid))
            continue
        if problems:
            out.append(Decision(outcome="quarantine", rule="malformed_input", platform_id=p.external_id,
                                problems=problems, review_id=rid))
            continue
        if p.external_id in named_by_review:
            out.append(Decision(outcome="held", rule="held_by_open_review", platform_id=p.external_id,
                                review_id=rid))
            continue
        answer = (review.resolution or {}).get("choice") if review and review.kind == "duplicate" else None
        if answer == "ignore":
            out.append(Decision(outcome="skip", rule="ignored_by_reviewer", platform_id=p.external_id, review_id=rid))
            continue
        if answer != "create":
            match = neighbours.best(p.content, thresholds)
            if match.kind != "none" and match.key is not None:
                link = neighbour_links[match.key]
                out.append(Decision(
                    outcome="duplicate", rule="duplicate_of_linked", platform_id=p.external_id,
                    candidate_side="mailbox", candidate_id=link.mailbox_id, score=round(match.score, 4),
                    review_id=rid,
                ))
                continue
        out.append(_create_unless_twin(p, batch_new_p, thresholds, answer, rid, outbound,
                                       twins=rules.twins_within_side))
    return out


def _create_unless_twin(rec: SideRecord, batch_new: MatchIndex[str], thresholds: Thresholds,
                        answer: str | None, review_id: int | None, outbound=lambda content, target: content, *,
                        twins: bool = True) -> Decision:
    """Create `rec` on the other side, unless this batch already creates the same person
    from its own side (the side holds them twice): then one record, one review. A kind
    whose records are distinct on their side by their own identity (`twins` False: a
    calendar's events by UID) is never held as its own side's twin."""
    assert rec.content is not None
    side = rec.side
    ids = {"mailbox_id": rec.external_id} if side == "mailbox" else {"platform_id": rec.external_id}
    if answer != "create" and twins:
        twin = batch_new.best(rec.content, thresholds)
        if twin.kind != "none" and twin.key is not None:
            if hasattr(batch_new, "join"):
                # The twin joins the cluster of the record being created: a third copy
                # like either of them is a duplicate of that record, not a tie.
                batch_new.add(rec.external_id, rec.content, cluster=twin.key)
            return Decision(outcome="duplicate", rule=f"duplicate_{'in_mailbox' if side == 'mailbox' else 'on_platform'}",
                            candidate_side=side, candidate_id=twin.key, score=round(twin.score, 4),
                            review_id=review_id, **ids)
    batch_new.add(rec.external_id, rec.content)
    target = "platform" if side == "mailbox" else "mailbox"
    # fields that do not flow to the other side are not created there (nor in the snapshot:
    # the source's value would otherwise read as the new record's deletion of it)
    content = outbound(rec.content, target)
    return Decision(
        outcome="apply", rule=f"created_{'on_platform' if target == 'platform' else 'in_mailbox'}"
        if answer != "create" else "created_by_reviewer",
        link=True, snapshot=content, review_id=review_id,
        writes=[Write(side=target, op="create", content=content)],
        **ids, **({"mailbox_etag": rec.etag} if side == "mailbox" else {"platform_etag": rec.etag}),
    )


def _link_pair(m: SideRecord, p: SideRecord, inp: PlanInput, *, rule: str,
               score: float | None = None, review_id: int | None = None,
               decided: dict[str, str] | None = None) -> Decision:
    assert m.content is not None and p.content is not None
    settings = inp.settings
    aligned = inp.rules.align(None, m.content, p.content, settings, inp.mailbox_holds)
    result = inp.rules.merge(None, aligned.mailbox, aligned.platform, settings.policy,
                             mailbox_time=m.updated_at, platform_time=p.updated_at, decided=decided)
    if result.unresolved:
        return Decision(outcome="conflict", rule=_conflict_rule(inp.settings), mailbox_id=m.external_id,
                        platform_id=p.external_id, fields=list(result.unresolved),
                        score=score, review_id=review_id)
    merged = result.merged
    writes: list[Write] = []
    keep_p = inp.rules.keep("platform", None, merged, settings)
    if inp.rules.differs(aligned.platform_seen, merged, keep_p):
        writes.append(Write(side="platform", op="update", external_id=p.external_id, content=merged, etag=p.etag,
                            keep=list(keep_p)))
    keep_m = inp.rules.keep("mailbox", None, merged, settings)
    if inp.rules.differs(aligned.mailbox_seen, merged, keep_m):
        writes.append(Write(side="mailbox", op="update", external_id=m.external_id, content=merged, etag=m.etag,
                            keep=list(keep_m)))
    return Decision(outcome="apply", rule=rule, mailbox_id=m.external_id, platform_id=p.external_id,
                    link=True, writes=writes, snapshot=merged, fields=list(result.conflicts),
                    blocked=list(aligned.blocked),
                    mailbox_etag=m.etag, platform_etag=p.etag,
                    score=None if score is None else round(score, 4), review_id=review_id)
