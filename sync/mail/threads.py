"""One identity for a message and its thread, whichever mailbox holds the copy.

Provider thread ids (Gmail threadId, Graph conversationId) are per mailbox, so the
organisation-wide identity comes from the headers every copy shares:

- a message is keyed by its normalised Message-ID (`message_key`); a message with
  none gets a synthesized one from stable headers (`synthesize_message_id`);
- a thread is keyed by its root: the first References entry, else the first
  In-Reply-To, else the message's own id (it starts the thread);
- a reply or forward carrying neither header (some mobile clients, some gateways)
  gets a WEAK key from its normalised subject, its external participants (sender,
  To and Cc: Bcc is only in the sender's copy) and a 14-day time bucket
  (`weak_keys` also gives the neighbouring bucket's key, for a reply just across
  the edge). Weak keys can join two unrelated threads that share subject and
  people, so callers mark them (`ThreadIdentity.weak`) and never merge a weak
  thread into a strong one on the weak key alone.

A message is timed by its Date header, which is the same in every copy; the
provider's received time differs between mailboxes and is used only without one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Collection, Iterable

from pydantic import BaseModel, ConfigDict

from models.mail import Address, MailMessage, normalize_message_id
from sync.mail.addresses import domain_of, in_domains

#: width of a weak thread's time bucket: replies without references that share a
#: subject and people within about two weeks are one conversation
WEAK_BUCKET_SECONDS = 14 * 86_400
SYNTHESIZED_DOMAIN = "synthesized.invalid"

_PREFIXES = (
    "re", "fw", "fwd", "aw", "wg", "sv", "vs", "vb", "tr", "rv", "res", "enc", "antw", "odp", "ynt",
    "r", "ref", "atb", "ris", "doorst", "πλη", "отв", "на", "回复", "回覆", "答复", "转发", "轉寄",
)
_PREFIX = re.compile(
    r"^\s*(?:" + "|".join(sorted((re.escape(p) for p in _PREFIXES), key=len, reverse=True))
    + r")\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*",
    re.IGNORECASE,
)
_TAG = re.compile(r"^\s*\[[^\]]{0,40}\]\s*")


class ThreadIdentity(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    #: True: recognised only by subject, participants and time (see module doc)
    weak: bool = False


def message_key(msg: MailMessage) -> str:
    key = normalize_message_id(msg.message_id)
    if not key:
        raise ValueError("the message has no Message-ID: the connector must synthesize one")
    return key


def _email(a: Address | str | None) -> str:
    if a is None:
        return ""
    return (a.email if isinstance(a, Address) else str(a)).strip().lower()


def synthesize_message_id(
    *,
    sender: Address | str | None,
    date: float | None,
    subject: str,
    to: Iterable[Address | str] = (),
    provider_hint: str = "",
) -> str:
    """A stable Message-ID for a message that has none (the caller sets
    `synthesized_id=True`). Built only from what every copy shares, so two mailboxes
    holding one message derive the same id. `provider_hint` is for something copies
    share that headers miss; a per-mailbox id there would split the copies."""
    stable = "\x1f".join(
        (
            _email(sender),
            "" if date is None else str(int(date)),
            " ".join(unicodedata.normalize("NFC", subject or "").split()),
            ",".join(sorted({_email(a) for a in to} - {""})),
            provider_hint or "",
        )
    )
    return f"concord-{hashlib.sha256(stable.encode()).hexdigest()[:40]}@{SYNTHESIZED_DOMAIN}"


def _strip_prefixes(subject: str) -> tuple[str, bool]:
    s, replied = subject or "", False
    while True:
        before = s
        s = _TAG.sub("", s, count=1)
        m = _PREFIX.match(s)
        if m:
            s, replied = s[m.end():], True
        if s == before:
            return s, replied


def normalize_subject(subject: str) -> str:
    """The subject a whole conversation shares: reply/forward prefixes (in the common
    languages, with counters like `RE[2]:`) and leading [tags] removed, whitespace
    collapsed, case folded."""
    s, _ = _strip_prefixes(unicodedata.normalize("NFKC", subject or ""))
    return " ".join(s.split()).casefold()


def is_reply_subject(subject: str) -> bool:
    return _strip_prefixes(unicodedata.normalize("NFKC", subject or ""))[1]


def _time(msg: MailMessage) -> float | None:
    return msg.sent_at if msg.sent_at is not None else msg.received_at


def _weak_key(msg: MailMessage, bucket: int | None, own_domains: Collection[str]) -> str:
    # Bcc is left out: only the sender's copy has it, and every copy must agree
    shown = ((msg.sender,) if msg.sender else ()) + msg.to + msg.cc
    everyone = sorted({a.email for a in shown if a.email})
    external = [e for e in everyone if not in_domains(domain_of(e), own_domains)] or everyone
    stable = "\x1f".join((normalize_subject(msg.subject), ",".join(external), "undated" if bucket is None else str(bucket)))
    return "weak:" + hashlib.sha256(stable.encode()).hexdigest()[:40]


def weak_keys(msg: MailMessage, own_domains: Collection[str] = ()) -> tuple[str, ...]:
    """The weak key of the message's bucket, then of the neighbouring bucket nearer to
    it: a reply just across a bucket edge finds its thread under the second key. An
    undated message has one key."""
    t = _time(msg)
    if t is None:
        return (_weak_key(msg, None, own_domains),)
    bucket = int(t // WEAK_BUCKET_SECONDS)
    into = t - bucket * WEAK_BUCKET_SECONDS
    neighbour = bucket - 1 if into < WEAK_BUCKET_SECONDS / 2 else bucket + 1
    return (_weak_key(msg, bucket, own_domains), _weak_key(msg, neighbour, own_domains))


def thread_identity(msg: MailMessage, own_domains: Collection[str] = ()) -> ThreadIdentity:
    if msg.references:
        return ThreadIdentity(key=msg.references[0])
    if msg.in_reply_to:
        return ThreadIdentity(key=msg.in_reply_to[0])
    if is_reply_subject(msg.subject):
        return ThreadIdentity(key=weak_keys(msg, own_domains)[0], weak=True)
    return ThreadIdentity(key=message_key(msg))
