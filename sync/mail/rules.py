"""Whether a message is logged, as one named rule per verdict.

Every message gets exactly one rule, the first that applies in this order:

1. `label_removed` - label mode only: the message was logged and its label has
   since been removed. The policy's `on_label_removed` decides the action:
   "remove" takes the log back, "keep" leaves it. (A label removed from a message
   never logged is simply `no_label`.)
2. `calendar_invite` - invitations belong to calendar sync, not to the mail log.
3. `automated` - Auto-Submitted other than "no" (auto-replies, notifications).
4. `bulk` - List-Unsubscribe present, or Precedence bulk/list/junk.
5. `outside_window` - dated before the policy's window (`MailPolicy.window_start`);
   timed by the Date header, else the provider's time; an undated message is kept
   in (dropping mail for a missing header would lose it silently).
6. `blocklisted` - the sender is blocklisted, or every external participant is. A
   blocklisted person copied on a real conversation does not hide it from the log
   (they are left out of its associations instead, see associate.py); a
   blocklisted person writing to the user does.
7. `internal_only` - nobody outside the organisation's own domains took part.
8. The capture mode's own skip: `no_label` (label mode, label absent),
   `not_sent` (sent mode, a received message), `no_known_participant` (known mode,
   no external participant is known to the platform).
9. Otherwise logged, named by the mode: `logged_label`, `logged_sent`, `logged_known`.

Hygiene rules (2-7) come before the mode because they hold whatever the user
chose: an explicit label does not make a newsletter a customer conversation.
"""

from __future__ import annotations

from typing import Callable, Collection, Literal

from pydantic import BaseModel, ConfigDict

from models.mail import Address, MailMessage
from sync.mail.addresses import address_forms, domain_of, in_domains, is_blocklisted, is_role_address  # noqa: F401 (re-exported)
from sync.mail.policy import MailPolicy

LABEL_REMOVED = "label_removed"
CALENDAR_INVITE = "calendar_invite"
AUTOMATED = "automated"
BULK = "bulk"
OUTSIDE_WINDOW = "outside_window"
BLOCKLISTED = "blocklisted"
INTERNAL_ONLY = "internal_only"
NO_LABEL = "no_label"
NOT_SENT = "not_sent"
NO_KNOWN_PARTICIPANT = "no_known_participant"
LOGGED_LABEL = "logged_label"
LOGGED_SENT = "logged_sent"
LOGGED_KNOWN = "logged_known"

SKIP_RULES: tuple[str, ...] = (
    LABEL_REMOVED, CALENDAR_INVITE, AUTOMATED, BULK, OUTSIDE_WINDOW, BLOCKLISTED, INTERNAL_ONLY,
    NO_LABEL, NOT_SENT, NO_KNOWN_PARTICIPANT,
)
LOG_RULES: tuple[str, ...] = (LOGGED_LABEL, LOGGED_SENT, LOGGED_KNOWN)
RULES: tuple[str, ...] = SKIP_RULES + LOG_RULES

_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})

Action = Literal["log", "skip", "remove", "keep"]


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    log: bool
    rule: str
    #: log: write it; skip: nothing to do; remove: take an existing log back;
    #: keep: leave an existing log as it is
    action: Action = "skip"


def is_bulk(msg: MailMessage) -> bool:
    return msg.list_unsubscribe or msg.precedence.strip().lower() in _BULK_PRECEDENCE


def is_automated(msg: MailMessage) -> bool:
    value = msg.auto_submitted.strip().lower()
    return bool(value) and value != "no"


def external_participants(msg: MailMessage, own_domains: Collection[str]) -> tuple[Address, ...]:
    return tuple(a for a in msg.participants() if not in_domains(domain_of(a.email), own_domains))


def message_time(msg: MailMessage) -> float | None:
    """The Date header first: it is the same in every mailbox's copy."""
    return msg.sent_at if msg.sent_at is not None else msg.received_at


def has_label(msg: MailMessage, label: str) -> bool:
    want = label.strip().casefold()
    return any(lbl.strip().casefold() == want for lbl in msg.labels)


def _knower(known: Callable[[str], bool] | Collection[str]) -> Callable[[str], bool]:
    if callable(known):
        return lambda email: any(known(f) for f in address_forms(email))
    lowered = {k.strip().lower() for k in known}
    return lambda email: any(f in lowered for f in address_forms(email))


def classify(
    msg: MailMessage,
    policy: MailPolicy,
    *,
    known: Callable[[str], bool] | Collection[str],
    now: float,
    connected_at: float,
    previously_logged: bool = False,
    label_removed: bool = False,
) -> Verdict:
    def skip(rule: str) -> Verdict:
        return Verdict(log=False, rule=rule, action="skip")

    if policy.capture == "label" and label_removed and previously_logged and not has_label(msg, policy.label):
        return Verdict(log=False, rule=LABEL_REMOVED, action="remove" if policy.on_label_removed == "remove" else "keep")
    if msg.calendar_invite:
        return skip(CALENDAR_INVITE)
    if is_automated(msg):
        return skip(AUTOMATED)
    if is_bulk(msg):
        return skip(BULK)
    start = policy.window_start(connected_at, now)
    when = message_time(msg)
    if start is not None and when is not None and when < start:
        return skip(OUTSIDE_WINDOW)
    external = external_participants(msg, policy.own_domains)
    if (msg.sender is not None and is_blocklisted(msg.sender.email, policy.blocklist)) or (
        external and all(is_blocklisted(a.email, policy.blocklist) for a in external)
    ):
        return skip(BLOCKLISTED)
    if not external:
        return skip(INTERNAL_ONLY)
    if policy.capture == "label":
        return Verdict(log=True, rule=LOGGED_LABEL, action="log") if has_label(msg, policy.label) else skip(NO_LABEL)
    if policy.capture == "sent":
        return Verdict(log=True, rule=LOGGED_SENT, action="log") if msg.direction == "sent" else skip(NOT_SENT)
    is_known = _knower(known)
    if any(is_known(a.email) for a in external):
        return Verdict(log=True, rule=LOGGED_KNOWN, action="log")
    return skip(NO_KNOWN_PARTICIPANT)
