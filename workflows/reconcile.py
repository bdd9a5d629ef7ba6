"""One reconciliation workflow per organisation: `reconcile/<org_id>`, on a timer.

Every `interval_s` (or at once on the `run_now` signal) it compares both ends of each
active connection of the organisation, kind by kind (activity `reconcile.run`), and
wakes the mailboxes whose items it re-staged so their next cycle repairs them. Like
the other workflows it decides only *when*: it carries ids and counts, never content
(the report itself is in the store's `reconcile_reports`). On demand, the same
workflow runs once for named connections (`once`), as `concord reconcile CONN` does.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from models.reconcile import ReconcileCounts, ReconcileInput, ReconcileRequest, ReconcileRun, ReconcileState
    from workflows.mailbox_sync import workflow_id as mailbox_workflow_id

RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=30), maximum_attempts=3,
                    non_retryable_error_types=["Fatal", "ReauthRequired"])


def workflow_id(org_id: str) -> str:
    return f"reconcile/{org_id}"


@workflow.defn
class ReconcileWorkflow:
    @workflow.init
    def __init__(self, inp: ReconcileInput) -> None:
        self._inp = inp
        self._state = inp.state or ReconcileState(org_id=inp.org_id)
        self._run_now = inp.run_first

    @workflow.signal
    def run_now(self) -> None:
        self._run_now = True

    @workflow.query
    def state(self) -> ReconcileState:
        return self._state

    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileRun:
        st = self._state
        while True:
            if not (inp.once or self._run_now):
                st.next_run_at = workflow.now().timestamp() + inp.interval_s
                try:
                    await workflow.wait_condition(lambda: self._run_now, timeout=timedelta(seconds=inp.interval_s))
                except asyncio.TimeoutError:
                    pass  # the schedule
            self._run_now = False
            result = await self._run_once()
            st.runs += 1
            st.last = result
            if inp.once:
                return result
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                st.continued_as_new += 1
                workflow.continue_as_new(inp.model_copy(update={"state": st, "run_first": self._run_now}))

    async def _run_once(self) -> ReconcileRun:
        inp = self._inp
        out = ReconcileRun(at=workflow.now().timestamp())
        if inp.connection_ids is not None:
            cids = list(inp.connection_ids)
        else:
            cids = await workflow.execute_activity(
                "reconcile.connections", inp.org_id, result_type=list[str],
                start_to_close_timeout=timedelta(minutes=1), retry_policy=RETRY)
        for cid in cids:
            restaged = 0
            for kind in inp.kinds:
                try:
                    counts: ReconcileCounts = await workflow.execute_activity(
                        "reconcile.run", ReconcileRequest(connection_id=cid, kind=kind, repair=inp.repair),
                        result_type=ReconcileCounts, start_to_close_timeout=timedelta(minutes=60),
                        heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_s), retry_policy=RETRY)
                except ActivityError as err:
                    cause = err.cause
                    out.failed[f"{cid}:{kind}"] = (
                        f"{type(cause).__name__}: {getattr(cause, 'type', None) or ''}".strip().rstrip(":"))
                    continue
                out.results.append(counts)
                restaged += counts.restaged
            if restaged:
                await self._wake_mailbox(cid)
        return out

    async def _wake_mailbox(self, connection_id: str) -> None:
        """Its next cycle merges what was re-staged; a stopped mailbox picks it up when it starts."""
        try:
            await workflow.get_external_workflow_handle(mailbox_workflow_id(connection_id)).signal(
                "wake", "reconcile")
        except FailureError:
            pass
