"""The Gmail connector against the Gmail emulator on a real port.

Everything goes through google-api-python-client (discovery, batch, errors) exactly
as against Google; only the endpoint differs. Beyond the shared mail contract these
tests pin what a Gmail connector is judged on: batched gets, quota pacing that keeps
a big listing free of 429s, no body in metadata mode, and the wire shapes
(history gaps, empty pages, batch responses) the client must accept.
"""

from __future__ import annotations

import base64
import json
import threading

import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from connectors.gmail_mail import GmailMail, coalesce
from emulators.gmail import GmailState, create_app
from emulators.server import serve
from models.errors import AuthExpired, CursorExpired, RateLimited, Transient
from models.mail import MailFetchOptions
from tests.mail_contract import META, BODIES, MailContract, content, drain, latest, make_raw

USER = "me@acme.example"


class FakeClock:
    """One clock for the emulator's quota window and the connector's pacing: waiting
    advances it, so a minute of quota passes without a minute of test."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.slept += seconds


class GmailHarness:
    def __init__(self, state: GmailState, base_url: str, **connector_kwargs) -> None:
        self.state = state
        self.base_url = base_url
        self.user = USER
        self.kwargs = connector_kwargs

    def connector(self, options: MailFetchOptions, **kwargs) -> GmailMail:
        return GmailMail.for_emulator(self.base_url, token="emulator-token", options=options, **{**self.kwargs, **kwargs})

    def deliver(self, raw: bytes, *, sent: bool = False, labels: tuple[str, ...] = ()) -> str:
        return self.state.deliver(self.user, raw, labels, sent, backdate=True)

    def add_label(self, message_id: str, label: str) -> None:
        self.state.add_label(self.user, message_id, label)

    def remove_label(self, message_id: str, label: str) -> None:
        self.state.remove_label(self.user, message_id, label)

    def delete(self, message_id: str) -> None:
        self.state.delete(self.user, message_id)

    def expire_cursor(self) -> None:
        self.state.expire_history(self.user)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def gmail(clock):
    state = GmailState(default_user=USER, clock=clock)
    server = serve(create_app(state))
    yield state, server.base_url
    server.stop()


@pytest.fixture
def harness(gmail, clock):
    state, base = gmail
    return GmailHarness(state, base, clock=clock, wait=clock.sleep)


def raw_service(base_url: str):
    return build("gmail", "v1", credentials=Credentials(token="emulator-token"), static_discovery=True,
                 cache_discovery=False, client_options={"api_endpoint": base_url})


class TestGmailMailContract(MailContract):
    @pytest.fixture
    def harness(self, gmail, clock):
        state, base = gmail
        return GmailHarness(state, base, clock=clock, wait=clock.sleep)


# ---- history ------------------------------------------------------------------------------------


def test_history_expiry_is_cursor_expired_and_a_new_listing_recovers(harness):
    first = harness.deliver(make_raw()[0])
    _, cursor = drain(harness.connector(META), None)
    harness.expire_cursor()
    with pytest.raises(CursorExpired):
        harness.connector(META).list_changes(cursor)
    records, fresh = drain(harness.connector(META), None)
    assert first in latest(records)
    second = harness.deliver(make_raw()[0])
    assert second in latest(drain(harness.connector(META), fresh)[0])


def test_history_wire_shapes(gmail):
    state, base = gmail
    svc = raw_service(base)
    start = svc.users().getProfile(userId="me").execute()["historyId"]
    ids = [state.deliver(USER, make_raw()[0]) for _ in range(12)]
    body = svc.users().history().list(userId="me", startHistoryId=start).execute()
    record_ids = [int(r["id"]) for r in body["history"]]
    assert record_ids == sorted(record_ids) and len(set(record_ids)) == 12
    assert record_ids[-1] - record_ids[0] > 11  # ids have gaps: never compute them, store them
    assert [r["messagesAdded"][0]["message"]["id"] for r in body["history"]] == ids
    assert int(body["historyId"]) == record_ids[-1]
    # only records after the given id: the latest id answers no records
    assert "history" not in svc.users().history().list(userId="me", startHistoryId=body["historyId"]).execute()
    with pytest.raises(HttpError) as err:
        svc.users().history().list(userId="me", startHistoryId="").execute()
    assert err.value.resp.status == 400 and "startHistoryId" in str(err.value)
    state.expire_history(USER)
    with pytest.raises(HttpError) as err:
        svc.users().history().list(userId="me", startHistoryId=start).execute()
    assert err.value.resp.status == 404
    assert json.loads(err.value.content)["error"]["errors"][0]["reason"] == "notFound"


def test_empty_history_pages_with_a_next_page_token_do_not_end_the_round(harness):
    _, cursor = drain(harness.connector(META), None)
    harness.state.configure(history_empty_pages=2)
    pid = harness.deliver(make_raw()[0])
    conn = harness.connector(META)
    page = conn.list_changes(cursor)
    assert page.records == [] and page.next_page and page.cursor is None
    records, _ = drain(conn, cursor)
    assert pid in latest(records)


def test_added_then_deleted_in_one_page_is_a_tombstone_without_a_get(harness):
    _, cursor = drain(harness.connector(META), None)
    pid = harness.deliver(make_raw()[0])
    harness.delete(pid)
    harness.state.reset_stats()
    records, _ = drain(harness.connector(META), cursor)
    assert latest(records)[pid].deleted
    assert harness.state.stats()["calls"].get("users.messages.get", 0) == 0
    assert coalesce([{"messagesAdded": [{"message": {"id": "a"}}]}, {"messagesDeleted": [{"message": {"id": "a"}}]}]) == {"a": True}


def test_a_message_gone_before_its_get_is_a_tombstone(harness):
    pid = harness.deliver(make_raw()[0])
    _, cursor = drain(harness.connector(META), None)
    harness.add_label(pid, "CRM")
    harness.delete(pid)
    # one history record per page: the label change is read (and fetched) before the deletion
    conn = harness.connector(META, page_size=1)
    first = conn.list_changes(cursor)
    assert [(r.external_id, r.deleted) for r in first.records] == [(pid, True)]


def test_labels_by_name_trash_as_a_label_and_provider_fields(harness):
    pid = harness.deliver(make_raw()[0], labels=("Deals/Acme",))
    sent = harness.deliver(make_raw(sender=f"Me <{USER}>")[0], sent=True)
    records, cursor = drain(harness.connector(META), None)
    got = latest(records)
    msg = content(got[pid])
    assert "Deals/Acme" in msg.labels and "INBOX" in msg.labels and not any(x.startswith("Label_") for x in msg.labels)
    assert msg.direction == "received" and msg.provider_thread_id and msg.size > 0 and msg.received_at
    assert content(got[sent]).direction == "sent" and "SENT" in content(got[sent]).labels
    harness.state.trash(USER, pid)
    records, _ = drain(harness.connector(META), cursor)
    assert "TRASH" in content(latest(records)[pid]).labels and not latest(records)[pid].deleted


def test_threads_by_references_and_subject(gmail):
    state, base = gmail
    raw, root = make_raw(subject="Pricing")
    first = state.deliver(USER, raw)
    reply = state.deliver(USER, make_raw(subject="Re: Pricing", references=f"<{root}>")[0])
    other = state.deliver(USER, make_raw(subject="Something else", references=f"<{root}>")[0])
    thread = state.message(USER, first)["threadId"]
    assert state.message(USER, reply)["threadId"] == thread
    assert state.message(USER, other)["threadId"] != thread


# ---- batching and quota -------------------------------------------------------------------------


def test_full_listing_batches_its_gets(harness):
    ids = [harness.deliver(make_raw(subject=f"M{i}")[0]) for i in range(120)]
    harness.state.reset_stats()
    conn = harness.connector(META)
    records, _ = drain(conn, None)
    assert set(ids) <= set(latest(records))
    stats = harness.state.stats()
    assert stats["calls"]["users.messages.get"] == 120
    assert stats["batches"] == 3 and max(stats["batch_sizes"]) <= 50
    # 1 profile + 1 list + 3 batches (+ labels only for user labels): against 120 gets one by one
    assert conn.calls_made <= 6
    assert conn.calls_made * 100 / 120 < 10 < 100
    assert conn.units_spent == stats["units_total"] == 1 + 5 + 120 * 5


def _mailbox_of(state: GmailState, n: int) -> None:
    raw = make_raw(subject="Bulk")[0]
    for _ in range(n):
        state.deliver(USER, raw)


def drain_per_page(harness, cursor, **kwargs):
    """A round as the worker runs it: a new connector for every page (activity)."""
    records, page, conns = [], None, []
    while True:
        conns.append(harness.connector(META, **kwargs))
        result = conns[-1].list_changes(cursor, page)
        records += result.records
        if result.next_page is None:
            return records, result.cursor, conns
        page = result.next_page


def test_pacing_keeps_a_listing_over_one_minute_of_quota_free_of_rate_limits(harness, clock):
    _mailbox_of(harness.state, 3100)  # 3,100 metadata gets = 15,500 units, more than a minute's 15,000
    harness.state.reset_stats()
    # one connector per page, as activities build them: the budget is shared by account
    records, cursor, conns = drain_per_page(harness, None, page_size=500, account=USER)
    stats = harness.state.stats()
    assert len(records) == 3100 and stats["rate_limited"] == 0
    assert stats["units_total"] > 15_000 and sum(c.units_spent for c in conns) == stats["units_total"]
    assert len({id(c.budget) for c in conns}) == 1
    assert clock.slept >= 60 and conns[0].budget.waited_s == clock.slept
    per_message = stats["units_total"] / 3100
    assert per_message < 5.05, per_message  # gets dominate: list and profile add ~0.01 per message


def test_a_budget_kept_per_instance_would_not_pace_a_listing_run_page_by_page(harness):
    _mailbox_of(harness.state, 3100)
    harness.state.reset_stats()
    with pytest.raises(RateLimited):
        drain_per_page(harness, None, page_size=500)  # no account: each page starts a fresh budget
    assert harness.state.stats()["rate_limited"] > 0


def test_without_pacing_the_same_listing_meets_rate_limits(harness):
    _mailbox_of(harness.state, 3100)
    harness.state.reset_stats()
    conn = harness.connector(META, page_size=500, pacing=False)
    with pytest.raises(RateLimited) as err:
        drain(conn, None)
    assert harness.state.stats()["rate_limited"] > 0
    assert err.value.retry_after is not None


def test_history_delta_costs_about_five_units_per_message(harness):
    _, cursor = drain(harness.connector(META), None)
    for i in range(200):
        harness.deliver(make_raw(subject=f"D{i}")[0])
    harness.state.reset_stats()
    conn = harness.connector(META, page_size=500)
    records, _ = drain(conn, cursor)
    assert len(latest(records)) == 200
    units = harness.state.stats()["units_total"]
    assert units == 2 + 200 * 5 and conn.units_spent == units


def test_quota_can_be_switched_off_and_answers_403_when_configured(gmail):
    state, base = gmail
    svc = raw_service(base)
    state.set_quota(True, per_minute=3)
    svc.users().getProfile(userId="me").execute()
    state.configure(rate_limit_status=403)
    with pytest.raises(HttpError) as err:
        svc.users().messages().list(userId="me").execute()
    body = json.loads(err.value.content)["error"]
    assert err.value.resp.status == 403 and body["errors"][0]["reason"] == "userRateLimitExceeded"
    assert body["errors"][0]["domain"] == "usageLimits"
    state.set_quota(False)
    svc.users().messages().list(userId="me").execute()


# ---- metadata mode ---------------------------------------------------------------------------------


def test_metadata_gets_never_carry_body_data_on_the_wire(harness):
    harness.state.configure(record_responses=True)
    raw, _ = make_raw(body="Secret pricing 4711", html="<p>Secret <b>pricing</b> 4711</p>")
    harness.deliver(raw)
    drain(harness.connector(META), None)
    wire = b"".join(harness.state.responses)
    assert wire and b"4711" not in wire and b"snippet" not in wire and b'"raw"' not in wire
    assert b'"data"' not in wire
    # the scan would see a body if one came: bodies mode fetches raw
    harness.state.responses.clear()
    drain(harness.connector(BODIES), None)
    assert b'"raw"' in b"".join(harness.state.responses)


def test_metadata_format_filters_headers_and_full_has_the_mime_tree(gmail):
    state, base = gmail
    svc = raw_service(base)
    pid = state.deliver(USER, make_raw(body="Hello body", html="<p>Hi</p>")[0])
    meta = svc.users().messages().get(userId="me", id=pid, format="metadata", metadataHeaders=["Subject", "from"]).execute()
    assert sorted(h["name"] for h in meta["payload"]["headers"]) == ["From", "Subject"]
    full = svc.users().messages().get(userId="me", id=pid, format="full").execute()
    assert full["payload"]["mimeType"] == "multipart/alternative"
    plain = full["payload"]["parts"][0]
    assert plain["partId"] == "0" and base64.urlsafe_b64decode(plain["body"]["data"]).strip() == b"Hello body"
    raw = svc.users().messages().get(userId="me", id=pid, format="raw").execute()
    assert b"Hello body" in base64.urlsafe_b64decode(raw["raw"]) and "payload" not in raw
    minimal = svc.users().messages().get(userId="me", id=pid, format="minimal").execute()
    assert "payload" not in minimal and minimal["internalDate"].isdigit()


# ---- wire: batch, send, watch, errors ------------------------------------------------------------


def test_batch_responses_parse_with_the_real_client(gmail):
    state, base = gmail
    svc = raw_service(base)
    pid = state.deliver(USER, make_raw()[0])
    state.set_quota(True, per_minute=12)  # room for two gets; the third is refused inside the batch
    got: dict[str, tuple] = {}
    batch = BatchHttpRequest(callback=lambda rid, resp, exc: got.__setitem__(rid, (resp, exc)),
                             batch_uri=base + "batch/gmail/v1")
    batch.add(svc.users().messages().get(userId="me", id=pid, format="minimal"), request_id="ok")
    batch.add(svc.users().messages().get(userId="me", id="missing", format="minimal"), request_id="gone")
    batch.add(svc.users().messages().get(userId="me", id=pid, format="minimal"), request_id="limited")
    batch.execute()
    assert got["ok"][0]["id"] == pid
    assert got["gone"][1].resp.status == 404
    assert got["limited"][1].resp.status == 429 and got["limited"][1].resp.reason.strip() == "Too Many Requests"
    assert state.stats()["batches"] == 1


def test_send_threads_a_reply_and_rfc822msgid_finds_it(gmail):
    state, base = gmail
    svc = raw_service(base)
    raw, root = make_raw(subject="Quote")
    first = state.deliver(USER, raw)
    thread = state.message(USER, first)["threadId"]
    reply, mid = make_raw(sender=USER, to="pat@prospect.example", subject="Re: Quote", references=f"<{root}>")
    sent = svc.users().messages().send(userId="me", body={"raw": base64.urlsafe_b64encode(reply).decode(), "threadId": thread}).execute()
    assert sent["labelIds"] == ["SENT"] and sent["threadId"] == thread
    found = svc.users().messages().list(userId="me", q=f"rfc822msgid:{mid}").execute()
    assert [m["id"] for m in found["messages"]] == [sent["id"]]
    # without threadId a sent reply starts a thread of its own (Gmail's documented rule)
    alone, _ = make_raw(sender=USER, to="pat@prospect.example", subject="Re: Quote", references=f"<{root}>")
    other = svc.users().messages().send(userId="me", body={"raw": base64.urlsafe_b64encode(alone).decode()}).execute()
    assert other["threadId"] != thread


def test_watch_one_topic_and_push_envelope(gmail):
    state, base = gmail
    svc = raw_service(base)
    pushed: list[dict] = []
    arrived = threading.Event()
    state.push = lambda env: (pushed.append(env), arrived.set())
    watch = svc.users().watch(userId="me", body={"topicName": "projects/p/topics/gmail", "labelIds": ["INBOX"]}).execute()
    assert watch["historyId"].isdigit() and watch["expiration"].isdigit()
    with pytest.raises(HttpError) as err:
        svc.users().watch(userId="me", body={"topicName": "projects/p/topics/other"}).execute()
    assert err.value.resp.status == 400 and "Only one user push notification client" in str(err.value)
    state.deliver(USER, make_raw()[0])
    assert arrived.wait(5)
    message = pushed[0]["message"]
    data = json.loads(base64.b64decode(message["data"]))
    assert data["emailAddress"] == USER and int(data["historyId"]) > int(watch["historyId"])
    assert message["messageId"] == message["message_id"] and message["publishTime"] == message["publish_time"]
    svc.users().stop(userId="me").execute()
    svc.users().watch(userId="me", body={"topicName": "projects/p/topics/other"}).execute()


def test_errors_map_to_recovery_classes(harness):
    _, cursor = drain(harness.connector(META), None)
    harness.state.inject_fault("429", "users.history.list", retry_after=7)
    with pytest.raises(RateLimited) as err:
        harness.connector(META).list_changes(cursor)
    assert err.value.retry_after == 7
    harness.state.inject_fault("403_rate", "users.history.list")
    with pytest.raises(RateLimited):
        harness.connector(META).list_changes(cursor)
    harness.state.inject_fault("503", "users.history.list")
    with pytest.raises(Transient):
        harness.connector(META).list_changes(cursor)
    pid = harness.deliver(make_raw()[0])
    harness.state.inject_fault("500", "users.messages.get")
    with pytest.raises(Transient):
        harness.connector(META).list_changes(cursor)
    assert pid in latest(drain(harness.connector(META), cursor)[0])
    bad = GmailMail.for_emulator(harness.base_url, token="wrong-token", options=META)
    with pytest.raises(AuthExpired):
        bad.list_changes(None)
    with pytest.raises(CursorExpired):
        harness.connector(META).list_changes("not-a-history-id")


def test_refresh_token_credentials_work_through_the_token_endpoint(harness):
    pid = harness.deliver(make_raw()[0])
    conn = GmailMail.for_emulator(harness.base_url, options=META)
    assert pid in latest(drain(conn, None)[0])


def test_an_access_token_expiring_between_pages_is_refreshed(harness):
    ids = [harness.deliver(make_raw()[0]) for _ in range(5)]
    conn = GmailMail.for_emulator(harness.base_url, options=META, page_size=2)
    page = conn.list_changes(None)
    harness.state.expire_access_tokens()
    records, _ = page.records, None
    while page.next_page:
        page = conn.list_changes(None, page.next_page)
        records += page.records
    assert set(ids) == {r.external_id for r in records}


def test_a_401_inside_a_batch_is_refreshed_or_auth_expired(harness):
    pid = harness.deliver(make_raw()[0])
    harness.state.inject_fault("401", "users.messages.get")
    conn = GmailMail.for_emulator(harness.base_url, options=META)
    assert pid in latest(drain(conn, None)[0])  # the client refreshes and re-sends the 401 parts
    harness.state.inject_fault("401", "users.messages.get")
    with pytest.raises(AuthExpired):
        drain(harness.connector(META), None)  # a static token cannot refresh
