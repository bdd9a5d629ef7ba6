"""The calendar end to end: the real mailbox and organisation workflows on the Temporal
dev server, the worker's own activities and connector factories, Google Calendar
reached by google-api-python-client, the reference PM platform in both flavours.

It runs the demo's stages (workers/calendar_demo.py) and checks each on the platform,
as a platform user would, then scans every workflow's history for titles, attendees
and descriptions, including the history of a failed and retried write.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e_rig import throwaway_keyring
from tests.history_scan import found_in, history_text
from workers import client as api
from workers.calendar_demo import CalendarStages
from workers.calendar_scenario import CalendarScenario, soon, wall
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker
from models.event import Event
from datetime import timedelta

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("flavour", ["native", "singles"])
async def test_calendar_stages_on_the_dev_server(temporal_env, tmp_path, flavour):
    urls = f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"
    sc = CalendarScenario(*urls, flavour=flavour)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    printed: list[str] = []
    try:
        async with make_worker(temporal_env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            stages = CalendarStages(temporal_env.client, sc, printed.append, task_queue=tq, poll_interval_s=3600)
            o = await stages.run()
            recs = sc.records()

            # 1. the series and its moved, edited and cancelled instances, each once
            uid, keys = o.series_uid, o.instance_keys
            assert {k for k in recs if k[0] == uid} == {(uid, ""), (uid, keys[1]), (uid, keys[2]), (uid, keys[3])}
            assert recs[(uid, keys[2])].content.title == "Weekly product sync: launch review"
            assert recs[(uid, keys[3])].content.status == "cancelled"

            # 2. one record for the meeting on two calendars, with Cy's answer and Ann's content
            meeting = [k for k in recs if k[0] == o.meeting_uid]
            assert meeting == [(o.meeting_uid, "")]
            m = recs[(o.meeting_uid, "")].content
            assert m.title == "Pricing workshop" and m.response_of(sc.people["cy"].email) == "accepted"

            # 3. the platform's event is in Ann's calendar, and Google invited Cy
            anns = [e for e in sc.calendar_events("ann") if e.title == "Customer site visit"]
            assert len(anns) == 1
            assert [e for e in sc.calendar_events("cy") if e.uid == anns[0].uid]

            # 4. the fixed event got the default project; the 30-hour one waits in quarantine; the
            # time conflict was answered "mailbox": Ann's time is on the platform
            budget = recs[(o.conflict_uid, "")].content
            assert budget.project == sc.general
            assert not [r for r in recs.values() if r.content.title == o.unfixable_title]
            assert o.conflict_review is not None
            assert budget.start.endswith(wall(soon(4, 14))[11:])

            text = "\n".join(printed)
            for stage in ("calendar 1", "calendar 2", "calendar 3", "calendar 4"):
                assert f"== {stage}" in text

            # an error path: the platform loses its events table while Ann's next event is written;
            # the write fails, is retried (the failure in history), and succeeds once it is back
            start = soon(6, 16)
            sc.write("ann", Event(title="Quarterly numbers", description="revenue up", organizer=sc.people["ann"].email,
                                  start=wall(start), end=wall(start + timedelta(hours=1)), start_tz="Europe/Paris",
                                  end_tz="Europe/Paris", project=sc.launch))
            o.secrets += ["Quarterly numbers", "revenue up"]
            with sc.crm.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE pm_events RENAME TO pm_events_away")
            cid = sc.connections["ann"]
            handle = temporal_env.client.get_workflow_handle(f"mailbox-sync/{cid}")
            before = (await api.state(temporal_env.client, cid)).cycles
            await api.wake(temporal_env.client, cid, "test")
            for _ in range(300):
                pending = (await handle.describe()).raw_description.pending_activities
                if any(p.attempt > 1 and p.activity_type.name.startswith("calendar.") for p in pending):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("no calendar activity failed")
            with sc.crm.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE pm_events_away RENAME TO pm_events")
            await api.wait_settled(temporal_env.client, cid, before, timeout=120)
            assert [r for r in sc.records().values() if r.content.title == "Quarterly numbers"]

            # nothing in any history: no title, attendee address or description
            handles = [f"mailbox-sync/{c}" for c in sc.connections.values()] + [f"org-sync/{sc.org_id}"]
            texts = [history_text(await temporal_env.client.get_workflow_handle(h).fetch_history()) for h in handles]
            assert all("calendar.plan" in t for t in texts[:-1]) and "calendar.read_platform" in texts[-1]
            assert "lastFailure" in texts[0], "the scan must cover a failed attempt"
            leaked = found_in("\n".join(texts), o.secrets + [p.email for p in sc.people.values()])
            assert not leaked, f"calendar content in workflow history: {leaked}"
    finally:
        sc.close()
