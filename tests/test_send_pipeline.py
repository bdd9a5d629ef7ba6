"""Two-way send below the workflow: the real store, the reference CRM's outbox, the send
and mail pipelines, mailboxes that keep the send contract (in memory, Gmail, Graph).

What a product team checks: the item goes out once through the user's mailbox, its
state on the outbox says so (or says why not), and it is logged once on its record.
"""

from __future__ import annotations

import pytest

from activities.send import SendPipeline
from models.mail import Address, MailFetchOptions
from models.mail_log import Association
from models.workflow import CycleRef
from platforms.reference_crm import ReferenceCrmOutbox
from store import outbox as outbox_store
from store import repo
from tests.mail_contract import make_raw
from tests.mail_world import MailWorld, provider_named

ME = "ann@acme.example"
PAT = "pat@prospect.example"
PROVIDERS = ["memory", "gmail", "graph"]


@pytest.fixture(params=PROVIDERS)
def provider(request):
    p = provider_named(request.param)
    if not hasattr(p.connector(ME, MailFetchOptions()), "send"):
        pytest.skip(f"{request.param} mailboxes do not send yet")
    yield p
    getattr(p, "close", lambda: None)()


class SendWorld(MailWorld):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outbox = ReferenceCrmOutbox(self.crm)
        self.sender = SendPipeline(self.sessions, self.outbox, self.platform,
                                   lambda info: self.provider.connector(info.account_ref, MailFetchOptions()))
        self.pat = self.crm.user_create(self.org, "ann", given_name="Pat", family_name="Prospect", emails=[PAT])

    def send_cycle(self, cid: str) -> dict:
        ref = CycleRef(connection_id=cid, cycle_id="s")
        return {"read": self.sender.read_platform(self.org), "plan": self.sender.plan(ref),
                "write": self.sender.write(ref)}

    def queue(self, **kw):
        kw.setdefault("to", [Address(email=PAT, name="Pat Prospect")])
        kw.setdefault("subject", "Your quote")
        kw.setdefault("text", "Please find the quote.")
        kw.setdefault("record", Association(object_type="contact", object_id=self.pat.id))
        return self.crm.outbox.queue(self.org, "ann", **kw)

    def item(self, item_id: str):
        return self.outbox.get_outgoing(self.org, [item_id])[0]


@pytest.fixture
def world(tmp_path, provider):
    return SendWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}", provider=provider)


def test_an_outbox_item_goes_out_once_and_is_logged_once_on_its_record(world):
    cid = world.connect(ME)
    item = world.queue()
    out = world.send_cycle(cid)
    assert out["read"].woken == [cid]
    assert out["write"].applied == 1
    sent = world.item(item.id)
    assert sent.state == "sent" and sent.provider_message_id and sent.message_id
    assert world.provider.connector(ME, MailFetchOptions()).find_sent(sent.message_id) is not None
    act = world.activity(sent.message_id)
    assert act is not None and Association(object_type="contact", object_id=world.pat.id) in act.associations
    # the sent copy comes back through the mail delta: recognised, not logged again
    world.cycle(cid)
    assert [a.key for a in world.activities()].count(sent.message_id) == 1
    assert world.send_cycle(cid)["write"].applied == 0, "nothing is sent twice"


def test_a_reply_from_the_mailbox_lands_on_the_record_the_message_was_sent_from(world):
    cid = world.connect(ME)
    item = world.queue()
    world.send_cycle(cid)
    mid = world.item(item.id).message_id
    answer, answer_mid = make_raw(sender=f"Pat <{PAT}>", to=ME, subject="Re: Your quote", references=f"<{mid}>")
    world.provider.deliver(ME, answer)
    world.cycle(cid)
    act = world.activity(answer_mid)
    assert Association(object_type="contact", object_id=world.pat.id) in act.associations
    assert act.thread_key == mid


def test_a_reply_written_on_the_platform_is_threaded_under_the_logged_message(world):
    cid = world.connect(ME)
    first, first_mid = make_raw(sender=f"Pat Prospect <{PAT}>", to=ME, subject="Question")
    world.provider.deliver(ME, first)
    world.cycle(cid)
    item = world.crm.outbox.reply(world.org, "ann", first_mid, text="Answer", user_email=ME)
    world.send_cycle(cid)
    sent = world.item(item.id)
    assert sent.state == "sent"
    act = world.activity(sent.message_id)
    assert act.thread_key == first_mid
    assert world.provider.connector(ME, MailFetchOptions()).find_sent(sent.message_id).provider_thread_id


def test_an_invalid_recipient_fails_the_item_with_its_reason_and_is_never_retried(world):
    cid = world.connect(ME)
    # the platform takes it; the provider refuses a domain without a dot at send time
    item = world.queue(to=[Address(email="nobody@nowhere")])
    out = world.send_cycle(cid)
    assert out["write"].rejected == 1
    got = world.item(item.id)
    assert (got.state, got.reason) == ("failed", "invalid_recipient")
    assert world.send_cycle(cid)["plan"].planned == 0


def test_a_send_that_failed_after_the_provider_stored_it_is_not_sent_again(world):
    cid = world.connect(ME)
    item = world.queue()
    world.provider.fail_sends(1, after_store=True)
    with pytest.raises(Exception):
        world.send_cycle(cid)
    assert world.item(item.id).state == "sending"
    world.send_cycle(cid)  # the retry looks in Sent first
    got = world.item(item.id)
    assert got.state == "sent"
    assert len(world.provider.sent_by(ME, got.message_id)) == 1


def test_a_send_that_failed_before_the_provider_stored_it_goes_out_on_the_retry(world):
    cid = world.connect(ME)
    item = world.queue()
    world.provider.fail_sends(1, after_store=False)
    with pytest.raises(Exception):
        world.send_cycle(cid)
    world.send_cycle(cid)
    got = world.item(item.id)
    assert got.state == "sent" and len(world.provider.sent_by(ME, got.message_id)) == 1


def test_a_mailbox_that_cannot_send_holds_its_outbox_and_says_why(world):
    cid = world.connect(ME)
    with world.sessions.begin() as s:
        repo.set_connection_status(s, cid, "needs_reauth")
    item = world.queue()
    out = world.send_cycle(cid)
    assert out["read"].woken == []
    got = world.item(item.id)
    assert (got.state, got.reason) == ("held", "mailbox_needs_reauth")
    with world.sessions.begin() as s:
        repo.set_connection_status(s, cid, "active")
    world.send_cycle(cid)
    assert world.item(item.id).state == "sent"


def test_a_lost_attempt_is_taken_over_once_its_lease_is_out(world):
    """A worker killed mid-send leaves its lease: the next attempt waits it out, then looks
    in Sent (here the lost attempt had not sent: it sends, once, under the stored id)."""
    import time

    cid = world.connect(ME)
    item = world.queue()
    world.sender.read_platform(world.org)
    with world.sessions.begin() as s:
        outbox_store.choose_message_id(s, world.org, item.id, "lost-attempt@acme.example")
        assert outbox_store.begin_attempt(s, world.org, item.id, cid, lease_s=1.5) == 0
    started = time.monotonic()
    world.send_cycle(cid)
    assert time.monotonic() - started >= 1.0, "the lease was waited out"
    got = world.item(item.id)
    assert got.state == "sent" and got.message_id == "lost-attempt@acme.example"
    assert len(world.provider.sent_by(ME, got.message_id)) == 1


def test_a_burst_larger_than_a_page_goes_out_in_one_write(world):
    """The outbox is read 200 items at a time; a burst of 250 is drained in one activity,
    not left for the next poll. (The pipeline's drain, on the in-memory mailboxes: Gmail's
    quota alone would make 250 sends take a minute.)"""
    from tests.memory_mail import MemoryMailProvider

    if not isinstance(world.provider, MemoryMailProvider):
        pytest.skip("the drain is the pipeline's; the in-memory run covers it")
    cid = world.connect(ME)
    items = [world.queue(subject=f"Offer {i}").id for i in range(250)]
    out = world.send_cycle(cid)
    assert out["write"].applied == 250
    assert {world.item(i).state for i in items} == {"sent"}
