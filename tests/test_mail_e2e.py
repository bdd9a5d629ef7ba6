"""Email logging end to end: the real mailbox and organisation workflows on the Temporal
dev server, the worker's own activities and connector factory, Gmail and Graph
emulators reached by google-api-python-client and httpx, the reference CRM.

One organisation, four mailboxes (workers/mail_scenario.py). Each stage puts mail in
the mailboxes, wakes them as a push would, and checks what a CRM user sees. The
histories of every workflow are then scanned for subjects, addresses and bodies.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from models.mail_log import Association
from store import repo
from tests.e2e_rig import throwaway_keyring
from tests.history_scan import found_in, history_text
from workers import client as api
from workers.mail_scenario import MailScenario, message
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker

pytestmark = pytest.mark.e2e


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


async def _sync(env, sc: MailScenario, who: list[str]) -> dict:
    states = await asyncio.gather(*(api.sync_now(env.client, sc.org_id, sc.connections[w]) for w in who))
    return dict(zip(who, states))


def _items(sc: MailScenario, who: str) -> dict:
    with sc.sessions() as s:
        rows = repo.items_by_status(s, sc.connections[who], ["pending", "applied", "skipped", "quarantined",
                                                             "deferred"], kind="mail")
    return {r.external_id: r for r in rows}


async def test_email_logging_stages_on_the_dev_server(temporal_env, urls):
    sc = MailScenario(*urls)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    acts = build_activities(*urls, keyring=throwaway_keyring())
    secrets = []
    try:
        async with make_worker(temporal_env.client, acts, task_queue=tq):
            for who, cid in sc.connections.items():
                await api.start_sync(temporal_env.client, cid, sc.org_id, sc.people[who].provider, kinds=["mail"],
                                     poll_interval_s=3600, task_queue=tq)
            everyone = list(sc.people)
            for who in everyone:
                await api.wait_for_cycles(temporal_env.client, sc.connections[who], 1)

            # 1. a prospect writes to Ann and Bob; Ann answers from Gmail: each message once, both users
            first, first_id = message("Pat Prospect <pat@northwind.example>", [sc.address("ann"), sc.address("bob")],
                                      "Renewal pricing", "Our budget is 48k", )
            reply, reply_id = message(sc.address("ann"), ["Pat Prospect <pat@northwind.example>"], "Re: Renewal pricing",
                                      "We can do 45k", cc=[sc.address("bob")], references=[first_id])
            secrets += ["Renewal pricing", "Our budget is 48k", "We can do 45k", "pat@northwind.example"]
            sc.deliver("ann", first)
            sc.deliver("bob", first)
            sc.deliver("ann", reply, sent=True)
            sc.deliver("bob", reply)
            await _sync(temporal_env, sc, ["ann", "bob"])
            acts_now = {a.key: a for a in sc.crm.mail.list_email_activities(sc.org_id)}
            assert set(acts_now) == {first_id, reply_id}
            for key in (first_id, reply_id):
                assert set(acts_now[key].users) == {"ann", "bob"}
                assert {Association(object_type="contact", object_id=sc.pat.id),
                        Association(object_type="account", object_id=sc.northwind.id),
                        Association(object_type="opportunity", object_id=sc.deal.id)} <= set(acts_now[key].associations)
                assert acts_now[key].subject == "Renewal pricing" if key == first_id else True
            assert acts_now[first_id].thread_key == acts_now[reply_id].thread_key == first_id

            # 2. an ambiguous account (two share contoso.example) waits in review; bulk mail is skipped
            amb, amb_id = message("Pat Prospect <pat@northwind.example>", [sc.address("ann"), "Lee <lee@contoso.example>"],
                                  "Intro to Contoso", "meet Lee")
            bulk, _ = message("Northwind News <news@northwind.example>", [sc.address("ann")], "Monthly digest", "deals",
                              headers={"List-Unsubscribe": "<mailto:unsub@northwind.example>", "Precedence": "bulk"})
            secrets += ["Intro to Contoso", "lee@contoso.example", "Monthly digest"]
            amb_mid = sc.deliver("ann", amb)
            bulk_mid = sc.deliver("ann", bulk)
            # 3. Ann writes to someone new: a lead is captured and the mail logged on it
            intro, intro_id = message(sc.address("ann"), ["Jane Doe <jane.doe@newco.example>"], "Hello from Acme", "hi")
            secrets += ["Hello from Acme", "jane.doe@newco.example", "Jane Doe"]
            sc.deliver("ann", intro, sent=True)
            st = (await _sync(temporal_env, sc, ["ann"]))["ann"]
            items = _items(sc, "ann")
            assert items[bulk_mid].status == "skipped" and items[bulk_mid].rule == "bulk"
            review_id = items[amb_mid].review_id
            assert items[amb_mid].status == "applied" and review_id is not None
            assert st.kinds["mail"].store.items.get("skipped", 0) >= 1
            jane = sc.platform.people_by_email(sc.org_id, ["jane.doe@newco.example"])["jane.doe@newco.example"][0]
            assert jane.kind == "lead" and jane.name == "Jane Doe"
            assert Association(object_type="lead", object_id=jane.id) in sc.crm.mail.get_activity_by_key(
                sc.org_id, intro_id).associations
            # the answer travels as a signal (review id and choice only) and attaches both accounts
            await api.resolve(temporal_env.client, sc.sessions, sc.connections["ann"], review_id, "attach")
            await _sync(temporal_env, sc, ["ann"])
            got = {a.object_id for a in sc.crm.mail.get_activity_by_key(sc.org_id, amb_id).associations}
            assert {sc.contoso_east.id, sc.contoso_west.id} <= got

            # 4. Cy logs only what he labels: skipped, then labelled "CRM", then logged
            cy_mail, cy_id = message("Pat Prospect <pat@northwind.example>", [sc.address("cy")], "Contract draft",
                                     "see attached")
            secrets += ["Contract draft"]
            cy_mid = sc.deliver("cy", cy_mail)
            await _sync(temporal_env, sc, ["cy"])
            assert _items(sc, "cy")[cy_mid].rule == "no_label"
            assert sc.crm.mail.get_activity_by_key(sc.org_id, cy_id) is None
            sc.label("cy", cy_mid, "CRM")
            await _sync(temporal_env, sc, ["cy"])
            assert _items(sc, "cy")[cy_mid].rule == "logged_label"
            assert sc.crm.mail.get_activity_by_key(sc.org_id, cy_id) is not None

            # 5. a thread Dee (private) shares with Ann stays private, whoever logs it first
            private, private_id = message("Pat Prospect <pat@northwind.example>", [sc.address("ann"), sc.address("dee")],
                                          "Personal matter", "private words")
            secrets += ["Personal matter", "private words"]
            sc.deliver("ann", private)
            sc.deliver("dee", private)
            await _sync(temporal_env, sc, ["ann"])
            assert sc.crm.mail.get_activity_by_key(sc.org_id, private_id).subject == "Personal matter"
            await _sync(temporal_env, sc, ["dee"])
            act = sc.crm.mail.get_activity_by_key(sc.org_id, private_id)
            assert act.visibility == "private" and act.subject is None and set(act.users) == {"ann", "dee"}

            # lead conversion: the platform converts Jane; her mail moves with her
            conv = sc.crm.mail.convert_lead(sc.org_id, jane.id)
            await api.wake_org(temporal_env.client, sc.org_id, "test")
            for _ in range(100):
                assocs = sc.crm.mail.get_activity_by_key(sc.org_id, intro_id).associations
                if Association(object_type="contact", object_id=conv.contact_id) in assocs:
                    break
                await asyncio.sleep(0.1)
            assert Association(object_type="contact", object_id=conv.contact_id) in assocs
            assert Association(object_type="lead", object_id=jane.id) not in assocs

            # nothing in any history: no subject, no address, no body
            handles = [f"mailbox-sync/{cid}" for cid in sc.connections.values()] + [f"org-sync/{sc.org_id}"]
            texts = [history_text(await temporal_env.client.get_workflow_handle(h).fetch_history()) for h in handles]
            assert all('"mail.plan"' in t or "mail.read_platform" in t for t in texts)
            leaked = found_in("\n".join(texts), secrets)
            assert not leaked, f"mail content in workflow history: {leaked}"
    finally:
        sc.close()
