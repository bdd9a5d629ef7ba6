"""Chaos: an initial sync of 1,000+ contacts per provider while workers are SIGKILLed
at random (some right after a create landed at the provider) and a fifth of the
provider's answers are throttles (429) or outages (503). Edits land on both sides
meanwhile. Then an independent reconciliation reads both ends directly (the
provider emulator and the platform's database, not Concord's store) and must find
0 duplicates, 0 losses and 0 lost edits; the store must hold 0 stuck items, and
the workflow must converge (a cycle at rest writes nothing).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest

from store import repo
from store.vault import generate_key
from tests.chaos_proxy import Chaos
from tests.e2e_rig import Rig
from tests.test_write_outage import start, through
from workers import client as api
from workers.scenario import build_scenario

N_MAILBOX = 1000
N_CRM = 500
MIN_KILLS = 12
EDITS = 20
#: where kills land, and how many at most: reads and the pure planning step a few
#: times (or the sync could never get past them), writes as often as the dice say
KILL_IN = {"contacts.fetch_mailbox": 4, "contacts.fetch_platform": 2, "contacts.plan": 2,
           "contacts.write": MIN_KILLS, "contacts.handle_rejections": 2}


class Workers:
    """The worker as its own process, as production runs it; killed and restarted."""

    def __init__(self, target: str, store_url: str, crm_url: str, tq: str, log_path) -> None:
        self.cmd = [sys.executable, "-m", "workers.worker", "--temporal", target, "--store-url", store_url,
                    "--crm-url", crm_url, "--task-queue", tq]
        self.env = dict(os.environ, CONCORD_OTEL_EXPORTER="none", CONCORD_VAULT_KEYS=f"chaos:{generate_key()}")
        self.log = open(log_path, "ab")
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.kills_after_create = 0

    def spawn(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=self.log, start_new_session=True)

    def kill(self, after_create: bool) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.kills_after_create += int(after_create)
        self.spawn()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


async def running_activity(handle) -> str | None:
    """The activity a worker is executing for this workflow now, if any."""
    from temporalio.api.enums.v1 import PendingActivityState

    desc = await handle.describe()
    for pa in desc.raw_description.pending_activities:
        if pa.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
            return pa.activity_type.name
    return None


async def killer(r: Rig, workers: Workers, created: threading.Event, rng: random.Random) -> Counter:
    """While an activity runs on the worker, kill it after 0.5-3 s, or right after a
    create was answered (always the first time, then about half the time)."""
    handle = r.client.get_workflow_handle(f"mailbox-sync/{r.cid}")
    killed_in: Counter = Counter()
    while workers.kills < MIN_KILLS:
        deadline = time.monotonic() + 20
        while (name := await running_activity(handle)) not in KILL_IN or killed_in[name] >= KILL_IN[name]:
            if name is None and time.monotonic() > deadline:  # at rest: give it work again
                await handle.signal("wake", "chaos")
                deadline = time.monotonic() + 20
            await asyncio.sleep(0.1)
        created.clear()
        # The first kill in a write waits for a create to land, however long that takes.
        patience = 20.0 if name == "contacts.write" and workers.kills_after_create == 0 else rng.uniform(0.5, 3.0)
        waited = await asyncio.to_thread(created.wait, patience)
        right_after = waited and (workers.kills_after_create == 0 or rng.random() < 0.5)
        workers.kill(after_create=right_after)
        killed_in[name] += 1
    return killed_in


def crm_contacts(sc, **filters) -> list:
    """Every live CRM record (the CRM's listing pages by 1,000)."""
    out, offset = [], 0
    while True:
        page = sc.crm.list_contacts(sc.org_id, offset=offset, limit=1000, **filters)
        out += page
        if len(page) < 1000:
            return out
        offset += len(page)


def twice(values) -> list[str]:
    return sorted(k for k, n in Counter(values).items() if n > 1)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("provider", ["google", "microsoft"])
async def test_initial_sync_under_kills_and_throttling_converges_with_nothing_lost(
        temporal_env, pg_url, tmp_path, provider):
    rng = random.Random(f"chaos-{provider}")
    crm_url = f"sqlite:///{tmp_path / 'crm.db'}"
    sc = build_scenario(pg_url, crm_url, provider=provider, connection_id=f"chaos-{uuid.uuid4().hex[:6]}",
                        n_mailbox=N_MAILBOX, n_crm=N_CRM, near_duplicates=0, seed=11)
    chaos = Chaos(sc.emulator.base_url, provider, seed=rng.randrange(1 << 30)).start()
    target = temporal_env.client.service_client.config.target_host
    tq = f"chaos-{uuid.uuid4().hex[:6]}"
    workers = Workers(target, pg_url, crm_url, tq, tmp_path / "worker.log")
    created = threading.Event()
    chaos.on_create = created.set
    r = Rig(temporal_env, sc, tq)
    try:
        through(r, chaos, page_size=50)
        chaos.fault_rate = 0.2
        workers.spawn()
        # Kills and outages both spend attempts; a dozen kills in a minute is far denser
        # than production, so attempts are more and backoff shorter than the defaults.
        await start(r, heartbeat_timeout_s=4, activity_attempts=30, activity_retry_max_s=4)
        kills = asyncio.create_task(killer(r, workers, created, rng))

        # Edits on both sides while the first sync runs.
        await asyncio.sleep(3)
        m_edits = {}
        for mid in rng.sample(sc.resource_names, EDITS):
            note = f"chaos note {uuid.uuid4().hex[:8]}"
            sc.mailbox.edit(mid, notes=note)
            m_edits[sc.mailbox.contacts()[mid].email_addresses()[0].casefold()] = note
        owned = [c for c in crm_contacts(sc, owner_id=sc.user_id) if c.contact.emails]
        p_edits = {}
        for rec in rng.sample(owned, min(EDITS, len(owned))):
            title = f"Chaos {uuid.uuid4().hex[:6]}"
            sc.crm.user_edit(sc.org_id, rec.id, job_title=title, enforce_rules=False)
            p_edits[rec.contact.email_addresses()[0].casefold()] = title

        killed_in = await asyncio.wait_for(kills, 400)
        assert workers.kills >= MIN_KILLS, workers.kills
        assert killed_in["contacts.write"] >= 3, killed_in
        # Converge (still throttled): cycles until one at rest writes nothing.
        deadline = time.monotonic() + 240
        st = await r.wait_cycles(1, timeout=240)
        while True:
            st = await api.sync_now(r.client, sc.org_id, r.cid, timeout=240)
            quiet = st.last_counts.created + st.last_counts.updated + st.last_counts.deleted == 0
            if quiet and st.health == "active" and st.last_error is None:
                break
            assert time.monotonic() < deadline, f"no convergence: {st}"
        assert workers.kills_after_create >= 1, ("some kills must land right after a create", chaos.stats)
        during = dict(chaos.stats)
        refused = during.get("refused_429", 0) + during.get("refused_503", 0)
        total = refused + during.get("forwarded", 0)
        assert during.get("refused_429") and during.get("refused_503"), (during, killed_in)
        assert total >= 20 and refused / total >= 0.15, (during, killed_in)
    finally:
        workers.stop()
        chaos.stop()

    try:
        # --- independent reconciliation: both ends, read directly -------------------
        mailbox = list(sc.mailbox.contacts().values())
        crm = [c.contact for c in crm_contacts(sc)]
        m_emails = [e.casefold() for c in mailbox for e in c.email_addresses()]
        p_emails = [e.casefold() for c in crm for e in c.email_addresses()]
        assert not twice(m_emails), f"duplicates in the mailbox: {twice(m_emails)[:5]}"
        assert not twice(p_emails), f"duplicates on the platform: {twice(p_emails)[:5]}"
        # What waits for a person (quarantine, review) is visible in the store, by id.
        with sc.sessions() as s:
            counts = repo.count_items_by_status(s, sc.connection_id)
            waiting_rows = [i for st_ in ("quarantined", "duplicate", "conflict", "deferred")
                            for i in repo.items_by_status(s, sc.connection_id, [st_])]
            unfinished = repo.actions_by_status(s, sc.connection_id, ["planned", "platform_done", "mailbox_started"])
        waiting_emails = {e.casefold() for row in waiting_rows for e in
                          ((row.record.get("content") or {}).get("emails") or [])}
        assert counts.get("pending", 0) == 0 and not unfinished, ("stuck items", counts, len(unfinished))
        assert all(row.rule == "held_by_open_review" for row in waiting_rows if row.status == "deferred")
        # No loss: every mailbox person is on the platform and every person the user
        # owns on the platform is in the mailbox, unless a named state holds them.
        m_set, p_set = set(m_emails), set(p_emails)
        lost_to_platform = [c for c in mailbox if not ({e.casefold() for e in c.email_addresses()} & (p_set | waiting_emails))]
        owned_now = [c.contact for c in crm_contacts(sc, owner_id=sc.user_id)]
        lost_to_mailbox = [c for c in owned_now if c.email_addresses()
                           and not ({e.casefold() for e in c.email_addresses()} & (m_set | waiting_emails))]
        assert not lost_to_platform, f"{len(lost_to_platform)} mailbox contacts never reached the platform"
        assert not lost_to_mailbox, f"{len(lost_to_mailbox)} owned platform contacts never reached the mailbox"
        assert len(mailbox) >= N_MAILBOX
        # No lost edit: each reached the other side.
        by_email_p = {e.casefold(): c for c in crm for e in c.email_addresses()}
        by_email_m = {e.casefold(): c for c in mailbox for e in c.email_addresses()}
        lost_m = [e for e, note in m_edits.items() if e not in waiting_emails and by_email_p[e].notes != note]
        lost_p = [e for e, title in p_edits.items() if e not in waiting_emails and by_email_m[e].job_title != title]
        assert not lost_m and not lost_p, (len(lost_m), len(lost_p))
    finally:
        sc.close()
