"""Hypothesis state machine over the pure planner, in the spirit of vdirsyncer's SyncMachine.

Two in-memory sides receive random creates, edits and deletes; `sync` feeds the
planner what a delta would report (including our own writes echoing back) and
carries its decisions out the way the executor does. After syncing to rest:
linked pairs hold equal content, nothing is linked twice, every record is linked or
waits in a named state, a one-sided edit reaches the other side, and a second sync
writes nothing (no ping-pong).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from models.contact import Contact, SideRecord
from sync.planner import LinkState, PlanInput, plan
from sync.policy import SyncSettings

OWNER = "u1"
FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Ken", "Radia", "Linus"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Thompson", "Perlman", "Torvalds"]

people = st.builds(
    lambda g, f, n, title: Contact(given_name=g, family_name=f, emails=(f"{g}.{f}{n}@example.org".lower(),),
                                   job_title=title),
    st.sampled_from(FIRST), st.sampled_from(LAST), st.integers(0, 50), st.sampled_from(["", "CTO", "Buyer"]),
)
titles = st.sampled_from(["Engineer", "Director", "Founder", ""])


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count(1)
        self.mailbox: dict[str, Contact] = {}
        self.platform: dict[str, Contact] = {}
        self.dirty_m: set[str] = set()
        self.dirty_p: set[str] = set()
        self.links: dict[int, LinkState] = {}
        self.waiting: set[tuple[str, str]] = set()
        self.clock = 0.0
        self.settings = SyncSettings(policy="newest_wins", owner=OWNER, mass_delete_min=10_000)
        self.writes_last_sync = 0

    # -- edits on either side ----------------------------------------------
    def _tick(self) -> float:
        self.clock += 1
        return self.clock

    @rule(c=people)
    def create_mailbox(self, c):
        i = f"m{next(self.ids)}"
        self.mailbox[i] = c
        self.dirty_m.add(i)
        self._tick()

    @rule(c=people)
    def create_platform(self, c):
        i = f"p{next(self.ids)}"
        self.platform[i] = c
        self.dirty_p.add(i)
        self._tick()

    @precondition(lambda self: self.mailbox)
    @rule(data=st.data(), title=titles)
    def edit_mailbox(self, data, title):
        i = data.draw(st.sampled_from(sorted(self.mailbox)))
        self.mailbox[i] = self.mailbox[i].model_copy(update={"job_title": title})
        self.dirty_m.add(i)
        self._tick()

    @precondition(lambda self: self.platform)
    @rule(data=st.data(), title=titles)
    def edit_platform(self, data, title):
        i = data.draw(st.sampled_from(sorted(self.platform)))
        self.platform[i] = self.platform[i].model_copy(update={"company": title})
        self.dirty_p.add(i)
        self._tick()

    @precondition(lambda self: self.mailbox)
    @rule(data=st.data())
    def delete_mailbox(self, data):
        i = data.draw(st.sampled_from(sorted(self.mailbox)))
        del self.mailbox[i]
        self.dirty_m.add(i)

    @precondition(lambda self: self.platform)
    @rule(data=st.data())
    def delete_platform(self, data):
        i = data.draw(st.sampled_from(sorted(self.platform)))
        del self.platform[i]
        self.dirty_p.add(i)

    # -- one sync cycle ---------------------------------------------------
    def _record(self, side: str, i: str) -> SideRecord:
        store = self.mailbox if side == "mailbox" else self.platform
        if i not in store:
            return SideRecord(side=side, external_id=i, deleted=True)
        return SideRecord(side=side, external_id=i, contact=store[i], etag=store[i].canonical_hash(),
                          updated_at=self.clock, owner=OWNER if side == "platform" else None)

    def _sync_once(self) -> int:
        by_m = {l.mailbox_id: l for l in self.links.values()}
        by_p = {l.platform_id: l for l in self.links.values()}
        mailbox = {i: self._record("mailbox", i) for i in sorted(self.dirty_m)}
        platform = {i: self._record("platform", i) for i in sorted(self.dirty_p)}
        candidates = {i: self._record("platform", i) for i in self.platform if i not in platform}
        result = plan(PlanInput(
            mailbox=mailbox, platform=platform, settings=self.settings,
            links_by_mailbox=by_m, links_by_platform=by_p,
            platform_candidates=candidates, neighbour_links=dict(self.links), link_count=len(self.links),
        ))
        self.dirty_m, self.dirty_p = set(), set()
        self.waiting = set()
        # applies other than removing a link both sides already dropped
        self.applied_last = sum(1 for d in result.decisions
                                if d.outcome == "apply" and d.rule != "deleted_on_both_sides")
        writes = 0
        for d in result.decisions:
            if d.outcome in ("duplicate", "conflict", "quarantine", "held"):
                # Waiting in a named state: re-offered next cycle, as the store does.
                for side, ext in d.item_keys():
                    (self.dirty_m if side == "mailbox" else self.dirty_p).add(ext)
                    self.waiting.add((side, ext))
                continue
            if d.outcome != "apply":
                continue
            created: dict[str, str] = {}
            for w in d.writes:
                writes += 1
                store = self.mailbox if w.side == "mailbox" else self.platform
                dirty = self.dirty_m if w.side == "mailbox" else self.dirty_p
                if w.op == "create":
                    new = f"{w.side[0]}{next(self.ids)}"
                    store[new] = w.contact
                    created[w.side] = new
                    dirty.add(new)  # our write comes back through the delta
                elif w.op == "update":
                    if w.external_id in store:
                        store[w.external_id] = w.contact
                        dirty.add(w.external_id)
                elif w.op == "delete":
                    store.pop(w.external_id, None)
            old = self.links.get(d.link_id) if d.link_id is not None else None
            if d.unlink and old is not None:
                del self.links[old.link_id]
            if d.link and d.snapshot is not None:
                m_id = created.get("mailbox") or d.mailbox_id or (old.mailbox_id if old else None)
                p_id = created.get("platform") or d.platform_id or (old.platform_id if old else None)
                assert m_id and p_id
                lid = old.link_id if (old is not None and not d.unlink) else next(self.ids)
                h = d.snapshot.canonical_hash()
                self.links[lid] = LinkState(lid, m_id, p_id, d.snapshot, h, h, h, h)
        return writes

    @rule()
    def sync(self):
        self.writes_last_sync = 0
        wrote_before = False
        for _ in range(6):
            n = self._sync_once()
            if n == 0:
                if wrote_before:
                    # this cycle saw only our own writes coming back: each must be a skip
                    assert self.applied_last == 0, "our own writes echoing back were taken for changes"
                break
            wrote_before = True
        # at rest: one more cycle writes nothing (no ping-pong)
        self.writes_last_sync = self._sync_once()
        assert self.writes_last_sync == 0, "a cycle at rest still wrote: ping-pong"
        assert self.applied_last == 0, "our own writes echoing back were taken for changes"
        self._check_converged()

    @precondition(lambda self: self.links)
    @rule(data=st.data(), title=titles)
    def one_sided_edit_reaches_other_side(self, data, title):
        self.sync()
        if not self.links:
            return
        link = self.links[data.draw(st.sampled_from(sorted(self.links)))]
        self.mailbox[link.mailbox_id] = self.mailbox[link.mailbox_id].model_copy(update={"notes": f"n-{title}"})
        self.dirty_m.add(link.mailbox_id)
        self._tick()
        self.sync()
        assert self.platform[link.platform_id].notes == f"n-{title}", "a one-sided edit was lost"

    def _check_converged(self):
        seen_m, seen_p = set(), set()
        for link in self.links.values():
            assert link.mailbox_id not in seen_m and link.platform_id not in seen_p, "linked twice"
            seen_m.add(link.mailbox_id)
            seen_p.add(link.platform_id)
            assert link.mailbox_id in self.mailbox and link.platform_id in self.platform, "link to a gone record"
            assert self.mailbox[link.mailbox_id] == self.platform[link.platform_id], "pair not converged"
        for i in self.mailbox:
            assert i in seen_m or ("mailbox", i) in self.waiting, f"mailbox {i} neither linked nor waiting"
        for i in self.platform:
            assert i in seen_p or ("platform", i) in self.waiting, f"platform {i} neither linked nor waiting"

    @invariant()
    def links_are_one_to_one(self):
        assert len({l.mailbox_id for l in self.links.values()}) == len(self.links)
        assert len({l.platform_id for l in self.links.values()}) == len(self.links)


TestSyncMachine = SyncMachine.TestCase
TestSyncMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])
