"""One long-running workflow per connected mailbox: `mailbox-sync/<connection_id>`.

It only decides *when* to run which step; every step is an activity that works on
the store by connection id. History therefore holds ids, counts and cursors' ages,
never contact content or credentials (DESIGN principle 1).

Loop: wait for a wake-up signal or the poll timer -> cycle (resolutions, retries,
fetch both sides, plan, write, handle validation errors, summarise) -> continue-as-new
when Temporal suggests it, carrying state and anything signalled but not yet used.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.workflow import (
        CycleCounts,
        CycleRef,
        FetchResult,
        MailboxSyncInput,
        PlanSummary,
        RejectionSummary,
        Resolution,
        StoreSummary,
        SyncState,
        WriteSummary,
    )
    from workers.temporal_client import ORG_ID as SA_ORG, PROVIDER as SA_PROVIDER, STATUS as SA_STATUS

REAUTH_REQUIRED = "ReauthRequired"

def _retry(*also_final: str) -> RetryPolicy:
    """Backoff for transient trouble; errors only a person or a resync can fix stop at once.

    A rate limit's own delay (Retry-After) overrides the interval via next_retry_delay.
    """
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=2),
        maximum_attempts=8,
        non_retryable_error_types=[REAUTH_REQUIRED, "Fatal", *also_final],
    )


FETCH_RETRY = _retry("CursorExpired")
WRITE_RETRY = _retry()


def workflow_id(connection_id: str) -> str:
    return f"mailbox-sync/{connection_id}"


@workflow.defn
class MailboxSyncWorkflow:
    def __init__(self) -> None:
        self._state: SyncState | None = None
        self._wake = False
        self._paused = False
        self._stop = False
        self._reconnected = False
        self._retry_quarantined = False
        self._approve_mass_delete = False
        self._resolutions: list[Resolution] = []
        self._sa_status: str | None = None

    # ----------------------------------------------------------------- signals
    @workflow.signal
    def wake(self, reason: str = "") -> None:
        """Something changed (webhook, CRM event, user). Bursts coalesce into one cycle."""
        self._wake = True
        if self._state is not None:
            self._state.wakeups_pending += 1

    @workflow.signal
    def resolve(self, resolution: Resolution) -> None:
        """A person's answer to a review; values, if any, were stored before signalling."""
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
        assert self._state is not None
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
        self._inp = inp
        self._state = inp.state or SyncState(connection_id=inp.connection_id)
        self._wake = inp.wake or self._wake
        self._paused = inp.paused or self._paused
        self._retry_quarantined = inp.retry_quarantined or self._retry_quarantined
        self._approve_mass_delete = inp.approve_mass_delete or self._approve_mass_delete
        self._resolutions = list(inp.resolutions) + self._resolutions
        self._set_health(self._state.health if self._state.health != "paused" else "active")

        while not self._stop:
            if self._state.health == "needs_reauth":
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
                self._set_health("active")
                continue
            if not self._wake:
                self._state.next_poll_at = workflow.now().timestamp() + inp.poll_interval_s
                try:
                    await workflow.wait_condition(
                        lambda: self._wake or self._stop or self._paused,
                        timeout=timedelta(seconds=inp.poll_interval_s),
                    )
                except asyncio.TimeoutError:
                    self._wake = True  # the poll timer: safety net for dropped notifications
                if self._stop or self._paused:
                    continue
            self._wake = False
            self._state.wakeups_pending = 0
            await self._cycle()
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._state.continued_as_new += 1
                workflow.continue_as_new(self._carry())

        # Stop syncing, revoke and forget the tokens, stop subscriptions. What was
        # synced stays on the platform; nothing in the mailbox is deleted.
        await self._act("connection.disconnect", self._inp.connection_id, result_type=dict)
        self._state.last_error = None
        self._set_health("disconnected")
        return self._state

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
        assert self._state is not None
        if self._sa_status == health:
            return
        self._sa_status = health
        self._state.health = health  # type: ignore[assignment]
        workflow.upsert_search_attributes([
            SA_ORG.value_set(self._inp.org_id),
            SA_PROVIDER.value_set(self._inp.provider),
            SA_STATUS.value_set(health),
        ])

    async def _act(self, name: str, *args, result_type=None, timeout_s: float = 600, retry=WRITE_RETRY,
                   heartbeat: bool = True):
        heartbeat_s = self._inp.heartbeat_timeout_s if heartbeat else None
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
        assert st is not None
        try:
            counts = await self._act("subscriptions.maintain", self._inp.connection_id, result_type=dict,
                                     retry=RetryPolicy(maximum_attempts=3, non_retryable_error_types=[REAUTH_REQUIRED]))
            st.subscriptions = {k: int(v) for k, v in counts.items() if v}
            st.subscription_error = None
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == REAUTH_REQUIRED:
                raise
            st.subscription_error = getattr(cause, "type", None) or type(cause).__name__

    async def _cycle(self) -> None:
        st = self._state
        assert st is not None
        cid = self._inp.connection_id
        ref = CycleRef(connection_id=cid, cycle_id=f"{workflow.info().run_id[:8]}-{st.cycles + 1}")
        counts = CycleCounts()
        try:
            if self._resolutions:
                taken, self._resolutions = self._resolutions, []
                await self._act("contacts.apply_resolutions", cid, taken, result_type=int)
            if self._retry_quarantined:
                self._retry_quarantined = False
                await self._act("contacts.retry_quarantined", cid, result_type=int)
            await self._maintain_subscriptions()
            fm: FetchResult = await self._act("contacts.fetch_mailbox", ref, result_type=FetchResult, retry=FETCH_RETRY)
            fp: FetchResult = await self._act("contacts.fetch_platform", ref, result_type=FetchResult, retry=FETCH_RETRY)
            st.last_fetch_at = workflow.now().timestamp()
            approve, self._approve_mass_delete = self._approve_mass_delete, False
            plan: PlanSummary = await self._act("contacts.plan", ref, approve, result_type=PlanSummary,
                                                timeout_s=1800)
            wr: WriteSummary = await self._act("contacts.write", ref, result_type=WriteSummary, timeout_s=1800)
            rj: RejectionSummary = await self._act("contacts.handle_rejections", ref, result_type=RejectionSummary)
            summary: StoreSummary = await self._act("contacts.summarize", cid, result_type=StoreSummary)
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == REAUTH_REQUIRED:
                self._set_health("needs_reauth")
                st.last_error = "needs re-authorisation"
            else:
                st.last_error = f"{type(cause).__name__}: {getattr(cause, 'type', None) or ''}".strip()
            st.cycles += 1
            return
        counts.fetched = fm.fetched + fp.fetched
        counts.full_resyncs = int(fm.full_resync)
        counts.linked = wr.linked
        counts.created = sum(wr.created.values())
        counts.updated = sum(wr.updated.values())
        counts.deleted = sum(wr.deleted.values())
        counts.skipped = plan.outcomes.get("skip", 0)
        counts.conflicts = plan.outcomes.get("conflict", 0)
        counts.duplicates = plan.outcomes.get("duplicate", 0)
        counts.quarantined = plan.outcomes.get("quarantine", 0) + rj.quarantined
        counts.fixed = rj.fixed
        counts.deferred = wr.deferred + plan.outcomes.get("held", 0)
        st.last_counts = counts
        for name in CycleCounts.model_fields:
            setattr(st.totals, name, getattr(st.totals, name) + getattr(counts, name))
        st.store = summary
        st.guard_tripped = plan.guard_tripped
        st.cycles += 1
        st.last_cycle_at = workflow.now().timestamp()
        st.last_error = None
        if plan.guard_tripped:
            self._set_health("blocked")
        elif st.health == "blocked":
            self._set_health("active")
