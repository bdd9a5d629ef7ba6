"""One organisation, a Google mailbox and a Microsoft mailbox side by side: a person
both users know is one CRM record, and an edit made in one mailbox reaches the other."""

from __future__ import annotations

import uuid

from tests.e2e_rig import Rig, throwaway_keyring
from workers import client as api
from workers.scenario import build_scenario, connect_mailbox, make_mailbox
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker


async def test_google_and_microsoft_mailboxes_share_one_crm(temporal_env, tmp_path):
    store_url, crm_url = f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"
    g = build_scenario(store_url, crm_url, provider="google", connection_id=f"g-{uuid.uuid4().hex[:6]}",
                       n_mailbox=12, n_crm=10, near_duplicates=0, settings={"policy": "newest_wins",
                                                                             "platform_scope": "linked"})
    ms = make_mailbox("microsoft")
    ms_cid = f"m-{uuid.uuid4().hex[:6]}"
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(temporal_env.client, build_activities(store_url, crm_url, keyring=throwaway_keyring()),
                               task_queue=tq):
            rg = Rig(temporal_env, g, tq)
            await rg.start()
            g_links = rg.links()
            idx = next(i for i, m in enumerate(g.resource_names) if m in g_links)
            shared = g.mailbox_contacts[idx]
            # The second user knows the same person, typed a little differently, plus one of their own.
            ms_ids = ms.seed([shared.model_copy(update={"emails": tuple(e.upper() for e in shared.email_addresses())}),
                              shared.model_copy(update={"given_name": "Zed", "family_name": "Quorum",
                                                        "emails": ("zed@quorum.example",)})])
            connect_mailbox(g.sessions, org_id=g.org_id, connection_id=ms_cid, user_id="user_2", mailbox=ms)
            await api.start_sync(temporal_env.client, ms_cid, g.org_id, "microsoft", poll_interval_s=3600,
                                 task_queue=tq)
            rm = Rig(temporal_env, g, tq)
            rm.cid = ms_cid
            st = await rm.wait_cycles(1)
            assert st.last_error is None
            m_links = rm.links()
            crm_id = g_links[g.resource_names[idx]]
            assert m_links[ms_ids[0]] == crm_id, "the shared person must be one CRM record"
            named = [c for c in g.crm.list_contacts(g.org_id)
                     if (c.contact.given_name, c.contact.family_name) == (shared.given_name, shared.family_name)]
            assert len(named) == 1
            # An edit in the Google mailbox reaches the CRM and then the Microsoft mailbox.
            g.mailbox.edit(g.resource_names[idx], job_title="Chief Scientist")
            await rg.cycle()
            assert g.crm.get_contact(g.org_id, crm_id).contact.job_title == "Chief Scientist"
            await rm.cycle()
            assert ms.contacts()[ms_ids[0]].job_title == "Chief Scientist"
    finally:
        ms.server.stop()
        g.close()
