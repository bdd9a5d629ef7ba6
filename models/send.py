"""Two-way send: what a platform queues for sending through a user's own mailbox.

The platform's outbox holds `OutgoingMessage`s; Concord sends each through the
connected user's mailbox exactly once and reports its state back. The RFC 5322
Message-ID is chosen by Concord before the first attempt and stored, so a retry after
a crash first looks for it in the mailbox's Sent items instead of sending again.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.mail import Address
from models.mail_log import Association

#: queued: waiting to be sent; scheduled: waiting for `send_at`; held: the mailbox cannot
#: send now (disconnected, needs re-auth; `reason` says which); sending: an attempt is
#: under way; sent: the provider accepted it (`provider_message_id`); failed: a permanent
#: refusal (`reason`: invalid_recipient, rejected, too_large, ...), never retried
OutboxState = Literal["queued", "scheduled", "held", "sending", "sent", "failed"]


class OutgoingAttachment(BaseModel):
    model_config = ConfigDict(frozen=True)

    filename: str
    content_type: str = "application/octet-stream"
    #: the content, base64 (standard alphabet)
    data_b64: str


class OutgoingMessage(BaseModel):
    """One outbox item as the platform reports it."""

    model_config = ConfigDict(frozen=True)

    id: str
    #: the platform user sending it: the connected mailbox of that user sends it
    user_id: str
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    subject: str = ""
    html: str | None = None
    text: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()
    #: the logged message this replies to (its key: the normalised Message-ID)
    reply_to_key: str | None = None
    #: the record it was written on: where the sent message is logged
    record: Association | None = None
    #: not before this time (epoch seconds)
    send_at: float | None = None
    state: OutboxState = "queued"
    reason: str | None = None
    #: chosen by Concord before the first attempt
    message_id: str | None = None
    provider_message_id: str | None = None
    provider_thread_id: str | None = None
    updated_at: float = 0.0


class SentRef(BaseModel):
    """Where a sent message is in the sender's mailbox."""

    model_config = ConfigDict(frozen=True)

    provider_message_id: str
    provider_thread_id: str | None = None
