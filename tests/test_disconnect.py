"""Disconnecting and checking auth (activities/connection.py) on connections made through
the real connect flow (tests/test_connect.py's rig: OAuth emulators over TLS, People
and Graph emulators, SQLite store with the vault)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from activities.connection import ConnectionActivities
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.vault import vault_tokens
from tests.test_connect import ADA, ORG, Rig, rig, tls  # noqa: F401 - fixtures
from workers.mailboxes import MailboxBuilder


@pytest.fixture
def crm(tmp_path):
    return ReferenceCrm(f"sqlite:///{tmp_path / 'crm.db'}")


def _synced_state(rig: Rig, cid: str, crm: ReferenceCrm) -> tuple[int, str]:
    """What a few sync cycles leave behind: a staged item, a link, a CRM record."""
    mailbox = MailboxBuilder(rig.sessions, rig.vault, rig.providers)(rig.info(cid))
    page = mailbox.list_changes(None)
    rec = page.records[0]
    crm_rec = crm.create_contact(ORG, rec.content, owner_id="user-1")
    with rig.sessions.begin() as s:
        repo.stage_records(s, cid, "mailbox", page.records, "batch-1")
        link_id = repo.save_link(s, org_id=ORG, connection_id=cid, mailbox_id=rec.external_id,
                                 platform_id=crm_rec.id, snapshot=rec.content, mailbox_hash="m", platform_hash="p",
                                 keys=["k1"])
    return link_id, crm_rec.id


def _vault_rows(rig: Rig, cid: str) -> int:
    with rig.sessions.begin() as s:
        return s.execute(sa.select(sa.func.count()).select_from(vault_tokens)
                         .where(vault_tokens.c.connection_id == cid)).scalar_one()


def test_google_disconnect_revokes_and_keeps_synced_data(rig, crm):
    cid = rig.connect("google").json()["connection_id"]
    tokens = rig.vault.get(cid)
    link_id, crm_id = _synced_state(rig, cid, crm)
    persons_before = rig.people.all_persons()
    seen_by_stopper: list[bool] = []
    recorded = ["watch-1"]  # what a subscriptions table would hold for this connection

    def stop_subscriptions(connection_id, source, settings):
        # Runs before the revocation: the token it is given must still be accepted.
        if not recorded:
            return (0, 0)
        token = source.access_token()
        seen_by_stopper.append(rig.google.validate_access_token(token) is not None)
        recorded.clear()
        return (1, 0)

    acts = ConnectionActivities(rig.sessions, rig.vault, rig.providers, stop_subscriptions=stop_subscriptions)
    counts = acts.disconnect(cid)
    assert counts == {"connection_found": 1, "status_changed": 1, "subscriptions_stopped": 1,
                      "subscriptions_dropped": 0, "revoked_at_provider": 1, "revocation_unsupported": 0,
                      "tokens_deleted": 1}
    assert seen_by_stopper == [True]
    assert rig.google.revocations == ["refresh"]
    assert rig.google.validate_access_token(tokens.access_token) is None  # the whole grant ended
    assert rig.vault.get(cid) is None and _vault_rows(rig, cid) == 0
    assert rig.connection(cid).status == "disconnected"

    with rig.sessions.begin() as s:
        assert repo.get_link(s, link_id) is not None
        assert repo.count_items_by_status(s, cid) == {"pending": 2}
    assert crm.get_contact(ORG, crm_id) is not None
    assert rig.people.all_persons() == persons_before  # nothing in the mailbox touched
    assert all(isinstance(v, int) for v in counts.values())  # counts only: safe for workflow history

    # A second run (Temporal retry, second click) changes nothing and calls no one.
    revokes = rig.google.counters["revoke"]
    again = acts.disconnect(cid)
    assert again["connection_found"] == 1 and again["status_changed"] == 0
    assert again["revoked_at_provider"] == 0 and again["tokens_deleted"] == 0
    assert rig.google.counters["revoke"] == revokes
    assert acts.check_auth(cid) == "disconnected"

    # Reconnecting the same account revives the same connection.
    assert rig.connect("google").json()["connection_id"] == cid
    assert rig.connection(cid).status == "active" and acts.check_auth(cid) == "active"


def test_disconnect_after_crash_between_revoke_and_vault_delete(rig):
    """The grant was revoked, then the worker died: the retry finishes the job."""
    cid = rig.connect("google").json()["connection_id"]
    acts = ConnectionActivities(rig.sessions, rig.vault, rig.providers)
    oauth = acts.credentials.oauth_for("google", rig.info(cid).settings)
    assert oauth.revoke(rig.vault.get(cid).refresh_token) is True
    counts = acts.disconnect(cid)
    assert counts["revoked_at_provider"] == 0 and counts["tokens_deleted"] == 1  # "already invalid" is done
    assert rig.connection(cid).status == "disconnected"


def test_microsoft_disconnect_forgets_tokens(rig):
    cid = rig.connect("microsoft").json()["connection_id"]
    acts = ConnectionActivities(rig.sessions, rig.vault, rig.providers)
    counts = acts.disconnect(cid)
    assert counts["revocation_unsupported"] == 1 and counts["revoked_at_provider"] == 0
    assert counts["tokens_deleted"] == 1 and rig.vault.get(cid) is None
    assert rig.connection(cid).status == "disconnected"
    assert acts.disconnect(cid)["tokens_deleted"] == 0


def test_microsoft_disconnect_deletes_graph_subscription(rig):
    import httpx

    from store import subscriptions as subs

    cid = rig.connect("microsoft").json()["connection_id"]
    rig.graph.validate_subscriptions = False
    token = rig.vault.get(cid).access_token
    endpoint = rig.info(cid).settings["endpoint"].rstrip("/")
    expiry = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    secret = subs.new_secret()
    r = httpx.post(f"{endpoint}/v1.0/subscriptions", headers={"Authorization": f"Bearer {token}"},
                   json={"changeType": "created,updated,deleted", "notificationUrl": "https://hooks.example.test/graph",
                         "resource": "me/contacts", "expirationDateTime": expiry, "clientState": secret})
    assert r.status_code == 201, r.text
    sub_id = r.json()["id"]
    with rig.sessions.begin() as s:
        subs.create_subscription(s, connection_id=cid, provider="microsoft", external_id=sub_id,
                                 resource="me/contacts", expires_at=None, secret=secret)
        subs.create_subscription(s, connection_id=cid, provider="microsoft", external_id="already-gone",
                                 resource="me/contacts", expires_at=None)

    acts = ConnectionActivities(rig.sessions, rig.vault, rig.providers)
    counts = acts.disconnect(cid)
    assert counts["subscriptions_stopped"] == 1 and counts["subscriptions_dropped"] == 1
    assert sub_id not in rig.graph.subscriptions
    with rig.sessions.begin() as s:
        assert subs.list_for_connection(s, cid) == []
    assert acts.disconnect(cid)["subscriptions_stopped"] == 0


def test_disconnect_unknown_connection_is_a_no_op(rig):
    acts = ConnectionActivities(rig.sessions, rig.vault, rig.providers)
    assert acts.disconnect("conn-nope")["connection_found"] == 0


def test_check_auth_refreshes_and_detects_reauth(rig):
    cid = rig.connect("google").json()["connection_id"]
    acts = ConnectionActivities(rig.sessions, rig.vault, rig.providers)
    assert acts.check_auth(cid) == "active"
    assert rig.google.counters["token_refresh"] == 0

    # Expired access token: a refresh proves the grant is alive.
    t = rig.vault.get(cid)
    rig.vault.put(cid, t.access_token, None, datetime.now(timezone.utc) - timedelta(seconds=1))
    assert acts.check_auth(cid) == "active"
    assert rig.google.counters["token_refresh"] == 1

    # Refresh refused for good -> needs_reauth, recorded in the store.
    rig.google.revoke_refresh_tokens(ADA)
    t = rig.vault.get(cid)
    rig.vault.put(cid, t.access_token, None, datetime.now(timezone.utc) - timedelta(seconds=1))
    assert acts.check_auth(cid) == "needs_reauth"
    assert rig.connection(cid).status == "needs_reauth"

    # Static emulator tokens (scenario/demo connections) are always usable.
    with rig.sessions.begin() as s:
        repo.create_connection(s, id="conn-static", org_id=ORG, user_id="u", provider="google",
                               account_ref="acct-static", settings={"endpoint": "http://x/", "token": "emulator-token"})
    assert acts.check_auth("conn-static") == "active"
