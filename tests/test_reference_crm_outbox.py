"""The reference CRM's outbox and its PlatformOutbox adapter, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import random
import threading
import time

import pytest

from connectors.protocols import PlatformOutbox
from models.errors import CursorExpired, NotFound, ValidationRejected
from models.mail import Address
from models.mail_log import Association, EmailLog
from models.send import OutgoingAttachment, OutgoingMessage
from platforms.reference_crm import MailRule, ReferenceCrm, ReferenceCrmOutbox

ORG, OTHER = "org_a", "org_b"


@pytest.fixture
def adapter(crm) -> ReferenceCrmOutbox:
    return ReferenceCrmOutbox(crm)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def queue(crm, org=ORG, user="u1", **kw):
    kw.setdefault("to", ["pat@prospect.example"])
    kw.setdefault("subject", "Quote")
    kw.setdefault("text", "Hello")
    return crm.outbox.queue(org, user, **kw)


def log_activity(crm, key, *, direction="received", sender="pat@prospect.example",
                 recipients=("ann@acme.example",), subject="Quote", assoc=()):
    [res] = crm.mail.log_emails(ORG, [EmailLog(
        key=key, thread_key=f"t-{key}", visibility="full", subject=subject, body_text="b", sender=sender,
        recipients=recipients, direction=direction, users=("u1",),
        associations=tuple(Association(object_type=o, object_id=i) for o, i in assoc))])
    assert not isinstance(res, Exception), res


def test_adapter_satisfies_the_protocol(adapter):
    for name in [n for n in dir(PlatformOutbox) if not n.startswith("_")]:
        assert callable(getattr(adapter, name)), name


# ------------------------------------------------------------------ queue and read


def test_queue_stores_everything_and_the_adapter_reports_it(crm, adapter):
    item = queue(crm, to=[Address(email="Pat@Prospect.example", name="Pat")], cc=[{"email": "cy@acme.example"}],
                 bcc=["boss@acme.example"], html="<p>Hello</p>", text="Hello",
                 attachments=[OutgoingAttachment(filename="q.pdf", content_type="application/pdf",
                                                 data_b64=b64(b"%PDF"))],
                 reply_to_key="<m1@prospect.example>", record=("contact", "crm_c_1"))
    assert item.state == "queued" and item.id.startswith("crm_out_") and item.user_id == "u1"
    assert crm.outbox.get(ORG, item.id) == item
    assert crm.outbox.get(OTHER, item.id) is None
    [msg] = adapter.get_outgoing(ORG, [item.id, "crm_out_404"])
    assert isinstance(msg, OutgoingMessage)
    assert msg.to == (Address(email="pat@prospect.example", name="Pat"),)
    assert msg.cc == (Address(email="cy@acme.example"),) and msg.bcc == (Address(email="boss@acme.example"),)
    assert msg.attachments[0].filename == "q.pdf" and msg.attachments[0].data_b64 == b64(b"%PDF")
    assert msg.record == Association(object_type="contact", object_id="crm_c_1")
    assert (msg.reply_to_key, msg.html, msg.text, msg.state, msg.message_id) == (
        "<m1@prospect.example>", "<p>Hello</p>", "Hello", "queued", None)
    assert adapter.get_outgoing(OTHER, [item.id]) == []
    assert adapter.calls_made == 2


def test_list_by_state(crm):
    a, b = queue(crm), queue(crm, subject="Two")
    crm.outbox.cancel(ORG, b.id)
    assert [i.id for i in crm.outbox.list(ORG)] == [a.id, b.id]
    assert [i.id for i in crm.outbox.list(ORG, state="queued")] == [a.id]
    assert crm.outbox.list(OTHER) == []


def test_scheduled_items(crm, adapter):
    later = queue(crm, send_at=time.time() + 3600)
    past = queue(crm, send_at=time.time() - 5)
    assert later.state == "scheduled" and later.send_at is not None and past.state == "queued"
    msgs, _ = adapter.outbox_since(ORG, None)
    assert {m.id: m.state for m in msgs} == {later.id: "scheduled", past.id: "queued"}
    assert adapter.set_outgoing_state(ORG, later.id, "queued").state == "queued"  # due now
    sched = queue(crm, send_at=time.time() + 3600)
    assert adapter.set_outgoing_state(ORG, sched.id, "sending", message_id="<s@x>").state == "sending"


# ------------------------------------------------------------------ feed


def test_feed_reports_queue_and_every_change_once_in_latest_state(crm, adapter):
    a, b = queue(crm), queue(crm, subject="B")
    msgs, cur = adapter.outbox_since(ORG, None)
    assert [m.id for m in msgs] == [a.id, b.id]
    assert adapter.outbox_since(ORG, cur) == ([], cur)
    adapter.set_outgoing_state(ORG, a.id, "sending", message_id="<a@x>")
    adapter.set_outgoing_state(ORG, a.id, "sent", provider_message_id="p1", provider_thread_id="t1")
    crm.outbox.cancel(ORG, b.id)
    msgs, cur2 = adapter.outbox_since(ORG, cur)
    assert [(m.id, m.state) for m in msgs] == [(a.id, "sent"), (b.id, "failed")]
    assert (msgs[0].message_id, msgs[0].provider_message_id, msgs[0].provider_thread_id) == ("<a@x>", "p1", "t1")
    assert msgs[1].reason == "cancelled"
    # Paging: resuming from each page's cursor walks the feed without repeats.
    for _ in range(3):
        queue(crm)
    seen, cur = [], None
    while True:
        page, cur = adapter.outbox_since(ORG, cur, limit=2)
        if not page:
            break
        seen += [m.id for m in page]
    assert len(seen) == len(set(seen)) == 5
    assert adapter.outbox_since(OTHER, None) == ([], "0")


def test_same_state_twice_is_not_a_feed_entry(crm, adapter):
    a = queue(crm)
    _, cur = adapter.outbox_since(ORG, None)
    first = adapter.set_outgoing_state(ORG, a.id, "sending", message_id="<a@x>")
    _, cur = adapter.outbox_since(ORG, cur)
    again = adapter.set_outgoing_state(ORG, a.id, "sending", message_id="<a@x>")
    assert again == first
    assert adapter.outbox_since(ORG, cur) == ([], cur)


@pytest.mark.parametrize("bad", ["abc", "-1", "999999"])
def test_cursor_never_issued_expires(crm, adapter, bad):
    queue(crm)
    with pytest.raises(CursorExpired):
        adapter.outbox_since(ORG, bad)
    _, cur = adapter.outbox_since(ORG, None)
    assert adapter.outbox_since(ORG, cur) == ([], cur)


# ------------------------------------------------------------------ state machine


def test_happy_path_and_transient_retry(crm, adapter):
    a = queue(crm)
    s = adapter.set_outgoing_state(ORG, a.id, "sending", message_id="<a@x>")
    assert s.state == "sending" and s.message_id == "<a@x>"
    retry = adapter.set_outgoing_state(ORG, a.id, "queued", reason="transient")
    assert (retry.state, retry.reason, retry.message_id) == ("queued", "transient", "<a@x>")
    # The second attempt need not repeat the Message-ID: the stored one stays.
    assert adapter.set_outgoing_state(ORG, a.id, "sending").message_id == "<a@x>"
    done = adapter.set_outgoing_state(ORG, a.id, "sent", provider_message_id="p1")
    assert (done.state, done.reason, done.provider_message_id) == ("sent", None, "p1")


def test_held_and_back(crm, adapter):
    a = queue(crm)
    adapter.set_outgoing_state(ORG, a.id, "sending", message_id="<a@x>")
    held = adapter.set_outgoing_state(ORG, a.id, "held", reason="reauth_required")
    assert (held.state, held.reason) == ("held", "reauth_required")
    back = adapter.set_outgoing_state(ORG, a.id, "queued")
    assert (back.state, back.reason) == ("queued", None)
    b = queue(crm)
    assert adapter.set_outgoing_state(ORG, b.id, "held", reason="disconnected").state == "held"
    assert adapter.set_outgoing_state(ORG, b.id, "sending", message_id="<b@x>").state == "sending"


@pytest.mark.parametrize("final", ["sent", "failed"])
def test_final_states_refuse_moves_but_repeat_harmlessly(crm, adapter, final):
    a = queue(crm)
    adapter.set_outgoing_state(ORG, a.id, "sending", message_id="<a@x>")
    done = adapter.set_outgoing_state(ORG, a.id, final, provider_message_id="p1" if final == "sent" else None,
                                      reason="rejected" if final == "failed" else None)
    for state in ("queued", "sending", "held", "scheduled", {"sent": "failed", "failed": "sent"}[final]):
        with pytest.raises(ValidationRejected) as exc:
            adapter.set_outgoing_state(ORG, a.id, state)
        assert exc.value.field == "state"
    assert adapter.set_outgoing_state(ORG, a.id, final) == done
    assert adapter.set_outgoing_state(ORG, a.id, final, message_id="<a@x>") == done
    [now] = adapter.get_outgoing(ORG, [a.id])
    assert now == done


def test_moves_the_machine_does_not_have_are_refused(crm, adapter):
    a = queue(crm)
    for state in ("sent", "scheduled", "bogus"):
        with pytest.raises(ValidationRejected) as exc:
            adapter.set_outgoing_state(ORG, a.id, state)
        assert exc.value.field == "state"
    assert crm.outbox.get(ORG, a.id).state == "queued"
    with pytest.raises(NotFound):
        adapter.set_outgoing_state(ORG, "crm_out_404", "sending")
    with pytest.raises(NotFound):
        adapter.set_outgoing_state(OTHER, a.id, "sending")


def test_message_id_is_immutable(crm, adapter):
    a = queue(crm)
    adapter.set_outgoing_state(ORG, a.id, "sending", message_id="<a@x>")
    for state in ("sending", "queued", "sent"):
        with pytest.raises(ValidationRejected) as exc:
            adapter.set_outgoing_state(ORG, a.id, state, message_id="<other@x>")
        assert exc.value.field == "message_id"
    assert crm.outbox.get(ORG, a.id).state == "sending"
    assert adapter.set_outgoing_state(ORG, a.id, "sent", message_id="<a@x>").message_id == "<a@x>"


def test_cancel(crm):
    a, s = queue(crm), queue(crm, send_at=time.time() + 60)
    for item in (a, s):
        c = crm.outbox.cancel(ORG, item.id)
        assert (c.state, c.reason) == ("failed", "cancelled")
        assert crm.outbox.cancel(ORG, item.id) == c  # a double click
    b = queue(crm)
    crm.outbox.set_state(ORG, b.id, "sending", message_id="<b@x>")
    with pytest.raises(ValidationRejected) as exc:
        crm.outbox.cancel(ORG, b.id)
    assert exc.value.field == "state"
    with pytest.raises(NotFound):
        crm.outbox.cancel(ORG, "crm_out_404")


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("kw, field", [
    ({"to": [], "cc": (), "bcc": ()}, "recipients"),
    ({"to": ["not an address"]}, "to"),
    ({"cc": ["@nobody"]}, "cc"),
    ({"attachments": [{"filename": "a.bin", "data_b64": "%%%"}]}, "attachments"),
    ({"attachments": [{"filename": " ", "data_b64": b64(b"x")}]}, "attachments"),
    ({"record": ("contact",)}, "record"),
])
def test_built_in_checks_name_the_field(crm, kw, field):
    with pytest.raises(ValidationRejected) as exc:
        queue(crm, **kw)
    assert exc.value.field == field
    with pytest.raises(ValidationRejected) as exc:
        crm.outbox.queue(ORG, "", to=["a@b.example"], subject="x")
    assert exc.value.field == "user_id"
    assert crm.outbox.list(ORG) == []


def test_org_rules_refuse_what_breaks_them(crm):
    crm.mail.configure_rules(ORG, [
        MailRule.max_length("subject max", "outgoing", "subject", 20),
        MailRule.max_value("attachments max", "outgoing", "attachment_bytes", 1000),
        MailRule.max_count("recipients max", "outgoing", "recipients", 3),
        MailRule.required("body", "outgoing", "text"),
    ])
    cases = [
        ({"subject": "x" * 21}, "subject", "subject max"),
        ({"attachments": [{"filename": "a", "data_b64": b64(b"a" * 600)},
                          {"filename": "b", "data_b64": b64(b"b" * 600)}]}, "attachment_bytes", "attachments max"),
        ({"to": ["a@x.example", "b@x.example"], "cc": ["c@x.example"], "bcc": ["d@x.example"]},
         "recipients", "recipients max"),
        ({"text": None, "html": "<p>hi</p>"}, "text", "body"),
    ]
    for kw, field, rule in cases:
        with pytest.raises(ValidationRejected) as exc:
            queue(crm, **kw)
        assert (exc.value.field, exc.value.rule) == (field, rule)
    assert crm.outbox.list(ORG) == []
    ok = queue(crm, attachments=[{"filename": "a", "data_b64": b64(b"a" * 1000)}])
    assert ok.state == "queued"
    assert queue(crm, org=OTHER, subject="x" * 100).state == "queued"  # rules are per organisation


# ------------------------------------------------------------------ reply


def test_reply_to_a_received_message(crm, adapter):
    pat = crm.mail.create_lead(ORG, emails=["pat@prospect.example"], given_name="Pat", family_name="Doe")
    log_activity(crm, "<m1@prospect.example>", subject="Quote", assoc=[("account", "crm_a_1"), ("lead", pat.id)])
    item = crm.outbox.reply(ORG, "u1", "<m1@prospect.example>", text="Thanks")
    assert item.to == (Address(email="pat@prospect.example", name="Pat Doe"),)
    assert item.subject == "Re: Quote" and item.reply_to_key == "<m1@prospect.example>"
    assert item.record == Association(object_type="lead", object_id=pat.id) and item.text == "Thanks"
    [msg] = adapter.get_outgoing(ORG, [item.id])
    assert msg.reply_to_key == "<m1@prospect.example>"


def test_reply_to_a_message_the_user_sent(crm):
    log_activity(crm, "<s1@acme.example>", direction="sent", sender="ann@acme.example",
                 recipients=("pat@prospect.example", "Cy@Prospect.example"), subject="RE: Quote",
                 assoc=[("lead", "crm_l_9"), ("contact", "crm_c_7")])
    item = crm.outbox.reply(ORG, "u1", "<s1@acme.example>", html="<p>Following up</p>")
    assert [a.email for a in item.to] == ["pat@prospect.example", "cy@prospect.example"]
    assert item.subject == "RE: Quote"  # "Re:" once
    assert item.record == Association(object_type="contact", object_id="crm_c_7")


def test_reply_judges_the_sender_by_the_users_address_when_given(crm):
    # Logged first from the colleague's mailbox as "sent"; Bob received it and replies to Ann.
    log_activity(crm, "<s2@acme.example>", direction="sent", sender="ann@acme.example",
                 recipients=("bob@acme.example", "pat@prospect.example"), subject="Plan")
    bob = crm.outbox.reply(ORG, "u2", "<s2@acme.example>", text="ok", user_email="bob@acme.example")
    assert [a.email for a in bob.to] == ["ann@acme.example"] and bob.subject == "Re: Plan"
    ann = crm.outbox.reply(ORG, "u1", "<s2@acme.example>", text="ok", user_email="ANN@acme.example")
    assert [a.email for a in ann.to] == ["bob@acme.example", "pat@prospect.example"]
    with pytest.raises(NotFound):
        crm.outbox.reply(ORG, "u1", "<nope@x>", text="x")


# ------------------------------------------------------------------ concurrency (PostgreSQL)


def test_feed_is_complete_under_concurrent_writers(pg_url):
    """Ten writers queue items and move them while a reader polls: after each poll, every
    change numbered at or below the reader's cursor is already reflected in what it holds
    (gap-free), and once writers stop the reader holds every item's latest state."""
    crm = ReferenceCrm(pg_url)
    writes: list[tuple[str, int, str]] = []  # (item id, change number, state), appended after commit
    wlock = threading.Lock()
    stop = threading.Event()
    errors: list = []
    polls: list[tuple[int, dict[str, int]]] = []
    held: dict[str, tuple[int, str]] = {}

    def note(item) -> None:
        with wlock:
            writes.append((item.id, item.change_seq, item.state))

    def writer(n: int) -> None:
        rnd = random.Random(n)
        try:
            for k in range(8):
                item = crm.outbox.queue(ORG, f"u{n}", to=[f"p{n}-{k}@x.example"], subject=f"{n}/{k}", text="t")
                note(item)
                path = rnd.choice([["sending", "sent"], ["sending", "queued", "sending", "failed"],
                                   ["held", "queued"], ["sending", "held", "queued", "sending", "sent"]])
                for state in path:
                    note(crm.outbox.set_state(ORG, item.id, state, message_id=f"<{n}.{k}@x>",
                                              provider_message_id="p" if state == "sent" else None))
                if rnd.random() < 0.3 and path[-1] == "queued":
                    note(crm.outbox.cancel(ORG, item.id))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        cur = 0
        try:
            while True:
                done = stop.is_set()
                items, cur = crm.outbox.changes_since(ORG, cur, limit=7)
                for it in items:
                    held[it.id] = (it.change_seq, it.state)
                polls.append((cur, {i: s for i, (s, _) in held.items()}))
                if done and not items:
                    return
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    try:
        rd = threading.Thread(target=reader)
        ws = [threading.Thread(target=writer, args=(n,)) for n in range(10)]
        rd.start()
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        stop.set()
        rd.join()
        assert not errors, errors
        assert len(polls) > 1
        for cur, seen in polls:
            for item_id, seq, _ in writes:
                if seq <= cur:
                    assert seen.get(item_id, -1) >= seq, (item_id, seq, cur)
        final = {i.id: (i.change_seq, i.state) for i in crm.outbox.list(ORG)}
        assert len(final) == 80 and held == final
        latest: dict[str, tuple[int, str]] = {}
        for item_id, seq, state in writes:
            latest[item_id] = max(latest.get(item_id, (0, "")), (seq, state))
        assert latest == final
        # The adapter's cursor walk sees the same: every item once, in its latest state.
        msgs, cur, adapter = [], None, ReferenceCrmOutbox(crm)
        while True:
            page, cur = adapter.outbox_since(ORG, cur, limit=13)
            if not page:
                break
            msgs += page
        assert {m.id: m.state for m in msgs} == {i: s for i, (_, s) in final.items()} and len(msgs) == 80
    finally:
        crm.engine.dispose()
