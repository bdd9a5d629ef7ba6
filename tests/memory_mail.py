"""An in-memory mail provider whose connector keeps `MailboxMail`'s promises.

It passes the same contract as the Gmail and Graph connectors
(tests/test_memory_mail.py runs `MailContract` on it), so the mail pipeline can be
driven fast - many mailboxes, many cycles - with the behaviour the real ones show:
a history log with cursors that expire, labels added and removed, permanent
deletion as a tombstone, a full listing bounded by `since`, and metadata-only mode
that never parses a body. Each `connector()` is a new instance, as per activity.
"""

from __future__ import annotations

import email
import threading
import time
from dataclasses import dataclass, field
from email import policy as email_policy
from email.utils import parsedate_to_datetime

from connectors.protocols import DeltaPage
from email.utils import getaddresses

from models.errors import CursorExpired, SendRejected, Transient
from models.mail import MailFetchOptions, normalize_message_id
from models.send import SentRef
from models.record import SideRecord
from sync.mail.content import METADATA_HEADERS, from_headers, parse_raw

PAGE = 50


def _message_id(raw: bytes) -> str:
    parsed = email.message_from_bytes(raw, policy=email_policy.compat32)
    return normalize_message_id(parsed["Message-ID"] or "")


@dataclass
class _Msg:
    id: str
    raw: bytes
    labels: set[str]
    received_at: float
    thread: str


@dataclass
class _Box:
    user: str
    messages: dict[str, _Msg] = field(default_factory=dict)
    #: (history id, message id) in order; a message's latest change is what a round reports
    history: list[tuple[int, str]] = field(default_factory=list)
    oldest_kept: int = 0


class MemoryMailProvider:
    """Mailboxes by user address; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[str, _Box] = {}
        self._hid = 100
        self._mid = 0
        self.calls = 0
        self._send_faults: list[bool] = []

    def box(self, user: str) -> _Box:
        return self._boxes.setdefault(user.lower(), _Box(user.lower()))

    def _touch(self, box: _Box, mid: str) -> None:
        self._hid += 3
        box.history.append((self._hid, mid))

    def deliver(self, user: str, raw: bytes, *, sent: bool = False, labels: tuple[str, ...] = ()) -> str:
        with self._lock:
            box = self.box(user)
            self._mid += 1
            mid = f"m{self._mid:06d}"
            parsed = email.message_from_bytes(raw, policy=email_policy.default)
            try:
                received = parsedate_to_datetime(str(parsed["Date"])).timestamp()
            except Exception:
                received = time.time()
            base = {"SENT"} if sent else {"INBOX"}
            box.messages[mid] = _Msg(mid, raw, base | set(labels), received, mid)
            self._touch(box, mid)
            return mid

    def add_label(self, user: str, mid: str, label: str) -> None:
        with self._lock:
            box = self.box(user)
            box.messages[mid].labels.add(label)
            self._touch(box, mid)

    def remove_label(self, user: str, mid: str, label: str) -> None:
        with self._lock:
            box = self.box(user)
            box.messages[mid].labels.discard(label)
            self._touch(box, mid)

    def delete(self, user: str, mid: str) -> None:
        with self._lock:
            box = self.box(user)
            box.messages.pop(mid, None)
            self._touch(box, mid)

    def expire(self, user: str) -> None:
        with self._lock:
            box = self.box(user)
            box.oldest_kept = self._hid + 1

    def fail_sends(self, count: int = 1, *, after_store: bool = True) -> None:
        """The next `count` sends fail with a 5xx: after storing the message (sent, but the
        caller sees an error) or before (nothing sent)."""
        self._send_faults = [after_store] * count

    def sent_by(self, user: str, message_id: str) -> list[str]:
        """Ids of the user's sent messages carrying this Message-ID (duplicates show as several)."""
        with self._lock:
            box = self.box(user)
            return [m.id for m in box.messages.values()
                    if "SENT" in m.labels and _message_id(m.raw) == message_id]

    def connector(self, user: str, options: MailFetchOptions) -> "MemoryMail":
        return MemoryMail(self, user.lower(), options)


class MemoryMail:
    provider = "memory"

    def __init__(self, provider: MemoryMailProvider, user: str, options: MailFetchOptions) -> None:
        self.p = provider
        self.user = user
        self.options = options
        self._calls = 0

    @property
    def calls_made(self) -> int:
        return self._calls

    def _record(self, m: _Msg | None, mid: str) -> SideRecord:
        if m is None:
            return SideRecord(side="mailbox", external_id=mid, deleted=True)
        if self.options.bodies:
            msg = parse_raw(m.raw, bodies=True, max_body_bytes=self.options.max_body_bytes)
        else:
            parsed = email.message_from_bytes(m.raw, policy=email_policy.compat32)
            msg = from_headers([(h, parsed[h]) for h in METADATA_HEADERS if parsed[h] is not None], size=len(m.raw))
        msg = msg.model_copy(update={
            "labels": tuple(sorted(m.labels)), "received_at": m.received_at, "provider_thread_id": m.thread,
            "direction": "sent" if "SENT" in m.labels else "received",
        })
        return SideRecord(side="mailbox", external_id=m.id, content=msg, updated_at=m.received_at)

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        self._calls += 1
        with self.p._lock:
            box = self.p.box(self.user)
            if cursor is None:
                since = self.options.since
                ids = sorted(i for i, m in box.messages.items() if since is None or m.received_at >= since)
                head = self.p._hid
                start = int(page_token or 0)
                if page_token is None:
                    start = 0
                chunk = ids[start:start + PAGE]
                records = [self._record(box.messages[i], i) for i in chunk]
                if start + PAGE < len(ids):
                    return DeltaPage(records, next_page=str(start + PAGE))
                return DeltaPage(records, cursor=str(head))
            after = int(cursor)
            if box.oldest_kept and after < box.oldest_kept:
                raise CursorExpired("history id too old")
            changed = [(h, m) for h, m in box.history if h > after]
            latest = dict((m, h) for h, m in changed)
            head = max([after] + [h for h, _ in changed])
            records = [self._record(box.messages.get(m), m) for m in sorted(latest, key=latest.get)]
            return DeltaPage(records, cursor=str(head))

    def send(self, raw: bytes, *, reply_to_message_id: str | None = None) -> SentRef:
        """Into the sender's Sent (threaded with its parent) and the recipients' inboxes."""
        self._calls += 1
        parsed = email.message_from_bytes(raw, policy=email_policy.default)
        rcpts = [a.lower() for _, a in getaddresses([str(parsed[h]) for h in ("To", "Cc", "Bcc") if parsed[h]])
                 if a or _]
        if not rcpts or any("@" not in a or "." not in a.rpartition("@")[2] for a in rcpts):
            raise SendRejected("invalid recipient", reason="invalid_recipient")
        if len(raw) > 25_000_000:
            raise SendRejected("too large", reason="too_large")
        fault = self.p._send_faults.pop(0) if self.p._send_faults else None
        if fault is False:
            raise Transient("injected 503 before storing")
        mid = self.p.deliver(self.user, raw, sent=True)
        with self.p._lock:
            box = self.p.box(self.user)
            parent = next((m for m in box.messages.values()
                           if reply_to_message_id and _message_id(m.raw) == reply_to_message_id), None)
            if parent is not None:
                box.messages[mid].thread = parent.thread
            thread = box.messages[mid].thread
        for a in rcpts:
            if a in self.p._boxes and a != self.user:
                self.p.deliver(a, raw)
        if fault is True:
            raise Transient("injected 503 after storing")
        return SentRef(provider_message_id=mid, provider_thread_id=thread)

    def find_sent(self, message_id: str) -> SentRef | None:
        self._calls += 1
        with self.p._lock:
            box = self.p.box(self.user)
            for m in box.messages.values():
                if "SENT" in m.labels and _message_id(m.raw) == message_id:
                    return SentRef(provider_message_id=m.id, provider_thread_id=m.thread)
        return None

    def get(self, external_id: str) -> SideRecord:
        with self.p._lock:
            return self._record(self.p.box(self.user).messages.get(external_id), external_id)
