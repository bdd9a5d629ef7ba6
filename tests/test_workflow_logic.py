"""The workflow's own logic, with stub activities (the real ones are covered end to end).

The stubs answer in place of the store and connectors so each test steers exactly
the path it is about: a signal that arrives while the activity that would apply it
fails, signals arriving around continue-as-new, a failing cycle's health and
backoff, answers the store refuses, and a cancelled run's status.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models.workflow import (
    CycleRef,
    FetchResult,
    MailboxSyncInput,
    PlanSummary,
    RejectionSummary,
    Resolution,
    StoreSummary,
    WriteSummary,
)
from tests.test_workflow_lifecycle import _time_skipping_env
from workers.devstack import find_temporal_cli, search_attribute_args
from workers.temporal_client import DATA_CONVERTER, STATUS
from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id


class Stubs:
    """Records every call; `fail[name] = n` makes the next n calls of `name` fail for good."""

    def __init__(self) -> None:
        self.calls: dict[str, list] = defaultdict(list)
        self.fail: dict[str, int] = defaultdict(int)
        self.refuse: set[int] = set()  # review ids the "store" refuses

    def _enter(self, name: str, *args) -> None:
        self.calls[name].append(args)
        if self.fail[name] > 0:
            self.fail[name] -= 1
            raise ApplicationError(f"{name} stub failure", type="Fatal", non_retryable=True)

    def all(self) -> list:
        s = self

        @activity.defn(name="subscriptions.maintain")
        def maintain(cid: str) -> dict:
            s._enter("subscriptions.maintain", cid)
            return {}

        @activity.defn(name="contacts.fetch_mailbox")
        def fetch_mailbox(ref: CycleRef) -> FetchResult:
            s._enter("contacts.fetch_mailbox", ref)
            return FetchResult(stream="m")

        @activity.defn(name="contacts.fetch_platform")
        def fetch_platform(ref: CycleRef) -> FetchResult:
            s._enter("contacts.fetch_platform", ref)
            return FetchResult(stream="p")

        @activity.defn(name="contacts.plan")
        def plan(ref: CycleRef, approve: bool) -> PlanSummary:
            s._enter("contacts.plan", approve)
            return PlanSummary()

        @activity.defn(name="contacts.write")
        def write(ref: CycleRef) -> WriteSummary:
            s._enter("contacts.write", ref)
            return WriteSummary()

        @activity.defn(name="contacts.handle_rejections")
        def handle_rejections(ref: CycleRef) -> RejectionSummary:
            s._enter("contacts.handle_rejections", ref)
            return RejectionSummary()

        @activity.defn(name="contacts.summarize")
        def summarize(cid: str) -> StoreSummary:
            s._enter("contacts.summarize", cid)
            return StoreSummary(open_conflicts=list(range(1, 5001)), open_conflict_count=5000)

        @activity.defn(name="reviews.apply_answers")
        def apply_resolutions(cid: str, resolutions: list[Resolution]) -> int:
            s._enter("reviews.apply_answers", [r.review_id for r in resolutions])
            return sum(1 for r in resolutions if r.review_id not in s.refuse)

        @activity.defn(name="reviews.check_answer")
        def check_answer(cid: str, resolution: Resolution) -> str:
            s._enter("reviews.check_answer", resolution.review_id)
            return "unknown_review" if resolution.review_id in s.refuse else ""

        @activity.defn(name="contacts.retry_quarantined")
        def retry_quarantined(cid: str) -> int:
            s._enter("contacts.retry_quarantined", cid)
            return 0

        @activity.defn(name="connection.check_auth")
        def check_auth(cid: str) -> str:
            return "active"

        @activity.defn(name="connection.disconnect")
        def disconnect(cid: str) -> dict:
            return {}

        return [maintain, fetch_mailbox, fetch_platform, plan, write, handle_rejections, summarize,
                apply_resolutions, check_answer, retry_quarantined, check_auth, disconnect]


def _worker(env, stubs: Stubs, tq: str) -> Worker:
    import concurrent.futures

    return Worker(env.client, task_queue=tq, workflows=[MailboxSyncWorkflow], activities=stubs.all(),
                  activity_executor=concurrent.futures.ThreadPoolExecutor(4))


async def _start(env, tq: str, **kw):
    cid = f"c-{uuid.uuid4().hex[:6]}"
    handle = await env.client.start_workflow(
        MailboxSyncWorkflow.run,
        MailboxSyncInput(connection_id=cid, org_id="org", provider="google", poll_interval_s=3600,
                         heartbeat_timeout_s=0, **kw),
        id=workflow_id(cid), task_queue=tq)
    return handle


async def _until(handle, pred, timeout: float = 30.0):
    """Poll the state query until `pred(state)` holds; the state is returned."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await handle.query(MailboxSyncWorkflow.state)
        if pred(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; state: {st}")
        await asyncio.sleep(0.05)


async def test_one_shot_signals_survive_a_failing_cycle_and_health_shows_it():
    env = await _time_skipping_env()
    stubs = Stubs()
    tq = f"tq-{uuid.uuid4().hex[:6]}"
    try:
        async with _worker(env, stubs, tq):
            with env.auto_time_skipping_disabled():
                handle = await _start(env, tq)
                st = await _until(handle, lambda s: s.cycles >= 1)
                # The answer, the retry request and the approval arrive; the activity that
                # would apply the answer fails this cycle, and so does the plan.
                # (Paused meanwhile, so all three are in before the cycle starts.)
                stubs.fail["reviews.apply_answers"] = 1
                await handle.signal(MailboxSyncWorkflow.pause)
                await handle.signal(MailboxSyncWorkflow.resolve, Resolution(review_id=7, choice="mailbox"))
                await handle.signal(MailboxSyncWorkflow.retry_quarantined)
                await handle.signal(MailboxSyncWorkflow.approve_mass_delete)
                await handle.signal(MailboxSyncWorkflow.resume)
                st = await _until(handle, lambda s: s.cycles >= 2)
                assert st.health == "failing" and st.last_error and st.consecutive_failures == 1
                assert st.pending_resolutions == 1, "the answer is kept for the next cycle"
                assert (await handle.describe()).typed_search_attributes.get(STATUS) == "failing"
                assert st.next_retry_at is not None and st.next_retry_at == st.next_poll_at
                stubs.fail["contacts.plan"] = 1
            # No signal, no webhook: the failed cycle is retried after a backoff, not the
            # hour-long poll interval.
            await env.sleep(31)
            with env.auto_time_skipping_disabled():
                st = await _until(handle, lambda s: s.cycles >= 3)
                assert stubs.calls["reviews.apply_answers"] == [([7],), ([7],)]
                assert len(stubs.calls["contacts.retry_quarantined"]) == 1
                assert st.health == "failing" and st.consecutive_failures == 2  # the plan failed this time
            await env.sleep(61)
            with env.auto_time_skipping_disabled():
                st = await _until(handle, lambda s: s.cycles >= 4)
                assert [c[0] for c in stubs.calls["contacts.plan"]][-2:] == [True, True], \
                    "the approval survives the failed plan"
                assert st.health == "active" and st.last_error is None and st.consecutive_failures == 0
                assert len(stubs.calls["reviews.apply_answers"]) == 2, "applied once it succeeded"
                assert (await handle.describe()).typed_search_attributes.get(STATUS) == "active"
    finally:
        await env.shutdown()


@pytest.fixture(scope="module")
async def can_env():
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_cli(), data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--log-level", "error", *search_attribute_args(),
                               "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=30"])
    yield env
    await env.shutdown()


async def test_signals_arriving_around_continue_as_new_are_all_applied_once(can_env):
    stubs = Stubs()
    tq = f"tq-{uuid.uuid4().hex[:6]}"
    async with _worker(can_env, stubs, tq):
        handle = await _start(can_env, tq)
        await _until(handle, lambda s: s.cycles >= 1)
        ids = list(range(100, 160))
        for rid in ids:  # back to back: cycles, and continue-as-new, run meanwhile
            await handle.signal(MailboxSyncWorkflow.resolve, Resolution(review_id=rid, choice="link"))
        handle = can_env.client.get_workflow_handle(handle.id)  # follow the latest run

        async def applied() -> list[int]:
            return [rid for call in stubs.calls["reviews.apply_answers"] for rid in call[0]]

        deadline = asyncio.get_running_loop().time() + 60
        while sorted(set(await applied())) != ids:
            assert asyncio.get_running_loop().time() < deadline, f"missing: {set(ids) - set(await applied())}"
            await asyncio.sleep(0.1)
        st = await handle.query(MailboxSyncWorkflow.state)
        assert st.continued_as_new >= 1, "the test must cross continue-as-new"
        assert sorted(await applied()) == ids, "each answer applied exactly once"
        assert st.pending_resolutions == 0
        # What crosses continue-as-new stays small: 5,000 open reviews travel as a count.
        assert len(st.store.open_conflicts) <= 20 and st.store.open_conflict_count == 5000


async def test_an_answer_the_store_refuses_is_counted_and_the_update_says_why(can_env):
    stubs = Stubs()
    stubs.refuse = {404}
    tq = f"tq-{uuid.uuid4().hex[:6]}"
    async with _worker(can_env, stubs, tq):
        handle = await _start(can_env, tq)
        await _until(handle, lambda s: s.cycles >= 1)
        out = await handle.execute_update(MailboxSyncWorkflow.answer_review, Resolution(review_id=404, choice="link"))
        assert (out.accepted, out.reason) == (False, "unknown_review")
        out = await handle.execute_update(MailboxSyncWorkflow.answer_review, Resolution(review_id=5, choice="link"))
        assert out.accepted and out.reason is None
        # The signal path cannot answer; the workflow counts what the store refused.
        await handle.signal(MailboxSyncWorkflow.resolve, Resolution(review_id=404, choice="link"))
        st = await _until(handle, lambda s: s.ignored_answers == 1 and s.pending_resolutions == 0)
        assert [5] in [c[0] for c in stubs.calls["reviews.apply_answers"]]


async def test_a_cancelled_run_says_stopped_not_active(can_env):
    stubs = Stubs()
    tq = f"tq-{uuid.uuid4().hex[:6]}"
    async with _worker(can_env, stubs, tq):
        handle = await _start(can_env, tq)
        await _until(handle, lambda s: s.cycles >= 1)
        await handle.cancel()
        with pytest.raises(Exception):
            await handle.result()
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(STATUS) == "stopped"


async def test_a_run_cancelled_while_an_activity_runs_stops(can_env):
    """The cancel arrives as the activity's failure; it must end the run, not count as
    a failed cycle after which the workflow waits again."""
    import threading

    stubs = Stubs()
    release = threading.Event()
    tq = f"tq-{uuid.uuid4().hex[:6]}"
    all_stubs = stubs.all()

    @activity.defn(name="contacts.fetch_platform")
    def slow_fetch(ref: CycleRef) -> FetchResult:
        release.wait(10)
        return FetchResult(stream="p")

    acts = [a for a in all_stubs if getattr(a, "__temporal_activity_definition").name != "contacts.fetch_platform"]
    import concurrent.futures

    async with Worker(can_env.client, task_queue=tq, workflows=[MailboxSyncWorkflow], activities=[*acts, slow_fetch],
                      activity_executor=concurrent.futures.ThreadPoolExecutor(4)):
        handle = await _start(can_env, tq)
        await asyncio.sleep(0.5)  # the first cycle is inside the slow fetch
        await handle.cancel()
        try:
            with pytest.raises(Exception):
                await asyncio.wait_for(handle.result(), 15)
        finally:
            release.set()
        desc = await handle.describe()
        assert desc.status.name == "CANCELED"
        assert desc.typed_search_attributes.get(STATUS) == "stopped"


async def test_sync_now_waits_for_a_worker_to_answer_and_fails_fast_on_an_unknown_mailbox(can_env):
    """A worker that has just started (after a crash, a deploy) leaves the first queries
    unanswered for a few seconds: sync_now asks again instead of failing. A mailbox with
    no workflow is said at once."""
    import time

    from temporalio.service import RPCError, RPCStatusCode

    from workers import client as api

    stubs = Stubs()
    tq = f"tq-{uuid.uuid4().hex[:6]}"
    handle = await _start(can_env, tq)  # no worker on its queue yet
    cid = handle.id.removeprefix("mailbox-sync/")

    async def late_worker():
        await asyncio.sleep(6)  # past the 5 s a query waits for an answer
        async with _worker(can_env, stubs, tq):
            await asyncio.sleep(30)

    started = asyncio.create_task(late_worker())
    try:
        t0 = time.monotonic()
        st = await api._answered(lambda: api.state(can_env.client, cid), 60, "the workflow")
        assert st.connection_id == cid and time.monotonic() - t0 >= 5
    finally:
        started.cancel()
    t0 = time.monotonic()
    with pytest.raises(RPCError) as err:
        await api.sync_now(can_env.client, "org", "no-such-mailbox", timeout=60)
    assert err.value.status == RPCStatusCode.NOT_FOUND and time.monotonic() - t0 < 5
