"""On PostgreSQL (store and CRM): the full sync end to end, and a worker process killed
with SIGKILL in the middle of writing, restarted, with no duplicate and no loss."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest

from store import repo
from store.vault import generate_key
from tests.e2e_rig import Rig, rig
from workers import client as api
from workers.scenario import build_scenario


def _key(c):
    return (c.given_name.casefold(), c.family_name.casefold(), tuple(sorted(e.casefold() for e in c.email_addresses())))


async def test_full_sync_on_postgres(temporal_env, pg_url):
    async with rig(temporal_env, pg_url, pg_url) as r:
        st = await r.start()
        assert st.last_error is None
        links = r.links()
        assert len(links) > 20
        mid = next(m for m in r.sc.resource_names if m in links)
        r.sc.people.user_edit(mid, {"organizations": [{"name": "On Postgres", "title": "DBA"}]})
        await r.cycle()
        assert r.crm_contacts()[links[mid]].company == "On Postgres"


#: One vault key for the killed worker and its successor, as a deployment's secret would be.
VAULT_KEYS = f"test:{generate_key()}"


def _start_worker(target: str, url: str, task_queue: str) -> subprocess.Popen:
    env = dict(os.environ, CONCORD_OTEL_EXPORTER="none", CONCORD_VAULT_KEYS=VAULT_KEYS)
    return subprocess.Popen(
        [sys.executable, "-m", "workers.worker", "--temporal", target, "--store-url", url,
         "--crm-url", url, "--task-queue", task_queue],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


@pytest.mark.timeout(240)
async def test_worker_killed_mid_write_resumes_without_duplicates_or_loss(temporal_env, pg_url):
    sc = build_scenario(pg_url, pg_url, connection_id=f"c-{uuid.uuid4().hex[:6]}", n_mailbox=40, n_crm=60)
    # Every mailbox write lands, then takes a while to answer: a kill in that window
    # leaves creates done at the provider but unknown to us.
    sc.people.configure(latency={"create": 1.5, "update": 0.2}, latency_phase="after")
    target = temporal_env.client.service_client.config.target_host
    tq = f"crash-{uuid.uuid4().hex[:6]}"
    worker = _start_worker(target, pg_url, tq)
    try:
        await api.start_sync(temporal_env.client, sc.connection_id, sc.org_id, "google",
                             poll_interval_s=3600, task_queue=tq, heartbeat_timeout_s=3)
        # Wait until the mailbox has received our first create, then kill the worker.
        deadline = time.monotonic() + 60
        while sc.people.stats()["ops"].get("create", 0) < 1:
            assert time.monotonic() < deadline, "the worker never started writing to the mailbox"
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
            await asyncio.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        r = Rig(temporal_env, sc, tq)
        with sc.sessions() as s:
            unfinished = repo.actions_by_status(s, sc.connection_id, ["planned", "platform_done", "mailbox_started"])
        assert unfinished, "the kill must land while actions are being carried out"
        # ...and at least one mailbox create was sent without its answer being recorded.
        assert any(a.status == "mailbox_started" for a in unfinished), Counter(a.status for a in unfinished)
        persons_at_kill = len(sc.people.all_persons())

        sc.people.configure(latency={})
        worker = _start_worker(target, pg_url, tq)
        st = await r.wait_cycles(1, timeout=120)
        assert st.last_error is None, st.last_error
        st = await r.cycle()  # our own writes come back: nothing new to do
        assert (st.last_counts.created, st.last_counts.updated) == (0, 0)

        links = r.links()
        mailbox = r.mailbox_contacts()
        crm = r.crm_contacts()
        # No duplicates: nobody twice in the mailbox, nobody created twice in the CRM.
        dup_m = [k for k, n in Counter(_key(c) for c in mailbox.values()).items() if n > 1]
        assert not dup_m, f"duplicates in the mailbox after the crash: {len(dup_m)}"
        created_in_crm = [p for p in links.values() if p not in sc.crm_seed.contact_ids]
        assert len(crm) == len(sc.crm_seed.contact_ids) + len(created_in_crm)
        assert len(set(links.values())) == len(links)
        assert len(mailbox) >= persons_at_kill - 1
        # No loss: every mailbox contact and every CRM record the user owns is linked or waiting visibly.
        waiting = {(i.side, i.external_id) for s in ("quarantined", "duplicate", "conflict") for i in r.items(s)}
        for mid in mailbox:
            assert mid in links or ("mailbox", mid) in waiting, mid
        for c in sc.crm.list_contacts(sc.org_id, owner_id=sc.user_id):
            assert c.id in set(links.values()) or ("platform", c.id) in waiting, c.id
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        sc.close()
