"""A write that runs out of retries is resumed by a later cycle, never re-planned.

Seen under chaos: every mailbox create answered 503 until the write activity spent
its attempts. The platform creates of that batch had landed but were not linked
yet, so the next cycle took them for new platform records and created them in the
mailbox (149 duplicates out of 1,000), then failed forever on the links' unique
constraint while health said "active". Here every create is refused until the
cycle fails; then the outage ends and the cycles must converge with no duplicate.
"""

from __future__ import annotations

from collections import Counter

import pytest

from models.workflow import MailboxSyncInput
from store import repo
from tests.chaos_proxy import Chaos
from tests.e2e_rig import rig
from workers import client as api
from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


def through(r, chaos: Chaos, **settings) -> None:
    """Point the connection at the proxy instead of the emulator (and tune it)."""
    with r.sc.sessions.begin() as s:
        current = dict(repo.get_connection(s, r.cid).settings)
        repo.set_connection_settings(s, r.cid, {**current, **settings, "endpoint": chaos.base_url})


async def start(r, **inp) -> None:
    """The mailbox workflow with test inputs, beside its organisation's (which reads the CRM)."""
    await api.start_org_sync(r.client, r.sc.org_id, task_queue=r.task_queue, poll_interval_s=3600,
                             heartbeat_timeout_s=inp.get("heartbeat_timeout_s", 60.0))
    await r.client.start_workflow(
        MailboxSyncWorkflow.run,
        MailboxSyncInput(connection_id=r.cid, org_id=r.sc.org_id, provider=r.sc.mailbox.provider,
                         poll_interval_s=3600, **inp),
        id=workflow_id(r.cid), task_queue=r.task_queue)


def emails_twice(contacts) -> list[str]:
    counts = Counter(e.casefold() for c in contacts for e in c.email_addresses())
    return sorted(e for e, n in counts.items() if n > 1)


@pytest.mark.parametrize("provider", ["google", "microsoft"])
async def test_a_write_out_of_retries_is_resumed_without_duplicates(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider, n_mailbox=60, n_crm=60) as r:
        chaos = Chaos(r.sc.emulator.base_url, provider).start()
        try:
            through(r, chaos)
            chaos.fail_creates = 503
            await start(r, activity_attempts=2)
            st = await r.wait_cycles(1)
            assert st.health == "failing" and st.last_error, st
            crm_mid = r.crm_contacts()
            assert len(crm_mid) > len(r.sc.crm_seed.contact_ids), "the platform creates landed before the outage"

            chaos.fail_creates = None
            st = await r.cycle()  # the next cycle resumes the unfinished actions
            st = await r.cycle()  # and then sees only our own writes come back
            assert st.health == "active" and st.last_error is None, st
            assert (st.last_counts.created, st.last_counts.updated) == (0, 0), st.last_counts
        finally:
            chaos.stop()
        mailbox, crm = r.mailbox_contacts(), r.crm_contacts()
        assert not emails_twice(mailbox.values()), "a person twice in the mailbox"
        assert not emails_twice(crm.values()), "a person twice on the platform"
        links = r.links()
        assert len(set(links.values())) == len(links)
        # Everything the outage held back arrived: every CRM record the user owns is
        # in the mailbox, linked once.
        owned = {c.id for c in r.sc.crm.list_contacts(r.sc.org_id, owner_id=r.sc.user_id)}
        waiting = {i.external_id for s in ("quarantined", "duplicate", "conflict", "deferred") for i in r.items(s)}
        assert owned - set(links.values()) <= waiting
        with r.sc.sessions() as s:
            assert repo.count_items_by_status(s, r.cid).get("pending", 0) == 0
            assert not repo.actions_by_status(s, r.cid, ["planned", "platform_done", "mailbox_started"])
