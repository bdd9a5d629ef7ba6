"""Exactly once under crashes: 200 outbox items sent through a Gmail and a Microsoft 365
mailbox while the worker process is SIGKILLed at random points of its sends, and some
sends fail after the provider stored the message (the client sees an error, the
message went out). Then both mailboxes' Sent items are read from the emulators
themselves: every item is there exactly once (0 duplicates), and every item is sent
(0 lost).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter

import pytest

from emulators.gmail import GmailState
from emulators.gmail import create_app as gmail_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import serve
from models.mail import Address, normalize_message_id
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.db import make_engine, migrate, session_factory
from tests.history_scan import found_in, history_text
from tests.test_chaos import Workers, running_activity
from workers import client as api

ITEMS_PER_MAILBOX = 100
MIN_KILLS = 8
AMBIGUOUS_FAILURES = 3  # per mailbox: 503 after the provider stored the message


@pytest.mark.timeout(600)
async def test_two_hundred_sends_under_worker_kills_go_out_exactly_once(temporal_env, pg_url, tmp_path):
    rng = random.Random("send-kill")
    org = f"org-{uuid.uuid4().hex[:8]}"
    migrate(pg_url)
    sessions = session_factory(make_engine(pg_url))
    crm = ReferenceCrm(pg_url)
    gmail = GmailState(default_user="ann@acme.example", enforce_quota=False)
    graph = GraphState(tokens={"bob-token"})
    servers = [serve(gmail_app(gmail)), serve(graph_app(graph))]
    gmail.add_token("ann-token", "ann@acme.example")
    gmail.fail_sends(AMBIGUOUS_FAILURES, status=503, when="after")
    graph.mail.fail_sends(AMBIGUOUS_FAILURES, status=503, when="after")
    conns = {"ann": ("google", {"gmail_endpoint": servers[0].base_url, "token": "ann-token"}),
             "bob": ("microsoft", {"endpoint": servers[1].base_url, "token": "bob-token"})}
    with sessions.begin() as s:
        repo.create_org(s, org, "Acme", {"mail": {"own_domains": ["acme.example"]}})
        for user, (provider, settings) in conns.items():
            repo.create_connection(s, id=f"{org}-{user}", org_id=org, user_id=user, provider=provider,
                                   account_ref=f"{user}@acme.example", settings={**settings, "kinds": ["send"]})
    items = {user: [crm.outbox.queue(org, user, to=[Address(email=f"client{i}@client.example")],
                                     subject=f"Offer {i}", text=f"offer number {i}").id
                    for i in range(ITEMS_PER_MAILBOX)] for user in conns}
    target = temporal_env.client.service_client.config.target_host
    tq = f"send-kill-{uuid.uuid4().hex[:6]}"
    workers = Workers(target, pg_url, pg_url, tq, tmp_path / "worker.log")
    workers.env["CONCORD_SEND_LEASE_S"] = "3"  # past any emulator call; keeps the test short
    workers.spawn()
    try:
        for user, (provider, _) in conns.items():
            await api.start_sync(temporal_env.client, f"{org}-{user}", org, provider, kinds=["send"], task_queue=tq,
                                 poll_interval_s=5, heartbeat_timeout_s=5, org_poll_interval_s=5)
        handles = [temporal_env.client.get_workflow_handle(f"mailbox-sync/{org}-{u}") for u in conns]
        killed = Counter()

        def final() -> int:
            return sum(1 for u in conns for i in crm.outbox.list(org) if i.user_id == u and i.state in ("sent", "failed"))

        deadline = time.monotonic() + 420
        while final() < 2 * ITEMS_PER_MAILBOX:
            assert time.monotonic() < deadline, f"only {final()} of {2 * ITEMS_PER_MAILBOX} items final"
            if workers.kills < MIN_KILLS:
                running = [await running_activity(h) for h in handles]
                if "send.write" in running:
                    await asyncio.sleep(rng.uniform(0.05, 0.6))  # a random point of the sends
                    workers.kill(after_create=False)
                    killed["send.write"] += 1
                    continue
            await asyncio.sleep(0.1)
        assert workers.kills >= MIN_KILLS, f"only {workers.kills} kills: the sends finished too fast to test"

        states = Counter(i.state for i in crm.outbox.list(org))
        assert states == {"sent": 2 * ITEMS_PER_MAILBOX}, states
        by_item = {i.id: i for i in crm.outbox.list(org)}
        gmail_sent = Counter(normalize_message_id(m.message_id) for m in list(gmail.mailbox("ann@acme.example")
                             .messages.values()) if "SENT" in m.label_ids)
        sent_folder = graph.mail.folder_id("sentitems")
        graph_sent = Counter(normalize_message_id(m.data.get("internetMessageId")) for m in
                             list(graph.mail._messages.values()) if not m.deleted and m.folder_id == sent_folder)
        for user, sent in (("ann", gmail_sent), ("bob", graph_sent)):
            wanted = [by_item[i].message_id for i in items[user]]
            assert len(set(wanted)) == ITEMS_PER_MAILBOX and None not in wanted
            duplicates = {m: n for m, n in sent.items() if n > 1}
            lost = [m for m in wanted if sent[m] == 0]
            assert not duplicates, f"{user}: sent more than once: {len(duplicates)}"
            assert not lost, f"{user}: never sent: {len(lost)}"
            assert sum(sent.values()) == ITEMS_PER_MAILBOX
        # the failed attempts (503s, lost workers) are in history: without subject, body or address
        texts = [history_text(await h.fetch_history()) for h in handles]
        assert any("lastFailure" in t or "activityTaskFailedEventAttributes" in t for t in texts)
        needles = [f"Offer {i}" for i in range(ITEMS_PER_MAILBOX)] + [f"offer number {i}" for i in (0, 7, 42)]
        needles += [f"client{i}@client.example" for i in range(ITEMS_PER_MAILBOX)] + ["ann@acme.example"]
        assert not found_in("\n".join(texts), needles)
        print(f"kills: {workers.kills} ({dict(killed)}); ambiguous 503s per mailbox: {AMBIGUOUS_FAILURES}")
    finally:
        workers.stop()
        for server in servers:
            server.stop()
