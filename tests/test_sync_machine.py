"""Hypothesis state machine over the real sync, in the spirit of vdirsyncer's SyncMachine.

Nothing of the sync is re-implemented here: each cycle runs the contacts
activities themselves (fetch both sides, plan, write, handle rejections,
summarise) on a real store, against the in-memory connectors that pass the same
contract suites as the real ones (tests/memory_connectors.py). The machine is the
world around them: people editing both sides (the same fields, with random
clocks), deleting, a platform rule refusing some records, providers failing whole
calls (the activity is retried, as Temporal would), and a person who answers every
review and approves held deletions. Any policy may be in force, and the
mass-delete guard stays on.

After a sync to rest: every linked pair holds equal content, nothing is linked
twice, every record is linked or waits in a named state, nothing is pending or
half-done in the store, and one more cycle writes nothing. A review counts as
converged only once the machine has answered it.
"""

from __future__ import annotations

import itertools

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy.pool import StaticPool

from activities.pipeline import KindPipeline
from activities.reviews import ReviewActivities
from models.errors import ConnectorError
from models.contact import Contact
from models.workflow import CycleRef, Resolution, allowed_answers
from platforms.reference_crm.rules import Rule
from store import cycle, repo
from store.db import session_factory
from store.schema import metadata
from sync.kinds.contacts import CONTACTS
from sync.policy import POLICIES
from tests.memory_connectors import MemoryMailbox, MemoryPlatform, unavailable

ORG, CID, OWNER = "org", "conn", "u1"
FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Ken"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Thompson"]

people = st.builds(
    lambda g, f, n, title: Contact(given_name=g, family_name=f, emails=(f"{g}.{f}{n}@example.org".lower(),),
                                   job_title=title),
    st.sampled_from(FIRST), st.sampled_from(LAST), st.integers(0, 3), st.sampled_from(["", "CTO", "Buyer"]),
)
values = st.sampled_from(["Engineer", "Director", "Founder", "", "Initech"])
fields = st.sampled_from(["job_title", "company", "notes"])
#: what the platform refuses: its rule, and the value that breaks it
REFUSED_TITLE = "Refused"


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.mailbox = MemoryMailbox(page_size=3, clock=lambda: self.now)
        self.platform = MemoryPlatform(clock=lambda: self.now)
        self.platform.configure_rules(ORG, [Rule.format("no_refused_titles", "job_title", f"(?!{REFUSED_TITLE}$).*")])
        engine = sa.create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        metadata.create_all(engine)
        self.sessions = session_factory(engine)
        self.waited: list[float] = []
        self.reviews = ReviewActivities(self.sessions)
        self.acts = KindPipeline(self.sessions, CONTACTS, self.platform, lambda info: self.mailbox,
                                      wait=lambda delay, progress: self.waited.append(delay))
        self.cycles = itertools.count(1)
        self.not_mine: set[str] = set()
        self.answered = 0

    @initialize(policy=st.sampled_from(POLICIES), delete_policy=st.sampled_from(["propagate", "unlink"]))
    def configure(self, policy, delete_policy):
        self.policy = policy
        with self.sessions.begin() as s:
            repo.create_org(s, ORG, "Org", {"policy": policy, "delete_policy": delete_policy,
                                            "mass_delete_min": 3, "mass_delete_ratio": 0.5})
            repo.create_connection(s, id=CID, org_id=ORG, user_id=OWNER, provider="google", account_ref="acct")

    # -- the world ------------------------------------------------------------
    @rule(delta=st.floats(-50, 200))
    def clock_moves(self, delta):
        """Providers' clocks disagree and jump: newest-wins must not depend on them being sane."""
        self.now += delta

    @rule(c=people)
    def create_mailbox(self, c):
        self.mailbox.user_create(c)

    @rule(c=people, mine=st.booleans())
    def create_platform(self, c, mine):
        pid = self.platform.user_create(ORG, c, owner=OWNER if mine else "someone-else")
        if not mine:
            self.not_mine.add(pid)  # another user's record: out of this mailbox's scope

    @precondition(lambda self: self.mailbox.contacts())
    @rule(data=st.data(), field=fields, value=values | st.just(REFUSED_TITLE))
    def edit_mailbox(self, data, field, value):
        i = data.draw(st.sampled_from(sorted(self.mailbox.contacts())))
        self.mailbox.user_edit(i, self.mailbox.contacts()[i].model_copy(update={field: value}))

    @precondition(lambda self: self.platform.contacts(ORG))
    @rule(data=st.data(), field=fields, value=values)
    def edit_platform(self, data, field, value):
        i = data.draw(st.sampled_from(sorted(self.platform.contacts(ORG))))
        self.platform.user_edit(ORG, i, self.platform.contacts(ORG)[i].model_copy(update={field: value}))

    @precondition(lambda self: self.mailbox.contacts())
    @rule(data=st.data())
    def delete_mailbox(self, data):
        self.mailbox.user_delete(data.draw(st.sampled_from(sorted(self.mailbox.contacts()))))

    @precondition(lambda self: self.platform.contacts(ORG))
    @rule(data=st.data())
    def delete_platform(self, data):
        self.platform.user_delete(ORG, data.draw(st.sampled_from(sorted(self.platform.contacts(ORG)))))

    @rule(op=st.sampled_from(["create", "update", "delete", "list", "upsert", "changes"]), n=st.integers(1, 2))
    def provider_outage(self, op, n):
        """The next calls of a kind fail whole; the activity is retried, as Temporal would."""
        target = self.platform if op in ("upsert", "changes") else self.mailbox
        target.faults.fail_calls(unavailable(), op=op, count=n)

    # -- one cycle, run by the real activities -----------------------------------
    def _activity(self, fn, *args):
        """Run an activity as Temporal would: again after a retryable failure."""
        for _ in range(10):
            try:
                return fn(*args)
            except ConnectorError:
                raise
            except Exception as exc:  # an ApplicationError: retryable unless marked otherwise
                if getattr(exc, "non_retryable", False):
                    raise
        raise AssertionError(f"{fn.__name__} kept failing")

    def _cycle(self, approve: bool = False):
        ref = CycleRef(connection_id=CID, cycle_id=f"m-{next(self.cycles)}")
        self._activity(self.acts.fetch_mailbox, ref)
        self._activity(self.acts.read_platform, ORG)  # the organisation's workflow reads first
        self._activity(self.acts.fetch_platform, ref)
        plan = self._activity(self.acts.plan, ref, approve)
        wr = self._activity(self.acts.write, ref)
        rj = self._activity(self.acts.handle_rejections, ref)
        return plan, wr, rj

    def _answer_reviews(self, data) -> int:
        """A person answers every open review."""
        with self.sessions() as s:
            open_ = repo.open_reviews(s, CID)
        answers = []
        for r in open_:
            if r.kind == "conflict":
                choice = data.draw(st.sampled_from(["mailbox", "platform", "merged"]))
                if choice == "merged":
                    side = (r.detail or {}).get(data.draw(st.sampled_from(["mailbox", "platform"]))) or {}
                    with self.sessions.begin() as s:
                        cycle.store_merged_fields(s, int(r.id), {f: side.get(f, "") for f in r.fields
                                                                  if isinstance(side.get(f, ""), str)})
            else:
                choice = data.draw(st.sampled_from(allowed_answers("duplicate", (r.detail or {}).get("rule"))))
            answers.append(Resolution(review_id=int(r.id), choice=choice))
        if answers:
            self.answered += len(answers)
            self._activity(self.reviews.apply_answers, CID, answers)
        return len(answers)

    @rule(data=st.data())
    def sync(self, data):
        quiet = 0
        for _ in range(12):
            plan, wr, rj = self._cycle()
            if plan.guard_tripped:
                plan, wr, rj = self._cycle(approve=True)  # a person approves the held deletions
            wrote = (sum(wr.created.values()) + sum(wr.updated.values()) + sum(wr.deleted.values()) + rj.fixed
                     + wr.deferred)  # a deferred write (stale etag) is work still to do
            answered = self._answer_reviews(data)
            quiet = quiet + 1 if not (wrote or answered or plan.guard_tripped) else 0
            if quiet >= 2:  # a cycle at rest, and the one after it, wrote nothing
                break
        else:
            raise AssertionError("no rest after 12 cycles: ping-pong or a review that never closes")
        self._check_converged()

    # -- what must hold ---------------------------------------------------------
    def _check_converged(self):
        mailbox = self.mailbox.contacts()
        platform = self.platform.contacts(ORG)
        with self.sessions() as s:
            links = s.execute(sa.select(repo.links).where(repo.links.c.connection_id == CID)).all()
            items = repo.items_by_status(s, CID, list(repo.ITEM_STATUSES))
            unfinished = repo.actions_by_status(s, CID, ["planned", "platform_done", "mailbox_started"])
            reviews = repo.open_reviews(s, CID)
        assert not unfinished, "half-done actions at rest"
        assert not reviews, "a review the machine answered is still open"
        by_state = {(i.side, i.external_id): i for i in items}
        pending = [(k, i.batch_id, i.record.get("deleted"), bool(i.record.get("problems")))
                   for k, i in by_state.items() if i.status == "pending"]
        assert not pending, f"pending items at rest: {pending}"
        seen_m, seen_p = set(), set()
        for link in links:
            assert link.mailbox_id not in seen_m and link.platform_id not in seen_p, "linked twice"
            seen_m.add(link.mailbox_id)
            seen_p.add(link.platform_id)
            held = [by_state.get(("mailbox", link.mailbox_id)), by_state.get(("platform", link.platform_id))]
            if any(i is not None and i.status == "quarantined" for i in held):
                continue  # a refused change waits, visibly, for a fix: the pair may differ meanwhile
            assert link.mailbox_id in mailbox and link.platform_id in platform, "link to a gone record"
            assert mailbox[link.mailbox_id] == platform[link.platform_id], "pair not converged"
        waiting = {"quarantined", "skipped", "deferred"}
        for i in mailbox:
            item = by_state.get(("mailbox", i))
            assert i in seen_m or (item is not None and item.status in waiting), \
                f"mailbox {i} neither linked nor in a named state ({item.status if item else 'never seen'})"
        for i in platform:
            if i in self.not_mine and i not in seen_p:
                continue  # out of scope, and no mailbox contact brought it in
            item = by_state.get(("platform", i))
            assert i in seen_p or (item is not None and item.status in waiting), \
                f"platform {i} neither linked nor in a named state ({item.status if item else 'never seen'})"
        for item in items:
            if item.status == "skipped":
                assert item.rule, "skipped without a named rule"
            if item.status == "quarantined":
                assert item.error_code, "quarantined without its error"

    @invariant()
    def links_are_one_to_one(self):
        with self.sessions() as s:
            rows = s.execute(sa.select(repo.links.c.mailbox_id, repo.links.c.platform_id)).all()
        assert len({m for m, _ in rows}) == len(rows) and len({p for _, p in rows}) == len(rows)


TestSyncMachine = SyncMachine.TestCase
TestSyncMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
