"""One workflow per organisation: `org-sync/<org_id>`. The platform is read here.

The platform belongs to an organisation, not to a mailbox. This workflow reads its
change feed once per kind (activity `<kind>.read_platform`, which mirrors and
buffers what changed) and wakes only the mailbox workflows the changes concern.
Platform webhooks wake it (not every mailbox); its poll timer is the safety net.
Like the mailbox workflow it decides only *when*; it carries ids and counts.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from models.workflow import OrgKindState, OrgReadResult, OrgState, OrgSyncInput, ordered_kinds
    from workflows.mailbox_sync import workflow_id as mailbox_workflow_id

#: A read is retried briefly in place (rate limits are waited out inside the activity);
#: a feed that stays down is retried by the workflow's own backoff, so one kind's
#: outage does not hold the other kinds' reads (they run side by side) for long.
READ_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=10), maximum_attempts=4,
                         non_retryable_error_types=["Fatal"])
#: After a failed read, the next attempt comes this soon, doubling up to the cap (or the poll).
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 900.0


def workflow_id(org_id: str) -> str:
    return f"org-sync/{org_id}"


@workflow.defn
class OrgSyncWorkflow:
    @workflow.init
    def __init__(self, inp: OrgSyncInput) -> None:
        self._inp = inp
        self._state: OrgState = inp.state or OrgState(org_id=inp.org_id)
        self._wake = False

    @workflow.signal
    def wake(self, reason: str = "") -> None:
        """The platform changed (its webhook), or a mailbox asked: bursts coalesce into one read."""
        self._wake = True
        self._state.wakeups_pending += 1

    @workflow.query
    def state(self) -> OrgState:
        return self._state

    @workflow.run
    async def run(self, inp: OrgSyncInput) -> None:
        st = self._state
        self._wake = inp.wake or self._wake
        while True:
            if not self._wake:
                wait_s = self._next_wait_s()
                st.next_poll_at = workflow.now().timestamp() + wait_s
                try:
                    await workflow.wait_condition(lambda: self._wake, timeout=timedelta(seconds=wait_s))
                except asyncio.TimeoutError:
                    pass  # the poll timer (a platform webhook may have been lost), or a retry
            self._wake = False
            st.wakeups_pending = 0
            reads = await asyncio.gather(*(self._read(kind) for kind in ordered_kinds(inp.kinds)))
            st.consecutive_failures = st.consecutive_failures + 1 if any(r is None for r in reads) else 0
            st.cycles += 1
            if reads and all(r is not None and r.active_mailboxes == 0 for r in reads):
                # Every mailbox has disconnected: nothing to read for. A new mailbox's
                # start_sync (signal-with-start) brings the workflow back.
                await workflow.wait_condition(workflow.all_handlers_finished)
                st.ended = True
                return
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                st.continued_as_new += 1
                workflow.continue_as_new(inp.model_copy(update={"state": st, "wake": self._wake}))

    def _next_wait_s(self) -> float:
        poll = self._inp.poll_interval_s
        n = self._state.consecutive_failures
        return min(poll, RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(n - 1, 16)) if n else poll

    async def _read(self, kind: str) -> OrgReadResult | None:
        """One kind's read; None when it failed (shown in the kind's section)."""
        ks = self._state.kinds.setdefault(kind, OrgKindState())
        try:
            read: OrgReadResult = await workflow.execute_activity(
                f"{kind}.read_platform", self._inp.org_id, result_type=OrgReadResult,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=timedelta(seconds=self._inp.heartbeat_timeout_s),
                retry_policy=READ_RETRY)
        except ActivityError as err:
            cause = err.cause
            ks.last_error = f"{type(cause).__name__}: {getattr(cause, 'type', None) or ''}".strip().rstrip(":")
            ks.failures += 1
            return None
        ks.last_error = None
        ks.last_read_at = workflow.now().timestamp()
        ks.reads += 1
        ks.changes += read.changes
        ks.platform_calls += read.calls
        ks.last_woken = len(read.woken)
        ks.wakes += len(read.woken)
        await asyncio.gather(*(self._wake_mailbox(cid) for cid in read.woken))
        return read

    async def _wake_mailbox(self, connection_id: str) -> None:
        """A running mailbox reads its share on its next cycle; a stopped one is no one's to wake."""
        try:
            await workflow.get_external_workflow_handle(mailbox_workflow_id(connection_id)).signal(
                "wake", "platform")
        except FailureError:
            pass
