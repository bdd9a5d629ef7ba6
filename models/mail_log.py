"""What the mail kind exchanges with a platform: the people, accounts and deals it
associates mail with, and the email activity it logs.

A product team implements `connectors.protocols.PlatformMail` over these shapes.
They are plain pydantic models so a decision holding them can be stored between the
plan and write activities (never in workflow history: they hold addresses).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.mail import Visibility

PersonKind = Literal["contact", "lead"]


class Person(BaseModel):
    """A platform contact or lead, with every address it is known by."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: PersonKind
    emails: tuple[str, ...] = ()
    name: str = ""
    account_id: str | None = None
    owner: str | None = None


class AccountRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str = ""
    domain: str | None = None


class OpportunityRef(BaseModel):
    """An open opportunity and the contacts holding a role on it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str = ""
    account_id: str | None = None
    contact_ids: tuple[str, ...] = ()


class Association(BaseModel):
    """One record an email activity is attached to (`object_type` is the platform's own
    name: contact, lead, account, opportunity, or a custom object's)."""

    model_config = ConfigDict(frozen=True)

    object_type: str
    object_id: str


class NewPerson(BaseModel):
    """A lead or contact captured from an unknown participant."""

    model_config = ConfigDict(frozen=True)

    kind: PersonKind = "lead"
    email: str
    given_name: str = ""
    family_name: str = ""
    company: str = ""
    owner: str | None = None


class EmailLog(BaseModel):
    """One message to log, already cut to its visibility (the platform never receives
    what the level hides). `key` identifies it across the organisation: logging the
    same key again adds participants and associations, never a second activity."""

    key: str
    thread_key: str
    #: True when the thread was recognised only by subject, participants and time
    weak_thread: bool = False
    #: True when the message had no Message-ID and `key` was derived from its headers
    synthesized_key: bool = False
    visibility: Visibility
    subject: str | None = None
    body_text: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    occurred_at: float | None = None
    direction: Literal["sent", "received"] = "received"
    #: connected users who have this message in their mailbox
    users: tuple[str, ...] = ()
    associations: tuple[Association, ...] = ()
    attachments: tuple[str, ...] = ()


class LoggedEmail(BaseModel):
    """The platform's answer to a log call."""

    activity_id: str
    created: bool
    visibility: Visibility


class Conversion(BaseModel):
    """A lead the platform converted: its mail moves to the new contact (and account)."""

    lead_id: str
    contact_id: str
    account_id: str | None = None
    opportunity_id: str | None = None
    seq: int = 0
