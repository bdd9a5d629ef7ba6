"""sync/mail/threads: one message and thread identity across mailboxes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.mail import Address, MailMessage
from sync.mail.threads import (
    WEAK_BUCKET_SECONDS, ThreadIdentity, is_reply_subject, message_key, normalize_subject, synthesize_message_id,
    thread_identity, weak_keys,
)

JANE = Address(email="jane@acme.com", name="Jane")
ME = Address(email="me@us.example")
T0 = 1_700_000_000.0


def msg(**kw) -> MailMessage:
    base = dict(message_id="<Root@Acme.COM>", subject="Quote", sender=JANE, to=(ME,), sent_at=T0)
    base.update(kw)
    return MailMessage(**base)


def test_message_key_is_normalised_message_id():
    assert message_key(msg()) == "Root@acme.com"
    assert message_key(msg(message_id=" <Root@ACME.com> ")) == message_key(msg())


def test_message_key_refuses_a_missing_id():
    with pytest.raises(ValueError, match="synthesize"):
        message_key(msg(message_id=""))


def test_synthesized_id_is_stable_and_ignores_case_order_and_spacing():
    a = synthesize_message_id(sender=JANE, date=T0, subject="Quote  now", to=[ME, "b@c.com"])
    b = synthesize_message_id(sender="JANE@acme.com", date=T0 + 0.4, subject="Quote now", to=["B@c.com", ME])
    assert a == b and a.endswith("@synthesized.invalid")
    assert a != synthesize_message_id(sender=JANE, date=T0, subject="Quote now", to=[ME])
    assert a != synthesize_message_id(sender=JANE, date=T0, subject="Quote now", to=[ME, "b@c.com"], provider_hint="x")
    assert MailMessage(message_id=a).message_id == a  # survives the model's normalisation


@pytest.mark.parametrize("subject,norm,reply", [
    ("Re: Quote", "quote", True), ("RE[2]: Quote", "quote", True), ("Fwd: FW: quote", "quote", True),
    ("AW: Angebot", "angebot", True), ("SV: Tilbud", "tilbud", True), ("Re(3): Quote", "quote", True),
    ("[ext] Re: Quote", "quote", True), ("回复：报价", "报价", True), ("  Quote   for  you ", "quote for you", False),
    ("Real estate", "real estate", False), ("Response time", "response time", False), ("", "", False),
])
def test_normalize_subject(subject, norm, reply):
    assert normalize_subject(subject) == norm
    assert is_reply_subject(subject) is reply


def test_root_of_references_first():
    m = msg(message_id="<c@x.com>", references="<a@x.com> <b@x.com>", in_reply_to="<b@x.com>")
    assert thread_identity(m) == ThreadIdentity(key="a@x.com", weak=False)


def test_in_reply_to_without_references():
    assert thread_identity(msg(message_id="<c@x.com>", in_reply_to="<b@x.com>")).key == "b@x.com"


def test_a_new_message_starts_its_thread():
    assert thread_identity(msg()) == ThreadIdentity(key="Root@acme.com", weak=False)


def test_reply_subject_without_references_is_weak():
    t = thread_identity(msg(subject="Re: Quote"))
    assert t.weak and t.key.startswith("weak:")
    other_copy = msg(message_id="<other@x.com>", subject="RE: quote", direction="sent", received_at=T0 + 99)
    assert thread_identity(other_copy) == t
    assert thread_identity(msg(subject="Re: Other")).key != t.key
    assert thread_identity(msg(subject="Re: Quote", to=(Address(email="bob@beta.io"),))).key != t.key


def test_weak_key_ignores_own_domain_participants_when_told():
    a = msg(subject="Re: Quote", cc=(Address(email="col@us.example"),))
    b = msg(subject="Re: Quote")
    assert thread_identity(a, own_domains=("us.example",)) == thread_identity(b, own_domains=("us.example",))


def test_weak_keys_cross_a_bucket_edge():
    edge = (T0 // WEAK_BUCKET_SECONDS + 1) * WEAK_BUCKET_SECONDS
    before = msg(subject="Re: Quote", sent_at=edge - 3600)
    after = msg(subject="Re: Quote", sent_at=edge + 3600)
    assert thread_identity(before).key != thread_identity(after).key
    assert thread_identity(before).key in weak_keys(after)
    assert thread_identity(after).key in weak_keys(before)
    assert len(weak_keys(msg(subject="Re: Quote", sent_at=None))) == 1


def test_weak_bucket_uses_date_header_not_mailbox_time():
    a = msg(subject="Re: Quote", received_at=T0 + 1)
    b = msg(subject="Re: Quote", received_at=T0 + 20 * 86_400)
    assert thread_identity(a) == thread_identity(b)


# --- properties -------------------------------------------------------------------------

ids = st.lists(st.from_regex(r"[a-z0-9]{1,10}@[a-z]{1,6}\.(com|net)", fullmatch=True), min_size=1, max_size=30,
               unique=True)


def _chain(message_ids: list[str], truncate: bool) -> list[MailMessage]:
    out = []
    for i, mid in enumerate(message_ids):
        refs = message_ids[:i]
        if truncate and len(refs) > 3:
            refs = [refs[0]] + refs[-2:]  # what clients do to long chains: the root is kept
        subject = "Quote" if i == 0 else "Re: " * min(i, 3) + "Quote"
        out.append(MailMessage(message_id=f"<{mid}>", references=tuple(f"<{r}>" for r in refs),
                               in_reply_to=(f"<{refs[-1]}>",) if refs else (), subject=subject,
                               sender=JANE if i % 2 else ME, to=(ME,) if i % 2 else (JANE,), sent_at=T0 + i * 86_400))
    return out


@settings(max_examples=200, deadline=None)
@given(message_ids=ids, truncate=st.booleans())
def test_a_reference_chain_is_one_thread(message_ids, truncate):
    keys = {thread_identity(m) for m in _chain(message_ids, truncate)}
    assert keys == {ThreadIdentity(key=message_ids[0], weak=False)}


@settings(max_examples=200, deadline=None)
@given(message_ids=ids, received=st.floats(0, 2e9), direction=st.sampled_from(("sent", "received")),
       labels=st.lists(st.sampled_from(("INBOX", "SENT", "CRM")), max_size=3), ptid=st.text(max_size=8),
       bcc=st.booleans())
def test_the_key_does_not_depend_on_the_mailbox_copy(message_ids, received, direction, labels, ptid, bcc):
    for m in _chain(message_ids, False) + [msg(subject="Re: Quote", message_id=f"<{message_ids[0]}>")]:
        copy = m.model_copy(update=dict(received_at=received, direction=direction, labels=tuple(labels),
                                        provider_thread_id=ptid, folder="inbox",
                                        bcc=(Address(email="hidden@beta.io"),) if bcc else ()))
        assert thread_identity(copy) == thread_identity(m)
        assert message_key(copy) == message_key(m)
