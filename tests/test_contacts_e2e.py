"""End to end on the real Temporal dev server: real worker, real HTTP emulator through
google-api-python-client, the reference CRM and the store on SQLite (PostgreSQL in
test_contacts_e2e_postgres)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.testing import WorkflowEnvironment

from models.contact import Contact
from workers import client as api
from workers.devstack import find_temporal_cli, cli_type_name
from workers.temporal_client import SEARCH_ATTRIBUTE_KEYS
from workers.scenario import build_scenario
from workers.temporal_client import DATA_CONVERTER, TASK_QUEUE
from workers.worker import build_activities, make_worker


SEARCH_ATTRIBUTE_ARGS = [a for k in SEARCH_ATTRIBUTE_KEYS for a in ("--search-attribute", f"{k.name}={cli_type_name(k)}")]


async def wait_cycles(client, cid, n, timeout=60):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            st = await api.state(client, cid)
            if st.cycles >= n:
                return st
        except Exception:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"workflow did not reach {n} cycles")
        await asyncio.sleep(0.2)


@pytest.fixture
async def env():
    e = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_cli(), data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--log-level", "error", *SEARCH_ATTRIBUTE_ARGS],
    )
    yield e
    await e.shutdown()


async def test_two_way_initial_then_incremental(env, tmp_path):
    store_url = f"sqlite:///{tmp_path/'store.db'}"
    crm_url = f"sqlite:///{tmp_path/'crm.db'}"
    sc = build_scenario(store_url, crm_url, connection_id=f"c-{uuid.uuid4().hex[:6]}")
    try:
        acts = build_activities(store_url, crm_url)
        tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
        async with make_worker(env.client, acts, task_queue=tq):
            await api.start_sync(env.client, sc.connection_id, sc.org_id, "google", poll_interval_s=3600, task_queue=tq)
            st = await wait_cycles(env.client, sc.connection_id, 1)
            assert st.last_error is None, st.last_error
            c = st.last_counts
            assert c.fetched > 0
            assert c.linked > 0
            # The malformed mailbox contact is quarantined, visible in the state query.
            assert c.quarantined >= 1 and st.store.quarantined
            print(st.model_dump_json(indent=1))
    finally:
        sc.close()
