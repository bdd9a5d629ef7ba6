"""Contacts sync end to end on the real Temporal dev server (see tests/e2e_rig.py)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from platforms.reference_crm.rules import Rule
from store import repo
from tests.history_scan import _decoded_payloads, _without_payload_data
from tests.e2e_rig import rig
from models.workflow import SyncState
from workers import client as api


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


#: The whole contacts suite runs for both mailbox providers.
pytestmark = pytest.mark.parametrize("provider", ["google", "microsoft"])


def _equalish(a, b) -> bool:
    """Both ends agree on what the sync owns (an address's case carries no meaning)."""
    def key(c):
        return (c.given_name, c.family_name, {e.casefold() for e in c.email_addresses()}, c.company, c.job_title)
    return key(a) == key(b)


async def test_initial_two_way_sync(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider) as r:
        st = await r.start()
        assert st.last_error is None, st.last_error
        links = r.links()
        crm = r.crm_contacts()
        mailbox = r.mailbox_contacts()
        # Each near-duplicate seeded in the CRM is linked to its mailbox original, not copied.
        for idx, crm_id in r.sc.crm_seed.near_duplicates.items():
            mid = r.sc.resource_names[idx]
            if mid in links:
                assert links[mid] == crm_id
        assert sum(1 for i in r.sc.crm_seed.near_duplicates if r.sc.resource_names[i] in links) >= 5
        # Linked pairs agree on both ends.
        for mid, pid in links.items():
            assert _equalish(mailbox[mid], crm[pid]), (mid, pid)
        # CRM records owned by the user reached the mailbox; others did not.
        owned = {c.id for c in r.sc.crm.list_contacts(r.sc.org_id, owner_id=r.sc.user_id)}
        linked_p = set(links.values())
        waiting = {i.external_id for s in ("quarantined", "duplicate", "conflict") for i in r.items(s)}
        assert owned - linked_p <= waiting
        # No person twice in the CRM: every mailbox contact is linked at most once, and
        # the CRM grew by exactly the contacts created from the mailbox.
        created = st.last_counts.created
        assert len(crm) == len(r.sc.crm_seed.contact_ids) + sum(
            1 for mid, pid in links.items() if pid not in r.sc.crm_seed.contact_ids)
        assert created >= 1
        # Malformed input and the platform's validation errors are quarantined, visible, never dropped.
        codes = {q.error_code for q in st.store.quarantined}
        assert "malformed_input" in codes
        assert any(c.startswith("validation_rejected") for c in codes)
        malformed = [q for q in api.quarantined(r.sc.sessions, r.cid) if q["external_id"] == r.sc.malformed_resource]
        assert malformed and "emails" in malformed[0]["error_message"]
        assert any("rule 'reachable'" in (q["error_message"] or "") for q in api.quarantined(r.sc.sessions, r.cid))
        # Every staged change ended in a named state.
        with r.sc.sessions() as s:
            assert repo.count_items_by_status(s, r.cid).get("pending", 0) == 0


async def test_history_holds_no_contact_content(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider) as r:
        await r.start()
        await r.cycle()
        # Failing paths too: a cycle whose activities fail for good (the connection row
        # is gone), then a good one again.
        with r.sc.sessions.begin() as s:
            saved = dict(repo.get_connection(s, r.cid)._mapping)
            s.execute(repo.connections.delete().where(repo.connections.c.id == r.cid))
        st = await r.cycle()
        assert st.health == "failing" and st.last_error
        with r.sc.sessions.begin() as s:
            s.execute(repo.connections.insert().values(**saved))
        st = await r.cycle()
        assert st.health == "active"
        history = await r.client.get_workflow_handle(f"mailbox-sync/{r.cid}").fetch_history()
        doc = history.to_json_dict()
        text = json.dumps(_without_payload_data(doc)) + "\n".join(_decoded_payloads(doc))
        assert '"contacts.plan"' in text and len(history.events) > 10  # it is the real history
        assert "activityTaskFailedEventAttributes" in text, "the scan must cover a failure"
        needles = set()
        for c in r.sc.mailbox_contacts + [c.contact for c in r.sc.crm.list_contacts(r.sc.org_id)]:
            needles.update(c.email_addresses())
            needles.update(c.phone_numbers())
            needles.update(v for v in (c.given_name, c.family_name, c.company, c.notes) if len(v) > 3)
        found = sorted(n for n in needles if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text))
        assert not found, f"contact content in workflow history: {found[:5]}"
        # The same history replays with the current code: the workflow is deterministic.
        from temporalio.worker import Replayer

        from workers.temporal_client import DATA_CONVERTER
        from workflows.mailbox_sync import MailboxSyncWorkflow

        await Replayer(workflows=[MailboxSyncWorkflow], data_converter=DATA_CONVERTER).replay_workflow(history)


async def test_incremental_edits_on_both_sides_and_a_delete(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider) as r:
        await r.start()
        links = r.links()
        mids = [m for m in r.sc.resource_names if m in links]
        m_edit, p_edit, m_del = mids[0], mids[1], mids[2]
        r.sc.mailbox.edit(m_edit, company="Globex", job_title="CFO")
        r.sc.crm.user_edit(r.sc.org_id, links[p_edit], job_title="Head of Ops", enforce_rules=False)
        r.sc.mailbox.delete(m_del)
        st = await r.cycle()
        assert st.last_error is None
        crm = r.crm_contacts()
        assert crm[links[m_edit]].company == "Globex" and crm[links[m_edit]].job_title == "CFO"
        assert r.mailbox_contacts()[p_edit].job_title == "Head of Ops"
        assert links[m_del] not in crm, "a mailbox deletion propagates under the default policy"
        assert m_del not in r.links()
        # The next cycle sees only our own writes coming back: nothing written.
        st = await r.cycle()
        assert (st.last_counts.created, st.last_counts.updated, st.last_counts.deleted) == (0, 0, 0)
        assert st.last_counts.skipped >= 2


async def test_expired_sync_token_resyncs_without_duplicates_or_loss(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider) as r:
        await r.start()
        links_before = r.links()
        crm_before = r.crm_contacts()
        mids = [m for m in r.sc.resource_names if m in links_before]
        r.sc.mailbox.edit(mids[0], notes="met at the expo")
        r.sc.mailbox.delete(mids[1])
        r.sc.mailbox.expire_cursor()
        st = await r.cycle()
        assert st.last_counts.full_resyncs == 1
        crm = r.crm_contacts()
        assert crm[links_before[mids[0]]].notes == "met at the expo"
        assert links_before[mids[1]] not in crm
        assert len(crm) == len(crm_before) - 1, "a full resync created duplicates"
        assert len(r.links()) == len(links_before) - 1


async def test_manual_conflict_waits_and_a_resolution_reaches_both_ends(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider, settings={"policy": "manual"}) as r:
        st = await r.start()
        links = r.links()
        open_before = set(st.store.open_conflicts)
        mids = [m for m in r.sc.resource_names if m in links]
        pair, other = mids[0], mids[1]
        r.sc.mailbox.edit(pair, company="Mailbox Corp", job_title="CEO")
        r.sc.crm.user_edit(r.sc.org_id, links[pair], company="Platform Corp", enforce_rules=False)
        r.sc.mailbox.edit(other, company="Elsewhere", job_title="CTO")
        st = await r.cycle()
        new = set(st.store.open_conflicts) - open_before
        assert len(new) == 1
        # The conflict waits; the other item synced.
        assert r.crm_contacts()[links[other]].company == "Elsewhere"
        assert r.crm_contacts()[links[pair]].company == "Platform Corp"
        review = new.pop()
        await api.resolve(r.client, r.sc.sessions, r.cid, review, "merged", {"company": "Merged Corp"})
        st = await r.cycle()
        assert review not in st.store.open_conflicts
        assert r.crm_contacts()[links[pair]].company == "Merged Corp"
        assert r.mailbox_contacts()[pair].company == "Merged Corp"
        # The mailbox-only field change (title) was kept alongside the decision.
        assert r.crm_contacts()[links[pair]].job_title == "CEO"


async def test_quarantined_item_retried_when_it_changes_and_on_signal(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider) as r:
        st = await r.start()
        rejected = [i for i in r.items("quarantined") if (i.error_code or "").startswith("validation_rejected")]
        # mailbox contacts the platform refused (the order the two sides were staged in is not a rule)
        refused = [i for i in rejected if i.side == "mailbox"]
        assert len(refused) >= 2
        first, second = refused[0], refused[1]
        # 1) the user fixes the contact in Gmail: it is retried and goes through.
        r.sc.mailbox.edit(first.external_id, phones=("+1 415 555 0134",))
        st = await r.cycle()
        assert first.external_id in r.links()
        # 2) the CRM admin relaxes the rule; a retry signal sends the rest through.
        r.sc.crm.configure_rules(r.sc.org_id, [Rule.max_length("notes_length", "notes", 2000)])
        await api.retry_quarantined(r.client, r.cid)
        st = await r.wait_cycles(st.cycles + 1)
        assert second.external_id in r.links()
        assert all(not (q.error_code or "").startswith("validation_rejected") for q in st.store.quarantined)


async def test_rate_limits_are_waited_out_and_a_read_repeated_in_place(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider) as r:
        r.sc.mailbox.fail_listing(429, retry_after=4)
        r.sc.mailbox.fail_listing(500)
        loop = asyncio.get_running_loop()
        started = loop.time()
        st = await r.start()
        elapsed = loop.time() - started
        assert st.last_error is None
        assert len(r.links()) > 10
        # The provider's Retry-After (4 s) was honoured, then the listing page was read again.
        assert elapsed >= 4.4, elapsed
        # Neither the throttle nor one 5xx on a read spent a Temporal attempt (each would
        # have thrown away the pages read so far and doubled the next backoff).
        assert await _last_attempt(r, "contacts.fetch_mailbox") == 1


async def _last_attempt(r, activity_type: str) -> int:
    """The attempt number that completed the first run of this activity, from history."""
    history = await r.client.get_workflow_handle(f"mailbox-sync/{r.cid}").fetch_history()
    scheduled = {e.event_id for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")
                 and e.activity_task_scheduled_event_attributes.activity_type.name == activity_type}
    return next(e.activity_task_started_event_attributes.attempt for e in history.events
                if e.HasField("activity_task_started_event_attributes")
                and e.activity_task_started_event_attributes.scheduled_event_id in scheduled)


async def test_mass_delete_guard_holds_until_approved(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider, settings={"policy": "newest_wins", "mass_delete_min": 5}) as r:
        await r.start()
        links = r.links()
        crm_before = r.crm_contacts()
        victims = [m for m in r.sc.resource_names if m in links][: int(len(links) * 0.8)]
        for m in victims:
            r.sc.mailbox.delete(m)
        st = await r.cycle()
        assert st.guard_tripped and st.health == "blocked"
        assert r.crm_contacts().keys() == crm_before.keys(), "the guard let deletions through"
        await api.approve_mass_delete(r.client, r.cid)
        st = await r.wait_cycles(st.cycles + 1)
        assert st.health == "active"
        crm = r.crm_contacts()
        assert all(links[m] not in crm for m in victims)


async def test_disconnect_stops_and_keeps_what_was_synced(temporal_env, urls, provider):
    async with rig(temporal_env, *urls, provider=provider) as r:
        await r.start()
        await r.cycle()  # read our own writes back, so the cursors are at rest
        links, crm, mailbox = r.links(), r.crm_contacts(), r.mailbox_contacts()
        handle = r.client.get_workflow_handle(f"mailbox-sync/{r.cid}", result_type=SyncState)
        await api.disconnect(r.client, r.cid)
        final = await handle.result()
        assert final.health == "disconnected"
        with r.sc.sessions() as s:
            assert repo.get_connection(s, r.cid).status == "disconnected"
        assert r.links() == links, "what was synced stays linked"
        assert r.crm_contacts() == crm, "the platform keeps everything"
        assert r.mailbox_contacts() == mailbox, "nothing in the mailbox is deleted"
        # Reconnecting resumes from the stored cursors: no full resync, no duplicate.
        with r.sc.sessions.begin() as s:
            repo.set_connection_status(s, r.cid, "active")
        mid = next(iter(links))
        r.sc.mailbox.edit(mid, job_title="Back again")
        await r.start()
        st = await r.state()
        assert st.last_error is None and st.last_counts.full_resyncs == 0
        assert st.last_counts.fetched <= 3, "a reconnect must not re-read the whole mailbox"
        assert r.links() == links and len(r.crm_contacts()) == len(crm)
        assert r.crm_contacts()[links[mid]].job_title == "Back again"


async def test_a_possible_duplicate_waits_and_a_reviewer_links_it(temporal_env, urls, provider):
    from models.contact import Contact

    async with rig(temporal_env, *urls, provider=provider) as r:
        jon = Contact(given_name="Jon", family_name="Smithers", company="Contoso Ltd",
                      emails=("jon.smithers@contoso.example",))
        john = Contact(given_name="John", family_name="Smithers", company="Contoso Ltd",
                       emails=("jsmithers@contoso.example",))
        (mid,) = r.sc.mailbox.seed([jon])
        crm_id = r.sc.crm.create_contact(r.sc.org_id, john, owner_id="user_2").id
        st = await r.start()
        held = [rv for rv in api.open_reviews(r.sc.sessions, r.cid)
                if rv["kind"] == "duplicate" and rv["mailbox_id"] == mid]
        assert len(held) == 1 and held[0]["detail"]["candidate_id"] == crm_id
        assert mid not in r.links(), "a possible duplicate is not created while it waits"
        st = await r.cycle()
        assert mid not in r.links() and held[0]["review_id"] in st.store.open_duplicates, "it keeps waiting"
        await api.resolve(r.client, r.sc.sessions, r.cid, held[0]["review_id"], "link")
        st = await r.cycle()
        assert r.links().get(mid) == crm_id
        assert held[0]["review_id"] not in st.store.open_duplicates
        both = {"jon.smithers@contoso.example", "jsmithers@contoso.example"}
        assert {e.casefold() for e in r.crm_contacts()[crm_id].email_addresses()} == both
        assert {e.casefold() for e in r.mailbox_contacts()[mid].email_addresses()} == both


async def test_field_directions_hold_through_the_workflow(temporal_env, urls, provider):
    """An organisation's field map, set before the first cycle, is obeyed by the running
    workflow: job titles flow only from the platform, companies only from the mailbox,
    and a change that may not flow stays where it was made without ping-pong."""
    from store import field_map

    async with rig(temporal_env, *urls, provider=provider) as r:
        with r.sc.sessions.begin() as s:
            change = field_map.change_field_map(s, r.sc.org_id, {
                "job_title": {"direction": "platform_to_mailbox"},
                "company": {"direction": "mailbox_to_platform"}})
        assert change.outcome == "applied"
        await r.start()
        links = r.links()
        m_side, p_side = [m for m in r.sc.resource_names if m in links][:2]
        crm_before = r.crm_contacts()[links[m_side]]
        mailbox_before = r.mailbox_contacts()[p_side]
        r.sc.mailbox.edit(m_side, company="MailCo", job_title="Mailbox Title")
        r.sc.crm.user_edit(r.sc.org_id, links[p_side], company="CrmCo", job_title="CRM Title", enforce_rules=False)
        st = await r.cycle()
        assert st.last_error is None, st.last_error
        crm, mailbox = r.crm_contacts(), r.mailbox_contacts()
        assert crm[links[m_side]].company == "MailCo"  # mailbox -> platform flows
        assert crm[links[m_side]].job_title == crm_before.job_title  # mailbox's title does not
        assert mailbox[p_side].job_title == "CRM Title"  # platform -> mailbox flows
        assert mailbox[p_side].company == mailbox_before.company  # platform's company does not
        assert mailbox[m_side].job_title == "Mailbox Title" and crm[links[p_side]].company == "CrmCo"
        st = await r.cycle()
        assert (st.last_counts.created, st.last_counts.updated, st.last_counts.deleted) == (0, 0, 0)
        assert r.crm_contacts()[links[p_side]].company == "CrmCo"
        assert r.mailbox_contacts()[m_side].job_title == "Mailbox Title"
