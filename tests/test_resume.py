"""Resuming interrupted work costs what the interruption left, not the whole job again.

- Mailbox creates sent before a crash are looked up by marker in one listing per
  chunk, not one listing per create (0.57 s each at 5,400 contacts made the write
  time out on heartbeat six times in a row and never progress).
- A delta fetch whose attempt fails resumes from the page it had reached.
"""

from __future__ import annotations

import pytest

from connectors.google_people import person_marker
from connectors.protocols import WriteRequest
from models.contact import Contact
from models.workflow import CycleRef, MailboxSyncInput
from store import repo
from tests.chaos_proxy import Chaos
from tests.e2e_rig import rig, throwaway_keyring
from tests.test_write_outage import through
from workers.mailboxes import _static_mailbox
from workers.scenario import build_scenario
from workers.worker import build_activities
from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id


def _planned(store_url: str, crm_url: str, connection_id: str):
    """The contacts pipeline with a first cycle read and planned, not yet written."""
    acts = build_activities(store_url, crm_url, keyring=throwaway_keyring()).pipelines["contacts"]
    ref = CycleRef(connection_id=connection_id, cycle_id="t-1")
    acts.fetch_mailbox(ref)
    acts.fetch_platform(ref)
    acts.plan(ref)
    return acts, ref


def test_creates_cut_off_by_a_crash_are_found_in_one_listing(tmp_path):
    store_url, crm_url = f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"
    sc = build_scenario(store_url, crm_url, connection_id="resume-1", n_mailbox=1100, n_crm=80, near_duplicates=0)
    try:
        acts, ref = _planned(store_url, crm_url, sc.connection_id)
        with sc.sessions() as s:
            info, _ = acts._connection(s, sc.connection_id)
            creates = [a for a in repo.actions_by_status(s, sc.connection_id, ["planned"])
                       if a.decision["rule"] == "created_in_mailbox"]
        assert len(creates) >= 8
        # The crashed attempt: it marked these started and sent them; the answers were lost.
        crashed = creates[:8]
        mailbox = _static_mailbox(info)
        sent = mailbox.create_many([WriteRequest(key=f"x{i}", content=Contact.model_validate(a.decision["writes"][0]["content"]),
                                                 marker=f"concord:{a.idempotency_key}:m0")
                                    for i, a in enumerate(crashed)])
        assert all(r.error is None for r in sent)
        with sc.sessions.begin() as s:
            for a in crashed:
                repo.update_action(s, int(a.id), status="mailbox_started")
        lists_before = sc.people.stats()["ops"].get("list", 0)

        acts.write(ref)

        listings = sc.people.stats()["ops"].get("list", 0) - lists_before
        pages = -(-len(sc.people.all_persons()) // 1000)
        assert listings <= pages, f"{listings} list calls for {len(crashed)} lost creates ({pages} pages each)"
        markers = [person_marker(p) for p in sc.people.all_persons() if person_marker(p)]
        assert len(markers) == len(set(markers)), "a create sent before the crash was sent again"
        with sc.sessions() as s:
            assert not repo.actions_by_status(s, sc.connection_id, ["planned", "platform_done", "mailbox_started"])
    finally:
        sc.close()


@pytest.mark.parametrize("provider", ["google", "microsoft"])
async def test_a_failed_fetch_attempt_resumes_from_its_page(temporal_env, tmp_path, provider):
    store_url, crm_url = f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"
    async with rig(temporal_env, store_url, crm_url, provider=provider, n_mailbox=300, n_crm=10) as r:
        chaos = Chaos(r.sc.emulator.base_url, provider).start()
        try:
            through(r, chaos, page_size=20)  # 16 pages
            # Page 9 fails more times than a read is repeated in place: the attempt fails.
            chaos.fail_nth = {n: 503 for n in range(9, 15)}
            await r.client.start_workflow(
                MailboxSyncWorkflow.run,
                MailboxSyncInput(connection_id=r.cid, org_id=r.sc.org_id, provider=provider, poll_interval_s=3600,
                                 heartbeat_timeout_s=5),
                id=workflow_id(r.cid), task_queue=r.task_queue)
            st = await r.wait_cycles(1)
            assert st.last_error is None and st.last_counts.fetched >= 300
        finally:
            chaos.stop()
        # 16 pages and one sync-token page at most; starting over would read pages 1-8 again.
        history = await r.client.get_workflow_handle(f"mailbox-sync/{r.cid}").fetch_history()
        attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                    if e.HasField("activity_task_started_event_attributes")]
        assert max(attempts) >= 2, "the refusals must outlast the in-place repeats"
        assert chaos.stats["refused_503"] == 6
        assert chaos.stats["forwarded_list"] <= 17, chaos.stats


def test_mailbox_writes_are_sent_while_the_next_chunk_is_written_to_the_platform(tmp_path, monkeypatch):
    """A provider's round trips overlap the platform's writes of the next chunk (the
    sends run on a thread of their own), and every action still ends done, each
    mailbox create sent once."""
    import time

    from activities import executor
    from platforms.reference_crm.service import ReferenceCrm

    # Several chunks from a small world: the first two hold contacts linked by similarity
    # (an update on each side), then platform creates, then mailbox creates.
    monkeypatch.setattr(executor, "CHUNK", 20)
    store_url, crm_url = f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"
    sc = build_scenario(store_url, crm_url, connection_id="overlap-1", n_mailbox=150, n_crm=300, near_duplicates=40)
    spans: dict[str, list[tuple[float, float]]] = {"platform": [], "mailbox": []}

    def timed(fn):
        def run(*args, **kwargs):
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                spans["platform"].append((start, time.monotonic()))
        return run

    # Spies only: each calls through to the real method.
    monkeypatch.setattr(ReferenceCrm, "write_contacts", timed(ReferenceCrm.write_contacts))
    # A mailbox write's span: from the emulator taking the request (its 0.3 s round trip
    # starts there) to the contacts being written.
    sc.people.configure(latency={"create": 0.3, "update": 0.3})
    taken: list[float] = []
    latency_for = sc.people.latency_for

    def taking(op: str) -> float:
        if op in ("create", "update"):
            taken.append(time.monotonic())
        return latency_for(op)

    def writing(fn):
        def run(body):
            try:
                return fn(body)
            finally:
                spans["mailbox"].append((taken[-1], time.monotonic()))
        return run

    sc.people.latency_for = taking
    sc.people.batch_create = writing(sc.people.batch_create)
    sc.people.batch_update = writing(sc.people.batch_update)
    try:
        acts, ref = _planned(store_url, crm_url, sc.connection_id)
        with sc.sessions() as s:
            to_mailbox = sum(1 for a in repo.actions_by_status(s, sc.connection_id, ["planned"])
                             if a.decision["rule"] == "created_in_mailbox")
        assert to_mailbox > 100
        persons_before = len(sc.people.all_persons())
        acts.write(ref)
        with sc.sessions() as s:
            assert not repo.actions_by_status(s, sc.connection_id, ["planned", "platform_done", "mailbox_started"])
        markers = [person_marker(p) for p in sc.people.all_persons() if person_marker(p)]
        assert len(markers) == len(set(markers)), "a mailbox write was sent twice"
        assert len(sc.people.all_persons()) == persons_before + to_mailbox, "each CRM record created in the mailbox once"
        assert spans["platform"] and spans["mailbox"]
        overlapping = [(p, m) for p in spans["platform"] for m in spans["mailbox"] if p[0] < m[1] and m[0] < p[1]]
        assert overlapping, "no platform write ran while a mailbox request was out"
    finally:
        sc.close()
