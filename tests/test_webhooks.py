"""The webhook server over real HTTP (uvicorn on a free port, httpx as the provider).

Every route is exercised as its provider calls it: Graph through the Graph
emulator (validation handshake and the emulator's own notification shape), Gmail as
a Pub/Sub push envelope with the OIDC token Google signs for the push service
account (the OAuth emulator's key, served at its certs endpoint), Calendar as a
headers-only ping, platforms with a timestamped HMAC. The signal is a recording
callable except in the last test, where a notification ends in a
MailboxSyncWorkflow cycle on the real Temporal dev server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid

import httpx
import pytest

from api.app import create_app
from api.webhooks import (
    PubSubPushAuth,
    Waker,
    WebhookDeps,
    derived_platform_secrets,
    platform_headers,
    platform_signature,
    store_lookup,
    store_org_lookup,
    webhook_router,
)
from connectors.graph_contacts import GraphContacts
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.oauth import OAuthState, SigningKey, google_app, unsigned_jwt
from emulators.server import free_port, serve
from store import repo
from store import subscriptions as subs
from store.db import make_engine, migrate, session_factory

PUSH_ACCOUNT = "gmail-push@concord-test.iam.gserviceaccount.com"
GRAPH_TOKEN = "emulator-token"


class Recorder:
    """The fake signal: remembers (connection_id, org_id, provider, reason) per delivered call.

    Delivery waits for `gate` (open by default): closing it holds signals in flight."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    async def __call__(self, connection_id: str, org_id: str, provider: str, reason: str) -> None:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        with self.lock:
            self.calls.append((connection_id, org_id, provider, reason))

    def for_conn(self, cid: str) -> list[tuple[str, str, str, str]]:
        with self.lock:
            return [c for c in self.calls if c[0] == cid]


def wait_for(pred, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class World:
    """The webhook router on a real port, a store, and Google (the OAuth emulator) for
    the keys Pub/Sub push tokens are signed with. Secrets are made here, per test."""

    def __init__(self, url: str, window_s: float) -> None:
        self.google = OAuthState(provider="google")
        self.google_server = serve(google_app(self.google))
        self.master_key = secrets.token_bytes(32)
        self.admin_token = secrets.token_urlsafe(24)
        migrate(url)
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)
        with self.sessions.begin() as s:
            repo.create_org(s, "org1", "Org One", {})
            repo.create_org(s, "org2", "Org Two", {})
            for cid, org, prov, status in [
                ("c-ms", "org1", "microsoft", "active"),
                ("c-gm", "org1", "google", "active"),
                ("c-other", "org1", "google", "active"),
                ("c-off", "org1", "google", "disconnected"),
                ("c-org2", "org2", "google", "active"),
            ]:
                repo.create_connection(s, id=cid, org_id=org, user_id="u", provider=prov,
                                       account_ref=f"acct-{cid}", status=status)
        self.signal = Recorder()
        self.waker = Waker(self.signal, store_lookup(self.sessions), window_s=window_s)
        self.org_signal = Recorder()
        self.org_waker = Waker(self.org_signal, store_org_lookup(self.sessions), window_s=window_s,
                               counters=self.waker.counters)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.audience = f"{self.base}/webhooks/gmail"  # Pub/Sub's default audience: the endpoint
        self.deps = WebhookDeps(
            sessions=self.sessions, waker=self.waker, org_waker=self.org_waker,
            pubsub=PubSubPushAuth(self.audience, PUSH_ACCOUNT,
                                  certs_url=self.google_server.base_url + "oauth2/v1/certs"),
            platform_secret=derived_platform_secrets(self.master_key), admin_token=self.admin_token,
        )
        self.server = serve(create_app([webhook_router(self.deps)]), port=port)
        self.http = httpx.Client(base_url=self.base, timeout=10)

    def push_token(self, **claims) -> str:
        return self.google.pubsub_push_token(self.audience, PUSH_ACCOUNT, **claims)

    def push(self, body=None, *, token: str | None = "genuine", raw: bytes | None = None, **kw) -> httpx.Response:
        """A Pub/Sub push: the envelope, and the OIDC token Pub/Sub signs for our push account."""
        headers = {} if token is None else {"Authorization": f"Bearer {self.push_token() if token == 'genuine' else token}"}
        content = raw if raw is not None else json.dumps(body).encode()
        return self.http.post("/webhooks/gmail", content=content, headers={"content-type": "application/json", **headers},
                              **kw)

    def platform_secret(self, org_id: str) -> bytes:
        return derived_platform_secrets(self.master_key)(org_id)

    def subscribe(self, cid: str, provider: str, external_id: str, **kw) -> str | None:
        with self.sessions.begin() as s:
            return subs.create_subscription(s, connection_id=cid, provider=provider, external_id=external_id,
                                            resource="r", expires_at=time.time() + 3600, **kw).secret

    def stats(self) -> dict:
        r = self.http.get("/webhooks/stats", headers={"Authorization": f"Bearer {self.admin_token}"})
        assert r.status_code == 200, r.text
        return r.json()

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        self.google_server.stop()
        self.engine.dispose()


@pytest.fixture
def make_world(sqlite_url):
    worlds: list[World] = []

    def make(window_s: float = 0.2) -> World:
        w = World(sqlite_url, window_s)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.close()


@pytest.fixture
def world(make_world):
    return make_world()


def graph_note(sub_id: str, client_state: str | None, change: str = "updated") -> dict:
    return {"subscriptionId": sub_id, "clientState": client_state, "changeType": change,
            "resource": "Users/u/Contacts/AAA", "tenantId": "t", "resourceData": {"id": "AAA"}}


def pubsub_envelope(address: str, history_id) -> dict:
    data = base64.b64encode(json.dumps({"emailAddress": address, "historyId": history_id}).encode()).decode()
    return {"message": {"data": data, "messageId": "1", "message_id": "1", "publishTime": "2025-01-01T00:00:00Z"},
            "subscription": "projects/p/subscriptions/s"}


# --------------------------------------------------------------------- Graph


def test_graph_validation_handshake_echoes_token_as_text(world):
    token = "Validation: Testing client application reachability for subscription Request-Id: 1a2b&c=d"
    for path in ("/webhooks/graph", "/webhooks/graph/lifecycle"):
        r = world.http.post(path, params={"validationToken": token}, headers={"content-type": "text/plain"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["x-content-type-options"] == "nosniff"  # echoed input is never sniffed as HTML
        assert r.text == token
    assert world.stats()["wake_requests"] == 0


def test_graph_emulator_subscription_and_notifications_wake_the_right_connection(world):
    """The Graph emulator validates our URL, then posts its own notification shape to it."""
    state = GraphState(tokens={GRAPH_TOKEN}, seed=3)
    emu = serve(graph_app(state))
    try:
        conn = GraphContacts(emu.base_url, lambda: GRAPH_TOKEN)
        secret = subs.new_secret()
        created = conn.create_subscription(f"{world.base}/webhooks/graph", secret,
                                           lifecycle_url=f"{world.base}/webhooks/graph/lifecycle")
        conn.close()
        world.subscribe("c-ms", "microsoft", created["id"], secret=secret)

        assert state.fire_notification(created["id"]) == 202
        wait_for(lambda: world.signal.for_conn("c-ms"), what="signal for c-ms")
        assert world.signal.calls[0] == ("c-ms", "org1", "microsoft", "graph")

        # reauthorizationRequired: flagged for the renewal job, and the mailbox woken.
        assert state.fire_lifecycle(created["id"], "reauthorizationRequired") == 202
        with world.sessions() as s:
            row = subs.find_by_external_id(s, "microsoft", created["id"])
            assert row.status == "needs_renewal"
            assert [r.id for r in subs.due_for_renewal(s, before_ts=0)] == [row.id]
        # subscriptionRemoved: marked removed, woken so a delta recovers what was missed.
        assert state.fire_lifecycle(created["id"], "subscriptionRemoved") == 202
        with world.sessions() as s:
            assert subs.find_by_external_id(s, "microsoft", created["id"]).status == "removed"
        assert state.fire_lifecycle(created["id"], "missed") == 202
        # Change notifications on a removed subscription are no longer trusted.
        assert state.fire_notification(created["id"]) == 202
        st = world.stats()
        assert st["accepted_by_source"] == {"graph": 1, "graph_lifecycle": 3}
        assert st["rejected_by_reason"] == {"subscription_removed": 1}
        assert st["wake_requests"] == 4
        wait_for(lambda: world.waker.idle(), what="waker idle")
        assert {c[0] for c in world.signal.calls} == {"c-ms"}
    finally:
        emu.stop()


def test_graph_forged_or_unknown_notifications_are_rejected_not_signalled(world):
    secret = world.subscribe("c-ms", "microsoft", "sub-1")
    other = world.subscribe("c-other", "microsoft", "sub-2")
    body = {"value": [
        graph_note("sub-1", "forged-state"),
        graph_note("sub-1", None),
        graph_note("sub-1", other),  # another subscription's real secret
        graph_note("sub-unknown", secret),
    ]}
    r = world.http.post("/webhooks/graph", json=body)
    assert r.status_code == 202 and r.content == b""
    st = world.stats()
    assert st["rejected_by_reason"] == {"bad_client_state": 3, "unknown_subscription": 1}
    assert st["accepted"] == 0 and st["wake_requests"] == 0
    # A forged lifecycle event must not change the record either.
    r = world.http.post("/webhooks/graph/lifecycle", json={"value": [
        {"subscriptionId": "sub-1", "clientState": "nope", "lifecycleEvent": "subscriptionRemoved"}]})
    assert r.status_code == 202
    with world.sessions() as s:
        assert subs.find_by_external_id(s, "microsoft", "sub-1").status == "active"

    # The genuine one in a mixed batch goes through, to its own connection only.
    r = world.http.post("/webhooks/graph", json={"value": [graph_note("sub-2", secret), graph_note("sub-2", other)]})
    assert r.status_code == 202
    st = world.stats()  # wakes are requested before the answer: this is all there will be
    assert st["wake_requests"] == 1 and st["rejected_by_reason"]["bad_client_state"] == 5
    wait_for(lambda: world.waker.idle(), what="waker idle")
    assert [c[0] for c in world.signal.calls] == ["c-other"]


def test_burst_of_500_notifications_coalesces(world):
    """500 notifications while the first signal is still on its way to Temporal: every
    one is answered without waiting for it, and they all ride on one trailing signal.

    The signal is held in flight (the recorder's gate) for the whole burst, so what is
    asserted does not depend on how fast this machine sends 500 POSTs.
    """
    secret = world.subscribe("c-ms", "microsoft", "sub-burst")
    world.signal.gate.clear()
    codes = {world.http.post("/webhooks/graph", json={"value": [graph_note("sub-burst", secret)]}).status_code
             for _ in range(500)}
    assert codes == {202}
    st = world.stats()
    # Every route answered while the first signal was still undelivered: replies never wait on it.
    assert st["accepted"] == 500 and st["signals_started"] == 1 and st["signals_sent"] == 0
    assert world.signal.calls == []
    world.signal.gate.set()
    wait_for(lambda: world.waker.idle(), what="drain")
    st = world.stats()
    assert len(world.signal.for_conn("c-ms")) == 2  # the leading signal and one trailing
    assert st["signals_sent"] == 2
    assert st["coalesced"] == 498


def test_waker_trailing_signal_waits_for_the_window():
    """A request after the first signal went out gets one trailing signal, a window later."""
    times: list[float] = []

    async def signal(cid, org, prov, reason):
        times.append(time.monotonic())

    async def main():
        w = Waker(signal, lambda cid: ("o", "google"), window_s=0.3)
        w.wake("c", "a")
        await asyncio.sleep(0.05)  # the first signal is out
        for _ in range(10):
            w.wake("c", "b")
        await w.drain()
        assert w.counters.signals_sent == 2 and w.counters.coalesced == 9
        # Idle for a whole window (its forget timer, due 0.3 s after the trailing
        # signal, runs before this longer sleep ends): the next request is signalled
        # at once, inside wake() itself.
        await asyncio.sleep(0.4)
        w.wake("c", "c")
        assert w.counters.signals_started == 3
        await w.drain()
        # A connection the lookup refuses (disconnected) is never signalled.
        w2 = Waker(signal, lambda cid: None, window_s=0.3)
        w2.wake("gone", "x")
        await w2.drain()
        assert w2.counters.dropped_inactive == 1 and w2.counters.signals_sent == 0

    asyncio.run(main())
    assert len(times) == 3
    assert times[1] - times[0] >= 0.29


def test_waker_retries_a_failing_signal_then_counts_it():
    calls = []

    async def flaky(cid, org, prov, reason):
        calls.append(cid)
        if len(calls) < 2:
            raise RuntimeError("frontend unavailable")

    async def broken(cid, org, prov, reason):
        raise RuntimeError("down")

    async def main():
        w = Waker(flaky, lambda cid: ("o", "google"), window_s=0.1, retry_backoff_s=0.01)
        w.wake("c", "r")
        await w.drain()
        assert w.counters.signals_sent == 1 and w.counters.signal_errors == 0
        w2 = Waker(broken, lambda cid: ("o", "google"), window_s=0.1, attempts=2, retry_backoff_s=0.01)
        w2.wake("c", "r")
        await w2.drain()
        assert w2.counters.signals_sent == 0 and w2.counters.signal_errors == 1

    asyncio.run(main())
    assert len(calls) == 2


# --------------------------------------------------------------------- Gmail


def test_pubsub_push_history_id_number_and_string(world):
    world.subscribe("c-gm", "google_gmail", subs.email_key("Ada.Lovelace@Example.org"), generate_secret=False)
    for hid in (123456, "123457"):
        r = world.push(pubsub_envelope("ada.lovelace@example.org ", hid))
        assert r.status_code == 204
    st = world.stats()
    assert st["accepted_by_source"] == {"gmail": 2}
    wait_for(lambda: world.signal.for_conn("c-gm"), what="gmail wake")
    assert world.signal.for_conn("c-gm")[0] == ("c-gm", "org1", "google", "gmail")
    with world.sessions() as s:  # the address is never stored in clear
        assert all("example" not in r.external_id for r in subs.list_for_connection(s, "c-gm"))

    # An address we do not watch is acknowledged (no redelivery) but not signalled.
    r = world.push(pubsub_envelope("x@example.org", 1))
    assert r.status_code == 204
    assert world.stats()["rejected_by_reason"] == {"unknown_subscription": 1}
    assert world.google.counters["certs"] == 1  # Google's keys fetched once, then cached


def test_pubsub_push_needs_googles_oidc_token_for_our_push_account(world):
    """Only a token Google signed, for our audience, of our push service account, unexpired,
    authenticates a push; a shared secret in the URL no longer does."""
    world.subscribe("c-gm", "google_gmail", subs.email_key("a@example.org"), generate_secret=False)
    env = pubsub_envelope("a@example.org", 1)
    now = int(time.time())
    genuine_claims = {"aud": world.audience, "email": PUSH_ACCOUNT, "email_verified": True,
                      "iss": "https://accounts.google.com", "iat": now, "exp": now + 3600, "sub": "1"}
    other_key = SigningKey.generate(kid=world.google.signing_key.kid)  # same key id, not Google's key
    cases = [
        (None, "missing_token"),
        ("Basic", "missing_token"),
        (unsigned_jwt(genuine_claims), "bad_token"),
        (other_key.sign(genuine_claims), "bad_token"),
        (world.push_token(iat=now - 7200, exp=now - 3600), "bad_token"),  # expired
        (world.push_token(aud="https://elsewhere.example/push"), "bad_token"),  # another subscription's audience
        (world.push_token(iss="https://issuer.example"), "wrong_issuer"),
        (world.push_token(email="someone@attacker.iam.gserviceaccount.com"), "wrong_service_account"),
        (world.push_token(email_verified=False), "wrong_service_account"),
        ("not.a.jwt", "bad_token"),
    ]
    for token, reason in cases:
        before = world.stats()["rejected_by_reason"].get(reason, 0)
        if token == "Basic":  # another scheme altogether
            r = world.http.post("/webhooks/gmail", json=env, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        else:
            r = world.push(env, token=token)
        assert r.status_code == 403, (reason, r.text)
        assert world.stats()["rejected_by_reason"][reason] == before + 1
    # The old mechanism, a token in the URL, authenticates nothing on its own.
    assert world.http.post("/webhooks/gmail", params={"token": "anything"}, json=env).status_code == 403
    st = world.stats()
    assert st["wake_requests"] == 0 and st["accepted"] == 0
    assert world.push(env).status_code == 204  # the genuine one
    assert world.stats()["accepted_by_source"] == {"gmail": 1}


def test_pubsub_push_is_refused_when_not_configured_and_retried_when_keys_are_down(make_world):
    world = make_world()
    env = pubsub_envelope("a@example.org", 1)
    world.deps.pubsub = None
    assert world.push(env).status_code == 403
    assert world.stats()["rejected_by_reason"] == {"pubsub_not_configured": 1}
    # Google's keys unreachable: 503, so Pub/Sub redelivers later (nothing can be verified now).
    world.deps.pubsub = PubSubPushAuth(world.audience, PUSH_ACCOUNT,
                                       certs_url=f"http://127.0.0.1:{free_port()}/oauth2/v1/certs")
    r = world.push(env)
    assert r.status_code == 503 and r.json() == {"error": "keys_unavailable"}
    assert world.stats()["wake_requests"] == 0


def test_pubsub_malformed_bodies_are_400_by_reason(world):
    def push(body, raw=False):
        return world.push(raw=body) if raw else world.push(body)

    b64 = lambda obj: base64.b64encode(json.dumps(obj).encode()).decode()  # noqa: E731

    def hid(value):
        return {"message": {"data": b64({"emailAddress": "a@example.org", "historyId": value})}}

    cases = [
        (push(b"{not json", raw=True), "malformed_json"),
        (push({"nomessage": 1}), "missing_field"),
        (push({"message": {"data": "!!!not base64!!!"}}), "bad_base64"),
        (push({"message": {"data": base64.b64encode(b"not json").decode()}}), "malformed_json"),
        (push({"message": {"data": b64({"historyId": 5})}}), "missing_field"),
        (push({"message": {"data": b64({"emailAddress": "a@example.org"})}}), "missing_field"),
        (push(hid("12x")), "bad_history_id"),
        (push(hid(True)), "bad_history_id"),
        # str.isdigit() accepts these, int() does not: they used to be 500s.
        (push(hid("\u00b2")), "bad_history_id"),  # superscript two
        (push(hid("\u0661\u0662")), "bad_history_id"),  # Arabic-Indic digits
        (push(hid("9" * 5000)), "bad_history_id"),  # past int()'s digit limit
        (push(hid(1 << 64)), "bad_history_id"),  # history ids are unsigned 64-bit
        (push(hid(-1)), "bad_history_id"),
    ]
    for r, reason in cases:
        assert r.status_code == 400, r.text
        assert r.json() == {"error": reason}
        assert "Traceback" not in r.text
    assert world.stats()["rejected_by_reason"] == {"malformed_json": 2, "missing_field": 3, "bad_base64": 1,
                                                   "bad_history_id": 7}


# ------------------------------------------------------------------ Calendar


def test_calendar_channel_headers(world):
    channel = str(uuid.uuid4())
    token = world.subscribe("c-gm", "google_calendar", channel)

    def ping(state: str, tok: str | None = token, number: str = "1", cid: str = channel):
        h = {"X-Goog-Channel-ID": cid, "X-Goog-Resource-State": state, "X-Goog-Message-Number": number,
             "X-Goog-Resource-ID": "res-1"}
        if tok is not None:
            h["X-Goog-Channel-Token"] = tok
        return world.http.post("/webhooks/calendar", headers=h)

    assert ping("sync").status_code == 200
    assert world.stats()["sync_acknowledged"] == 1 and world.stats()["wake_requests"] == 0
    assert ping("exists", number="2").status_code == 200
    wait_for(lambda: world.signal.for_conn("c-gm"), what="calendar wake")
    assert world.signal.for_conn("c-gm")[0][3] == "calendar:exists"

    assert ping("exists", tok="forged").status_code == 403
    assert ping("exists", tok=None).status_code == 403
    assert ping("exists", cid="unknown-channel").status_code == 403
    assert world.http.post("/webhooks/calendar", headers={"X-Goog-Resource-State": "exists"}).status_code == 400
    assert ping("weird").status_code == 400
    assert ping("exists", number="abc").status_code == 400
    st = world.stats()
    assert st["accepted_by_source"] == {"calendar": 1}
    assert st["rejected_by_reason"] == {"bad_token": 2, "unknown_subscription": 1, "missing_field": 1,
                                        "bad_resource_state": 1, "bad_message_number": 1}
    assert st["wake_requests"] == 1


# ------------------------------------------------------------------ platforms


def test_platform_hmac_wakes_the_organisation_once_not_each_mailbox(world):
    secret = world.platform_secret("org1")
    body = json.dumps({"record_ids": ["r1", 2]}).encode()
    r = world.http.post("/webhooks/platform/org1", content=body,
                        headers={**platform_headers(secret, body), "content-type": "application/json"})
    assert r.status_code == 202 and r.json() == {"organisation": 1}
    wait_for(lambda: len(world.org_signal.calls) == 1, what="the organisation's wake")
    # One signal, to the organisation's workflow: it reads the platform once and wakes
    # the mailboxes the changes concern (tests/test_org_sync.py). No mailbox is signalled.
    assert world.org_signal.calls == [("org1", "org1", "", "platform")]
    assert world.signal.calls == []

    # The same body signed with another organisation's key, a tampered body, no signature.
    other = world.platform_secret("org2")
    assert world.http.post("/webhooks/platform/org1", content=body,
                           headers=platform_headers(other, body)).status_code == 403
    tampered = json.dumps({"record_ids": ["r1", 3]}).encode()
    assert world.http.post("/webhooks/platform/org1", content=tampered,
                           headers=platform_headers(secret, body)).status_code == 403
    assert world.http.post("/webhooks/platform/org1", content=body,
                           headers={"X-Concord-Timestamp": str(int(time.time()))}).status_code == 403
    # Signed but malformed: authenticated first, then 400.
    for bad, reason in ((b"[1,2", "malformed_json"), (b'{"ids": []}', "missing_field"),
                        (b'{"record_ids": [{"x": 1}]}', "missing_field")):
        r = world.http.post("/webhooks/platform/org1", content=bad, headers=platform_headers(secret, bad))
        assert r.status_code == 400 and r.json() == {"error": reason}
    st = world.stats()
    assert st["rejected_by_reason"] == {"bad_signature": 3, "malformed_json": 1, "missing_field": 2}
    assert st["wake_requests"] == 1


def test_platform_signature_covers_a_fresh_timestamp_and_is_single_use(world):
    """A captured platform request cannot be replayed: not later (the timestamp is signed and
    must be within 300 s of our clock), and not now (a signature is accepted once)."""
    secret = world.platform_secret("org1")
    body = json.dumps({"record_ids": ["r1"]}).encode()
    url = "/webhooks/platform/org1"

    def post(headers):
        return world.http.post(url, content=body, headers=headers)

    signed = platform_headers(secret, body)
    assert post(signed).status_code == 202
    r = post(signed)  # the exact same request again
    assert r.status_code == 403
    now = int(time.time())
    for ts in (now - 301, now + 301):  # outside the window, although correctly signed
        assert post({"X-Concord-Timestamp": str(ts),
                     "X-Concord-Signature": platform_signature(secret, body, ts)}).status_code == 403
    # The signature is over the timestamp too: moving it invalidates the signature.
    moved = {**signed, "X-Concord-Timestamp": str(now + 1)}
    assert post(moved).status_code == 403
    for stamp in ("", "soon", "\u00b2".encode(), "9" * 5000, "-5"):  # non-ASCII goes on the wire as UTF-8
        assert post({**signed, "X-Concord-Timestamp": stamp}).status_code == 403
    # A non-ASCII signature is refused, not a 500.
    assert post({"X-Concord-Timestamp": signed["X-Concord-Timestamp"],
                 "X-Concord-Signature": "sha256=\u00e9t\u00e9".encode()}).status_code == 403
    st = world.stats()
    assert st["accepted_by_source"] == {"platform": 1}
    assert st["rejected_by_reason"] == {"replayed": 1, "stale_timestamp": 2, "bad_signature": 2, "bad_timestamp": 5}
    # Within the window a new request (new timestamp or body) is accepted as usual.
    other = json.dumps({"record_ids": ["r2"]}).encode()
    assert world.http.post(url, content=other, headers=platform_headers(secret, other)).status_code == 202


def test_replay_guard_forgets_what_has_gone_stale_and_is_bounded():
    from api.webhooks import ReplayGuard

    guard = ReplayGuard(window_s=300, max_entries=2)
    assert guard.admit("a", 1000, now=1000) is None
    assert guard.admit("a", 1000, now=1100) == "replayed"
    assert guard.admit("b", 1010, now=1100) is None
    assert guard.admit("c", 1100, now=1100) == "replay_cache_full"  # never forgets a live one to make room
    assert guard.admit("c", 1100, now=1301) is None  # "a" went stale at 1300 and was dropped
    assert len(guard) == 2


def test_stats_need_the_admin_token(make_world):
    world = make_world()
    assert world.http.get("/webhooks/stats").status_code == 401
    assert world.http.get("/webhooks/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert world.http.get("/webhooks/stats", headers={"Authorization": world.admin_token}).status_code == 401
    assert world.http.get("/webhooks/stats",
                          headers={"Authorization": "Bearer \u00e9\u00e9".encode()}).status_code == 401
    r = world.http.get("/webhooks/stats", headers={"Authorization": f"Bearer {world.admin_token}"})
    assert r.status_code == 200 and "accepted" in r.json()
    world.deps.admin_token = None  # none configured: the route does not exist
    r = world.http.get("/webhooks/stats", headers={"Authorization": f"Bearer {world.admin_token}"})
    assert r.status_code == 404 and "accepted" not in r.text


def test_graph_malformed_bodies_are_400_without_trace(world):
    for raw, reason in ((b"\xff\xfe garbage", "malformed_json"), (b"[]", "missing_field"),
                        (b'{"value": {}}', "missing_field"), (b'{"value": [1]}', "missing_field"),
                        (b'{"value": [{"clientState": "x"}]}', "missing_field"), (b"[" * 100_000, "malformed_json")):
        r = world.http.post("/webhooks/graph", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json() == {"error": reason}, raw[:30]
    # The lifecycle route needs the event name.
    r = world.http.post("/webhooks/graph/lifecycle", json={"value": [{"subscriptionId": "s"}]})
    assert r.status_code == 400
    r = world.http.post("/webhooks/graph", content=b"x" * (2 << 20))
    assert r.status_code == 413
    assert world.stats()["wake_requests"] == 0


def chunked_upload(client: httpx.Client, url: str, *, total: int = 64 << 20, headers: dict | None = None,
                   chunk: int = 64 << 10) -> tuple[httpx.Response, int]:
    """POST `total` bytes with chunked transfer encoding (a generator body: no Content-Length);
    returns the answer and how many bytes the server let us send."""
    sent = 0

    def body():
        nonlocal sent
        block = b"x" * chunk
        while sent < total:
            sent += len(block)
            yield block

    r = client.post(url, content=body(), headers=headers or {})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    return r, sent


#: What may be in flight when the server stops reading: the limit plus socket buffers.
STOPPED_READING_BELOW = 24 << 20


def test_chunked_upload_is_cut_off_at_the_limit_on_every_route(world):
    """64 MiB chunked: every route that reads a body answers 413 once 1 MiB has arrived
    and closes the connection, so the client gets to send only what the socket buffers
    hold (it used to read all 64 MiB first)."""
    secret = world.platform_secret("org1")
    routes = [
        ("/webhooks/graph", {}),
        ("/webhooks/graph/lifecycle", {}),
        ("/webhooks/gmail", {"Authorization": f"Bearer {world.push_token()}"}),
        ("/webhooks/platform/org1", platform_headers(secret, b"")),  # the signature is checked after the read
    ]
    for path, headers in routes:
        r, sent = chunked_upload(world.http, path, headers=headers)
        assert r.status_code == 413 and r.json() == {"error": "too_large"}, path
        assert r.headers["connection"] == "close"
        assert sent < STOPPED_READING_BELOW, (path, sent)
    assert world.stats()["rejected_by_reason"] == {"too_large": 4}


# ------------------------------------------------------------------- store


def test_subscription_repository(db_url):
    migrate(db_url)
    engine = make_engine(db_url)
    Session = session_factory(engine)
    try:
        now = time.time()
        with Session.begin() as s:
            a = subs.create_subscription(s, connection_id="c1", provider="microsoft", external_id="g1",
                                         resource="me/contacts", expires_at=now + 100)
            b = subs.create_subscription(s, connection_id="c1", provider="google_calendar", external_id="ch1",
                                         resource="primary", expires_at=now + 10_000)
            subs.create_subscription(s, connection_id="c2", provider="microsoft", external_id="g2",
                                     resource="me/contacts", expires_at=now + 50)
        assert a.secret and len(a.secret) >= 40
        with Session() as s:
            row = subs.find_by_external_id(s, "microsoft", "g1")
            assert row.client_state_hash == subs.hash_secret(a.secret) and a.secret not in row.client_state_hash
            assert subs.secret_matches(row, a.secret) and not subs.secret_matches(row, b.secret)
            assert [r.external_id for r in subs.due_for_renewal(s, now + 200)] == ["g2", "g1"]
            assert [r.external_id for r in subs.due_for_renewal(s, now + 200, provider="microsoft")] == ["g2", "g1"]
        with Session.begin() as s:
            assert subs.mark_status(s, b.id, "needs_renewal")
            assert subs.set_expiry(s, a.id, now + 5000)
        with Session() as s:
            assert [r.external_id for r in subs.due_for_renewal(s, now + 200)] == ["g2", "ch1"]
        with Session.begin() as s:
            subs.set_expiry(s, b.id, now + 20_000)  # renewed: active again
            subs.mark_status(s, a.id, "removed")
            # Another connection cannot take over a live key; the owner may re-create it.
            from models.errors import PreconditionFailed

            with pytest.raises(PreconditionFailed):
                subs.create_subscription(s, connection_id="c9", provider="microsoft", external_id="g2",
                                         resource="x", expires_at=None)
        with Session() as s:
            assert subs.get_subscription(s, b.id).status == "active"
            assert {r.external_id for r in subs.list_for_connection(s, "c1")} == {"g1", "ch1"}
            assert [r.external_id for r in subs.list_for_connection(s, "c1", status="removed")] == ["g1"]
        with Session.begin() as s:
            again = subs.create_subscription(s, connection_id="c1", provider="microsoft", external_id="g1",
                                             resource="me/contacts", expires_at=now + 100)
            assert again.secret != a.secret
            assert subs.delete_for_connection(s, "c1") == 2
        with Session() as s:
            assert subs.list_for_connection(s, "c1") == []
            assert subs.find_by_external_ids(s, "microsoft", ["g1", "g2", "zz"]).keys() == {"g2"}
    finally:
        engine.dispose()


# ------------------------------------------------------- Temporal, end to end


async def test_graph_notification_runs_a_mailbox_cycle(tmp_path):
    """A Graph notification POST, through the production signal (signal-with-start of
    `wake` over a client the server connects itself), ends in MailboxSyncWorkflow cycles.

    The connection is the seeded Google scenario: the route needs only a subscription
    row pointing at a connection, and the cycle reads the People emulator.
    """
    from temporalio.testing import WorkflowEnvironment

    from api.webhooks import lazy_temporal_signal
    from workers import client as api
    from workers.devstack import find_temporal_cli, search_attribute_args
    from workers.scenario import build_scenario
    from workers.temporal_client import DATA_CONVERTER, TASK_QUEUE
    from tests.e2e_rig import throwaway_keyring
    from workers.worker import build_activities, make_worker

    sa_args = search_attribute_args()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_cli(), data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--log-level", "error", *sa_args],
    )
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    crm_url = f"sqlite:///{tmp_path / 'crm.db'}"
    sc = build_scenario(store_url, crm_url, connection_id=f"c-{uuid.uuid4().hex[:6]}", n_mailbox=10, n_crm=10,
                        near_duplicates=2)
    server = None
    try:
        with sc.sessions.begin() as s:
            secret = subs.create_subscription(s, connection_id=sc.connection_id, provider="microsoft",
                                              external_id="sub-e2e", resource="me/contacts",
                                              expires_at=time.time() + 3600).secret
        tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
        signal = lazy_temporal_signal(env.client.service_client.config.target_host, task_queue=tq,
                                      poll_interval_s=3600)
        waker = Waker(signal, store_lookup(sc.sessions), window_s=0.2)
        server = serve(create_app([webhook_router(WebhookDeps(sessions=sc.sessions, waker=waker))]))
        url = server.base_url + "webhooks/graph"
        counters = waker.counters

        async def cycles() -> int:
            try:
                return (await api.state(env.client, sc.connection_id)).cycles
            except Exception:
                return 0  # not started yet

        async def wait_cycles(n: int, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while await cycles() < n:
                assert time.monotonic() < deadline, f"no cycle {n}"
                await asyncio.sleep(0.2)

        async with make_worker(env.client, build_activities(store_url, crm_url, keyring=throwaway_keyring()),
                               task_queue=tq), \
                httpx.AsyncClient(timeout=10) as http:
            # A forged notification starts nothing: it is refused before any wake is requested.
            r = await http.post(url, json={"value": [graph_note("sub-e2e", "forged")]})
            assert r.status_code == 202
            assert counters.wake_requests == 0 and counters.rejected_by_reason == {"bad_client_state": 1}

            r = await http.post(url, json={"value": [graph_note("sub-e2e", secret)]})
            assert r.status_code == 202
            await wait_cycles(1)
            st = await api.state(env.client, sc.connection_id)
            assert st.last_error is None, st.last_error
            # The workflow is running now: the next notification is a plain wake.
            r = await http.post(url, json={"value": [graph_note("sub-e2e", secret)]})
            assert r.status_code == 202
            await wait_cycles(2)
            assert counters.signals_sent == 2 and counters.signal_errors == 0
            assert counters.rejected_by_reason == {"bad_client_state": 1}
    finally:
        if server is not None:
            server.stop()
        sc.close()
        await env.shutdown()
