"""The small client API a product team calls: connect a mailbox, wake it, ask its state,
answer its reviews. Workflow ids are `mailbox-sync/<connection_id>`.

Answers that carry values (merged fields) are written to the store first and the
signal carries only the review id (claim check): no content in workflow history.
An answer is checked against the store before it is signalled, so a wrong one is
refused to the caller at once instead of vanishing in the workflow.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from models.errors import Transient
from models.contact import Contact
from models.workflow import (CHOICES_BY_REVIEW_KIND, MailboxSyncInput, OrgState, OrgSyncInput, Resolution, SyncState,
                             allowed_answers)
from store import cycle, repo
from workers.temporal_client import ORG_ID, PROVIDER, STATUS, TASK_QUEUE, connect
from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id
from workflows.org_sync import OrgSyncWorkflow
from workflows.org_sync import workflow_id as org_workflow_id

#: How long a state query waits for a worker to answer. A query nobody polls for
#: would otherwise wait on the server's own (long) deadline.
QUERY_TIMEOUT = timedelta(seconds=5)

#: The answers each kind of review takes ("merged" carries field values: API only).
CHOICES = CHOICES_BY_REVIEW_KIND


class InvalidResolution(ValueError):
    """An answer that cannot apply to the review it names. The message gives the reason
    with ids and choice words only, never contact content."""


class UnknownConnection(LookupError):
    """The store holds no connection with this id."""


class TemporalUnreachable(ConnectionError):
    """No Temporal frontend answers at the address: refused, unknown host, silent, or malformed."""


async def connect_checked(target: str, *, timeout: float = 10.0) -> Client:
    """`temporal_client.connect` that fails within `timeout` with TemporalUnreachable.

    A listener that accepts TCP but never speaks gRPC would otherwise keep
    `Client.connect` waiting, and a malformed address raises a bare ValueError.
    """
    try:
        return await asyncio.wait_for(connect(target), timeout)
    except (Transient, asyncio.TimeoutError):
        raise TemporalUnreachable(f"Temporal is not reachable at {target}") from None
    except ValueError as exc:
        raise TemporalUnreachable(f"{target!r} is not a Temporal address (HOST:PORT): {exc}") from None


async def start_sync(client: Client, connection_id: str, org_id: str, provider: str, *,
                     poll_interval_s: float = 300.0, task_queue: str = TASK_QUEUE,
                     heartbeat_timeout_s: float = 60.0, reason: str = "connect",
                     org_poll_interval_s: float | None = None, kinds: list[str] | None = None) -> WorkflowHandle:
    """Start (or wake, if already running) the workflow of one mailbox, and make sure its
    organisation's workflow runs (it reads the platform for every mailbox of the org).

    `kinds`: what this mailbox syncs (default: contacts); fixed for a running workflow.
    The organisation's workflow, when this starts it, reads the platform for the same kinds."""
    await start_org_sync(client, org_id, task_queue=task_queue, reason="mailbox",
                         poll_interval_s=org_poll_interval_s or poll_interval_s,
                         heartbeat_timeout_s=heartbeat_timeout_s, kinds=kinds)
    return await client.start_workflow(
        MailboxSyncWorkflow.run,
        MailboxSyncInput(connection_id=connection_id, org_id=org_id, provider=provider,
                         poll_interval_s=poll_interval_s, heartbeat_timeout_s=heartbeat_timeout_s,
                         **({"kinds": kinds} if kinds else {})),
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


async def start_org_sync(client: Client, org_id: str, *, poll_interval_s: float = 300.0,
                         task_queue: str = TASK_QUEUE, heartbeat_timeout_s: float = 60.0,
                         reason: str = "platform", kinds: list[str] | None = None) -> WorkflowHandle:
    """Start (or wake, if already running) the workflow of one organisation,
    `org-sync/<org_id>`: it reads the platform's changes once and wakes the mailboxes
    they concern. Platform webhooks come here, not to each mailbox."""
    return await client.start_workflow(
        OrgSyncWorkflow.run,
        OrgSyncInput(org_id=org_id, poll_interval_s=poll_interval_s, heartbeat_timeout_s=heartbeat_timeout_s,
                     **({"kinds": kinds} if kinds else {})),
        id=org_workflow_id(org_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="wake",
        start_signal_args=[reason],
        search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_ID, org_id),
                                                 SearchAttributePair(STATUS, "active")]),
    )


async def wake_org(client: Client, org_id: str, reason: str = "") -> None:
    await client.get_workflow_handle(org_workflow_id(org_id)).signal(OrgSyncWorkflow.wake, reason)


async def org_state(client: Client, org_id: str, *, rpc_timeout: timedelta = QUERY_TIMEOUT) -> OrgState:
    return await client.get_workflow_handle(org_workflow_id(org_id)).query(OrgSyncWorkflow.state,
                                                                           rpc_timeout=rpc_timeout)


async def wait_for_org_cycles(client: Client, org_id: str, cycles: int, *, timeout: float = 90,
                              interval: float = 0.1) -> OrgState:
    """The organisation's state once its workflow has read `cycles` times."""
    return await _poll(lambda: org_state(client, org_id), lambda st: st.cycles >= cycles, timeout, interval,
                       f"workflow {org_workflow_id(org_id)} did not reach cycle {cycles}")


async def _poll(read, done, timeout: float, interval: float, what: str, *,
                asked_again=lambda exc: True):
    """`read()` until `done` holds for its answer; an RPCError that `asked_again` accepts
    (by default any: the workflow not started yet, or no worker has answered yet) is
    read again, any other is raised. Raises TimeoutError(what) after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            st = await read()
            if done(st):
                return st
        except RPCError as exc:
            if not asked_again(exc):
                raise
        if loop.time() > deadline:
            raise TimeoutError(f"{what} in {timeout:.0f}s")
        await asyncio.sleep(interval)


def _unanswered(exc: RPCError) -> bool:
    """A query no worker answered in time: a worker that has just started, or a sticky
    queue still naming a dead one, leaves it so for a few seconds."""
    return exc.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED)


async def _answered(read, timeout: float, what: str):
    """`read()` once a worker answers it; no such workflow is raised at once."""
    return await _poll(read, lambda st: True, timeout, 0.1, f"{what} did not answer", asked_again=_unanswered)


def handle(client: Client, connection_id: str) -> WorkflowHandle:
    return client.get_workflow_handle(workflow_id(connection_id))


async def wait_for_cycles(client: Client, connection_id: str, cycles: int, *, timeout: float = 90,
                          interval: float = 0.1) -> SyncState:
    """The state once the workflow has finished `cycles` cycles (it may not have started yet).

    Raises TimeoutError after `timeout` seconds.
    """
    return await _poll(lambda: state(client, connection_id), lambda st: st.cycles >= cycles, timeout, interval,
                       f"workflow {workflow_id(connection_id)} did not reach cycle {cycles}")


async def wait_settled(client: Client, connection_id: str, after: int, *, timeout: float = 90,
                       interval: float = 0.05) -> SyncState:
    """The state once the mailbox has finished a cycle past `after` and has no cycle running
    or asked for: its `last_counts` then describe everything it was woken for."""
    return await _poll(lambda: state(client, connection_id),
                       lambda st: st.cycles > after and not st.cycle_running and not st.wakeups_pending,
                       timeout, interval, f"workflow {workflow_id(connection_id)} did not settle past cycle {after}")


async def sync_now(client: Client, org_id: str, connection_id: str, *, timeout: float = 90) -> SyncState:
    """Read the platform for the organisation, then cycle this mailbox; the state once both
    are done. The organisation's read wakes the mailbox itself when a change concerns it;
    otherwise it is woken here (so it also reads its own mailbox now)."""
    mailbox_wf, org_wf = f"workflow {workflow_id(connection_id)}", f"workflow {org_workflow_id(org_id)}"
    before = (await _answered(lambda: state(client, connection_id), timeout, mailbox_wf)).cycles
    org_before = (await _answered(lambda: org_state(client, org_id), timeout, org_wf)).cycles
    await wake_org(client, org_id, "sync_now")
    await wait_for_org_cycles(client, org_id, org_before + 1, timeout=timeout)
    st = await _answered(lambda: state(client, connection_id), timeout, mailbox_wf)
    if not (st.cycles > before or st.cycle_running or st.wakeups_pending):
        await wake(client, connection_id, "sync_now")
    return await wait_settled(client, connection_id, before, timeout=timeout)


async def wake(client: Client, connection_id: str, reason: str = "") -> None:
    await handle(client, connection_id).signal(MailboxSyncWorkflow.wake, reason)


async def state(client: Client, connection_id: str, *, rpc_timeout: timedelta = QUERY_TIMEOUT) -> SyncState:
    """The live state. Raises RPCError: NOT_FOUND without a workflow, CANCELLED or
    DEADLINE_EXCEEDED when no worker answered within `rpc_timeout`."""
    return await handle(client, connection_id).query(MailboxSyncWorkflow.state, rpc_timeout=rpc_timeout)


def check_resolution(sessions, connection_id: str, review_id: int, choice: str,
                     fields: dict[str, str] | None = None) -> None:
    """Raise InvalidResolution unless this answer fits an open review of this connection
    (the same rules the workflow's activity applies: `store.cycle.answer_problem`)."""
    with sessions() as s:
        problem = cycle.answer_problem(s, connection_id, review_id, choice)
        row = repo.get_review(s, review_id) if problem in ("not_open", "choice_does_not_fit") else None
    # Another connection's review reads as absent: ids of other tenants are not confirmed.
    if problem in ("unknown_review", "other_connection"):
        raise InvalidResolution(f"connection {connection_id} has no review {review_id}")
    if problem == "not_open":
        raise InvalidResolution(f"review {review_id} is not open (it is {row.status})")
    if problem == "choice_does_not_fit":
        allowed = allowed_answers(row.kind, (row.detail or {}).get("rule"))
        raise InvalidResolution(f"review {review_id} is a {row.kind}: the answer is one of "
                                f"{', '.join(allowed)}, not {choice!r}")
    if choice == "merged":
        if not fields:
            raise InvalidResolution(f"answer 'merged' to review {review_id} needs the merged field values")
        unknown = sorted(set(fields) - set(Contact.model_fields))
        if unknown:
            raise InvalidResolution(f"answer 'merged' to review {review_id} names unknown fields: {', '.join(unknown)}")
    elif fields:
        raise InvalidResolution(f"answer {choice!r} to review {review_id} takes no field values (only 'merged' does)")


async def resolve(client: Client, sessions, connection_id: str, review_id: int, choice: str,
                  fields: dict[str, str] | None = None) -> None:
    """Answer a review. For choice "merged", `fields` holds the values a person chose.

    Raises InvalidResolution (nothing is stored or signalled) unless the review exists,
    belongs to this connection, is open, and takes this choice (see CHOICES).
    """
    check_resolution(sessions, connection_id, review_id, choice, fields)
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

def _known(s, connection_id: str) -> None:
    if repo.get_connection(s, connection_id) is None:
        raise UnknownConnection(f"no connection {connection_id} in the store")


def quarantined(sessions, connection_id: str) -> list[dict]:
    """Quarantined items with the platform's or the validator's message, for a review screen.

    Raises UnknownConnection for an id the store does not hold (rather than "nothing waits")."""
    with sessions() as s:
        _known(s, connection_id)
        return [{"item_id": int(r.id), "side": r.side, "external_id": r.external_id, "error_code": r.error_code,
                 "error_message": r.error_message, "attempts": r.attempts, "since": r.updated_at}
                for r in repo.items_by_status(s, connection_id, ["quarantined"])]


def open_reviews(sessions, connection_id: str) -> list[dict]:
    """Conflicts and possible duplicates waiting for a person, with what they decide between.

    Raises UnknownConnection for an id the store does not hold."""
    with sessions() as s:
        _known(s, connection_id)
        return [{"review_id": int(r.id), "kind": r.kind, "mailbox_id": r.mailbox_id, "platform_id": r.platform_id,
                 "fields": list(r.fields or []), "detail": dict(r.detail or {}), "since": r.created_at}
                for r in repo.open_reviews(s, connection_id)]


# --- reconciliation: both ends compared independently (workflows/reconcile.py) ---------

async def start_reconcile(client: Client, org_id: str, *, interval_s: float = 86_400.0,
                          kinds: list[str] | None = None, task_queue: str = TASK_QUEUE,
                          run_first: bool = False) -> WorkflowHandle:
    """Start (or leave running) the organisation's scheduled reconciliation, `reconcile/<org_id>`:
    every `interval_s` it compares both ends of each active connection, stores a report per
    connection and kind, and re-stages what policy allows."""
    from models.reconcile import ReconcileInput
    from workflows.reconcile import ReconcileWorkflow, workflow_id as reconcile_workflow_id

    return await client.start_workflow(
        ReconcileWorkflow.run,
        ReconcileInput(org_id=org_id, interval_s=interval_s, run_first=run_first,
                       **({"kinds": kinds} if kinds else {})),
        id=reconcile_workflow_id(org_id), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_ID, org_id)]),
    )


async def reconcile_now(client: Client, sessions, connection_id: str, *, kinds: list[str] | None = None,
                        repair: bool = True, task_queue: str = TASK_QUEUE) -> dict:
    """Reconcile one connection now (a one-off run of the reconciliation workflow) and
    return its reports as stored (values included: they come from the store, not history).

    Raises UnknownConnection for an id the store does not hold."""
    import uuid

    from models.reconcile import ReconcileInput
    from store import reconcile as reports
    from workflows.reconcile import ReconcileWorkflow

    with sessions() as s:
        _known(s, connection_id)
        org_id = repo.get_connection(s, connection_id).org_id
        kinds = kinds or list((repo.get_connection(s, connection_id).settings or {}).get("kinds") or ["contacts"])
    wid = f"reconcile-now/{connection_id}/{uuid.uuid4().hex[:8]}"
    run = await client.execute_workflow(
        ReconcileWorkflow.run,
        ReconcileInput(org_id=org_id, connection_ids=[connection_id], once=True, kinds=kinds, repair=repair),
        id=wid, task_queue=task_queue,
    )
    with sessions() as s:
        rows = [reports.get_report(s, r.report_id) for r in run.results if r.report_id is not None]
    return {"connection_id": connection_id, "org_id": org_id, "workflow_id": wid, "failed": run.failed, "totals": run.totals(),
            "reports": [reports.report_json(r) for r in rows if r is not None]}


# --- a person's data: export and erase --------------------------------------------------

def erase_person(sessions, platform, mailbox_for, org_id: str, email: str, *, mailbox_policy: str = "keep"):
    """Erase a person (GDPR) from the store and the platform, and from the mailboxes only
    with mailbox_policy "delete"; see activities/erase.py. Returns an `EraseResult`
    (counts and a keyed hash of the address)."""
    from activities.erase import erase_person as erase

    return erase(sessions, platform, mailbox_for, org_id, email, mailbox_policy=mailbox_policy)


def export_chunks(sessions, *, connection_id: str | None = None, org_id: str | None = None, fmt: str = "json"):
    """A connection's or organisation's links, items and audit log as streamed text (csv or json).

    Raises UnknownConnection for a connection or organisation the store does not hold."""
    from store import export

    scope = export.Scope(connection_id=connection_id, org_id=org_id)
    if not export.exists(sessions, scope):
        what = f"connection {connection_id}" if connection_id else f"organisation {org_id}"
        raise UnknownConnection(f"no {what} in the store")
    return export.chunks(sessions, scope, fmt)


async def reconcile_state(client: Client, org_id: str, *, rpc_timeout: timedelta = QUERY_TIMEOUT):
    """The scheduled reconciliation's state: runs, the last run's counts, the next run's time."""
    from workflows.reconcile import ReconcileWorkflow, workflow_id as reconcile_workflow_id

    return await client.get_workflow_handle(reconcile_workflow_id(org_id)).query(ReconcileWorkflow.state,
                                                                                 rpc_timeout=rpc_timeout)
