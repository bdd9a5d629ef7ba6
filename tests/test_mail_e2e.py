"""Email logging end to end: the real mailbox and organisation workflows on the Temporal
dev server, the worker's own activities and connector factory, Gmail and Graph
emulators reached by google-api-python-client and httpx, the reference CRM.

It runs the demo's stages (workers/mail_demo.py) and checks each on the platform, as a
CRM user would, then scans every workflow's history for subjects, addresses and bodies.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from models.mail_log import Association
from tests.e2e_rig import throwaway_keyring
from tests.history_scan import found_in, history_text
from workers import client as api
from workers.mail_demo import MailStages
from workers.mail_scenario import MailScenario, message
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker

pytestmark = pytest.mark.e2e


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


async def stages_state(env, sc):
    return await api.state(env.client, sc.connections["ann"])


async def test_email_logging_stages_on_the_dev_server(temporal_env, urls):
    sc = MailScenario(*urls)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    printed: list[str] = []
    try:
        async with make_worker(temporal_env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            stages = MailStages(temporal_env.client, sc, printed.append, task_queue=tq, poll_interval_s=3600)
            o = await stages.run()
            act = stages.activity
            pat = {Association(object_type="contact", object_id=sc.pat.id),
                   Association(object_type="account", object_id=sc.northwind.id),
                   Association(object_type="opportunity", object_id=sc.deal.id)}

            # 1. each message of the shared thread once, with both users, on contact, account and deal
            logged = {a.key: a for a in sc.crm.mail.list_email_activities(sc.org_id)}
            for key in (o.first_id, o.reply_id):
                assert set(logged[key].users) == {"ann", "bob"}
                assert pat <= set(logged[key].associations)
            assert logged[o.first_id].subject == "Renewal pricing"  # Ann and Bob log subjects
            assert logged[o.first_id].thread_key == logged[o.reply_id].thread_key == o.first_id
            assert len([k for k in logged if k in (o.first_id, o.reply_id)]) == 2

            # 2. the shared-domain account waited in review; the answer attached both; bulk skipped; lead captured
            assert o.review_id is not None
            assert {sc.contoso_east.id, sc.contoso_west.id} <= {a.object_id for a in act(o.ambiguous_id).associations}
            bulk = stages.item("ann", o.bulk_item)
            assert (bulk.status, bulk.rule) == ("skipped", "bulk")
            assert o.lead_id

            # 3. label added later
            assert o.label_rule_before == "no_label"
            assert stages.item("cy", o.label_item).rule == "logged_label" and act(o.label_id) is not None

            # 4. private wins
            private = act(o.private_id)
            assert private.visibility == "private" and private.subject is None
            assert set(private.users) == {"ann", "dee"}

            # 5. the converted lead's mail moved to the contact
            moved = set(act(o.intro_id).associations)
            assert Association(object_type="contact", object_id=o.converted_contact) in moved
            assert Association(object_type="lead", object_id=o.lead_id) not in moved

            # send 1: the CRM reply went out through Ann's Gmail, in Pat's thread, logged once on the record
            reply = stages.outgoing(o.reply_item)
            assert reply.state == "sent" and reply.message_id == o.reply_message_id
            ann_box = sc.gmail.mailbox(sc.people["ann"].email)
            thread_of = {m.message_id.strip("<>"): m.thread_id for m in list(ann_box.messages.values())}
            assert reply.provider_thread_id == thread_of[o.first_id]
            sent_copies = [m for m in list(ann_box.messages.values())
                           if "SENT" in m.label_ids and m.message_id.strip("<>") == o.reply_message_id]
            assert len(sent_copies) == 1
            logged = [a for a in sc.crm.mail.list_email_activities(sc.org_id) if a.key == o.reply_message_id]
            assert len(logged) == 1 and pat <= set(logged[0].associations)
            assert logged[0].thread_key == o.first_id
            # Pat's answer to it lands on the same record, in the same thread
            answer = act(o.pat_answer_id)
            assert Association(object_type="contact", object_id=sc.pat.id) in answer.associations
            assert answer.thread_key == o.first_id
            # send 2: the mistyped address failed for good, with its reason
            bad = stages.outgoing(o.bad_item)
            assert (bad.state, bad.reason) == ("failed", "invalid_recipient")

            # the demo printed each stage
            text = "\n".join(printed)
            for stage in ("mail 1", "mail 2", "mail 3", "mail 4", "mail 5", "send 1", "send 2"):
                assert f"== {stage}" in text

            # an error path: the CRM loses its activities table while Ann's next message is
            # written (the database error quotes the INSERT and its parameters); the attempt
            # fails, is retried, and succeeds once the table is back
            failing, failing_id = message("Pat Prospect <pat@northwind.example>", [sc.address("ann")],
                                          "Quarterly numbers", "revenue up")
            o.secrets += ["Quarterly numbers", "revenue up"]
            sc.deliver("ann", failing)
            with sc.crm.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE crm_email_activities RENAME TO crm_email_activities_away")
            handle = temporal_env.client.get_workflow_handle(f"mailbox-sync/{sc.connections['ann']}")
            before = (await stages_state(temporal_env, sc)).cycles
            await api.wake(temporal_env.client, sc.connections["ann"], "test")
            for _ in range(300):
                pending = (await handle.describe()).raw_description.pending_activities
                if any(p.attempt > 1 and p.activity_type.name == "mail.write" for p in pending):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("mail.write never failed")
            with sc.crm.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE crm_email_activities_away RENAME TO crm_email_activities")
            await api.wait_settled(temporal_env.client, sc.connections["ann"], before, timeout=120)
            assert act(failing_id) is not None
            history = history_text(await handle.fetch_history())
            assert "lastFailure" in history, "the scan must cover a failed attempt"

            # nobody's level is "full": no body was fetched, so none is in the store or the CRM
            bodies = ["Our budget is 48k", "We can do 45k", "private words", "meet Lee", "see attached"]
            for engine in (sc.sessions.kw["bind"], sc.crm.engine):
                with engine.connect() as conn:
                    for table in engine.dialect.get_table_names(conn):
                        rows = conn.exec_driver_sql(f'SELECT * FROM "{table}"').fetchall()
                        dump = json.dumps([tuple(r) for r in rows], default=str)
                        assert not [b for b in bodies if b in dump], table

            # nothing in any history: no subject, no address, no body
            handles = [f"mailbox-sync/{cid}" for cid in sc.connections.values()] + [f"org-sync/{sc.org_id}"]
            texts = [history_text(await temporal_env.client.get_workflow_handle(h).fetch_history()) for h in handles]
            assert all("mail.plan" in t for t in texts[:-1]) and "mail.read_platform" in texts[-1]
            leaked = found_in("\n".join(texts), o.secrets + [p.email for p in sc.people.values()])
            assert not leaked, f"mail content in workflow history: {leaked}"
    finally:
        sc.close()
