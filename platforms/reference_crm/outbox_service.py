"""The reference CRM's outbox API: mail CRM users write for Concord to send (reach it as `crm.outbox`).

A real CRM with "send from your own mailbox" keeps what the user wrote in a queue and
lets an integration pick it up, send it and report back. This one does the same, so
two-way send has something honest to run against: items come out of a gap-free feed
(outbox_schema.py explains why), and their states follow a small machine in which
`sent` and `failed` are final and the same move twice is one move, because Concord's
activities are retried and must be harmless when they are.

The states (models.send.OutboxState):

    queued / scheduled / held --> sending --> sent | failed | queued (transient retry) | held
    queued / scheduled         --> held      (the mailbox is known to be unable to send)
    scheduled / held           --> queued    (due now / the mailbox is back)
    queued / scheduled / held  --> failed    (cancelled by the user, or refused before any attempt)

`message_id` is the exactly-once anchor (Concord looks for it in the Sent items before
sending again), so once stored it never changes.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from models.errors import NotFound, ValidationRejected
from models.mail import Address
from models.mail_log import Association
from models.send import OutgoingAttachment, OutgoingMessage
from platforms.reference_crm import mail_rules
from platforms.reference_crm import outbox_schema as o
from platforms.reference_crm import schema as t
from platforms.reference_crm.service import _KEY_CHUNK, _db_errors

if TYPE_CHECKING:  # pragma: no cover
    from platforms.reference_crm.service import ReferenceCrm

STATES = ("queued", "scheduled", "held", "sending", "sent", "failed")
FINAL = frozenset({"sent", "failed"})
#: state -> the states it may move to (a move to the current state is always a no-op)
MOVES: dict[str, frozenset[str]] = {
    "queued": frozenset({"sending", "held", "failed"}),
    "scheduled": frozenset({"sending", "queued", "held", "failed"}),
    "held": frozenset({"sending", "queued", "failed"}),
    "sending": frozenset({"sent", "failed", "queued", "held"}),
    "sent": frozenset(),
    "failed": frozenset(),
}
CANCELLABLE = frozenset({"queued", "scheduled", "held"})

_REPLY_PREFIX = re.compile(r"^\s*re\s*:", re.IGNORECASE)
# Deliberately loose: the mailbox provider is the judge of deliverability; this only
# catches what cannot be an address at all (no @, spaces, an empty side).
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")


@dataclass(frozen=True)
class OutboxItem:
    """An outbox item as the CRM holds it (the protocol's OutgoingMessage plus bookkeeping)."""

    id: str
    org_id: str
    user_id: str
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    subject: str
    html: str | None
    text: str | None
    attachments: tuple[OutgoingAttachment, ...]
    reply_to_key: str | None
    record: Association | None
    send_at: float | None
    state: str
    reason: str | None
    message_id: str | None
    provider_message_id: str | None
    provider_thread_id: str | None
    created_at: float
    updated_at: float
    change_seq: int

    @classmethod
    def from_row(cls, r: Any) -> "OutboxItem":
        record = (Association(object_type=r.record_type, object_id=r.record_id)
                  if r.record_type and r.record_id else None)
        return cls(
            id=r.id, org_id=r.org_id, user_id=r.user_id,
            to=tuple(Address(**a) for a in r.to_addrs or ()), cc=tuple(Address(**a) for a in r.cc_addrs or ()),
            bcc=tuple(Address(**a) for a in r.bcc_addrs or ()), subject=r.subject or "", html=r.html, text=r.text,
            attachments=tuple(OutgoingAttachment(**a) for a in r.attachments or ()),
            reply_to_key=r.reply_to_key, record=record, send_at=r.send_at, state=r.state, reason=r.reason,
            message_id=r.message_id, provider_message_id=r.provider_message_id,
            provider_thread_id=r.provider_thread_id, created_at=float(r.created_at),
            updated_at=float(r.updated_at), change_seq=int(r.change_seq),
        )

    def to_message(self) -> OutgoingMessage:
        return OutgoingMessage(
            id=self.id, user_id=self.user_id, to=self.to, cc=self.cc, bcc=self.bcc, subject=self.subject,
            html=self.html, text=self.text, attachments=self.attachments, reply_to_key=self.reply_to_key,
            record=self.record, send_at=self.send_at, state=self.state, reason=self.reason,  # type: ignore[arg-type]
            message_id=self.message_id, provider_message_id=self.provider_message_id,
            provider_thread_id=self.provider_thread_id, updated_at=self.updated_at,
        )


def _addresses(values: Iterable[Any], field: str) -> list[Address]:
    """Accept Address, {"email", "name"} or a bare string, as a UI form would post them."""
    out: list[Address] = []
    for v in values or ():
        if isinstance(v, Address):
            a = v
        elif isinstance(v, str):
            a = Address(email=v)
        elif isinstance(v, Mapping):
            a = Address.model_validate(v)
        else:
            raise ValidationRejected(f"field {field!r} holds something that is not an address", field=field)
        if not _ADDRESS.fullmatch(a.email):
            raise ValidationRejected(f"field {field!r} holds an invalid address", field=field)
        out.append(a)
    return out


def _attachments(values: Iterable[Any]) -> tuple[list[OutgoingAttachment], int]:
    """The attachments and their decoded total size (the limit a provider enforces is on bytes)."""
    out: list[OutgoingAttachment] = []
    total = 0
    for v in values or ():
        a = v if isinstance(v, OutgoingAttachment) else OutgoingAttachment.model_validate(v)
        if not a.filename.strip():
            raise ValidationRejected("an attachment needs a file name", field="attachments")
        try:
            total += len(base64.b64decode(a.data_b64, validate=True))
        except (binascii.Error, ValueError):
            raise ValidationRejected("an attachment's content is not valid base64", field="attachments") from None
        out.append(a)
    return out, total


def _record(value: Any) -> Association | None:
    if value is None:
        return None
    if isinstance(value, Association):
        return value
    if isinstance(value, Mapping):
        return Association.model_validate(value)
    try:
        object_type, object_id = value
        return Association(object_type=object_type, object_id=object_id)
    except (TypeError, ValueError):
        raise ValidationRejected("record must be (object_type, object_id)", field="record") from None


def reply_subject(subject: str | None) -> str:
    """"Re: " once: a reply to a reply keeps its subject, as mail clients do."""
    s = (subject or "").strip()
    if _REPLY_PREFIX.match(s):
        return s
    return f"Re: {s}" if s else "Re:"


class CrmOutbox:
    """The outbox of one ReferenceCrm. Thread-safe like the CRM: each call is one transaction."""

    def __init__(self, crm: "ReferenceCrm") -> None:
        self.crm = crm

    # ---------------------------------------------------------------- user operations (UI, demo, tests)

    @_db_errors
    def queue(self, org_id: str, user_id: str, *, to: Sequence[Any], subject: str, html: str | None = None,
              text: str | None = None, cc: Sequence[Any] = (), bcc: Sequence[Any] = (),
              attachments: Sequence[Any] = (), reply_to_key: str | None = None, record: Any = None,
              send_at: float | None = None) -> OutboxItem:
        """A CRM user writes a message on a record and presses send (or schedules it).

        The item is "scheduled" when `send_at` is in the future, else "queued". What
        breaks a built-in check (no recipient, an impossible address, undecodable
        attachment) or an "outgoing" mail rule of the organisation raises
        ValidationRejected naming the field, and nothing is queued.
        """
        if not (user_id or "").strip():
            raise ValidationRejected("a sending user is required", field="user_id")
        to_a, cc_a, bcc_a = _addresses(to, "to"), _addresses(cc, "cc"), _addresses(bcc, "bcc")
        if not (to_a or cc_a or bcc_a):
            raise ValidationRejected("at least one recipient is required", field="recipients")
        files, size = _attachments(attachments)
        rec = _record(record)
        subject = subject or ""
        values = {
            "to": [a.email for a in to_a], "cc": [a.email for a in cc_a], "bcc": [a.email for a in bcc_a],
            "recipients": [a.email for a in (*to_a, *cc_a, *bcc_a)], "subject": subject, "html": html,
            "text": text, "attachments": [f.filename for f in files], "attachment_bytes": size,
            "user_id": user_id, "reply_to_key": reply_to_key,
        }
        now = time.time()
        state = "scheduled" if send_at is not None and send_at > now else "queued"
        with self.crm._write(org_id) as conn:
            err = mail_rules.first_violation(self.crm.mail._rules(conn, org_id), "outgoing", values)
            if err is not None:
                raise err
            seq = self.crm._next_seq(conn, org_id, None, "outbox_queue", user_id)
            item_id = f"crm_out_{seq}"
            conn.execute(t.change_log.update().where(t.change_log.c.seq == seq).values(record_id=item_id))
            conn.execute(o.outbox.insert().values(
                id=item_id, org_id=org_id, user_id=user_id,
                to_addrs=[a.model_dump() for a in to_a], cc_addrs=[a.model_dump() for a in cc_a],
                bcc_addrs=[a.model_dump() for a in bcc_a], subject=subject, html=html, text=text,
                attachments=[f.model_dump() for f in files], reply_to_key=reply_to_key,
                record_type=rec.object_type if rec else None, record_id=rec.object_id if rec else None,
                send_at=send_at, state=state, reason=None, message_id=None, provider_message_id=None,
                provider_thread_id=None, created_at=now, updated_at=now, change_seq=seq,
            ))
            return OutboxItem.from_row(self._load(conn, org_id, item_id))

    @_db_errors
    def reply(self, org_id: str, user_id: str, activity_key: str, *, html: str | None = None,
              text: str | None = None, user_email: str | None = None, to: Sequence[Any] | None = None,
              cc: Sequence[Any] = (), bcc: Sequence[Any] = (), subject: str | None = None,
              attachments: Sequence[Any] = (), record: Any = None, send_at: float | None = None) -> OutboxItem:
        """Reply from a logged email activity, as the "Reply" button on its timeline entry.

        Recipients: the activity's sender, or its recipients when the user sent it. The
        CRM keeps no address per user, so "the user sent it" is judged from `user_email`
        when given (the activity's sender is that address, which is then left out of
        the recipients) and otherwise from the activity's direction being "sent". Names
        come from the CRM's people holding the addresses. The subject gets "Re: " once,
        reply_to_key is the activity's key and the record is the activity's first
        contact (else lead) association; every one of these can be given instead.
        """
        activity = self.crm.mail.get_activity_by_key(org_id, activity_key)
        if activity is None:
            raise NotFound("email activity not found")
        me = (user_email or "").strip().lower()
        sender = (activity.sender or "").strip().lower()
        if to is None:
            user_sent = sender == me if me else activity.direction == "sent"
            if user_sent:
                emails = [e.strip().lower() for e in activity.recipients if e and e.strip().lower() != me]
            else:
                emails = [sender] if sender else []
            emails = list(dict.fromkeys(emails))
            people = self.crm.mail.people_by_email(org_id, emails) if emails else {}
            to = [Address(email=e, name=people[e][0].name if people.get(e) else "") for e in emails]
        if record is None:
            for kind in ("contact", "lead"):
                hit = next((a for a in activity.associations if a.object_type == kind), None)
                if hit is not None:
                    record = hit
                    break
        return self.queue(org_id, user_id, to=to, subject=reply_subject(activity.subject) if subject is None
                          else subject, html=html, text=text, cc=cc, bcc=bcc, attachments=attachments,
                          reply_to_key=activity.key, record=record, send_at=send_at)

    @_db_errors
    def cancel(self, org_id: str, item_id: str, *, actor: str = "crm_user") -> OutboxItem:
        """The user takes back a message not yet being sent: it fails with reason "cancelled".

        Cancelling a cancelled item returns it (a double click); one that is sending
        or already finished is refused (ValidationRejected on "state"): it may be gone.
        """
        with self.crm._write(org_id) as conn:
            row = self._load(conn, org_id, item_id, lock=True)
            if row is None:
                raise NotFound("outbox item not found")
            if row.state == "failed" and row.reason == "cancelled":
                return OutboxItem.from_row(row)
            if row.state not in CANCELLABLE:
                raise ValidationRejected(f"an item that is {row.state} cannot be cancelled", field="state")
            return self._move(conn, org_id, row, "failed", reason="cancelled", actor=actor)

    @_db_errors
    def get(self, org_id: str, item_id: str) -> OutboxItem | None:
        with self.crm._read() as conn:
            row = self._load(conn, org_id, item_id)
        return OutboxItem.from_row(row) if row is not None else None

    @_db_errors
    def list(self, org_id: str, state: str | None = None) -> list[OutboxItem]:
        """The organisation's items in the order they were written, optionally in one state."""
        q = sa.select(o.outbox).where(o.outbox.c.org_id == org_id)
        if state is not None:
            q = q.where(o.outbox.c.state == state)
        with self.crm._read() as conn:
            rows = conn.execute(q.order_by(o.outbox.c.created_at, o.outbox.c.id)).all()
        return [OutboxItem.from_row(r) for r in rows]

    # ---------------------------------------------------------------- integration side

    @_db_errors
    def get_many(self, org_id: str, item_ids: Sequence[str]) -> list[OutboxItem]:
        """These items in the order asked; unknown ids (or another organisation's) are absent."""
        found: dict[str, OutboxItem] = {}
        ids = list(dict.fromkeys(item_ids))
        with self.crm._read() as conn:
            for i in range(0, len(ids), _KEY_CHUNK):
                for r in conn.execute(sa.select(o.outbox).where(o.outbox.c.org_id == org_id,
                                                                o.outbox.c.id.in_(ids[i:i + _KEY_CHUNK]))).all():
                    found[r.id] = OutboxItem.from_row(r)
        return [found[i] for i in ids if i in found]

    @_db_errors
    def set_state(self, org_id: str, item_id: str, state: str, *, reason: str | None = None,
                  message_id: str | None = None, provider_message_id: str | None = None,
                  provider_thread_id: str | None = None, actor: str = "sync") -> OutboxItem:
        """Move an item along the state machine (module docstring); returns it as it is now.

        A different `message_id` than the stored one is refused whatever the state
        (field "message_id"). Moving to the current state changes nothing (no feed
        entry): a retried activity repeating its last move is harmless. Leaving a final
        state, or a move the machine does not have, is refused (field "state").
        """
        if state not in STATES:
            raise ValidationRejected(f"unknown outbox state {state!r}", field="state")
        with self.crm._write(org_id) as conn:
            row = self._load(conn, org_id, item_id, lock=True)
            if row is None:
                raise NotFound("outbox item not found")
            if message_id is not None and row.message_id is not None and message_id != row.message_id:
                raise ValidationRejected("message_id cannot change once set", field="message_id")
            if state == row.state:
                return OutboxItem.from_row(row)
            if state not in MOVES[row.state]:
                why = "is final" if row.state in FINAL else f"cannot move to {state}"
                raise ValidationRejected(f"an item that is {row.state} {why}", field="state")
            return self._move(conn, org_id, row, state, reason=reason, message_id=message_id,
                              provider_message_id=provider_message_id, provider_thread_id=provider_thread_id,
                              actor=actor)

    @_db_errors
    def changes_since(self, org_id: str, after: int, limit: int = 500) -> tuple[list[OutboxItem], int]:
        """Items queued or changed after change number `after`, oldest first, each once in its
        latest state, and the number to resume after (`after` itself when nothing changed)."""
        with self.crm._read() as conn:
            rows = conn.execute(sa.select(o.outbox)
                                .where(o.outbox.c.org_id == org_id, o.outbox.c.change_seq > after)
                                .order_by(o.outbox.c.change_seq).limit(limit)).all()
        items = [OutboxItem.from_row(r) for r in rows]
        return items, (items[-1].change_seq if items else after)

    @_db_errors
    def feed_head(self, org_id: str) -> int:
        """The newest change number of this organisation's outbox (0 before its first item).

        Items are never deleted and numbers only grow, so a cursor above it was not
        issued by this database (service.feed_head explains why that must not be trusted).
        """
        with self.crm._read() as conn:
            head = conn.execute(sa.select(sa.func.max(o.outbox.c.change_seq))
                                .where(o.outbox.c.org_id == org_id)).scalar()
        return int(head or 0)

    # ---------------------------------------------------------------- plumbing

    @staticmethod
    def _load(conn: Connection, org_id: str, item_id: str, *, lock: bool = False) -> Any:
        q = sa.select(o.outbox).where(o.outbox.c.org_id == org_id, o.outbox.c.id == item_id)
        return conn.execute(q.with_for_update() if lock else q).first()

    def _move(self, conn: Connection, org_id: str, row: Any, state: str, *, reason: str | None = None,
              message_id: str | None = None, provider_message_id: str | None = None,
              provider_thread_id: str | None = None, actor: str = "sync") -> OutboxItem:
        """Write a real state change under the organisation lock (the caller holds it) with a new number.

        `reason` describes the state being entered, so it replaces the old one (a held
        item's "reauth_required" must not linger once it is queued again); the ids only
        ever get filled, never erased, as they name things that happened.
        """
        seq = self.crm._next_seq(conn, org_id, row.id, f"outbox_{state}", actor)
        conn.execute(o.outbox.update().where(o.outbox.c.id == row.id).values(
            state=state, reason=reason,
            message_id=row.message_id if row.message_id is not None else message_id,
            provider_message_id=provider_message_id if provider_message_id is not None else row.provider_message_id,
            provider_thread_id=provider_thread_id if provider_thread_id is not None else row.provider_thread_id,
            updated_at=time.time(), change_seq=seq,
        ))
        return OutboxItem.from_row(self._load(conn, org_id, row.id))
