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
from workers.scenario import build_scenario

N_MAILBOX = 1000
N_CRM = 200
MIN_KILLS = 12
EDITS = 20


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


def killer(workers: Workers, created: threading.Event, stop: threading.Event, rng: random.Random) -> None:
    """Kill every 2-5 s, or right after a create was answered (about half the time)."""
    while not stop.is_set() and workers.kills < MIN_KILLS:
        created.clear()
        right_after = created.wait(timeout=rng.uniform(2.0, 5.0)) and rng.random() < 0.5
        if stop.is_set():
            return
        workers.kill(after_create=right_after)
        time.sleep(rng.uniform(1.0, 2.0))  # let the new worker pick work up before the next kill


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
    created, stop = threading.Event(), threading.Event()
    chaos.on_create = created.set
    kill_thread = threading.Thread(target=killer, args=(workers, created, stop, rng), daemon=True)
    r = Rig(temporal_env, sc, tq)
    try:
        through(r, chaos)
        chaos.fault_rate = 0.2
        workers.spawn()
        await start(r, heartbeat_timeout_s=4)
        kill_thread.start()

        # Edits on both sides while the first sync runs.
        await asyncio.sleep(3)
        m_edits = {}
        for mid in rng.sample(sc.resource_names, EDITS):
            note = f"chaos note {uuid.uuid4().hex[:8]}"
            sc.mailbox.edit(mid, notes=note)
            m_edits[sc.mailbox.contacts()[mid].emails[0].casefold()] = note
        owned = [c for c in sc.crm.list_contacts(sc.org_id, owner_id=sc.user_id) if c.contact.emails]
        p_edits = {}
        for rec in rng.sample(owned, min(EDITS, len(owned))):
            title = f"Chaos {uuid.uuid4().hex[:6]}"
            sc.crm.user_edit(sc.org_id, rec.id, job_title=title, enforce_rules=False)
            p_edits[rec.contact.emails[0].casefold()] = title

        await asyncio.to_thread(kill_thread.join, 300)
        assert workers.kills >= MIN_KILLS, workers.kills
        chaos.fault_rate = 0.0
        # Converge: cycles until one at rest writes nothing.
        deadline = time.monotonic() + 240
        st = await r.wait_cycles(1, timeout=240)
        while True:
            st = await r.cycle()
            quiet = st.last_counts.created + st.last_counts.updated + st.last_counts.deleted == 0
            if quiet and st.health == "active" and st.last_error is None:
                break
            assert time.monotonic() < deadline, f"no convergence: {st}"
        assert workers.kills_after_create >= 1, "some kills must land right after a create"
        assert chaos.stats["refused_429"] > 10 and chaos.stats["refused_503"] > 10, chaos.stats
    finally:
        stop.set()
        workers.stop()
        chaos.stop()

    try:
        # --- independent reconciliation: both ends, read directly -------------------
        mailbox = list(sc.mailbox.contacts().values())
        crm = [c.contact for c in sc.crm.list_contacts(sc.org_id)]
        m_emails = [e.casefold() for c in mailbox for e in c.emails]
        p_emails = [e.casefold() for c in crm for e in c.emails]
        assert not twice(m_emails), f"duplicates in the mailbox: {twice(m_emails)[:5]}"
        assert not twice(p_emails), f"duplicates on the platform: {twice(p_emails)[:5]}"
        # What waits for a person (quarantine, review) is visible in the store, by id.
        with sc.sessions() as s:
            counts = repo.count_items_by_status(s, sc.connection_id)
            waiting_rows = [i for st_ in ("quarantined", "duplicate", "conflict", "deferred")
                            for i in repo.items_by_status(s, sc.connection_id, [st_])]
            unfinished = repo.actions_by_status(s, sc.connection_id, ["planned", "platform_done", "mailbox_started"])
        waiting_emails = {e.casefold() for row in waiting_rows for e in
                          ((row.record.get("contact") or {}).get("emails") or [])}
        assert counts.get("pending", 0) == 0 and not unfinished, ("stuck items", counts, len(unfinished))
        assert all(row.rule == "held_by_open_review" for row in waiting_rows if row.status == "deferred")
        # No loss: every mailbox person is on the platform and every person the user
        # owns on the platform is in the mailbox, unless a named state holds them.
        m_set, p_set = set(m_emails), set(p_emails)
        lost_to_platform = [c for c in mailbox if not ({e.casefold() for e in c.emails} & (p_set | waiting_emails))]
        owned_now = [c.contact for c in sc.crm.list_contacts(sc.org_id, owner_id=sc.user_id)]
        lost_to_mailbox = [c for c in owned_now if c.emails
                           and not ({e.casefold() for e in c.emails} & (m_set | waiting_emails))]
        assert not lost_to_platform, f"{len(lost_to_platform)} mailbox contacts never reached the platform"
        assert not lost_to_mailbox, f"{len(lost_to_mailbox)} owned platform contacts never reached the mailbox"
        assert len(mailbox) >= N_MAILBOX
        # No lost edit: each reached the other side.
        by_email_p = {e.casefold(): c for c in crm for e in c.emails}
        by_email_m = {e.casefold(): c for c in mailbox for e in c.emails}
        lost_m = [e for e, note in m_edits.items() if e not in waiting_emails and by_email_p[e].notes != note]
        lost_p = [e for e, title in p_edits.items() if e not in waiting_emails and by_email_m[e].job_title != title]
        assert not lost_m and not lost_p, (len(lost_m), len(lost_p))
    finally:
        sc.close()
