"""Two-way send: outbox -> Sent latency, exactly once under worker kills, against a naive sender.

One organisation with a Gmail mailbox (Ann) and a Microsoft 365 mailbox (Bob), each
on its emulator on a real port, reached through the real connectors; the reference
CRM's outbox; the real mailbox and organisation workflows on a Temporal dev server.
Every item is written on a CRM contact (its record), to that contact.

1. Latency (worker in this process): items queued on the CRM's outbox at a steady
   pace, alternating Ann and Bob, each followed by a wake of the organisation's
   workflow (what the platform's webhook does). A thread polls both emulators' Sent
   every 5 ms and notes when each Message-ID first appears there:
   - `send.<provider>.outbox_to_sent`: queue() called -> the message in the mailbox's
     Sent, read from the emulator itself (not the item's state);
   - `send.<provider>.to_logged`: queue() called -> the email activity on the record
     in the CRM (the activity row's created_at, stamped in the transaction that makes
     it visible; checked to carry the item's record).
2. Burst (same worker): N items per mailbox queued at once, one wake, 3 sends per
   mailbox answered 503 after the provider stored the message: sends per second from
   the first queue() to the last message in Sent, and the duplicates in Sent.
3. Baseline (no Temporal, no outbox): the same N messages per mailbox sent by a loop
   calling the connector's `send` directly, retrying blindly on any error, with the
   same 3 injected 503-after-stored per mailbox: its sends per second and the
   duplicates it leaves in Sent.
4. Kills (the worker as its own process, as production runs it): N items per mailbox
   queued at once, the same injected 503s, and the worker SIGKILLed at random points
   of `send.write` (and restarted) up to a number of times; then both emulators' Sent
   counted per Message-ID: `send.dup_under_kills` and `send.lost_under_kills`.

Sending limits are raised on both emulators (a day's limit is not what this measures).
Gmail's per-user quota is not: the connector paces sends to 15,000 units a minute (100
a send). Known at full size (first full run): past ~135 Gmail sends in a minute the
pacing wait outlasts the emulator's HTTP keep-alive, the next send fails with
BrokenPipeError (Transient), and the burst stalled at 200 of 500 Gmail items for
over 15 minutes; the burst and the kill run therefore stop at a deadline and report
what was sent by then instead of failing.

    python -m bench [--quick] [--pg] send
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

Report = Callable[..., None]

DOMAIN = "acme.example"
ANN, BOB = f"ann@{DOMAIN}", f"bob@{DOMAIN}"
PROVIDERS = {"gmail": ("ann", "google"), "graph": ("bob", "microsoft")}
#: per mailbox, per run: the provider stores the message, then answers 503
AMBIGUOUS = 3
CLIENTS = 20
#: pace_s: one item every pace_s, alternating mailboxes, so each mailbox gets one every
#: 2 * pace_s. Full size: 2 sends/s per mailbox, under what the Gmail connector's pacing
#: lets through (15,000 units per user-minute at 100 units a send, 10% headroom: 2.25/s);
#: faster, Gmail's figures measure a growing queue, not a send's latency.
FULL = {"sends": 500, "kills": 10, "pace_s": 0.25}
QUICK = {"sends": 40, "kills": 3, "pace_s": 0.1}
POLL_S = 0.005
SEED = "send-bench"


# ---------------------------------------------------------------------------- a rig


class SentWatch:
    """When each Message-ID first appears in the emulators' Sent (wall clock), polled."""

    def __init__(self, gmail, graph) -> None:
        self.gmail, self.graph = gmail, graph
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sent-watch")

    def start(self) -> "SentWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def counts(self) -> dict[str, Counter]:
        """Sent items per normalised Message-ID, per provider (every copy counted)."""
        from models.mail import normalize_message_id

        gmail = Counter(normalize_message_id(m.message_id) for m in list(self.gmail.mailbox(ANN).messages.values())
                        if "SENT" in m.label_ids)
        folder = self.graph.mail.folder_id("sentitems")
        graph = Counter(normalize_message_id(m.data.get("internetMessageId")) for m in
                        list(self.graph.mail._messages.values()) if not m.deleted and m.folder_id == folder)
        return {"gmail": gmail, "graph": graph}

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                for sent in self.counts().values():
                    for mid in sent:
                        self.first.setdefault(mid, now)
            except RuntimeError:  # a dict resized under us: next round
                pass
            self._stop.wait(POLL_S)


@dataclass
class Rig:
    """An organisation, its two mailboxes on fresh emulators, its CRM contacts."""

    store_url: str
    crm_url: str
    org: str = field(default_factory=lambda: f"org-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        from emulators.gmail import GmailState
        from emulators.gmail import create_app as gmail_app
        from emulators.graph import GraphState
        from emulators.graph import create_app as graph_app
        from emulators.server import serve
        from models.mail_log import Association
        from platforms.reference_crm.service import ReferenceCrm
        from store import repo
        from store.db import make_engine, migrate, session_factory

        migrate(self.store_url)
        self.sessions = session_factory(make_engine(self.store_url))
        self.crm = ReferenceCrm(self.crm_url)
        self.gmail = GmailState(default_user=ANN, enforce_quota=False, send_limit_per_day=10**7)
        self.graph = GraphState(tokens={"bob-token"})
        self.graph.mail.send_limit_per_day = 10**7
        self.servers = [serve(gmail_app(self.gmail)), serve(graph_app(self.graph))]
        self.gmail.add_token("ann-token", ANN)
        self.settings = {"ann": {"gmail_endpoint": self.servers[0].base_url, "token": "ann-token"},
                         "bob": {"endpoint": self.servers[1].base_url, "token": "bob-token"}}
        with self.sessions.begin() as s:
            repo.create_org(s, self.org, "Acme", {"mail": {"own_domains": [DOMAIN]}})
            for provider, (user, kind) in PROVIDERS.items():
                repo.create_connection(s, id=self.cid(user), org_id=self.org, user_id=user, provider=kind,
                                       account_ref=f"{user}@{DOMAIN}",
                                       settings={**self.settings[user], "kinds": ["send"]})
        self.clients = []
        for k in range(CLIENTS):
            email = f"client{k}@client{k}.example"
            c = self.crm.user_create(self.org, "ann", given_name="Client", family_name=str(k), emails=[email])
            self.clients.append((email, Association(object_type="contact", object_id=c.id)))
        self.queued: dict[str, float] = {}  # item id -> wall time queue() was called
        self.items: dict[str, list[str]] = {p: [] for p in PROVIDERS}
        self.watch = SentWatch(self.gmail, self.graph)

    def cid(self, user: str) -> str:
        return f"{self.org}-{user}"

    def queue(self, provider: str, i: int) -> str:
        from models.mail import Address

        user = PROVIDERS[provider][0]
        email, record = self.clients[i % CLIENTS]
        started = time.time()
        item = self.crm.outbox.queue(self.org, user, to=[Address(email=email)], subject=f"Offer {provider} {i}",
                                     text=f"offer number {i}", record=record)
        self.queued[item.id] = started
        self.items[provider].append(item.id)
        return item.id

    def fail_sends(self, n: int) -> None:
        self.gmail.fail_sends(n, status=503, when="after")
        self.graph.mail.fail_sends(n, status=503, when="after")

    def final(self) -> int:
        return sum(1 for i in self.crm.outbox.list(self.org) if i.state in ("sent", "failed"))

    def outcome(self) -> dict[str, dict]:
        """Per provider, from the emulators' Sent: duplicates and items never sent."""
        from models.mail import normalize_message_id

        by_id = {i.id: i for i in self.crm.outbox.list(self.org)}
        sent = self.watch.counts()
        out = {}
        for provider, ids in self.items.items():
            mids = [normalize_message_id(by_id[i].message_id) if by_id[i].message_id else None for i in ids]
            out[provider] = {
                "dups": sum(sent[provider][m] - 1 for m in mids if m and sent[provider][m] > 1),
                "lost": sum(1 for m in mids if not m or sent[provider][m] == 0),
                "states": Counter(by_id[i].state for i in ids),
            }
        return out

    def close(self) -> None:
        self.watch.stop()
        for server in self.servers:
            server.stop()


async def _start(client, rig: Rig, tq: str, *, poll: float, heartbeat: float) -> None:
    from workers import client as api

    for provider, (user, kind) in PROVIDERS.items():
        await api.start_sync(client, rig.cid(user), rig.org, kind, kinds=["send"], task_queue=tq,
                             poll_interval_s=poll, org_poll_interval_s=poll, heartbeat_timeout_s=heartbeat)


async def _until_final(rig: Rig, n: int, timeout: float, what: str, say: Callable[[str], None] | None = None) -> int:
    """Wait until n items are sent or failed; raise at the deadline, or (with `say`) say so
    and return how many are, so the figures report what was sent by then."""
    deadline = time.monotonic() + timeout
    while (done := await asyncio.to_thread(rig.final)) < n:
        if time.monotonic() > deadline:
            if say is None:
                raise RuntimeError(f"{what}: only {done} of {n} items sent or failed in {timeout:.0f} s")
            say(f"{what}: only {done} of {n} items sent or failed after {timeout:.0f} s; figures on what was sent")
            return done
        await asyncio.sleep(0.05)
    return done


# ---------------------------------------------------------------------------- phases


async def _latency(report: Report, client, rig: Rig, tq: str, n: int, pace_s: float,
                   say: Callable[[str], None]) -> None:
    from bench.report import percentile
    from models.mail import normalize_message_id
    from workers import client as api

    rig.watch.start()
    t0 = time.perf_counter()
    for i in range(n):
        for provider in PROVIDERS:
            await asyncio.to_thread(rig.queue, provider, i)
            await api.wake_org(client, rig.org, "outbox")  # the platform's webhook
            await asyncio.sleep(pace_s)
    await _until_final(rig, 2 * n, 120 + 2 * n, "latency")
    await asyncio.sleep(0.05)
    say(f"latency: {2 * n} items queued one every {pace_s:.2f} s, all final at {time.perf_counter() - t0:.1f} s")
    acts = {normalize_message_id(a.key): a for a in rig.crm.mail.list_email_activities(rig.org, limit=10**7)}
    items = {i.id: i for i in rig.crm.outbox.list(rig.org)}
    for provider, ids in rig.items.items():
        to_sent, to_logged, off_record = [], [], 0
        for item_id in ids:
            item = items[item_id]
            mid = normalize_message_id(item.message_id)
            to_sent.append(rig.watch.first[mid] - rig.queued[item_id])
            act = acts.get(mid)
            if act is None or item.record not in act.associations:
                off_record += 1
                continue
            to_logged.append(act.created_at - rig.queued[item_id])
        if off_record:
            raise RuntimeError(f"{provider}: {off_record} sent items not logged on their record")
        report(f"send.{provider}.outbox_to_sent.p50", statistics.median(to_sent), "s",
               f"{len(to_sent)} items, queue()+org wake -> Message-ID in the emulator's Sent (polled {POLL_S * 1000:.0f} ms)")
        report(f"send.{provider}.outbox_to_sent.p95", percentile(to_sent, 95), "s", f"max {max(to_sent):.3f} s")
        report(f"send.{provider}.to_logged.p50", statistics.median(to_logged), "s",
               "queue() -> email activity on the record in the CRM (its created_at)")
        report(f"send.{provider}.to_logged.p95", percentile(to_logged, 95), "s", f"max {max(to_logged):.3f} s")


async def _burst(report: Report, client, rig: Rig, tq: str, n: int, say: Callable[[str], None]) -> dict[str, float]:
    from models.mail import normalize_message_id
    from workers import client as api

    rig.watch.start()
    t0 = time.time()
    for i in range(n):
        for provider in PROVIDERS:
            rig.queue(provider, i)
    await api.wake_org(client, rig.org, "outbox")
    await _until_final(rig, 2 * n, 120 + n / 2, "burst", say)
    await asyncio.sleep(0.05)
    items = {i.id: i for i in rig.crm.outbox.list(rig.org)}
    outcome = rig.outcome()
    rates = {}
    for provider, ids in rig.items.items():
        seen = [rig.watch.first[m] for i in ids if items[i].message_id
                and (m := normalize_message_id(items[i].message_id)) in rig.watch.first]
        last = max(seen) if seen else time.time()
        rates[provider] = len(seen) / (last - t0)
        if len(seen) < n:
            report(f"send.{provider}.burst_unsent", n - len(seen), "", "items not in Sent by the deadline")
        o = outcome[provider]
        report(f"send.{provider}.pipeline_sends_per_s", rates[provider], "msg/s",
               f"{n} queued at once, one wake, no faults: first queue() -> last in Sent "
               f"{'(Gmail: paced to 15,000 units/user-min, 100 a send) ' if provider == 'gmail' else ''}"
               f"({last - t0:.1f} s); both mailboxes at once")
        report(f"send.{provider}.pipeline_dups", o["dups"], "", f"lost {o['lost']}, states {dict(o['states'])}")
    say(f"burst: {2 * n} items in {time.time() - t0:.1f} s")
    return rates


def _naive(report: Report, rig: Rig, n: int, rates: dict[str, float], say: Callable[[str], None]) -> None:
    """The baseline: compose and send in a loop straight through the connector, no outbox,
    no stored Message-ID, no look in Sent; an error is retried blindly, at once."""
    from connectors.gmail_mail import GmailMail
    from connectors.graph_mail import GraphMail
    from models.errors import ConnectorError
    from models.mail import Address, normalize_message_id
    from models.send import OutgoingMessage
    from sync.mail.compose import compose, new_message_id

    senders = {"gmail": (GmailMail.for_emulator(rig.settings["ann"]["gmail_endpoint"], token="ann-token",
                                                  pacing=False), ANN),
               "graph": (GraphMail(rig.settings["bob"]["endpoint"], lambda: "bob-token"), BOB)}

    def loop(provider: str, tag: str) -> tuple[list[str], int, float]:
        conn, address = senders[provider]
        mids, retries = [], 0
        t0 = time.perf_counter()
        for i in range(n):
            email, _ = rig.clients[i % CLIENTS]
            item = OutgoingMessage(id=f"naive-{tag}-{provider}-{i}", user_id=PROVIDERS[provider][0],
                                   to=[Address(email=email)], subject=f"Offer {provider} {i}",
                                   text=f"offer number {i}", state="queued")
            mid = new_message_id(item.id, address)
            raw = compose(item, sender=Address(email=address), message_id=mid)
            mids.append(normalize_message_id(mid))
            while True:
                try:
                    conn.send(raw)
                    break
                except ConnectorError:
                    retries += 1
        return mids, retries, time.perf_counter() - t0

    for provider in senders:
        _, _, elapsed = loop(provider, "clean")
        report(f"send.baseline.{provider}.naive_sends_per_s", n / elapsed, "msg/s",
               f"{n} connector.send() in a loop, no faults, unpaced ({elapsed:.2f} s); pipeline "
               f"{rates.get(provider, float('nan')):.1f} msg/s")
    rig.fail_sends(AMBIGUOUS)
    for provider, (conn, _) in senders.items():
        mids, retries, _ = loop(provider, "faults")
        sent = rig.watch.counts()[provider]
        dups = sum(sent[m] - 1 for m in mids if sent[m] > 1)
        lost = sum(1 for m in mids if sent[m] == 0)
        report(f"send.baseline.{provider}.naive_dups", dups, "",
               f"{n} sends, {AMBIGUOUS} injected 503-after-stored, {retries} blind retries; lost {lost}")
        getattr(conn, "close", lambda: None)()
    say("baseline done")


class Worker:
    """The worker as its own process, as production runs it; SIGKILLed and restarted."""

    def __init__(self, target: str, store_url: str, crm_url: str, tq: str, log_path: Path) -> None:
        from store.vault import generate_key

        self.cmd = [sys.executable, "-m", "workers.worker", "--temporal", target, "--store-url", store_url,
                    "--crm-url", crm_url, "--task-queue", tq]
        self.env = dict(os.environ, CONCORD_OTEL_EXPORTER="none", CONCORD_VAULT_KEYS=f"bench:{generate_key()}",
                        CONCORD_SEND_LEASE_S="3")  # past any emulator call here; keeps the run short
        self.log = open(log_path, "ab")
        self.proc: subprocess.Popen | None = None
        self.kills = 0

    def spawn(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=self.log, start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.spawn()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


async def _running(handle) -> str | None:
    from temporalio.api.enums.v1 import PendingActivityState

    desc = await handle.describe()
    for pa in desc.raw_description.pending_activities:
        if pa.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
            return pa.activity_type.name
    return None


async def _kills(report: Report, client, rig: Rig, target: str, tmp: Path, n: int, max_kills: int,
                 say: Callable[[str], None]) -> None:
    from workers import client as api

    rng = random.Random(SEED)
    tq = f"send-bench-kill-{uuid.uuid4().hex[:6]}"
    worker = Worker(target, rig.store_url, rig.crm_url, tq, tmp / "worker.log")
    rig.fail_sends(AMBIGUOUS)
    for i in range(n):
        for provider in PROVIDERS:
            rig.queue(provider, i)
    worker.spawn()
    t0 = time.perf_counter()
    try:
        await _start(client, rig, tq, poll=5, heartbeat=5)
        await api.wake_org(client, rig.org, "outbox")
        handles = [client.get_workflow_handle(f"mailbox-sync/{rig.cid(u)}") for u, _ in PROVIDERS.values()]
        deadline = time.monotonic() + 240 + n / 2
        while (done := await asyncio.to_thread(rig.final)) < 2 * n:
            if time.monotonic() > deadline:
                say(f"kills: only {done} of {2 * n} items final after {worker.kills} kills; the rest count as lost")
                break
            if worker.kills < max_kills and "send.write" in [await _running(h) for h in handles]:
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # a random point of the sends
                worker.kill()
                say(f"kill {worker.kills} at {time.perf_counter() - t0:.1f} s, {done} items final")
                continue
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
    outcome = rig.outcome()
    dups = sum(o["dups"] for o in outcome.values())
    lost = sum(o["lost"] for o in outcome.values())
    per = "; ".join(f"{p} dups {o['dups']} lost {o['lost']}" for p, o in outcome.items())
    print(f"  kills: {worker.kills} SIGKILLs of the worker process during send.write "
          f"({time.perf_counter() - t0:.1f} s for {2 * n} items)", flush=True)
    report("send.kills", worker.kills, "", f"worker SIGKILLed in send.write, restarted; "
                                            f"{AMBIGUOUS} 503-after-stored per mailbox too")
    report("send.dup_under_kills", dups, "", f"{2 * n} items; copies in the emulators' Sent beyond one "
                                             f"per Message-ID (goal 0); {per}")
    report("send.lost_under_kills", lost, "", "items whose Message-ID never reached Sent (goal 0)")
    report("send.kill_run_s", time.perf_counter() - t0, "s", "lease 3 s, heartbeat timeout 5 s")


# ---------------------------------------------------------------------------- entry


def _pg_urls() -> tuple[str, str]:
    import psycopg

    names = []
    for what in ("store", "crm"):
        name = f"bench_send_{what}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    return names[0], names[1]


async def _run(report: Report, *, sends: int, kills: int, pace_s: float, pg: bool,
               say: Callable[[str], None]) -> None:
    from temporalio.testing import WorkflowEnvironment

    from store.vault import KeyRing, generate_key
    from workers.devstack import find_temporal_cli, search_attribute_args
    from workers.temporal_client import DATA_CONVERTER
    from workers.worker import build_activities, make_worker

    tmp = Path(tempfile.mkdtemp(prefix="concord-bench-send-"))
    store_url, crm_url = _pg_urls() if pg else (f"sqlite:///{tmp / 'store.db'}", f"sqlite:///{tmp / 'crm.db'}")
    report("send.size.items_per_mailbox", sends, "", f"Gmail (Ann) and Graph (Bob), one organisation, "
                                                     f"{'PostgreSQL' if pg else 'SQLite'}")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=find_temporal_cli(),
                                                data_converter=DATA_CONVERTER,
                                                dev_server_extra_args=["--log-level", "error",
                                                                       *search_attribute_args()])
    rigs: list[Rig] = []
    try:
        target = env.client.service_client.config.target_host
        tq = f"send-bench-{uuid.uuid4().hex[:6]}"
        acts = build_activities(store_url, crm_url, keyring=KeyRing.parse(f"bench:{generate_key()}"))
        rates: dict[str, float] = {}
        async with make_worker(env.client, acts, task_queue=tq):
            rig = Rig(store_url, crm_url)
            rigs.append(rig)
            await _start(env.client, rig, tq, poll=3600, heartbeat=10)
            await asyncio.sleep(1.0)  # the first cycles (nothing to send) are over
            await _latency(report, env.client, rig, tq, sends, pace_s, say)
            rig = Rig(store_url, crm_url)
            rigs.append(rig)
            await _start(env.client, rig, tq, poll=3600, heartbeat=10)
            await asyncio.sleep(1.0)
            rates = await _burst(report, env.client, rig, tq, sends, say)
        rig = Rig(store_url, crm_url)
        rigs.append(rig)
        await asyncio.to_thread(_naive, report, rig, sends, rates, say)
        rig = Rig(store_url, crm_url)
        rigs.append(rig)
        await _kills(report, env.client, rig, target, tmp, sends, kills, say)
    finally:
        for rig in rigs:
            rig.close()
        await env.shutdown()


def run(report: Report = print, *, quick: bool = False, pg: bool = False, say: Callable[[str], None] = print,
        size: dict | None = None) -> None:
    size = dict(size or (QUICK if quick else FULL))
    asyncio.run(_run(report, pg=pg, say=say, **size))
