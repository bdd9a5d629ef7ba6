"""One long-running workflow per connected mailbox: `mailbox-sync/<connection_id>`.

It only decides *when* to run which step; every step is an activity that works on
the store by connection id. History therefore holds ids, counts and cursors' ages,
never contact content or credentials (DESIGN principle 1).

Loop: wait for a wake-up signal or the poll timer -> cycle (resolutions, retries,
fetch both sides, plan, write, handle validation errors, summarise) -> continue-as-new
when Temporal suggests it, carrying state and anything signalled but not yet used.

Runs live for months, so a deploy meets histories written by older code. Changes to
the commands this code issues sit behind `workflow.patched`; `tests/golden/` keeps
histories recorded by earlier releases and `tests/test_replay_golden.py` replays them.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from models.workflow import (
        STATE_ID_LIMIT,
        AnswerOutcome,
        CycleCounts,
        CycleRef,
        KindState,
        FetchResult,
        MailboxSyncInput,
        PlanSummary,
        RejectionSummary,
        Resolution,
        StoreSummary,
        SyncState,
        WriteSummary,
        ordered_kinds,
    )
    from models import health
    from workflows.attributes import ORG_ID as SA_ORG, PROVIDER as SA_PROVIDER, STATUS as SA_STATUS

REAUTH_REQUIRED = "ReauthRequired"

#: Stop-4 runs consumed one-shot signals before their activity ran, kept health
#: "active" through failing cycles and retried them only at the poll timer. Runs
#: started by this code (and every run after continue-as-new) take the newer path;
#: older runs replay on the old one until they continue as new.
PATCH_HOLDS_UNDER_FAILURE = "holds-under-failure-v1"

#: Runs started by this code cycle over every enabled kind of data (contacts first),
#: each kind's failure kept to itself; earlier runs sync contacts alone.
PATCH_KINDS = "kinds-v1"

#: answers applied per activity call, so a burst of thousands stays small in history
RESOLUTIONS_PER_CALL = 200
#: a failing cycle is retried after 30 s, 60 s, ... up to this (or the poll interval)
FAILURE_BACKOFF_FIRST_S = 30.0
FAILURE_BACKOFF_MAX_S = 900.0


def _retry(*also_final: str, attempts: int = 8, max_interval_s: float = 120.0) -> RetryPolicy:
    """Backoff for transient trouble; errors only a person or a resync can fix stop at once.

    A rate limit's own delay (Retry-After) overrides the interval via next_retry_delay.
    Activities wait out rate limits themselves (they are not failures), so these
    attempts are spent on real errors; once spent, the cycle fails, health says
    "failing", and the workflow retries the cycle with its own capped backoff.
    """
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=max_interval_s),
        maximum_attempts=attempts,
        non_retryable_error_types=[REAUTH_REQUIRED, "Fatal", *also_final],
    )


def workflow_id(connection_id: str) -> str:
    return f"mailbox-sync/{connection_id}"


def _error_code(err: BaseException) -> str:
    """Class and type of a failure, never its message (messages may quote content)."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return f"{type(cause).__name__}: {getattr(cause, 'type', None) or ''}".strip().rstrip(":")


@workflow.defn
class MailboxSyncWorkflow:
    @workflow.init
    def __init__(self, inp: MailboxSyncInput) -> None:
        self._inp = inp
        self._state: SyncState = inp.state or SyncState(connection_id=inp.connection_id)
        self._wake = False
        self._paused = False
        self._stop = False
        self._reconnected = False
        self._retry_quarantined = False
        self._approve_mass_delete = False
        self._resolutions: list[Resolution] = []
        self._sa_status: str | None = None
        #: set by _note_success: the cycle under way went through
        self._cycle_ok = False
        # Decided here, not in run: signals and updates of the first activation are
        # handled before run starts, and must already know which code path they are on.
        self._v2 = workflow.patched(PATCH_HOLDS_UNDER_FAILURE)
        self._v3 = self._v2 and workflow.patched(PATCH_KINDS)

    # ----------------------------------------------------------------- signals
    @workflow.signal
    def wake(self, reason: str = "") -> None:
        """Something changed (webhook, CRM event, user). Bursts coalesce into one cycle."""
        self._wake = True
        self._state.wakeups_pending += 1

    @workflow.signal
    def resolve(self, resolution: Resolution) -> None:
        """A person's answer to a review; values, if any, were stored before signalling.

        Clients validate against the store before signalling; an answer the store
        still refuses is counted in `ignored_answers`, never applied.
        """
        self._queue(resolution)

    @workflow.update
    async def answer_review(self, resolution: Resolution) -> AnswerOutcome:
        """`resolve` for callers that want to know whether the answer was taken."""
        check = "reviews.check_answer" if self._v3 else "contacts.check_answer"
        reason = await self._act(check, self._inp.connection_id, resolution, result_type=str, timeout_s=30)
        if reason:
            return AnswerOutcome(accepted=False, reason=reason)
        self._queue(resolution)
        return AnswerOutcome(accepted=True)

    def _queue(self, resolution: Resolution) -> None:
        if all(r.review_id != resolution.review_id for r in self._resolutions):
            self._resolutions.append(resolution)
        self._wake = True

    @workflow.signal
    def pause(self) -> None:
        self._paused = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False
        self._wake = True

    @workflow.signal
    def retry_quarantined(self) -> None:
        self._retry_quarantined = True
        self._wake = True

    @workflow.signal
    def approve_mass_delete(self) -> None:
        self._approve_mass_delete = True
        self._wake = True

    @workflow.signal
    def reconnected(self) -> None:
        """New tokens are in the vault: leave needs-reauth and sync again."""
        self._reconnected = True
        self._wake = True

    @workflow.signal
    def disconnect(self) -> None:
        self._stop = True

    # ----------------------------------------------------------------- queries
    @workflow.query
    def state(self) -> SyncState:
        st = self._state.model_copy(deep=True)
        now = workflow.now().timestamp()
        st.cursor_age_s = None if st.last_fetch_at is None else round(now - st.last_fetch_at, 3)
        st.pending_resolutions = len(self._resolutions)
        if self._paused and st.health == "active":
            st.health = "paused"
        return st

    # --------------------------------------------------------------------- run
    @workflow.run
    async def run(self, inp: MailboxSyncInput) -> SyncState:
        if not self._v2:
            return await self._run_loop(inp)
        try:
            return await self._run_loop(inp)
        except BaseException as err:
            # The UI filters on ConcordStatus: a run that ends without syncing must not
            # keep saying "active" (terminate is the one end code cannot see).
            if is_cancelled_exception(err):
                self._set_health("stopped")
            elif isinstance(err, FailureError):
                self._state.last_error = _error_code(err)
                self._set_health("failing")
            raise

    async def _run_loop(self, inp: MailboxSyncInput) -> SyncState:
        st = self._state
        self._wake = inp.wake or self._wake
        self._paused = inp.paused or self._paused
        self._retry_quarantined = inp.retry_quarantined or self._retry_quarantined
        self._approve_mass_delete = inp.approve_mass_delete or self._approve_mass_delete
        carried = [r for r in inp.resolutions if all(r.review_id != x.review_id for x in self._resolutions)]
        self._resolutions = carried + self._resolutions
        self._set_health(st.health if st.health not in ("paused", "stopped") else "active")

        while not self._stop:
            if st.health == "needs_reauth":
                await workflow.wait_condition(lambda: self._reconnected or self._stop)
                self._reconnected = False
                if self._stop:
                    break
                auth = await self._act("connection.check_auth", self._inp.connection_id, result_type=str)
                if auth == "disconnected":
                    break
                if auth != "active":
                    continue  # the new grant does not work either: keep waiting
                self._set_health("active")
            if self._paused:
                self._set_health("paused")
                await workflow.wait_condition(lambda: not self._paused or self._stop)
                self._set_health("failing" if st.consecutive_failures and self._v2 else "active")
                continue
            if not self._wake:
                wait_s = self._next_wait_s()
                st.next_poll_at = workflow.now().timestamp() + wait_s
                try:
                    await workflow.wait_condition(
                        lambda: self._wake or self._stop or self._paused,
                        timeout=timedelta(seconds=wait_s),
                    )
                except asyncio.TimeoutError:
                    self._wake = True  # the poll timer (safety net) or the retry of a failed cycle
                if self._stop or self._paused:
                    continue
            self._wake = False
            st.wakeups_pending = 0
            st.cycle_running = True
            started, cycles_before, self._cycle_ok = workflow.now().timestamp(), st.cycles, False
            try:
                await (self._cycle_kinds() if self._v3 else self._cycle())
            finally:
                st.cycle_running = False
            if st.cycles > cycles_before:
                self._record_health(started)
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                st.continued_as_new += 1
                workflow.continue_as_new(self._carry())

        # Stop syncing, revoke and forget the tokens, stop subscriptions. What was
        # synced stays on the platform; nothing in the mailbox is deleted.
        await self._act("connection.disconnect", self._inp.connection_id, result_type=dict)
        st.last_error = None
        self._set_health("disconnected")
        return st

    def _retry(self, *also_final: str) -> RetryPolicy:
        return _retry(*also_final, attempts=self._inp.activity_attempts,
                      max_interval_s=self._inp.activity_retry_max_s)

    def _next_wait_s(self) -> float:
        """The poll interval; after failed cycles, a shorter capped backoff."""
        poll = self._inp.poll_interval_s
        n = self._state.consecutive_failures
        if not (self._v2 and n):
            self._state.next_retry_at = None
            return poll
        wait = min(poll, FAILURE_BACKOFF_MAX_S, FAILURE_BACKOFF_FIRST_S * 2 ** min(n - 1, 16))
        self._state.next_retry_at = workflow.now().timestamp() + wait
        return wait

    def _carry(self) -> MailboxSyncInput:
        return self._inp.model_copy(update={
            "state": self._state,
            "wake": self._wake,
            "paused": self._paused,
            "resolutions": list(self._resolutions),
            "retry_quarantined": self._retry_quarantined,
            "approve_mass_delete": self._approve_mass_delete,
        })

    def _set_health(self, health: str) -> None:
        """Health in the state query and in the ConcordStatus search attribute (the UI filter)."""
        if self._sa_status == health:
            return
        self._sa_status = health
        self._state.health = health  # type: ignore[assignment]
        workflow.upsert_search_attributes([
            SA_ORG.value_set(self._inp.org_id),
            SA_PROVIDER.value_set(self._inp.provider),
            SA_STATUS.value_set(health),
        ])

    async def _act(self, name: str, *args, result_type=None, timeout_s: float = 600, retry: RetryPolicy | None = None,
                   heartbeat: bool = True):
        heartbeat_s = self._inp.heartbeat_timeout_s if heartbeat else None
        retry = retry or self._retry()
        return await workflow.execute_activity(
            name,
            args=list(args),
            result_type=result_type,
            start_to_close_timeout=timedelta(seconds=timeout_s),
            heartbeat_timeout=timedelta(seconds=heartbeat_s) if heartbeat_s else None,
            retry_policy=retry,
        )

    async def _maintain_subscriptions(self) -> None:
        """Push is a hint: a failing subscription is shown, never allowed to stop syncing."""
        st = self._state
        try:
            counts = await self._act("subscriptions.maintain", self._inp.connection_id, result_type=dict,
                                     retry=RetryPolicy(maximum_attempts=3, non_retryable_error_types=[REAUTH_REQUIRED]))
            st.subscriptions = {k: int(v) for k, v in counts.items() if v}
            st.subscription_error = None
        except ActivityError as err:
            cause = err.cause
            if (isinstance(cause, ApplicationError) and cause.type == REAUTH_REQUIRED) or (
                    self._v2 and is_cancelled_exception(err)):
                raise
            st.subscription_error = getattr(cause, "type", None) or type(cause).__name__

    async def _apply_one_shots(self) -> None:
        """Answers, retry and approval requests: each is dropped only once the activity
        that carries it has succeeded, so a failing cycle keeps them for the next one."""
        st = self._state
        cid = self._inp.connection_id
        while self._resolutions:
            taken = self._resolutions[:RESOLUTIONS_PER_CALL]
            applied = await self._act("contacts.apply_resolutions", cid, taken, result_type=int)
            done = {r.review_id for r in taken}
            self._resolutions = [r for r in self._resolutions if r.review_id not in done]
            st.ignored_answers += len(taken) - applied
        if self._retry_quarantined:
            await self._act("contacts.retry_quarantined", cid, result_type=int)
            self._retry_quarantined = False

    async def _cycle(self) -> None:
        """The contacts-only cycle of runs started before kinds (until they continue as new)."""
        st = self._state
        cid = self._inp.connection_id
        ref = CycleRef(connection_id=cid, cycle_id=f"{workflow.info().run_id[:8]}-{st.cycles + 1}")
        try:
            if self._v2:
                await self._apply_one_shots()
            else:
                if self._resolutions:
                    taken, self._resolutions = self._resolutions, []
                    await self._act("contacts.apply_resolutions", cid, taken, result_type=int)
                if self._retry_quarantined:
                    self._retry_quarantined = False
                    await self._act("contacts.retry_quarantined", cid, result_type=int)
            await self._maintain_subscriptions()
            fetch_retry = self._retry("CursorExpired")
            fm: FetchResult = await self._act("contacts.fetch_mailbox", ref, result_type=FetchResult, retry=fetch_retry)
            fp: FetchResult = await self._act("contacts.fetch_platform", ref, result_type=FetchResult, retry=fetch_retry)
            st.last_fetch_at = workflow.now().timestamp()
            approve = self._approve_mass_delete
            if not self._v2:
                self._approve_mass_delete = False
            plan: PlanSummary = await self._act("contacts.plan", ref, approve, result_type=PlanSummary,
                                                timeout_s=1800)
            if self._v2 and approve:
                self._approve_mass_delete = False  # the plan that used it is stored
            wr: WriteSummary = await self._act("contacts.write", ref, result_type=WriteSummary, timeout_s=1800)
            rj: RejectionSummary = await self._act("contacts.handle_rejections", ref, result_type=RejectionSummary)
            summary: StoreSummary = await self._act("contacts.summarize", cid, result_type=StoreSummary)
        except ActivityError as err:
            if self._v2 and is_cancelled_exception(err):
                raise  # the run is being cancelled: not a failed cycle
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == REAUTH_REQUIRED:
                self._set_health("needs_reauth")
                st.last_error = "needs re-authorisation"
            else:
                st.last_error = _error_code(err)
                if self._v2:
                    st.consecutive_failures += 1
                    if st.failing_since is None:
                        st.failing_since = workflow.now().timestamp()
                    if st.health in ("active", "blocked"):
                        self._set_health("failing")
            st.cycles += 1
            return
        counts = _counts(fm, fp, plan, wr, rj)
        st.last_counts = counts
        _add(st.totals, counts)
        if self._v2:
            summary = _bounded(summary)
        st.store = summary
        st.guard_tripped = plan.guard_tripped
        st.cycles += 1
        self._note_success(plan.guard_tripped)


    # ---------------------------------------------------------- every kind
    async def _cycle_kinds(self) -> None:
        """One cycle over every enabled kind, in a fixed order. A kind that fails is
        shown in its section and retried with the cycle; the other kinds go on."""
        st = self._state
        cid = self._inp.connection_id
        cycle_id = f"{workflow.info().run_id[:8]}-{st.cycles + 1}"
        kinds = ordered_kinds(self._inp.kinds)
        try:
            await self._apply_answers()
            if self._retry_quarantined:
                for kind in kinds:
                    await self._act(f"{kind}.retry_quarantined", cid, result_type=int)
                self._retry_quarantined = False
            await self._maintain_subscriptions()
        except ActivityError as err:
            self._cycle_failed(err)
            return
        approve = self._approve_mass_delete
        failed: dict[str, str] = {}
        cycle_counts = CycleCounts()
        for kind in kinds:
            ks = st.kinds.setdefault(kind, KindState())
            try:
                counts, summary, guard = await self._cycle_kind(kind, CycleRef(connection_id=cid, cycle_id=cycle_id),
                                                                approve)
            except ActivityError as err:
                if is_cancelled_exception(err) or _is_reauth(err):
                    self._cycle_failed(err)
                    return
                failed[kind] = ks.last_error = _error_code(err)
                continue
            ks.last_counts, ks.store, ks.guard_tripped, ks.last_error = counts, summary, guard, None
            ks.last_fetch_at = workflow.now().timestamp()
            _add(ks.totals, counts)
            _add(cycle_counts, counts)
        if approve and not failed:
            self._approve_mass_delete = False  # every kind's plan has used it
        st.last_counts = cycle_counts
        _add(st.totals, cycle_counts)
        st.store = _summed([k.store for k in st.kinds.values()])
        st.guard_tripped = any(k.guard_tripped for k in st.kinds.values())
        st.last_fetch_at = workflow.now().timestamp()
        st.cycles += 1
        if failed:
            st.last_error = "; ".join(f"{kind}: {code}" for kind, code in failed.items())
            self._note_failure()
            return
        self._note_success(st.guard_tripped)

    def _record_health(self, started: float) -> None:
        """Health figures from workflow time and the counts the cycle returned: no command.
        Listeners (the worker's OpenTelemetry instruments) hear of it outside replay only."""
        st = self._state
        health.record_cycle(st.health_metrics, started=started, ended=workflow.now().timestamp(),
                            ok=self._cycle_ok, store=st.store)
        if not workflow.unsafe.is_replaying():
            with workflow.unsafe.sandbox_unrestricted():
                health.notify(self._inp.connection_id, st.health_metrics.model_copy(deep=True), self._cycle_ok)

    def _note_success(self, guard_tripped: bool) -> None:
        """A cycle went through: failures are over; the guard, if it tripped, blocks."""
        st = self._state
        self._cycle_ok = True
        st.last_cycle_at = workflow.now().timestamp()
        st.last_error = None
        st.consecutive_failures = 0
        st.failing_since = None
        st.next_retry_at = None
        if guard_tripped:
            self._set_health("blocked")
        elif st.health in ("blocked", "failing"):
            self._set_health("active")

    async def _cycle_kind(self, kind: str, ref: CycleRef, approve: bool) -> tuple[CycleCounts, StoreSummary, bool]:
        cid = ref.connection_id
        fetch_retry = self._retry("CursorExpired")
        fm: FetchResult = await self._act(f"{kind}.fetch_mailbox", ref, result_type=FetchResult, retry=fetch_retry)
        fp: FetchResult = await self._act(f"{kind}.fetch_platform", ref, result_type=FetchResult, retry=fetch_retry)
        plan: PlanSummary = await self._act(f"{kind}.plan", ref, approve, result_type=PlanSummary, timeout_s=1800)
        wr: WriteSummary = await self._act(f"{kind}.write", ref, result_type=WriteSummary, timeout_s=1800)
        rj: RejectionSummary = await self._act(f"{kind}.handle_rejections", ref, result_type=RejectionSummary)
        summary: StoreSummary = await self._act(f"{kind}.summarize", cid, result_type=StoreSummary)
        return _counts(fm, fp, plan, wr, rj), _bounded(summary), plan.guard_tripped

    async def _apply_answers(self) -> None:
        """Answers for any kind (a review knows its kind), dropped once applied."""
        st = self._state
        while self._resolutions:
            taken = self._resolutions[:RESOLUTIONS_PER_CALL]
            applied = await self._act("reviews.apply_answers", self._inp.connection_id, taken, result_type=int)
            done = {r.review_id for r in taken}
            self._resolutions = [r for r in self._resolutions if r.review_id not in done]
            st.ignored_answers += len(taken) - applied

    def _cycle_failed(self, err: ActivityError) -> None:
        """A step every kind depends on failed: needs re-auth, cancellation, or a failing cycle."""
        if is_cancelled_exception(err):
            raise err
        st = self._state
        if _is_reauth(err):
            self._set_health("needs_reauth")
            st.last_error = "needs re-authorisation"
        else:
            st.last_error = _error_code(err)
            self._note_failure()
        st.cycles += 1

    def _note_failure(self) -> None:
        st = self._state
        st.consecutive_failures += 1
        if st.failing_since is None:
            st.failing_since = workflow.now().timestamp()
        if st.health in ("active", "blocked"):
            self._set_health("failing")


def _is_reauth(err: ActivityError) -> bool:
    return isinstance(err.cause, ApplicationError) and err.cause.type == REAUTH_REQUIRED


def _counts(fm: FetchResult, fp: FetchResult, plan: PlanSummary, wr: WriteSummary,
            rj: RejectionSummary) -> CycleCounts:
    """One kind's cycle, per stage."""
    return CycleCounts(
        fetched=fm.fetched + fp.fetched,
        full_resyncs=int(fm.full_resync),
        linked=wr.linked,
        created=sum(wr.created.values()),
        updated=sum(wr.updated.values()),
        deleted=sum(wr.deleted.values()),
        skipped=plan.outcomes.get("skip", 0),
        conflicts=plan.outcomes.get("conflict", 0),
        duplicates=plan.outcomes.get("duplicate", 0),
        quarantined=plan.outcomes.get("quarantine", 0) + rj.quarantined,
        fixed=rj.fixed,
        deferred=wr.deferred + plan.outcomes.get("held", 0),
    )


def _add(into: CycleCounts, counts: CycleCounts) -> None:
    for name in CycleCounts.model_fields:
        setattr(into, name, getattr(into, name) + getattr(counts, name))


def _summed(stores: list[StoreSummary]) -> StoreSummary:
    """The connection's store across kinds: counts added, id lists cut as for one kind."""
    out = StoreSummary()
    for st in stores:
        for status, n in st.items.items():
            out.items[status] = out.items.get(status, 0) + n
        for code, n in st.quarantined_by_code.items():
            out.quarantined_by_code[code] = out.quarantined_by_code.get(code, 0) + n
        for rule, n in st.skipped_by_rule.items():
            out.skipped_by_rule[rule] = out.skipped_by_rule.get(rule, 0) + n
        for state, n in st.outbox.items():
            out.outbox[state] = out.outbox.get(state, 0) + n
        out.open_association_count += st.open_association_count
        out.links += st.links
        out.open_conflict_count += st.open_conflict_count
        out.open_duplicate_count += st.open_duplicate_count
        out.quarantined_count += st.quarantined_count
        out.open_conflicts += st.open_conflicts
        out.open_duplicates += st.open_duplicates
        out.quarantined += st.quarantined
    return _bounded(out)


def _bounded(summary: StoreSummary) -> StoreSummary:
    """Older activities returned every id; keep state (and continue-as-new input) small."""
    return summary.model_copy(update={
        "open_conflicts": summary.open_conflicts[:STATE_ID_LIMIT],
        "open_duplicates": summary.open_duplicates[:STATE_ID_LIMIT],
        "quarantined": summary.quarantined[:STATE_ID_LIMIT],
        "open_conflict_count": max(summary.open_conflict_count, len(summary.open_conflicts)),
        "open_duplicate_count": max(summary.open_duplicate_count, len(summary.open_duplicates)),
        "quarantined_count": max(summary.quarantined_count, len(summary.quarantined)),
    })
