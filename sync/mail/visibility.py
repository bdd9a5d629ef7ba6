"""What a logged message may show, cut before anything reaches the platform.

Levels, most restrictive first (models.mail.VISIBILITY_LEVELS):

- private: participants and date, and the platform shows the log only to the
  users who contributed it (`EmailLog.users`); others see nothing of it;
- metadata: participants and date, visible to whoever sees the records;
- subject: the same plus the subject;
- full: the same plus the body text and, when attachments are enabled, the
  attachment names (names only: content is never fetched).

A thread several users contribute takes the most restrictive of their levels, so
adding a mailbox can only hide more. Bcc recipients are never listed: they were
hidden from the other recipients and stay hidden from the platform's readers.
"""

from __future__ import annotations

from typing import Iterable

from models.mail import VISIBILITY_LEVELS, MailMessage, Visibility
from models.mail_log import Association, EmailLog
from sync.mail.threads import ThreadIdentity

_RANK = {level: i for i, level in enumerate(VISIBILITY_LEVELS)}


def _rank(level: str) -> int:
    try:
        return _RANK[level]
    except KeyError:
        raise ValueError(f"unknown visibility level {level!r}; expected one of {VISIBILITY_LEVELS}") from None


def most_restrictive(*levels: str) -> Visibility:
    if not levels:
        raise ValueError("most_restrictive needs at least one level")
    return VISIBILITY_LEVELS[min(_rank(lv) for lv in levels)]  # type: ignore[return-value]


def allows(level: str, what: Visibility) -> bool:
    """True when `level` shows at least what `what` shows."""
    return _rank(level) >= _rank(what)


def to_log(
    msg: MailMessage,
    *,
    key: str,
    thread: ThreadIdentity,
    level: str,
    users: Iterable[str],
    associations: Iterable[Association],
    attachments_enabled: bool,
) -> EmailLog:
    _rank(level)
    full = allows(level, "full")
    recipients: list[str] = []
    for a in msg.to + msg.cc:
        if a.email and a.email not in recipients:
            recipients.append(a.email)
    return EmailLog(
        key=key,
        thread_key=thread.key,
        weak_thread=thread.weak,
        synthesized_key=msg.synthesized_id,
        visibility=level,
        subject=msg.subject if allows(level, "subject") else None,
        body_text=msg.body_text if full else None,
        sender=msg.sender.email if msg.sender else None,
        recipients=tuple(recipients),
        occurred_at=msg.sent_at if msg.sent_at is not None else msg.received_at,
        direction=msg.direction,
        users=tuple(sorted(set(users))),
        associations=tuple(dict.fromkeys(associations)),
        attachments=tuple(a.filename for a in msg.attachments if a.filename) if full and attachments_enabled else (),
    )
