"""sync/mail/visibility: a log holds nothing above its level."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.mail import VISIBILITY_LEVELS, Address, Attachment, MailMessage
from models.mail_log import Association
from sync.mail.threads import ThreadIdentity
from sync.mail.visibility import allows, most_restrictive, to_log
from tests.mail_strategies import levels, messages

ASSOC = (Association(object_type="contact", object_id="c1"),)
THREAD = ThreadIdentity(key="root@x.com")
FULL_MSG = MailMessage(
    message_id="<m@x.com>", subject="Secret deal", body_text="the price is 42", sender=Address(email="a@x.com"),
    to=(Address(email="b@y.com"),), cc=(Address(email="c@y.com"),), bcc=(Address(email="hidden@z.com"),),
    sent_at=100.0, received_at=200.0, attachments=(Attachment(filename="terms.pdf", size=5),), direction="sent",
)


def log(level, attachments=True, m=FULL_MSG):
    return to_log(m, key="m@x.com", thread=THREAD, level=level, users=["u2", "u1", "u1"], associations=ASSOC,
                  attachments_enabled=attachments)


@pytest.mark.parametrize("level", ["private", "metadata"])
def test_private_and_metadata_hold_participants_and_date_only(level):
    e = log(level)
    assert (e.subject, e.body_text, e.attachments) == (None, None, ())
    assert (e.sender, e.recipients, e.occurred_at, e.direction) == ("a@x.com", ("b@y.com", "c@y.com"), 100.0, "sent")
    assert e.visibility == level


def test_private_names_its_contributing_users():
    e = log("private")
    assert e.users == ("u1", "u2")


def test_subject_adds_the_subject():
    e = log("subject")
    assert (e.subject, e.body_text, e.attachments) == ("Secret deal", None, ())


def test_full_adds_body_and_attachment_names_when_enabled():
    e = log("full")
    assert (e.subject, e.body_text, e.attachments) == ("Secret deal", "the price is 42", ("terms.pdf",))
    assert log("full", attachments=False).attachments == ()


def test_bcc_is_never_listed_and_thread_is_carried():
    e = log("full")
    assert "hidden@z.com" not in e.recipients
    assert (e.key, e.thread_key, e.weak_thread, e.associations) == ("m@x.com", "root@x.com", False, ASSOC)


def test_occurred_at_falls_back_to_received_time():
    assert log("metadata", m=FULL_MSG.model_copy(update={"sent_at": None})).occurred_at == 200.0


def test_most_restrictive():
    assert most_restrictive("full", "subject", "metadata") == "metadata"
    assert most_restrictive("full", "private") == "private"
    assert most_restrictive("subject") == "subject"
    with pytest.raises(ValueError):
        most_restrictive()
    with pytest.raises(ValueError, match="secret"):
        most_restrictive("full", "secret")


def test_unknown_level_is_refused():
    with pytest.raises(ValueError):
        log("public")


# --- properties ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(m=messages(), level=levels, attachments=st.booleans())
def test_a_log_never_holds_a_field_above_its_level(m, level, attachments):
    e = to_log(m, key="k", thread=THREAD, level=level, users=["u"], associations=(), attachments_enabled=attachments)
    assert e.visibility == level
    if not allows(level, "subject"):
        assert e.subject is None
    if level != "full":
        assert e.body_text is None and e.attachments == ()
    if not attachments:
        assert e.attachments == ()
    hidden = {a.email for a in m.bcc} - {a.email for a in (m.to + m.cc)}
    assert not hidden & set(e.recipients)


@given(a=levels, b=levels, c=levels)
def test_most_restrictive_is_a_meet(a, b, c):
    assert most_restrictive(a, b) == most_restrictive(b, a)
    assert most_restrictive(most_restrictive(a, b), c) == most_restrictive(a, most_restrictive(b, c))
    assert most_restrictive(a, a) == a
    m = most_restrictive(a, b, c)
    rank = VISIBILITY_LEVELS.index
    assert all(rank(m) <= rank(x) for x in (a, b, c))
    assert m in (a, b, c)
