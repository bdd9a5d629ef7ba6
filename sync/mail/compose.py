"""Building the RFC 5322 message Concord sends for a platform's outbox item.

The stdlib `email` package writes it (headers folded and encoded, MIME multipart
alternative for text and HTML, attachments base64). Pure: the Message-ID is chosen
by the caller, once, before the first attempt, and passed in: it is the anchor of
exactly-once sending (a retry looks for it in Sent first).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from datetime import datetime, timezone
from typing import Sequence

from models.mail import Address
from models.send import OutgoingMessage
from sync.mail.content import html_to_text


def new_message_id(item_id: str, sender: str) -> str:
    """A fresh Message-ID for an outbox item, on the sender's domain (normalised form,
    without brackets). Random, so two items never share one; stored before any attempt."""
    domain = sender.rpartition("@")[2] or "concord.invalid"
    tag = hashlib.sha256(item_id.encode()).hexdigest()[:12]
    return f"concord.{tag}.{secrets.token_hex(8)}@{domain.lower()}"


def _header_address(a: Address) -> str:
    try:
        return str(HeaderAddress(display_name=a.name or "", addr_spec=a.email))
    except (ValueError, IndexError):
        return a.email


def reply_subject(subject: str) -> str:
    s = subject.strip()
    return s if s.lower().startswith("re:") else f"Re: {s}"


def compose(item: OutgoingMessage, *, sender: Address, message_id: str, in_reply_to: str | None = None,
            references: Sequence[str] = (), now: datetime | None = None) -> bytes:
    """The message as bytes (CRLF line ends, as providers take it).

    `references`: the parent's chain, oldest first, without the parent; the parent
    (`in_reply_to`) is appended, as RFC 5322 asks for a reply."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _header_address(sender)
    if item.to:
        msg["To"] = ", ".join(_header_address(a) for a in item.to)
    if item.cc:
        msg["Cc"] = ", ".join(_header_address(a) for a in item.cc)
    if item.bcc:
        msg["Bcc"] = ", ".join(_header_address(a) for a in item.bcc)
    msg["Subject"] = item.subject
    msg["Date"] = format_datetime(now or datetime.now(timezone.utc))
    msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        chain = [r for r in references if r and r != in_reply_to] + [in_reply_to]
        msg["In-Reply-To"] = f"<{in_reply_to}>"
        msg["References"] = " ".join(f"<{r}>" for r in chain)
    text = item.text if item.text is not None else (html_to_text(item.html) if item.html else "")
    msg.set_content(text)
    if item.html:
        msg.add_alternative(item.html, subtype="html")
    for att in item.attachments:
        maintype, _, subtype = (att.content_type or "application/octet-stream").partition("/")
        msg.add_attachment(base64.b64decode(att.data_b64), maintype=maintype or "application",
                           subtype=subtype or "octet-stream", filename=att.filename)
    return msg.as_bytes()
