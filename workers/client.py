"""The small client API a product team calls: connect a mailbox, wake it, ask its state,
answer its reviews. Workflow ids are `mailbox-sync/<connection_id>`.

Answers that carry values (merged fields) are written to the store first and the
signal carries only the review id (claim check): no content in workflow history.
"""

from __future__ import annotations

import asyncio

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from models.workflow import MailboxSyncInput, Resolution, SyncState
from store import cycle, repo
from workers.temporal_client import ORG_ID, PROVIDER, STATUS, TASK_QUEUE
from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id


async def start_sync(client: Client, connection_id: str, org_id: str, provider: str, *,
                     poll_interval_s: float = 300.0, task_queue: str = TASK_QUEUE,
                     heartbeat_timeout_s: float = 60.0, reason: str = "connect") -> WorkflowHandle:
    """Start (or wake, if already running) the workflow of one mailbox."""
    return await client.start_workflow(
        MailboxSyncWorkflow.run,
        MailboxSyncInput(connection_id=connection_id, org_id=org_id, provider=provider,
                         poll_interval_s=poll_interval_s, heartbeat_timeout_s=heartbeat_timeout_s),
        id=workflow_id(connection_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="wake",
        start_signal_args=[reason],
        search_attributes=TypedSearchAttributes([
            SearchAttributePair(ORG_ID, org_id), SearchAttributePair(PROVIDER, provider),
            SearchAttributePair(STATUS, "active"),
        ]),
    )


def handle(client: Client, connection_id: str) -> WorkflowHandle:
    return client.get_workflow_handle(workflow_id(connection_id))


async def wait_for_cycles(client: Client, connection_id: str, cycles: int, *, timeout: float = 90,
                          interval: float = 0.1) -> SyncState:
    """The state once the workflow has finished `cycles` cycles (it may not have started yet).

    Raises TimeoutError after `timeout` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            st = await state(client, connection_id)
            if st.cycles >= cycles:
                return st
        except RPCError:
            pass  # not started yet, or no worker has answered the query yet
        if loop.time() > deadline:
            raise TimeoutError(f"workflow {workflow_id(connection_id)} did not reach cycle {cycles} in {timeout:.0f}s")
        await asyncio.sleep(interval)


async def wake(client: Client, connection_id: str, reason: str = "") -> None:
    await handle(client, connection_id).signal(MailboxSyncWorkflow.wake, reason)


async def state(client: Client, connection_id: str) -> SyncState:
    return await handle(client, connection_id).query(MailboxSyncWorkflow.state)


async def resolve(client: Client, sessions, connection_id: str, review_id: int, choice: str,
                  fields: dict[str, str] | None = None) -> None:
    """Answer a review. For choice "merged", `fields` holds the values a person chose."""
    if choice == "merged":
        with sessions.begin() as s:
            cycle.store_merged_fields(s, review_id, fields or {})
    await handle(client, connection_id).signal(
        MailboxSyncWorkflow.resolve, Resolution(review_id=review_id, choice=choice)  # type: ignore[arg-type]
    )


async def pause(client: Client, connection_id: str) -> None:
    await handle(client, connection_id).signal(MailboxSyncWorkflow.pause)


async def resume(client: Client, connection_id: str) -> None:
    await handle(client, connection_id).signal(MailboxSyncWorkflow.resume)


async def retry_quarantined(client: Client, connection_id: str) -> None:
    await handle(client, connection_id).signal(MailboxSyncWorkflow.retry_quarantined)


async def disconnect(client: Client, connection_id: str) -> None:
    """Stop syncing this mailbox, revoke its tokens, keep what was synced."""
    await handle(client, connection_id).signal(MailboxSyncWorkflow.disconnect)


async def approve_mass_delete(client: Client, connection_id: str) -> None:
    await handle(client, connection_id).signal(MailboxSyncWorkflow.approve_mass_delete)


# --- what a person needs to act: read from the store, never from workflow history ---

def quarantined(sessions, connection_id: str) -> list[dict]:
    """Quarantined items with the platform's or the validator's message, for a review screen."""
    with sessions() as s:
        return [{"item_id": int(r.id), "side": r.side, "external_id": r.external_id, "error_code": r.error_code,
                 "error_message": r.error_message, "attempts": r.attempts, "since": r.updated_at}
                for r in repo.items_by_status(s, connection_id, ["quarantined"])]


def open_reviews(sessions, connection_id: str) -> list[dict]:
    """Conflicts and possible duplicates waiting for a person, with what they decide between."""
    with sessions() as s:
        return [{"review_id": int(r.id), "kind": r.kind, "mailbox_id": r.mailbox_id, "platform_id": r.platform_id,
                 "fields": list(r.fields or []), "detail": dict(r.detail or {}), "since": r.created_at}
                for r in repo.open_reviews(s, connection_id)]
