"""The webhook server over real HTTP (uvicorn on a free port, httpx as the provider).

Every route is exercised as its provider calls it: Graph through the Graph
emulator (validation handshake and the emulator's own notification shape), Gmail as
a Pub/Sub push envelope, Calendar as a headers-only ping, platforms with an HMAC.
The signal is a recording callable except in the last test, where a notification
ends in a MailboxSyncWorkflow cycle on the real Temporal dev server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid

import httpx
import pytest

from api.app import create_app
from api.webhooks import (
    Counters,
    Waker,
    WebhookDeps,
    derived_platform_secrets,
    platform_signature,
    store_lookup,
    webhook_router,
)
from connectors.graph_contacts import GraphContacts
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import serve
from store import repo
from store import subscriptions as subs
from store.db import make_engine, migrate, session_factory

PUSH_TOKEN = "push-token-0123456789"
MASTER_KEY = b"k" * 32
GRAPH_TOKEN = "emulator-token"


class Recorder:
    """The fake signal: remembers (connection_id, org_id, provider, reason) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []
        self.lock = threading.Lock()

    async def __call__(self, connection_id: str, org_id: str, provider: str, reason: str) -> None:
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
    def __init__(self, url: str, window_s: float) -> None:
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
        self.deps = WebhookDeps(sessions=self.sessions, waker=self.waker, pubsub_token=PUSH_TOKEN,
                                platform_secret=derived_platform_secrets(MASTER_KEY))
        self.server = serve(create_app([webhook_router(self.deps)]))
        self.base = self.server.base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, timeout=10)

    def subscribe(self, cid: str, provider: str, external_id: str, **kw) -> str | None:
        with self.sessions.begin() as s:
            return subs.create_subscription(s, connection_id=cid, provider=provider, external_id=external_id,
                                            resource="r", expires_at=time.time() + 3600, **kw).secret

    def stats(self) -> dict:
        return self.http.get("/webhooks/stats").json()

    def close(self) -> None:
        self.http.close()
        self.server.stop()
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
    wait_for(lambda: world.signal.for_conn("c-other"), what="signal")
    time.sleep(0.1)
    assert world.signal.for_conn("c-ms") == []
    assert world.stats()["rejected_by_reason"]["bad_client_state"] == 5


def test_burst_of_500_notifications_coalesces(make_world):
    """500 notifications inside one window: one leading signal and at most one trailing.

    The window is 3 s here (1 s in production) because the test's own client shares
    the GIL with the server and needs about a second to send 500 POSTs.
    """
    world = make_world(window_s=3.0)
    secret = world.subscribe("c-ms", "microsoft", "sub-burst")
    t0 = time.monotonic()
    codes = {world.http.post("/webhooks/graph", json={"value": [graph_note("sub-burst", secret)]}).status_code
             for _ in range(500)}
    elapsed = time.monotonic() - t0
    assert codes == {202}
    assert elapsed < 3.0, f"the burst took {elapsed:.2f}s, longer than the window"
    assert world.stats()["signals_started"] == 1  # the trailing one waits for the window
    wait_for(lambda: world.waker.idle(), timeout=6, what="drain")
    st = world.stats()
    assert st["accepted"] == 500
    n = len(world.signal.for_conn("c-ms"))
    assert n == 2, n  # the burst outlived the first signal: exactly one trailing
    assert st["signals_sent"] == n
    assert st["coalesced"] == 500 - n


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
        # Idle for a whole window: the next request is signalled at once.
        await asyncio.sleep(0.4)
        t = time.monotonic()
        w.wake("c", "c")
        await w.drain()
        assert times[-1] - t < 0.1
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
        r = world.http.post("/webhooks/gmail", params={"token": PUSH_TOKEN},
                            json=pubsub_envelope("ada.lovelace@example.org ", hid))
        assert r.status_code == 204
    st = world.stats()
    assert st["accepted_by_source"] == {"gmail": 2}
    wait_for(lambda: world.signal.for_conn("c-gm"), what="gmail wake")
    assert world.signal.for_conn("c-gm")[0] == ("c-gm", "org1", "google", "gmail")
    with world.sessions() as s:  # the address is never stored in clear
        assert all("example" not in r.external_id for r in subs.list_for_connection(s, "c-gm"))

    # An address we do not watch is acknowledged (no redelivery) but not signalled.
    r = world.http.post("/webhooks/gmail", params={"token": PUSH_TOKEN}, json=pubsub_envelope("x@example.org", 1))
    assert r.status_code == 204
    assert world.stats()["rejected_by_reason"] == {"unknown_subscription": 1}


def test_pubsub_push_bad_token_rejected(world):
    world.subscribe("c-gm", "google_gmail", subs.email_key("a@example.org"), generate_secret=False)
    env = pubsub_envelope("a@example.org", 1)
    assert world.http.post("/webhooks/gmail", params={"token": "wrong"}, json=env).status_code == 403
    assert world.http.post("/webhooks/gmail", json=env).status_code == 403
    assert world.http.post("/webhooks/gmail", params={"token": PUSH_TOKEN + "x"}, json=env).status_code == 403
    st = world.stats()
    assert st["rejected_by_reason"] == {"bad_token": 3}
    assert st["wake_requests"] == 0


def test_pubsub_malformed_bodies_are_400_by_reason(world):
    def push(body, raw=False):
        kw = {"content": body} if raw else {"json": body}
        return world.http.post("/webhooks/gmail", params={"token": PUSH_TOKEN}, **kw)

    b64 = lambda obj: base64.b64encode(json.dumps(obj).encode()).decode()  # noqa: E731
    cases = [
        (push(b"{not json", raw=True), "malformed_json"),
        (push({"nomessage": 1}), "missing_field"),
        (push({"message": {"data": "!!!not base64!!!"}}), "bad_base64"),
        (push({"message": {"data": base64.b64encode(b"not json").decode()}}), "malformed_json"),
        (push({"message": {"data": b64({"historyId": 5})}}), "missing_field"),
        (push({"message": {"data": b64({"emailAddress": "a@example.org"})}}), "missing_field"),
        (push({"message": {"data": b64({"emailAddress": "a@example.org", "historyId": "12x"})}}), "bad_history_id"),
        (push({"message": {"data": b64({"emailAddress": "a@example.org", "historyId": True})}}), "bad_history_id"),
    ]
    for r, reason in cases:
        assert r.status_code == 400, r.text
        assert r.json() == {"error": reason}
        assert "Traceback" not in r.text
    assert world.stats()["rejected_by_reason"] == {"malformed_json": 2, "missing_field": 3, "bad_base64": 1,
                                                   "bad_history_id": 2}


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


def test_platform_hmac_wakes_every_active_connection_of_the_org(world):
    secret = derived_platform_secrets(MASTER_KEY)("org1")
    body = json.dumps({"record_ids": ["r1", 2]}).encode()
    r = world.http.post("/webhooks/platform/org1", content=body,
                        headers={"X-Concord-Signature": platform_signature(secret, body),
                                 "content-type": "application/json"})
    assert r.status_code == 202 and r.json() == {"connections": 3}
    wait_for(lambda: len(world.signal.calls) == 3, what="three wakes")
    assert sorted(c[0] for c in world.signal.calls) == ["c-gm", "c-ms", "c-other"]  # not c-off, not org2

    # The same body signed with another organisation's key, a tampered body, no signature.
    other = derived_platform_secrets(MASTER_KEY)("org2")
    assert world.http.post("/webhooks/platform/org1", content=body,
                           headers={"X-Concord-Signature": platform_signature(other, body)}).status_code == 403
    tampered = json.dumps({"record_ids": ["r1", 3]}).encode()
    assert world.http.post("/webhooks/platform/org1", content=tampered,
                           headers={"X-Concord-Signature": platform_signature(secret, body)}).status_code == 403
    assert world.http.post("/webhooks/platform/org1", content=body).status_code == 403
    # Signed but malformed: authenticated first, then 400.
    for bad, reason in ((b"[1,2", "malformed_json"), (b'{"ids": []}', "missing_field"),
                        (b'{"record_ids": [{"x": 1}]}', "missing_field")):
        r = world.http.post("/webhooks/platform/org1", content=bad,
                            headers={"X-Concord-Signature": platform_signature(secret, bad)})
        assert r.status_code == 400 and r.json() == {"error": reason}
    st = world.stats()
    assert st["rejected_by_reason"] == {"bad_signature": 3, "malformed_json": 1, "missing_field": 2}
    assert st["wake_requests"] == 3


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
            from connectors.errors import PreconditionFailed

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
            # A forged notification starts nothing.
            r = await http.post(url, json={"value": [graph_note("sub-e2e", "forged")]})
            assert r.status_code == 202
            await asyncio.sleep(0.5)
            assert await cycles() == 0

            r = await http.post(url, json={"value": [graph_note("sub-e2e", secret)]})
            assert r.status_code == 202
            await wait_cycles(1)
            st = await api.state(env.client, sc.connection_id)
            assert st.last_error is None, st.last_error
            # The workflow is running now: the next notification is a plain wake.
            r = await http.post(url, json={"value": [graph_note("sub-e2e", secret)]})
            assert r.status_code == 202
            await wait_cycles(2)
            stats = (await http.get(server.base_url + "webhooks/stats")).json()
            assert stats["signals_sent"] == 2 and stats["signal_errors"] == 0
            assert stats["rejected_by_reason"] == {"bad_client_state": 1}
    finally:
        if server is not None:
            server.stop()
        sc.close()
        await env.shutdown()
