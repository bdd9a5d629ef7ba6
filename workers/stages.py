"""What every stage-by-stage demo shares (mail, calendar): starting each connected
mailbox's workflow on the scenario's kinds, and waking them the way push would.

A scenario gives `org_id`, `people` (each with a `provider`) and `connections`
(person -> connection id); the stages read their results from the platform and the
store, never from workflow history.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from activities.pipeline import mailbox_progress, mailbox_stream
from store import repo
from workers import client as api


def connect(sessions, connection_id: str, *, org_id: str, user_id: str, provider: str, account: str,
            settings: dict, kind: str) -> None:
    """A scenario's mailbox connection, made once; a kept store's (the demo's `--keep`) is
    pointed at this run's emulators, and its `kind` cursors forgotten with the old ones."""
    with sessions.begin() as s:
        if repo.get_connection(s, connection_id) is None:
            repo.create_connection(s, id=connection_id, org_id=org_id, user_id=user_id, provider=provider,
                                   account_ref=account, settings=settings)
            return
        repo.set_connection_settings(s, connection_id, settings)
        repo.set_connection_status(s, connection_id, "active")
        repo.set_cursor(s, connection_id, mailbox_stream(kind), None)
        repo.set_cursor(s, connection_id, mailbox_progress(kind), None)


class Stages:
    #: the kinds of data the scenario's mailboxes sync
    kinds: list[str] = []

    def __init__(self, client, sc, say: Callable[[str], None], *, task_queue: str | None = None,
                 poll_interval_s: float = 600) -> None:
        self.client = client
        self.sc = sc
        self.say = say
        self.task_queue = task_queue
        self.poll_interval_s = poll_interval_s

    async def start(self) -> None:
        """Each mailbox's workflow on the scenario's kinds, and its first cycle done."""
        kwargs = {"task_queue": self.task_queue} if self.task_queue else {}
        for who, cid in self.sc.connections.items():
            await api.start_sync(self.client, cid, self.sc.org_id, self.sc.people[who].provider, kinds=self.kinds,
                                 poll_interval_s=self.poll_interval_s, **kwargs)
        for cid in self.sc.connections.values():
            await api.wait_for_cycles(self.client, cid, 1, timeout=120)

    async def sync(self, *who: str) -> None:
        """The organisation reads the platform and these mailboxes cycle, all at once."""
        await asyncio.gather(*(api.sync_now(self.client, self.sc.org_id, self.sc.connections[w], timeout=120)
                               for w in who))

    async def sync_in_order(self, *who: str) -> None:
        """The same, one mailbox after another: the order a stage describes."""
        for w in who:
            await api.sync_now(self.client, self.sc.org_id, self.sc.connections[w], timeout=120)
