"""Hypothesis strategies for canonical mail messages, shared by the tests/test_mail_* files."""

from __future__ import annotations

from hypothesis import strategies as st

from models.mail import VISIBILITY_LEVELS, Address, Attachment, MailMessage

OWN = "us.example"
DOMAINS = (OWN, "acme.com", "acme-corp.co.uk", "gmail.com", "yahoo.com", "beta.io", "xn--bcher-kva.de",
           "eu.us.example", "spam.net")
LOCALS = ("jane", "jane.doe", "bob", "info", "noreply", "sales", "x1", "anna_m", "support", "me")
NAMES = ("", "Jane Doe", "Doe, Jane", "DR. BOB SMITH", "anna", "Support Team", "x@y.com")

addresses = st.builds(
    lambda local, domain, name: Address(email=f"{local}@{domain}", name=name),
    st.sampled_from(LOCALS), st.sampled_from(DOMAINS), st.sampled_from(NAMES),
)
levels = st.sampled_from(VISIBILITY_LEVELS)
times = st.one_of(st.none(), st.floats(min_value=0, max_value=2e9, allow_nan=False))


@st.composite
def messages(draw, **fixed) -> MailMessage:
    fields = dict(
        message_id=draw(st.from_regex(r"<[a-z0-9]{1,12}@[a-z]{1,8}\.(com|org)>", fullmatch=True)),
        subject=draw(st.sampled_from(("", "Hello", "Re: Hello", "Fwd: Offer", "AW: Vertrag", "Quote"))),
        sender=draw(st.one_of(st.none(), addresses)),
        to=tuple(draw(st.lists(addresses, max_size=4))),
        cc=tuple(draw(st.lists(addresses, max_size=2))),
        bcc=tuple(draw(st.lists(addresses, max_size=1))),
        sent_at=draw(times),
        received_at=draw(times),
        direction=draw(st.sampled_from(("sent", "received"))),
        labels=tuple(draw(st.lists(st.sampled_from(("CRM", "crm", "INBOX", "SENT", "Other")), max_size=3))),
        list_unsubscribe=draw(st.booleans()),
        precedence=draw(st.sampled_from(("", "bulk", "list", "junk", "first-class"))),
        auto_submitted=draw(st.sampled_from(("", "no", "auto-replied", "auto-generated"))),
        calendar_invite=draw(st.booleans()),
        body_text=draw(st.one_of(st.none(), st.text(max_size=30))),
        attachments=tuple(
            Attachment(filename=f) for f in draw(st.lists(st.sampled_from(("a.pdf", "b.docx", "")), max_size=2))
        ),
    )
    fields.update(fixed)
    return MailMessage(**fields)
