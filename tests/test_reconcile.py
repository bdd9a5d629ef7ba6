"""Reconciliation: both ends compared independently of Concord's bookkeeping, on the
real Temporal dev server (tests/e2e_rig.py), and the pure comparison."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import sqlalchemy as sa

from models.contact import Contact
from models.record import SideRecord
from store import reconcile as reports
from store import repo
from sync.matching import CandidateIndex
from sync.reconcile import ItemInfo, LinkPair, compare
from tests.e2e_rig import rig
from tests.history_scan import found_in, history_text
from workers import cli
from workers import client as api


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


def test_compare_finds_each_kind_of_inconsistency():
    ann = Contact(given_name="Ann", family_name="Lee", emails=("ann@example.com",), job_title="CTO")
    bob = Contact(given_name="Bob", family_name="Stone", emails=("bob@example.com",))
    mailbox = {"m1": ann, "m3": bob, "m4": bob.model_copy(update={"phones": ("+1 555 0100",)}), "m5": None}
    platform = {"p1": ann.model_copy(update={"job_title": "CEO", "emails": ("ANN@example.com",)}),
                "p9": Contact(given_name="Owned", family_name="Person", emails=("o@example.com",))}
    links = [LinkPair(1, "m1", "p1"), LinkPair(2, "m2", "p2")]
    now = time.time()
    items = {("mailbox", "m5"): ItemInfo(7, "quarantined", None, now),
             ("mailbox", "mx"): ItemInfo(8, "pending", None, now - 10_000)}
    f = compare(mailbox=mailbox, platform=platform, links=links, in_scope=lambda pid: pid == "p9", items=items,
                new_index=CandidateIndex, now=now, stale_s=3600)
    # the address's case is no difference; the title is
    assert [(d["link_id"], d["fields"]) for d in f.differing] == [(1, ["job_title"])]
    assert f.differing[0]["values"]["job_title"] == {"mailbox": "CTO", "platform": "CEO"}
    gone = [m for m in f.missing if m["type"] == "linked_gone"]
    assert gone == [{"type": "linked_gone", "link_id": 2, "mailbox_id": "m2", "platform_id": "p2",
                     "gone": ["mailbox", "platform"], "repairable": True}]
    unpaired = {(m["side"], m["external_id"]): m["repairable"] for m in f.missing if m["type"] == "no_partner"}
    # a quarantined record is visible already: listed, not re-staged
    assert unpaired == {("mailbox", "m3"): True, ("mailbox", "m4"): True, ("mailbox", "m5"): False,
                        ("platform", "p9"): True}
    assert [d["external_ids"] for d in f.duplicates if d["type"] == "same_person"] == [["m3", "m4"]]
    assert [(u["item_id"], u["status"]) for u in f.unfinished] == [(8, "pending")]


def _reconcile(r, **kw):
    return api.reconcile_now(r.client, r.sc.sessions, r.cid, task_queue=r.task_queue, **kw)


def _findings(out):
    (rep,) = [x for x in out["reports"] if x["kind"] == "contacts"]
    return rep


async def test_reconcile_finds_repairs_and_the_next_cycle_fixes(temporal_env, urls):
    store_url, crm_url = urls
    async with rig(temporal_env, store_url, crm_url, provider="google") as r:
        await r.start()
        await r.cycle()
        base = _findings(await _reconcile(r, repair=False))
        assert base["counts"]["found"]["differing"] == 0, base["findings"]["differing"][:3]
        assert not [m for m in base["findings"]["missing"] if m["type"] == "linked_gone"]
        assert base["counts"]["restaged"] == 0

        links = r.links()
        mids = [m for m in r.sc.resource_names if m in links]
        m_edit, m_gone, m_dup = mids[0], mids[1], mids[2]
        crm = sa.create_engine(crm_url)
        with crm.begin() as conn:  # behind Concord's back: no change in the CRM's feed
            conn.execute(sa.text("UPDATE crm_contacts SET job_title = 'Bypassed Title' WHERE id = :id"),
                         {"id": links[m_edit]})
            conn.execute(sa.text("UPDATE crm_contacts SET deleted = 1 WHERE id = :id"), {"id": links[m_gone]})
        crm.dispose()
        dup_id = r.sc.mailbox.seed([r.mailbox_contacts()[m_dup]])[0]
        stuck = "people/c-reconcile-stuck"
        with r.sc.sessions.begin() as s:
            repo.stage_records(s, r.cid, "mailbox", [SideRecord(side="mailbox", external_id=stuck, deleted=True)],
                               "test")
            s.execute(sa.update(repo.items).where(repo.items.c.external_id == stuck)
                      .values(updated_at=time.time() - 7200))

        out = await _reconcile(r)
        rep = _findings(out)
        f = rep["findings"]
        diff = [d for d in f["differing"] if d["mailbox_id"] == m_edit]
        assert diff and diff[0]["fields"] == ["job_title"] and diff[0]["repair"] == "restaged"
        assert diff[0]["values"]["job_title"]["platform"] == "Bypassed Title"
        gone = [m for m in f["missing"] if m["type"] == "linked_gone" and m["mailbox_id"] == m_gone]
        assert gone and gone[0]["gone"] == ["platform"] and gone[0]["repair"] == "restaged"
        assert any(d["type"] == "same_person" and d["side"] == "mailbox" and set(d["external_ids"]) == {m_dup, dup_id}
                   for d in f["duplicates"])
        assert [u["status"] for u in f["unfinished"] if u["external_id"] == stuck] == ["pending"]
        assert rep["counts"]["restaged"] >= 2
        assert rep["counts"]["differing_fields"] == {"job_title": 1}

        # Counts, ids and field names in the workflow's history; no person's values.
        history = await r.client.get_workflow_handle(out["workflow_id"]).fetch_history()
        text = history_text(history)
        assert '"reconcile.run"' in text
        needles = {"Bypassed Title"}
        for c in list(r.mailbox_contacts().values()) + [c.contact for c in r.sc.crm.list_contacts(r.sc.org_id)]:
            needles.update(c.email_addresses())
            needles.update(v for v in (c.given_name, c.family_name, c.company, c.job_title) if len(v) > 3)
        assert not found_in(text, needles)

        # The next cycles merge what was re-staged: both ends agree again.
        await r.cycle()
        await r.cycle()
        mailbox = r.mailbox_contacts()
        assert mailbox[m_edit].job_title == "Bypassed Title"
        assert m_gone not in mailbox  # the platform's deletion, propagated by the delete policy
        after = _findings(await _reconcile(r, repair=False))
        assert not [d for d in after["findings"]["differing"] if d["mailbox_id"] == m_edit]
        assert not [m for m in after["findings"]["missing"] if m["type"] == "linked_gone"]
        assert not [u for u in after["findings"]["unfinished"] if u["external_id"] == stuck]
        with r.sc.sessions() as s:
            assert len(reports.latest_reports(s, r.cid)) == 3


async def test_scheduled_workflow_and_cli(temporal_env, urls, capsys):
    store_url, crm_url = urls
    async with rig(temporal_env, store_url, crm_url, provider="microsoft") as r:
        await r.start()
        h = await api.start_reconcile(r.client, r.sc.org_id, interval_s=3600, task_queue=r.task_queue, run_first=True)
        try:
            deadline = time.monotonic() + 90
            while (st := await api.reconcile_state(r.client, r.sc.org_id)).runs < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert st.last.results and st.last.results[0].connection_id == r.cid
            assert st.next_run_at is None or st.next_run_at > time.time()
            await h.signal("run_now")
            while (st := await api.reconcile_state(r.client, r.sc.org_id)).runs < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        finally:
            await h.terminate("test over")

        target = r.client.service_client.config.target_host
        rc = await asyncio.to_thread(cli.run, ["--temporal", target, "reconcile", r.cid, "--json", "--store-url",
                                               store_url, "--task-queue", r.task_queue, "--report-only"])
        out = capsys.readouterr()
        assert rc == 0, out.err
        doc = json.loads(out.out)
        assert doc["connection_id"] == r.cid and doc["reports"][0]["counts"]["found"]["differing"] == 0

        rc = await asyncio.to_thread(cli.run, ["--temporal", target, "reconcile", "no-such-conn", "--json",
                                               "--store-url", store_url])
        err = capsys.readouterr().err
        assert rc != 0 and len(err.strip().splitlines()) == 1 and "no-such-conn" in err
