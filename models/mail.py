"""The canonical logged message: what Gmail and Graph connectors translate mail into.

The mail kind is one-way in content (a mailbox's mail is logged on the platform;
nothing in the mailbox is ever changed), so the canonical model is a message as
the logging rules need it: who took part, how it threads across mailboxes, the
signals the skip rules read, and - only when bodies are enabled - its text.

`body_text is None` means the body was never fetched (metadata-only mode), which
is different from an empty body. Connectors in metadata mode must not fetch,
keep or pass on a body; `tests/test_mail_*` check that none reaches the store.

Values are as the provider gave them after decoding; normalisation for matching
(lower-cased addresses, Message-ID without brackets) is done here, once, so two
mailboxes' copies of one message compare equal on their identity fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

#: most restrictive first: a thread several users contribute takes the first of theirs
VISIBILITY_LEVELS: tuple[str, ...] = ("private", "metadata", "subject", "full")
Visibility = Literal["private", "metadata", "subject", "full"]
Direction = Literal["sent", "received"]


def normalize_message_id(value: str | None) -> str:
    """`<Left@Right>` -> `Left@right`: brackets and whitespace dropped, the domain part
    lower-cased (the local part is case-sensitive by RFC 5322)."""
    if not value:
        return ""
    v = "".join(str(value).split()).strip("<>")
    if "@" in v:
        left, _, right = v.rpartition("@")
        v = f"{left}@{right.lower()}"
    return v


class Address(BaseModel):
    model_config = ConfigDict(frozen=True)

    email: str
    name: str = ""

    @field_validator("email", mode="before")
    @classmethod
    def _lower(cls, v: object) -> str:
        return str(v or "").strip().lower()


class Attachment(BaseModel):
    """Names and sizes only: attachment content is never fetched unless enabled."""

    model_config = ConfigDict(frozen=True)

    filename: str = ""
    size: int = 0
    content_type: str = ""


class MailMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    #: RFC 5322 Message-ID, normalised (see normalize_message_id); identity across mailboxes
    message_id: str
    #: True when the message had none and `message_id` was derived from stable headers
    synthesized_id: bool = False
    in_reply_to: tuple[str, ...] = ()
    #: the References chain, oldest first (its first entry is the thread's root)
    references: tuple[str, ...] = ()
    subject: str = ""
    sender: Address | None = None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    #: the Date header (epoch seconds), when present and readable
    sent_at: float | None = None
    #: the provider's own time (Gmail internalDate, Graph receivedDateTime)
    received_at: float | None = None
    #: sent by the connected user (Gmail SENT label, Graph Sent Items) or received
    direction: Direction = "received"
    #: Gmail label names (user labels by name, system labels by id) / Graph categories
    labels: tuple[str, ...] = ()
    #: Graph folder's well-known name or id ("inbox", "sentitems"); None for Gmail
    folder: str | None = None
    #: Gmail threadId / Graph conversationId: a thread within this mailbox only
    provider_thread_id: str = ""
    #: the skip rules' signals, as header values (empty when absent)
    list_unsubscribe: bool = False
    precedence: str = ""
    auto_submitted: str = ""
    #: a text/calendar part or an invitation's method: calendar sync handles those
    calendar_invite: bool = False
    #: None: never fetched (metadata-only mode); otherwise the plain text (HTML converted)
    body_text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    size: int = 0
    #: what could not be read, as value-free codes ("bad_charset", "missing_date", ...)
    problems: tuple[str, ...] = ()

    @field_validator("message_id", mode="before")
    @classmethod
    def _mid(cls, v: object) -> str:
        return normalize_message_id(str(v or ""))

    @field_validator("in_reply_to", "references", mode="before")
    @classmethod
    def _mids(cls, v: object) -> tuple[str, ...]:
        if v is None:
            return ()
        if isinstance(v, str):
            v = v.split()
        return tuple(m for m in (normalize_message_id(x) for x in v) if m)

    def participants(self) -> tuple[Address, ...]:
        """Everyone on the message, sender first, each address once."""
        seen: dict[str, Address] = {}
        for a in ((self.sender,) if self.sender else ()) + self.to + self.cc + self.bcc:
            if a.email and a.email not in seen:
                seen[a.email] = a
        return tuple(seen.values())


class MailFetchOptions(BaseModel):
    """What a mail connector fetches, from the connection's logging settings."""

    model_config = ConfigDict(frozen=True)

    #: False: metadata-only mode; bodies are never requested from the provider
    bodies: bool = False
    #: attachment names and sizes are always read from the structure; content never
    attachments: bool = False
    #: a full listing goes back to this time (epoch seconds); None: everything
    since: float | None = None
    #: Graph folders to follow, by well-known name or id
    folders: tuple[str, ...] = ("inbox", "sentitems")
    #: largest message whose body is read; a bigger one is logged with its metadata and
    #: the problem code "too_large"
    max_body_bytes: int = 2_000_000
