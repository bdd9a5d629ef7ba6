"""Sending through a connected mailbox (`MailboxSend`), Gmail and Graph, over real HTTP.

`SendContract` is what every sending connector must do for the outbox to send each
message exactly once: keep Concord's Message-ID so `find_sent` recognises a message an
earlier attempt sent (above all when the attempt saw a 5xx for mail that went out),
thread replies, and name each refusal by how to recover from it. The daily sending
limit is a SendRejected("quota_exceeded") for both providers (see
connectors.gmail_mail's docstring for why it is not a RateLimited). Provider tests
follow the contract: Gmail's thread rules and delivery to a colleague, Graph's
upload sessions for big attachments.
"""

from __future__ import annotations

import base64
import email
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone

import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from connectors.gmail_mail import GmailMail
from connectors.graph_mail import GraphMail
from emulators.gmail import GmailState, create_app as gmail_app
from emulators.graph import GraphState, create_app as graph_app
from emulators.server import serve
from models.errors import RateLimited, SendRejected, Transient
from models.mail import MailFetchOptions
from models.send import SentRef

ME = "me@acme.example"
PROSPECT = "pat@prospect.example"
COLLEAGUE = "kim@acme.example"
TOKEN = "emulator-token"


def outgoing(*, to: str = PROSPECT, subject: str = "Proposal", body: str = "Here it is.",
             parent: EmailMessage | None = None, attachments: tuple[tuple[str, bytes], ...] = ()) -> EmailMessage:
    """A message as Concord builds it: its own Message-ID, and for a reply the RFC 5322
    In-Reply-To and References (PROVIDERS.md G) and a "Re:" of the parent's subject."""
    msg = EmailMessage()
    msg["From"] = ME
    msg["To"] = to
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(domain="acme.example")
    if parent is not None:
        msg["Subject"] = "Re: " + str(parent["Subject"])
        msg["In-Reply-To"] = str(parent["Message-ID"])
        refs = str(parent.get("References") or parent.get("In-Reply-To") or "").split()
        msg["References"] = " ".join(refs + [str(parent["Message-ID"])])
    else:
        msg["Subject"] = subject
    msg.set_content(body)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg


def incoming(subject: str = "Pricing question") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Pat <{PROSPECT}>"
    msg["To"] = ME
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(domain="prospect.example")
    msg.set_content("How much for 40 seats?")
    return msg


def mid(msg: EmailMessage) -> str:
    return str(msg["Message-ID"]).strip("<>")


# ---- harnesses -------------------------------------------------------------------------------


class GmailSendHarness:
    def __init__(self, state: GmailState, base_url: str) -> None:
        self.state = state
        self.base_url = base_url

    def connector(self) -> GmailMail:
        return GmailMail.for_emulator(self.base_url, token=TOKEN)

    def receive(self, msg: EmailMessage) -> str:
        """The parent arrives in the mailbox; its provider thread."""
        iid = self.state.deliver(ME, bytes(msg))
        return self.state.message(ME, iid)["threadId"]

    def sent_copy(self, ref: SentRef) -> email.message.Message:
        box = self.state.mailbox(ME)
        m = box.messages[ref.provider_message_id]
        assert "SENT" in m.label_ids
        return email.message_from_bytes(m.raw, policy=email_policy.default)

    def sent_count(self) -> int:
        return sum(1 for m in self.state.mailbox(ME).messages.values() if "SENT" in m.label_ids)

    def fail_next_send(self, when: str) -> None:
        self.state.fail_sends(1, status=503, when=when)

    def throttle_next_send(self, retry_after: int) -> None:
        self.state.inject_fault("429", "users.messages.send", retry_after=retry_after)

    def limit_size(self, size: int) -> None:
        self.state.configure(max_message_bytes=size)

    def limit_per_day(self, count: int) -> None:
        self.state.configure(send_limit_per_day=count)


class GraphSendHarness:
    def __init__(self, state: GraphState, base_url: str) -> None:
        self.state = state
        self.base_url = base_url
        self._opened: list[GraphMail] = []

    def connector(self) -> GraphMail:
        conn = GraphMail(self.base_url, lambda: TOKEN, options=MailFetchOptions())
        self._opened.append(conn)
        return conn

    def receive(self, msg: EmailMessage) -> str:
        iid = self.state.mail.deliver(bytes(msg))
        return self.state.mail.message(iid)["conversationId"]

    def sent_copy(self, ref: SentRef) -> email.message.Message:
        mail = self.state.mail
        with mail.lock:
            m = mail._require(ref.provider_message_id)
            assert m.folder_id == mail.folder_id("sentitems")
            return email.message_from_bytes(m.data["_mime"], policy=email_policy.default)

    def sent_count(self) -> int:
        mail = self.state.mail
        with mail.lock:
            sent = mail.folder_id("sentitems")
            return sum(1 for m in mail._messages.values() if not m.deleted and m.folder_id == sent)

    def drafts(self) -> int:
        mail = self.state.mail
        with mail.lock:
            fid = mail.folder_id("drafts")
            return sum(1 for m in mail._messages.values() if not m.deleted and m.folder_id == fid)

    def fail_next_send(self, when: str) -> None:
        self.state.mail.fail_sends(1, status=503, when=when)

    def throttle_next_send(self, retry_after: int) -> None:
        self.state.inject_fault(429, count=1, retry_after=retry_after, path=r"/send$")

    def limit_size(self, size: int) -> None:
        self.state.mail.max_message_bytes = size

    def limit_per_day(self, count: int) -> None:
        self.state.mail.send_limit_per_day = count

    def close(self) -> None:
        for c in self._opened:
            c.close()


@pytest.fixture
def gmail():
    state = GmailState(default_user=ME)
    server = serve(gmail_app(state))
    yield state, server.base_url
    server.stop()


@pytest.fixture
def graph():
    state = GraphState(tokens={TOKEN}, seed=5)
    server = serve(graph_app(state))
    yield state, server.base_url
    server.stop()


# ---- the contract -------------------------------------------------------------------------------


class SendContract:
    """Subclasses provide a `harness` fixture (GmailSendHarness / GraphSendHarness)."""

    def test_a_new_message_lands_in_sent_with_our_message_id(self, harness):
        msg = outgoing()
        ref = harness.connector().send(bytes(msg))
        copy = harness.sent_copy(ref)
        assert str(copy["Message-ID"]) == str(msg["Message-ID"])
        assert harness.connector().find_sent(mid(msg)) == ref
        # the bracketed form finds it too
        assert harness.connector().find_sent(str(msg["Message-ID"])) == ref

    def test_a_reply_joins_the_parents_thread_with_its_headers(self, harness):
        parent = incoming()
        thread = harness.receive(parent)
        reply = outgoing(parent=parent)
        ref = harness.connector().send(bytes(reply), reply_to_message_id=mid(parent))
        assert ref.provider_thread_id == thread
        copy = harness.sent_copy(ref)
        assert str(copy["In-Reply-To"]) == str(parent["Message-ID"])
        assert str(parent["Message-ID"]) in str(copy["References"])
        assert harness.connector().find_sent(mid(reply)).provider_thread_id == thread

    def test_find_sent_of_an_unknown_message_is_none(self, harness):
        assert harness.connector().find_sent("never-sent@acme.example") is None

    def test_a_received_message_is_not_found_as_sent(self, harness):
        parent = incoming()
        harness.receive(parent)
        assert harness.connector().find_sent(mid(parent)) is None

    def test_an_invalid_recipient_is_rejected_and_nothing_is_sent(self, harness):
        with pytest.raises(SendRejected) as err:
            harness.connector().send(bytes(outgoing(to="not-an-address")))
        assert err.value.reason == "invalid_recipient" and not err.value.retryable
        assert harness.sent_count() == 0

    def test_a_message_over_the_size_limit_is_too_large(self, harness):
        harness.limit_size(20_000)
        msg = outgoing(body="x" * 30_000)
        with pytest.raises(SendRejected) as err:
            harness.connector().send(bytes(msg))
        assert err.value.reason == "too_large"
        assert harness.connector().find_sent(mid(msg)) is None

    def test_a_throttled_send_is_rate_limited_with_the_providers_delay(self, harness):
        harness.throttle_next_send(7)
        msg = outgoing()
        with pytest.raises(RateLimited) as err:
            harness.connector().send(bytes(msg))
        assert err.value.retry_after == pytest.approx(7, abs=1)
        assert harness.connector().find_sent(mid(msg)) is None
        assert harness.connector().send(bytes(msg)) == harness.connector().find_sent(mid(msg))

    def test_a_5xx_after_the_message_went_out_is_transient_and_find_sent_finds_it(self, harness):
        """The case exactly-once rests on: the provider sent it, the client saw an error."""
        harness.fail_next_send("after")
        msg = outgoing()
        with pytest.raises(Transient) as err:
            harness.connector().send(bytes(msg))
        assert not isinstance(err.value, RateLimited)
        found = harness.connector().find_sent(mid(msg))
        assert found is not None and harness.sent_count() == 1

    def test_a_5xx_before_storing_is_transient_and_a_retry_sends_once(self, harness):
        harness.fail_next_send("before")
        msg = outgoing()
        with pytest.raises(Transient):
            harness.connector().send(bytes(msg))
        assert harness.connector().find_sent(mid(msg)) is None
        ref = harness.connector().send(bytes(msg))
        assert harness.connector().find_sent(mid(msg)) == ref and harness.sent_count() == 1

    def test_the_daily_sending_limit_is_quota_exceeded(self, harness):
        harness.limit_per_day(2)
        for _ in range(2):
            harness.connector().send(bytes(outgoing()))
        msg = outgoing()
        with pytest.raises(SendRejected) as err:
            harness.connector().send(bytes(msg))
        assert err.value.reason == "quota_exceeded"
        assert err.value.detail["retry_after"] > 3600  # the window frees a day after the first send
        assert harness.connector().find_sent(mid(msg)) is None and harness.sent_count() == 2


class TestGmailSend(SendContract):
    @pytest.fixture
    def harness(self, gmail):
        return GmailSendHarness(*gmail)


class TestGraphSend(SendContract):
    @pytest.fixture
    def harness(self, graph):
        h = GraphSendHarness(*graph)
        yield h
        h.close()


# ---- Gmail ------------------------------------------------------------------------------------------


def test_gmail_send_costs_100_units_and_a_reply_one_lookup(gmail):
    state, base = gmail
    h = GmailSendHarness(state, base)
    parent = incoming()
    h.receive(parent)
    state.reset_stats()
    conn = h.connector()
    conn.send(bytes(outgoing(parent=parent)), reply_to_message_id=mid(parent))
    assert state.units["users.messages.send"] == 100 and state.calls["users.messages.list"] == 1
    assert conn.units_spent == 105


def test_gmail_a_reply_with_another_subject_starts_a_new_thread(gmail):
    h = GmailSendHarness(*gmail)
    parent = incoming()
    thread = h.receive(parent)
    reply = outgoing(parent=parent)
    reply.replace_header("Subject", "Something else entirely")
    ref = h.connector().send(bytes(reply), reply_to_message_id=mid(parent))
    assert ref.provider_thread_id != thread


def test_gmail_a_reply_to_a_parent_not_in_the_mailbox_is_sent_unthreaded(gmail):
    h = GmailSendHarness(*gmail)
    parent = incoming()  # never delivered here
    ref = h.connector().send(bytes(outgoing(parent=parent)), reply_to_message_id=mid(parent))
    assert ref.provider_thread_id == ref.provider_message_id


def test_gmail_a_thread_id_the_user_does_not_have_is_404(gmail):
    state, base = gmail
    service = build("gmail", "v1", credentials=Credentials(token=TOKEN), static_discovery=True,
                    cache_discovery=False, client_options={"api_endpoint": base})
    raw = base64.urlsafe_b64encode(bytes(outgoing())).decode()
    with pytest.raises(HttpError) as err:
        service.users().messages().send(userId="me", body={"raw": raw, "threadId": "abc123"}).execute()
    assert err.value.resp.status == 404 and b"Requested entity was not found" in err.value.content


def test_gmail_a_colleague_on_the_same_server_receives_the_message_threaded(gmail):
    state, base = gmail
    state.mailbox(COLLEAGUE)
    parent = incoming()
    parent.replace_header("To", f"{ME}, {COLLEAGUE}")
    state.deliver(ME, bytes(parent))
    theirs = state.deliver(COLLEAGUE, bytes(parent))
    reply = outgoing(parent=parent, to=f"{PROSPECT}, {COLLEAGUE}")
    reply["Bcc"] = "boss@acme.example"
    GmailSendHarness(state, base).connector().send(bytes(reply), reply_to_message_id=mid(parent))
    box = state.mailbox(COLLEAGUE)
    got = [m for m in box.messages.values() if m.message_id == mid(reply)]
    assert len(got) == 1 and {"INBOX", "UNREAD"} <= got[0].label_ids
    assert got[0].thread_id == box.messages[theirs].thread_id
    assert b"boss@acme.example" not in got[0].raw


# ---- Graph -----------------------------------------------------------------------------------------


def test_graph_a_4mb_attachment_goes_through_an_upload_session_and_arrives_whole(graph):
    state, base = graph
    h = GraphSendHarness(state, base)
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    small = b"small attachment"
    msg = outgoing(attachments=(("deck.bin", big), ("note.txt", small)))
    state.request_log.clear()
    ref = h.connector().send(bytes(msg))
    log = list(state.request_log)
    sessions = [r for r in log if r["method"] == "POST" and r["path"].endswith("/attachments/createUploadSession")]
    puts = [r for r in log if r["method"] == "PUT" and r["path"].startswith("/_upload/")]
    assert len(sessions) == 1 and len(puts) >= 2
    assert puts[0]["content_range"].startswith("bytes 0-") and puts[-1]["content_range"].endswith(f"/{len(big)}")
    assert sum(p["bytes"] for p in puts) == len(big)
    by_name = {a["name"]: a for a in state.mail.attachments(ref.provider_message_id)}
    assert by_name["deck.bin"]["bytes"] == big  # uploaded in chunks, reassembled whole
    assert by_name["note.txt"]["bytes"] == small  # stayed inside the MIME
    assert h.sent_copy(ref)["Message-ID"] == msg["Message-ID"]
    assert h.connector().find_sent(mid(msg)) == ref and h.drafts() == 0


def test_graph_the_upload_url_refuses_a_bearer(graph):
    state, base = graph
    import httpx

    conn = GraphSendHarness(state, base).connector()
    draft = conn._request("POST", "/me/messages", text=base64.b64encode(bytes(outgoing()))).json()
    session = conn._request("POST", f"/me/messages/{draft['id']}/attachments/createUploadSession",
                            body={"AttachmentItem": {"attachmentType": "file", "name": "a.bin", "size": 4}}).json()
    url = session["uploadUrl"]
    assert httpx.put(url, content=b"ab", headers={"Content-Range": "bytes 0-1/4", "Authorization": "Bearer x"}).status_code == 401
    assert httpx.put(url, content=b"ab", headers={"Content-Range": "bytes 0-1/4"}).json()["nextExpectedRanges"] == ["2-"]
    assert httpx.put(url, content=b"cd", headers={"Content-Range": "bytes 0-1/4"}).status_code == 416
    assert httpx.put(url, content=b"cd", headers={"Content-Range": "bytes 2-3/4"}).status_code == 201


def test_graph_a_refused_or_throttled_send_leaves_no_draft_behind(graph):
    h = GraphSendHarness(*graph)
    with pytest.raises(SendRejected):
        h.connector().send(bytes(outgoing(to="nobody")))
    h.throttle_next_send(3)
    with pytest.raises(RateLimited):
        h.connector().send(bytes(outgoing()))
    assert h.drafts() == 0 and h.sent_count() == 0


def test_graph_a_post_over_4mb_is_refused_by_the_emulator(graph):
    state, base = graph
    import httpx

    raw = bytes(outgoing(attachments=(("big.bin", b"z" * (3 * 1024 * 1024 + 10)),)))
    resp = httpx.post(base.rstrip("/") + "/v1.0/me/messages", content=base64.b64encode(raw),
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"})
    assert resp.status_code == 413


def test_gmail_send_after_a_quota_wait_opens_a_fresh_connection():
    """A minute of quota waiting outlives the server's keep-alive (uvicorn: 5 s here): the
    pooled connection is dead, and writing a send to it failed with BrokenPipe, an attempt
    lost for every wait. After a long wait the connector reconnects."""
    import time as _time

    from connectors.gmail_mail import GmailMail, UnitBudget
    from emulators.gmail import GmailState, create_app
    from emulators.server import serve
    from models.mail import MailFetchOptions
    from tests.mail_contract import make_raw

    state = GmailState(enforce_quota=False)
    server = serve(create_app(state))
    now = [1000.0]

    def wait(delay: float) -> None:
        _time.sleep(6.0)  # really idle past the keep-alive; the budget's clock jumps the rest
        now[0] += delay

    try:
        budget = UnitBudget(150, headroom=1.0, clock=lambda: now[0], wait=wait)
        gmail = GmailMail.for_emulator(server.base_url, token="emulator-token", options=MailFetchOptions(),
                                       budget=budget)
        first = gmail.send(make_raw(to="x@y.example")[0])
        second = gmail.send(make_raw(to="x@y.example")[0])  # waits for the window, then sends
        assert budget.waited_s >= 59 and first.provider_message_id != second.provider_message_id
    finally:
        server.stop()
