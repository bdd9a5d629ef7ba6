"""Wake-up latency from a Microsoft Graph change notification to the CRM write.

The whole path, real parts: an edit in the Graph emulator, Graph's notification POST
(the emulator's fire_notification) to our webhook server, clientState check, the
Waker's signal-with-start, the workflow cycle on the Temporal dev server, the Graph
delta read through the connector, the CRM write. Baseline in the same run: the same
edit reached by the poll timer alone would wait up to the poll interval.

    python -m bench.push [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

Report = Callable[..., None]


async def _run(report: Report, runs: int) -> None:
    from temporalio.testing import WorkflowEnvironment

    from api.app import create_app
    from api.webhooks import Waker, WebhookDeps, store_lookup, temporal_signal, webhook_router
    from emulators.server import serve
    from store import subscriptions as subs
    from workers import client as api
    from workers.devstack import find_temporal_cli, search_attribute_args
    from workers.scenario import build_scenario
    from workers.temporal_client import DATA_CONVERTER, TASK_QUEUE
    from store.vault import KeyRing, generate_key
    from workers.worker import build_activities, make_worker

    tmp = Path(tempfile.mkdtemp(prefix="concord-bench-push-"))
    store_url, crm_url = f"sqlite:///{tmp/'store.db'}", f"sqlite:///{tmp/'crm.db'}"
    args = ["--log-level", "error", *search_attribute_args()]
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=find_temporal_cli(),
                                                data_converter=DATA_CONVERTER, dev_server_extra_args=args)
    sc = build_scenario(store_url, crm_url, provider="microsoft", connection_id=f"m-{uuid.uuid4().hex[:6]}",
                        n_mailbox=200, n_crm=200, near_duplicates=40,
                        settings={"policy": "newest_wins", "fix_rules": ["normalize_phones"]})
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    poll = 3600.0
    waker = Waker(temporal_signal(env.client, task_queue=tq, poll_interval_s=poll), store_lookup(sc.sessions),
                  window_s=1.0)
    hooks = serve(create_app([webhook_router(WebhookDeps(sessions=sc.sessions, waker=waker))]))
    graph = sc.mailbox.state
    try:
        async with make_worker(env.client, build_activities(store_url, crm_url, webhook_base_url=hooks.base_url,
                                                        keyring=KeyRing.parse(f"bench:{generate_key()}")),
                               task_queue=tq):
            await api.start_sync(env.client, sc.connection_id, sc.org_id, "microsoft", poll_interval_s=poll,
                                 task_queue=tq)
            await api.wait_for_cycles(env.client, sc.connection_id, 1, timeout=120)
            await api.wake(env.client, sc.connection_id, "settle")  # absorb the first cycle's echoes
            await asyncio.sleep(2)
            with sc.sessions() as s:
                (sub,) = subs.list_for_connection(s, sc.connection_id, status="active")
                links = dict(s.execute(__import__("sqlalchemy").text(
                    "select mailbox_id, platform_id from links where connection_id = :c"),
                    {"c": sc.connection_id}).all())
            # Only pairs the CRM's rules accept (a phone on record): an edit of a record that
            # breaks a rule is quarantined, by design, and never "arrives".
            mids = [m for m in sc.resource_names if m in links
                    and sc.crm.get_contact(sc.org_id, links[m]).contact.phones][:runs]
            latencies = []
            for i, mid in enumerate(mids):
                title = f"push-{i}"
                sc.mailbox.edit(mid, job_title=title)
                started = time.perf_counter()
                status = await asyncio.to_thread(graph.fire_notification, sub.external_id, mid)
                assert status == 202, status
                while sc.crm.get_contact(sc.org_id, links[mid]).contact.job_title != title:
                    if time.perf_counter() - started > 30:
                        st = await api.state(env.client, sc.connection_id)
                        raise RuntimeError(f"a pushed edit did not reach the CRM in 30 s: counters={waker.counters} "
                                           f"cycles={st.cycles} last={st.last_counts} err={st.last_error}")
                    await asyncio.sleep(0.005)
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(1.1)  # outside the Waker's coalescing window: one wake per edit
            from bench.report import percentile
            report("push.runs", len(latencies), "", "Graph notification POST -> edit visible in the CRM")
            report("push.p50_s", statistics.median(latencies), "s")
            report("push.p95_s", percentile(latencies, 95), "s")
            report("push.max_s", max(latencies), "s")
            report("push.baseline_poll_only_mean_s", poll / 2, "s", "no notification: mean wait for the poll timer")
            report("push.speedup_vs_poll", (poll / 2) / statistics.median(latencies), "x")
            c = waker.counters
            report("push.webhook_signals_sent", getattr(c, "signals_sent", 0), "",
                   f"accepted={getattr(c, 'accepted', 0)}")
    finally:
        await waker.aclose()
        hooks.stop()
        sc.close()
        await env.shutdown()


def run(report: Report = print, *, runs: int = 30, quick: bool = False) -> None:
    asyncio.run(_run(report, 5 if quick else runs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    run(runs=parser.parse_args().runs)
    from bench.report import exit_after_printing

    exit_after_printing(0)
