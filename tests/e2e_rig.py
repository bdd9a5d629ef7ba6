"""A seeded mailbox + CRM + store + worker on a real Temporal server, for end-to-end tests.

Nothing of ours is mocked: the worker runs the real workflow and activities, the
mailbox is reached through google-api-python-client over HTTP, the CRM and the store
are real databases (SQLite files or the PostgreSQL server).
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager

from models.contact import Contact
from models.workflow import SyncState
from platforms.reference_crm.adapter import ReferenceCrmContacts
from store import repo
from store.vault import KeyRing, generate_key
from workers import client as api
from workers.scenario import Scenario, build_scenario
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker


def throwaway_keyring() -> KeyRing:
    """A vault key made for one test run, passed explicitly: the worker itself has no
    fallback key (it refuses to start without CONCORD_VAULT_KEYS)."""
    return KeyRing.parse(f"test:{generate_key()}")


class Rig:
    def __init__(self, env, sc: Scenario, task_queue: str) -> None:
        self.env = env
        self.client = env.client
        self.sc = sc
        self.cid = sc.connection_id
        self.task_queue = task_queue

    async def start(self, poll_interval_s: float = 3600) -> SyncState:
        await api.start_sync(self.client, self.cid, self.sc.org_id, self.sc.mailbox.provider,
                             poll_interval_s=poll_interval_s, task_queue=self.task_queue)
        await self.wait_cycles(1)
        await api.wait_for_org_cycles(self.client, self.sc.org_id, 1)
        return await self.settle(0)

    async def state(self) -> SyncState:
        return await api.state(self.client, self.cid)

    async def wait_cycles(self, n: int, timeout: float = 90) -> SyncState:
        return await api.wait_for_cycles(self.client, self.cid, n, timeout=timeout)

    async def settle(self, after: int, timeout: float = 90) -> SyncState:
        """The state once the mailbox has run a cycle past `after` and has no cycle running
        or asked for (the organisation's workflow may have woken it meanwhile)."""
        return await api.wait_settled(self.client, self.cid, after, timeout=timeout)

    async def cycle(self) -> SyncState:
        """What a platform webhook and a mailbox push would do: the organisation reads the
        platform (waking this mailbox if a change concerns it), and the mailbox cycles.
        Returns the state once the mailbox has settled."""
        return await api.sync_now(self.client, self.sc.org_id, self.cid)

    # -- looking at both ends ----------------------------------------------------
    def links(self) -> dict[str, str]:
        """mailbox id -> platform id"""
        with self.sc.sessions() as s:
            from store.schema import links
            import sqlalchemy as sa

            rows = s.execute(sa.select(links.c.mailbox_id, links.c.platform_id)
                             .where(links.c.connection_id == self.cid)).all()
        return {m: p for m, p in rows}

    def crm_contacts(self) -> dict[str, Contact]:
        return {c.id: c.contact for c in self.sc.crm.list_contacts(self.sc.org_id)}

    def mailbox_contacts(self) -> dict[str, Contact]:
        return self.sc.mailbox.contacts()

    def items(self, status: str) -> list:
        with self.sc.sessions() as s:
            return repo.items_by_status(s, self.cid, [status])


@asynccontextmanager
async def rig(env, store_url: str, crm_url: str, **scenario_kwargs):
    # An organisation per test: its workflow outlives the test on the shared server.
    scenario_kwargs.setdefault("org_id", f"org-{uuid.uuid4().hex[:8]}")
    sc = build_scenario(store_url, crm_url, connection_id=f"c-{uuid.uuid4().hex[:8]}", **scenario_kwargs)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    acts = build_activities(store_url, crm_url, keyring=throwaway_keyring())
    try:
        async with make_worker(env.client, acts, task_queue=tq):
            yield Rig(env, sc, tq)
    finally:
        sc.close()


def crm_adapter(url: str) -> ReferenceCrmContacts:
    return ReferenceCrmContacts(url)
