"""Mail push kept alive by `subscriptions.maintain`, against the real emulators over HTTP
and the real webhook app (tests/test_webhooks.py's World: the router on a port, Pub/Sub
push tokens signed by the OAuth emulator, a recording signal).

- Gmail: users.watch on first maintain, not again the same day, again once a day old
  (clocks injected), one topic at a time; a push for the mailbox reaches /webhooks/gmail
  and wakes the connection; disconnect stops the watch (users.stop) with what is stored.
- Graph: a subscription on me/messages created, renewed, replaced; a connection with
  contacts and mail holds both, a notification on either wakes it.
- Neither tokens, clientState secrets nor the address show up in the logs.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from activities.connection import StoreSubscriptionStopper
from activities.subscriptions import SubscriptionActivities
from connectors import registry
from emulators.gmail import GmailState
from emulators.gmail import create_app as gmail_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import serve
from store import repo
from store import subscriptions as subs
from tests.test_webhooks import GRAPH_TOKEN, make_world, wait_for, world  # noqa: F401 - fixtures
from workers.mailboxes import MailBuilder

ADDRESS = "Ada.Lovelace@analytical.example"
GMAIL_TOKEN = "emulator-token"
TOPIC = "projects/concord-test/topics/gmail-push"
OTHER_TOPIC = "projects/concord-test/topics/gmail-push-2"
MESSAGE = (b"From: Bob <bob@client.example>\r\nTo: ada.lovelace@analytical.example\r\n"
           b"Subject: Quarterly figures\r\nMessage-ID: <q1@client.example>\r\n\r\nNumbers attached.\r\n")


class Clock:
    """One injected clock for the activity and the Gmail emulator."""

    def __init__(self) -> None:
        self.now = time.time()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def _static_contacts(info):
    return registry.get(info.provider).static_contacts(info.settings["endpoint"], info.settings["token"])


def _activities(world, clock=time.time, **kw) -> SubscriptionActivities:
    return SubscriptionActivities(world.sessions, _static_contacts, mail_for=MailBuilder(None),
                                  webhook_base_url=world.base, clock=clock, **kw)


def _connect(world, cid: str, provider: str, settings: dict) -> None:
    with world.sessions.begin() as s:
        repo.create_connection(s, id=cid, org_id="org1", user_id="u", provider=provider, account_ref=f"acct-{cid}",
                               settings=settings)


def _rows(world, cid: str, status: str | None = "active") -> list:
    with world.sessions() as s:
        return subs.list_for_connection(s, cid, status=status)


def _nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


class _Token:
    def __init__(self, token: str) -> None:
        self.token = token

    def access_token(self) -> str:
        return self.token


# ----------------------------------------------------------------------- Gmail


@pytest.fixture
def gmail(world):
    clock = Clock()
    pushed: list[int] = []

    def push(envelope: dict) -> None:  # Pub/Sub: deliver to our endpoint with its OIDC token
        pushed.append(world.push(envelope).status_code)

    state = GmailState(default_user=ADDRESS, clock=clock, push=push)
    server = serve(gmail_app(state))
    state.pushed = pushed  # type: ignore[attr-defined]
    try:
        yield state, server, clock
    finally:
        server.stop()


def test_gmail_watch_is_kept_daily_and_a_push_wakes_the_mailbox(world, gmail, caplog):
    caplog.set_level(logging.DEBUG)
    state, server, clock = gmail
    settings = {"gmail_endpoint": server.base_url, "token": GMAIL_TOKEN, "kinds": ["mail"], "gmail_topic": TOPIC}
    _connect(world, "g-mail", "google", settings)
    acts = _activities(world, clock)
    box = state.mailbox(ADDRESS)

    # First maintain: a watch on the topic, stored under the address's key.
    assert _nonzero(acts.maintain("g-mail")) == {"created": 1}
    assert box.watch is not None and box.watch["topicName"] == TOPIC
    (row,) = _rows(world, "g-mail")
    assert row.provider == registry.GMAIL_WATCH.name and row.external_id == subs.email_key(ADDRESS)
    assert row.resource == TOPIC and row.client_state_hash is None
    assert row.expires_at == pytest.approx(clock() + 7 * 86400, abs=2)
    assert state.calls["users.watch"] == 1

    # The same day: nothing is called at Gmail.
    clock.advance(23 * 3600)
    assert _nonzero(acts.maintain("g-mail")) == {"unchanged": 1}
    assert state.calls["users.watch"] == 1

    # A day old: watched again (same topic), the expiry moves a day on.
    clock.advance(2 * 3600)
    assert _nonzero(acts.maintain("g-mail")) == {"renewed": 1}
    assert state.calls["users.watch"] == 2
    (renewed,) = _rows(world, "g-mail")
    assert renewed.expires_at == pytest.approx(clock() + 7 * 86400, abs=2)
    assert _nonzero(acts.maintain("g-mail")) == {"unchanged": 1}

    # Mail arrives: Gmail publishes, Pub/Sub pushes to /webhooks/gmail, the mailbox is woken.
    state.deliver(ADDRESS, MESSAGE, ("INBOX",))
    wait_for(lambda: world.signal.for_conn("g-mail"), what="gmail wake")
    assert world.signal.for_conn("g-mail")[0] == ("g-mail", "org1", "google", "gmail")
    assert state.pushed == [204]
    assert world.stats()["accepted_by_source"] == {"gmail": 1}

    for secret in (GMAIL_TOKEN, ADDRESS, ADDRESS.lower()):
        assert secret not in caplog.text


def test_gmail_watch_moves_to_a_new_topic_never_alongside(world, gmail):
    state, server, clock = gmail
    settings = {"gmail_endpoint": server.base_url, "token": GMAIL_TOKEN, "kinds": ["contacts", "mail"],
                "gmail_topic": TOPIC}
    _connect(world, "g-mail", "google", settings)
    acts = _activities(world, clock)
    # Google contacts have no push: counted, polled; the mail watch is created.
    assert _nonzero(acts.maintain("g-mail")) == {"created": 1, "unsupported": 1}

    # Gmail refuses a second topic while one is active (what maintain must avoid).
    from connectors.gmail_mail import GmailMail
    from models.errors import ValidationRejected

    with pytest.raises(ValidationRejected):
        GmailMail.for_emulator(server.base_url, token=GMAIL_TOKEN).watch(OTHER_TOPIC)

    # The deployment's topic changes: the old watch is stopped, the new one replaces it.
    with world.sessions.begin() as s:
        repo.set_connection_settings(s, "g-mail", {**settings, "gmail_topic": OTHER_TOPIC})
    assert _nonzero(acts.maintain("g-mail")) == {"replaced": 1, "unsupported": 1}
    assert state.mailbox(ADDRESS).watch["topicName"] == OTHER_TOPIC
    assert state.calls["users.stop"] == 1 and state.calls["users.watch"] == 3  # with the refused one above
    (row,) = _rows(world, "g-mail", status=None)
    assert row.resource == OTHER_TOPIC and row.external_id == subs.email_key(ADDRESS)

    # A watch on another topic we hold no row for (a lost row): stopped, then ours.
    with world.sessions.begin() as s:
        subs.delete_for_connection(s, "g-mail")
    stray = GmailMail.for_emulator(server.base_url, token=GMAIL_TOKEN)
    stray.stop_watch()
    stray.watch(TOPIC)
    assert _nonzero(acts.maintain("g-mail")) == {"replaced": 1, "unsupported": 1}
    assert state.mailbox(ADDRESS).watch["topicName"] == OTHER_TOPIC
    assert len(_rows(world, "g-mail")) == 1

    # Disconnect stops the watch with what is stored (registry's users.stop) and forgets it.
    stopped = StoreSubscriptionStopper(world.sessions)("g-mail", _Token(GMAIL_TOKEN), settings)
    assert stopped == (1, 0)
    assert state.mailbox(ADDRESS).watch is None and _rows(world, "g-mail", status=None) == []


def test_gmail_without_a_topic_is_polled_only(world, gmail):
    state, server, clock = gmail
    _connect(world, "g-mail", "google", {"gmail_endpoint": server.base_url, "token": GMAIL_TOKEN, "kinds": ["mail"]})
    assert _nonzero(_activities(world, clock).maintain("g-mail")) == {"unsupported": 1}
    assert state.calls["users.watch"] == 0 and _rows(world, "g-mail", status=None) == []
    # The deployment's topic applies when the connection names none.
    assert _nonzero(_activities(world, clock, gmail_topic=TOPIC).maintain("g-mail")) == {"created": 1}


# ----------------------------------------------------------------------- Graph


@pytest.fixture
def graph():
    state = GraphState(tokens={GRAPH_TOKEN}, seed=5)
    server = serve(graph_app(state))
    try:
        yield state, server
    finally:
        server.stop()


def _graph_settings(server, kinds: list[str]) -> dict:
    return {"endpoint": server.base_url, "token": GRAPH_TOKEN, "kinds": kinds}


def test_graph_messages_subscription_created_renewed_replaced(world, graph, caplog):
    caplog.set_level(logging.DEBUG)
    state, server = graph
    _connect(world, "m-mail", "microsoft", _graph_settings(server, ["mail"]))
    acts = _activities(world)

    assert _nonzero(acts.maintain("m-mail")) == {"created": 1}
    (row,) = _rows(world, "m-mail")
    sub = state.subscriptions[row.external_id]  # Graph validated our endpoint and holds it
    assert sub["resource"] == "me/messages" and row.resource == "me/messages"
    assert sub["changeType"] == "created,updated,deleted"
    assert sub["lifecycleNotificationUrl"] == f"{world.base}/webhooks/graph/lifecycle"
    assert subs.secret_matches(row, sub["clientState"])
    assert _nonzero(acts.maintain("m-mail")) == {"unchanged": 1}

    # New mail: Graph notifies, the route checks clientState and wakes the mailbox.
    state.mail.deliver(MESSAGE)
    wait_for(lambda: world.signal.for_conn("m-mail"), what="graph mail wake")
    assert world.signal.for_conn("m-mail")[0] == ("m-mail", "org1", "microsoft", "graph")

    # Close to expiry: renewed in place (PATCH).
    with world.sessions.begin() as s:
        subs.set_expiry(s, row.id, time.time() + 60)
    assert _nonzero(acts.maintain("m-mail")) == {"renewed": 1}
    with world.sessions() as s:
        assert subs.get_subscription(s, row.id).expires_at > time.time() + 2 * 86400

    # Microsoft asks for reauthorization, then drops it: the renewal finds it gone, subscribes again.
    assert state.fire_lifecycle(row.external_id, "reauthorizationRequired") == 202
    state.subscriptions.pop(row.external_id)
    assert _nonzero(acts.maintain("m-mail")) == {"replaced": 1}
    (second,) = _rows(world, "m-mail")
    assert second.external_id != row.external_id and second.external_id in state.subscriptions

    # subscriptionRemoved through the lifecycle route: the next maintain subscribes anew.
    assert state.fire_lifecycle(second.external_id, "subscriptionRemoved") == 202
    assert _rows(world, "m-mail") == []
    assert _nonzero(acts.maintain("m-mail")) == {"created": 1}
    (third,) = _rows(world, "m-mail")
    assert third.external_id in state.subscriptions

    secrets_ = [s["clientState"] for s in state.subscriptions.values()] + [sub["clientState"], GRAPH_TOKEN]
    for secret in secrets_:
        assert secret not in caplog.text


def test_graph_contacts_and_mail_hold_both_subscriptions_and_either_wakes(world, graph, caplog):
    caplog.set_level(logging.DEBUG)
    state, server = graph
    settings = _graph_settings(server, ["contacts", "mail"])
    _connect(world, "m-both", "microsoft", settings)
    acts = _activities(world)

    assert _nonzero(acts.maintain("m-both")) == {"created": 2}
    rows = {r.resource: r for r in _rows(world, "m-both")}
    assert set(rows) == {"me/contacts", "me/messages"}
    assert {state.subscriptions[r.external_id]["resource"] for r in rows.values()} == {"me/contacts", "me/messages"}
    assert _nonzero(acts.maintain("m-both")) == {"unchanged": 2}
    client_states = [state.subscriptions[r.external_id]["clientState"] for r in rows.values()]

    # A contact change on the contacts subscription wakes the connection...
    assert state.fire_notification(rows["me/contacts"].external_id) == 202
    wait_for(lambda: len(world.signal.for_conn("m-both")) == 1, what="contacts wake")
    wait_for(world.waker.idle, what="waker idle")
    time.sleep(world.waker.window_s + 0.05)
    # ...and so does new mail, on the messages subscription.
    state.mail.deliver(MESSAGE)
    wait_for(lambda: len(world.signal.for_conn("m-both")) == 2, what="mail wake")
    assert world.stats()["accepted_by_source"] == {"graph": 2}

    # Only the one due is renewed; the other is left alone.
    with world.sessions.begin() as s:
        subs.set_expiry(s, rows["me/messages"].id, time.time() + 60)
    assert _nonzero(acts.maintain("m-both")) == {"renewed": 1, "unchanged": 1}

    # Disconnect deletes both at Graph.
    stopped = StoreSubscriptionStopper(world.sessions)("m-both", _Token(GRAPH_TOKEN), settings)
    assert stopped == (2, 0) and state.subscriptions == {}

    for secret in [GRAPH_TOKEN] + [state_cs for state_cs in client_states]:
        assert secret not in caplog.text


def test_contacts_only_connections_keep_todays_behaviour(world, graph):
    """No `kinds` in the settings: contacts, as MailboxSyncInput's default."""
    state, server = graph
    _connect(world, "m-old", "microsoft", {"endpoint": server.base_url, "token": GRAPH_TOKEN})
    assert _nonzero(_activities(world).maintain("m-old")) == {"created": 1}
    (row,) = _rows(world, "m-old")
    assert state.subscriptions[row.external_id]["resource"] == "me/contacts"
    # No public URL: poll only, as before.
    acts = SubscriptionActivities(world.sessions, _static_contacts, mail_for=MailBuilder(None))
    _connect(world, "m-nourl", "microsoft", _graph_settings(server, ["contacts", "mail"]))
    assert _nonzero(acts.maintain("m-nourl")) == {"unsupported": 2}
