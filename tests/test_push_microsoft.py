"""Microsoft push end to end: the workflow subscribes through the real Graph validation
handshake against our webhook server, a Graph notification wakes a cycle, and the
subscription is renewed before expiry and replaced when Microsoft drops it, on Temporal."""

from __future__ import annotations

import asyncio
import time
import uuid

from api.app import create_app
from api.webhooks import Waker, WebhookDeps, store_lookup, temporal_signal, webhook_router
from emulators.server import serve
from store import subscriptions as subs
from tests.e2e_rig import Rig, throwaway_keyring
from workers import client as api
from workers.scenario import build_scenario
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker


async def test_graph_subscription_wakes_and_is_kept_alive(temporal_env, tmp_path):
    store_url, crm_url = f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"
    sc = build_scenario(store_url, crm_url, provider="microsoft", connection_id=f"m-{uuid.uuid4().hex[:6]}",
                        n_mailbox=10, n_crm=10, near_duplicates=2)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    waker = Waker(temporal_signal(temporal_env.client, task_queue=tq, poll_interval_s=3600),
                  store_lookup(sc.sessions), window_s=0.2)
    hooks = serve(create_app([webhook_router(WebhookDeps(sessions=sc.sessions, waker=waker))]))
    graph = sc.mailbox.state
    try:
        acts = build_activities(store_url, crm_url, webhook_base_url=hooks.base_url, keyring=throwaway_keyring())
        async with make_worker(temporal_env.client, acts, task_queue=tq):
            r = Rig(temporal_env, sc, tq)
            st = await r.start()
            assert st.subscriptions.get("created") == 1 and st.subscription_error is None
            with sc.sessions() as s:
                (row,) = subs.list_for_connection(s, sc.connection_id)
            assert row.external_id in graph.subscriptions  # Graph validated our endpoint and holds it

            # A change in Outlook -> Graph notifies -> our server wakes the workflow -> CRM updated.
            mid = next(m for m in sc.resource_names if m in r.links())
            sc.mailbox.edit(mid, job_title="Pushed")
            assert graph.fire_notification(row.external_id, mid) == 202
            st = await r.wait_cycles(2, timeout=30)
            deadline = time.monotonic() + 10
            while r.crm_contacts()[r.links()[mid]].job_title != "Pushed":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

            # Close to expiry: the next cycle renews it (PATCH at Graph), on Temporal.
            with sc.sessions.begin() as s:
                subs.set_expiry(s, row.id, time.time() + 60)
            st = await r.cycle()
            assert st.subscriptions.get("renewed") == 1
            with sc.sessions() as s:
                assert subs.get_subscription(s, row.id).expires_at > time.time() + 86400

            # Microsoft dropped it: the next cycle subscribes again.
            graph.subscriptions.pop(row.external_id)
            with sc.sessions.begin() as s:
                subs.mark_status(s, row.id, "needs_renewal")
            st = await r.cycle()
            assert st.subscriptions.get("replaced") == 1
            with sc.sessions() as s:
                live = subs.list_for_connection(s, sc.connection_id, status="active")
            assert len(live) == 1 and live[0].external_id in graph.subscriptions
    finally:
        await waker.aclose()
        hooks.stop()
        sc.close()
