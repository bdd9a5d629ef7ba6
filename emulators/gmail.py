"""A local Gmail API that google-api-python-client talks to unchanged.

Why an emulator and not mocks: a Gmail connector lives or dies by wire details -
history ids that jump, a 404 for a forgotten `startHistoryId`, empty history pages
that still carry a `nextPageToken`, the multipart batch format the client parses,
per-method quota units charged inside a batch, `metadataHeaders` filtering. Serving
them on a real port lets tests, the demo and benchmarks run the real client
library against them exactly as against Google.

Behaviour follows /work/shared/PROVIDERS.md sections 0 and A. Where Google's
behaviour is UNCONFIRMED or left open it is a setting, not a guess:

- `costs` (per-method quota units): the documented figures; watch/stop are
  UNCONFIRMED and default to 100/1.
- `rate_limit_status` 429 (default) or 403: both are seen for userRateLimitExceeded.
- `history_empty_pages`: how many empty pages (with a `nextPageToken`) start every
  history round, to prove a client does not stop at an empty page.
- `push_history_id_as_string`: the push envelope's historyId as a string or a number.
- `send_limit_per_day` (default 2,000, Workspace's daily sending limit): messages a
  user may send in a rolling 24 hours. Over it: 429 userRateLimitExceeded, "Retry
  after <when the oldest send leaves the window>" in the message and a Retry-After
  header, and "Daily user sending limit exceeded." as the error item's message (the
  wording Google's sending-limit pages use; the API's exact text is UNCONFIRMED).
- `max_message_bytes` (default 35 MB, the documented messages.send maximum): a larger
  raw message is refused with 413 "Request Entity Too Large" (reason
  `uploadTooLarge`), as Google's front end refuses an oversized request before the API
  reads it. Tests lower it rather than posting 35 MB.
- `fail_sends(count, status, when)`: the ambiguous case a sender must survive. With
  `when="after"` the message is stored (SENT, delivered) and then the call answers
  500/503, so the client saw an error for mail that went out; `when="before"` fails
  it without storing anything.

messages.send keeps the raw message's own Message-ID (what `rfc822msgid:` finds),
joins the `threadId` it names only on Gmail's documented terms (References or
In-Reply-To naming a message of that thread, matching subject; else a new thread; a
threadId the user does not have is 404), refuses malformed recipients (400 "Invalid
To header", likewise Cc/Bcc), and delivers a copy to every recipient who is another
user of this emulator (INBOX, threaded by References, Bcc header dropped), so a
colleague's mailbox sees the message as Gmail would deliver it.

Several mailboxes per app (keyed by address); a bearer token maps to one of them
("me"), the static `emulator-token` to the default user. Deliberate simplifications:
no drafts/threads/attachments/settings endpoints, `q` understands only the
operators listed at `_match_query`, and labels.list counts are left out.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.parser
import email.utils
import json
import re
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy as email_policy
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

from fastapi import FastAPI, Request
from fastapi.responses import Response

from emulators.google_batch import BatchRefused, batch_parts, serve_parts
from emulators.admin_routes import add_config_clock_stats
from emulators.google_people import MethodOverride
from emulators.json_response import EscapedJSONResponse

SYSTEM_LABELS: tuple[str, ...] = (
    "INBOX", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "SENT", "DRAFT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES", "CATEGORY_FORUMS",
)
#: system labels a client may not apply or remove by hand
UNSETTABLE_LABELS = frozenset({"SENT", "DRAFT"})
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
FORMATS = ("minimal", "full", "raw", "metadata")

#: quota units per method (PROVIDERS.md A); watch/stop UNCONFIRMED
DEFAULT_COSTS: dict[str, int] = {
    "users.getProfile": 1,
    "users.watch": 100,
    "users.stop": 1,
    "users.labels.list": 1,
    "users.labels.get": 1,
    "users.labels.create": 5,
    "users.history.list": 2,
    "users.messages.list": 5,
    "users.messages.get": 5,
    "users.messages.modify": 5,
    "users.messages.trash": 5,
    "users.messages.untrash": 5,
    "users.messages.delete": 10,
    "users.messages.send": 100,
}
DEFAULT_SEND_LIMIT_PER_DAY = 2_000
DEFAULT_MAX_MESSAGE_BYTES = 35 * 1024 * 1024
DAY_S = 86_400.0
QUOTA_WINDOW_S = 60.0
NOT_FOUND_MESSAGE = "Requested entity was not found."
FAULT_KINDS = ("429", "403_rate", "500", "503", "401")


class ApiError(Exception):
    """A Gmail-shaped error (the legacy `errors[]` body Gmail still sends)."""

    def __init__(self, code: int, message: str, *, reason: str, domain: str = "global", status: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.status = status
        self.headers = headers or {}
        #: the `errors[0].message` when it differs from the top-level message
        self.body_item_message: str | None = None

    def body(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message,
                               "errors": [{"message": self.body_item_message or self.message, "domain": self.domain,
                                           "reason": self.reason}]}
        if self.status:
            err["status"] = self.status
        return {"error": err}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, reason="invalidArgument", status="INVALID_ARGUMENT")


def failed_precondition(message: str) -> ApiError:
    return ApiError(400, message, reason="failedPrecondition", status="FAILED_PRECONDITION")


def not_found() -> ApiError:
    return ApiError(404, NOT_FOUND_MESSAGE, reason="notFound", status="NOT_FOUND")


def unauthenticated() -> ApiError:
    return ApiError(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                         "cookie or other valid authentication credential.", reason="authError",
                    status="UNAUTHENTICATED", headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def rate_limited(status: int, retry_at: float) -> ApiError:
    if status == 403:
        return ApiError(403, "User Rate Limit Exceeded", reason="userRateLimitExceeded", domain="usageLimits",
                        status="PERMISSION_DENIED")
    return ApiError(429, f"User-rate limit exceeded.  Retry after {rfc3339(retry_at)}", reason="userRateLimitExceeded",
                    domain="usageLimits", status="RESOURCE_EXHAUSTED")


def fault_error(kind: str, retry_after: float | None = None) -> ApiError:
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
    if kind == "429":
        err = rate_limited(429, time.time() + (retry_after or 1))
    elif kind == "403_rate":
        err = rate_limited(403, 0)
    elif kind == "500":
        err = ApiError(500, "Internal error encountered.", reason="backendError", status="INTERNAL")
    elif kind == "503":
        err = ApiError(503, "The service is currently unavailable.", reason="backendError", status="UNAVAILABLE")
    elif kind == "401":
        err = unauthenticated()
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    err.headers.update(headers)
    return err


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(data: str) -> bytes:
    data = "".join(str(data).split())
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _token(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _untoken(token: str) -> dict:
    try:
        data = json.loads(b64url_decode(token))
    except Exception:
        raise bad_request("Invalid pageToken") from None
    if not isinstance(data, dict):
        raise bad_request("Invalid pageToken")
    return data


_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_MSGID = re.compile(r"<([^<>\s]+)>")


def _norm_msgid(value: str) -> str:
    """Gmail finds `rfc822msgid:` with or without brackets and whatever the domain's case."""
    v = str(value or "").strip().strip("<>")
    left, at, right = v.rpartition("@")
    return f"{left}@{right.lower()}" if at else v


def normalize_subject(subject: str) -> str:
    return " ".join(_SUBJECT_PREFIX.sub("", subject or "").split()).lower()


# ---- partial responses (`fields=`) ---------------------------------------------------------


def parse_fields(spec: str) -> dict:
    """`a,b/c,d(e,f/g)` -> {"a": None, "b": {"c": None}, "d": {"e": None, "f": {"g": None}}}."""
    tree: dict = {}
    i = 0

    def merge(into: dict, path: list[str], sub: dict | None) -> None:
        node = into
        for name in path[:-1]:
            nxt = node.get(name, {})
            if nxt is None:  # already whole
                return
            node[name] = nxt
            node = nxt
        last = path[-1]
        if sub is None or node.get(last, {}) is None:
            node[last] = None
        else:
            existing = node.setdefault(last, {})
            for k, v in sub.items():
                merge(existing, [k], v)

    def parse(level: int) -> dict:
        nonlocal i
        out: dict = {}
        name = ""
        path: list[str] = []
        while i < len(spec):
            ch = spec[i]
            if ch == "(":
                i += 1
                sub = parse(level + 1)
                merge(out, path + [name.strip()], sub)
                name, path = "", []
                continue
            if ch == ")":
                i += 1
                if name.strip():
                    merge(out, path + [name.strip()], None)
                return out
            if ch == "/":
                path.append(name.strip())
                name = ""
            elif ch == ",":
                if name.strip():
                    merge(out, path + [name.strip()], None)
                name, path = "", []
            else:
                name += ch
            i += 1
        if name.strip():
            merge(out, path + [name.strip()], None)
        return out

    tree = parse(0)
    return tree


def apply_fields(obj: Any, tree: dict | None) -> Any:
    if tree is None:
        return obj
    if isinstance(obj, list):
        return [apply_fields(x, tree) for x in obj]
    if not isinstance(obj, dict):
        return obj
    return {k: apply_fields(v, tree[k]) for k, v in obj.items() if k in tree}


# ---- state ------------------------------------------------------------------------------------


@dataclass
class _Msg:
    id: str
    thread_id: str
    label_ids: set[str]
    internal_date_ms: int
    raw: bytes
    history_id: int
    message_id: str
    subject_key: str
    parsed: Message | None = None

    def parse(self) -> Message:
        if self.parsed is None:
            self.parsed = email.message_from_bytes(self.raw, policy=email_policy.compat32)
        return self.parsed


@dataclass
class _Record:
    id: int
    kind: str  # one of HISTORY_TYPES
    message_id: str
    thread_id: str
    label_ids: tuple[str, ...] = ()
    message_labels: tuple[str, ...] = ()


@dataclass
class _Fault:
    kind: str
    method: str
    remaining: int
    retry_after: float | None = None


@dataclass
class Mailbox:
    """One user's mail, labels, history and watch."""

    email: str
    messages: dict[str, _Msg] = field(default_factory=dict)
    labels: dict[str, dict] = field(default_factory=dict)
    history: list[_Record] = field(default_factory=list)
    history_id: int = 0
    #: history ids below this answer 404 (expired)
    history_floor: int = 0
    by_message_id: dict[str, str] = field(default_factory=dict)
    watch: dict | None = None
    spent: deque = field(default_factory=deque)  # (time, units) in the rolling window
    next_label: int = 1
    sends: deque = field(default_factory=deque)  # times of messages sent in the last 24 hours


class GmailState:
    """Mailboxes, tokens, quota, faults and counters. Thread-safe.

    The clock is injectable (`clock`) and can be advanced (`advance_clock`): quota's
    rolling minute, watch expiry and internalDate all read it, so a test can spend a
    minute of quota without sleeping one.
    """

    def __init__(
        self,
        *,
        default_user: str = "me@acme.example",
        clock: Callable[[], float] | None = None,
        static_tokens: tuple[str, ...] | set[str] = ("emulator-token",),
        quota_per_minute: int = 15_000,
        enforce_quota: bool = True,
        rate_limit_status: int = 429,
        history_gap: int = 20,
        history_empty_pages: int = 0,
        costs: dict[str, int] | None = None,
        push: Callable[[dict], Any] | str | None = None,
        push_history_id_as_string: bool = False,
        record_responses: bool = False,
        access_token_lifetime: int = 3600,
        send_limit_per_day: int = DEFAULT_SEND_LIMIT_PER_DAY,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock or time.time
        self._clock_offset = 0.0
        self.default_user = default_user
        self.static_tokens: dict[str, str | None] = {t: None for t in static_tokens}
        self.quota_per_minute = int(quota_per_minute)
        self.enforce_quota = bool(enforce_quota)
        if rate_limit_status not in (403, 429):
            raise ValueError("rate_limit_status must be 403 or 429")
        self.rate_limit_status = rate_limit_status
        self.history_gap = max(1, int(history_gap))
        self.history_empty_pages = int(history_empty_pages)
        self.costs = {**DEFAULT_COSTS, **(costs or {})}
        #: None: push off. A callable gets the Pub/Sub push envelope; a URL gets it POSTed.
        self.push = push
        self.push_history_id_as_string = push_history_id_as_string
        self.record_responses = record_responses
        self.responses: list[bytes] = []
        self.access_token_lifetime = access_token_lifetime
        self.send_limit_per_day = int(send_limit_per_day)
        self.max_message_bytes = int(max_message_bytes)
        #: scripted send failures: [remaining, status, "before" | "after"]
        self._send_faults: list[list] = []
        self.token_validator: Callable[[str], bool] | None = None
        self._access_tokens: dict[str, tuple[float, str]] = {}
        self._mailboxes: dict[str, Mailbox] = {}
        self._faults: list[_Fault] = []
        self._next_id = int.from_bytes(secrets.token_bytes(5), "big") | (1 << 60)
        self.calls: Counter[str] = Counter()
        self.units: Counter[str] = Counter()
        self.rate_limited = 0
        self.batches = 0
        self.batch_sizes: list[int] = []
        self.faults_served = 0
        self.pushes: list[dict] = []
        self.mailbox(default_user)

    # ---- clock / config --------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        with self._lock:
            self._clock_offset += float(seconds)

    def set_quota(self, enabled: bool, per_minute: int | None = None) -> None:
        with self._lock:
            self.enforce_quota = bool(enabled)
            if per_minute is not None:
                self.quota_per_minute = int(per_minute)

    def configure(self, **settings: Any) -> None:
        allowed = {"quota_per_minute", "enforce_quota", "rate_limit_status", "history_gap", "history_empty_pages",
                   "push_history_id_as_string", "record_responses", "send_limit_per_day", "max_message_bytes"}
        with self._lock:
            for key, value in settings.items():
                if key == "costs":
                    self.costs.update({str(k): int(v) for k, v in dict(value).items()})
                elif key in allowed:
                    setattr(self, key, value)
                else:
                    raise ValueError(f"unknown setting {key!r}")

    def inject_fault(self, kind: str, method: str = "any", count: int = 1, *, retry_after: float | None = None) -> None:
        """The next `count` calls of `method` ("users.messages.get", ... or "any") fail with `kind`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}")
        with self._lock:
            self._faults.append(_Fault(kind, method, int(count), retry_after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._send_faults.clear()

    def fail_sends(self, count: int = 1, *, status: int = 500, when: str = "after") -> None:
        """The next `count` messages.send calls answer `status` (500 or 503); "after":
        once the message is stored and delivered (sent, but the client sees an error),
        "before": without storing it."""
        if status not in (500, 503) or when not in ("before", "after"):
            raise ValueError("status must be 500 or 503 and when 'before' or 'after'")
        with self._lock:
            self._send_faults.append([int(count), status, when])

    def _take_send_fault(self) -> tuple[int, str] | None:
        for f in self._send_faults:
            if f[0] > 0:
                f[0] -= 1
                self.faults_served += 1
                self._send_faults = [x for x in self._send_faults if x[0] > 0]
                return f[1], f[2]
        return None

    def _take_fault(self, method: str) -> ApiError | None:
        with self._lock:
            for f in self._faults:
                if f.remaining > 0 and f.method in (method, "any"):
                    f.remaining -= 1
                    self.faults_served += 1
                    self._faults = [x for x in self._faults if x.remaining > 0]
                    return fault_error(f.kind, f.retry_after)
        return None

    def stats(self) -> dict:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "units": dict(self.units),
                "units_total": sum(self.units.values()),
                "rate_limited": self.rate_limited,
                "batches": self.batches,
                "batch_sizes": list(self.batch_sizes),
                "faults_served": self.faults_served,
                "messages": {u: len(m.messages) for u, m in self._mailboxes.items()},
                "pushes": len(self.pushes),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.calls.clear()
            self.units.clear()
            self.rate_limited = 0
            self.batches = 0
            self.batch_sizes.clear()
            self.faults_served = 0
            self.responses.clear()

    # ---- auth ---------------------------------------------------------------------------------

    def add_token(self, token: str, user: str | None = None) -> None:
        """A static bearer token for `user` (None: the default user)."""
        with self._lock:
            if user:
                self.mailbox(user)
            self.static_tokens[token] = user

    def issue_access_token(self, refresh_token: str, user: str | None = None) -> dict:
        with self._lock:
            token = "ya29.emu." + secrets.token_urlsafe(24)
            self._access_tokens[token] = (self.now() + self.access_token_lifetime, user or self.default_user)
            return {"access_token": token, "expires_in": self.access_token_lifetime, "token_type": "Bearer",
                    "scope": "https://www.googleapis.com/auth/gmail.readonly"}

    def expire_access_tokens(self) -> None:
        with self._lock:
            self._access_tokens.clear()

    def user_for_token(self, token: str) -> str | None:
        """The mailbox a bearer token opens, or None when it is not accepted."""
        with self._lock:
            if token in self.static_tokens:
                return self.static_tokens[token] or self.default_user
            issued = self._access_tokens.get(token)
            if issued is not None and issued[0] > self.now():
                return issued[1]
        validator = self.token_validator
        if validator is not None and validator(token):
            return self.default_user
        return None

    # ---- mailboxes ----------------------------------------------------------------------------

    def mailbox(self, user: str | None = None) -> Mailbox:
        user = (user or self.default_user).lower()
        with self._lock:
            box = self._mailboxes.get(user)
            if box is None:
                box = Mailbox(email=user)
                for lid in SYSTEM_LABELS:
                    box.labels[lid] = {"id": lid, "name": lid, "type": "system"}
                box.history_id = 1000 + secrets.randbelow(100_000)
                box.history_floor = box.history_id
                self._mailboxes[user] = box
            return box

    def _resolve(self, user_id: str, token_user: str) -> Mailbox:
        if user_id == "me" or user_id.lower() == token_user.lower():
            return self.mailbox(token_user)
        raise ApiError(403, "Delegation denied for " + token_user, reason="forbidden", status="PERMISSION_DENIED")

    def _new_id(self) -> str:
        self._next_id += 1 + secrets.randbelow(4096)
        return format(self._next_id, "x")

    def _bump(self, box: Mailbox) -> int:
        box.history_id += 1 + secrets.randbelow(self.history_gap)
        return box.history_id

    def _label_id(self, box: Mailbox, name_or_id: str, *, create: bool) -> str:
        if name_or_id in box.labels:
            return name_or_id
        for lid, label in box.labels.items():
            if label["name"].lower() == name_or_id.lower():
                return lid
        if not create:
            raise bad_request(f"Invalid label: {name_or_id}")
        lid = f"Label_{box.next_label}"
        box.next_label += 1
        box.labels[lid] = {"id": lid, "name": name_or_id, "type": "user", "messageListVisibility": "show",
                           "labelListVisibility": "labelShow"}
        return lid

    def _log(self, box: Mailbox, kind: str, msg: _Msg, label_ids: tuple[str, ...] = ()) -> None:
        rid = self._bump(box)
        if kind != "messageDeleted":
            msg.history_id = rid
        box.history.append(_Record(rid, kind, msg.id, msg.thread_id, label_ids, tuple(sorted(msg.label_ids))))
        self._notify(box, msg)

    def _thread_for(self, box: Mailbox, parsed: Message, subject_key: str, hint: str | None = None) -> str | None:
        refs = _MSGID.findall(str(parsed.get("References") or "")) + _MSGID.findall(str(parsed.get("In-Reply-To") or ""))
        candidates = [box.by_message_id[r] for r in reversed(refs) if r in box.by_message_id]
        if hint:
            candidates = [c for c in candidates if box.messages[c].thread_id == hint]
        for mid in candidates:
            parent = box.messages.get(mid)
            if parent is not None and parent.subject_key == subject_key:
                return parent.thread_id
        return None

    def _store(self, box: Mailbox, raw: bytes, labels: set[str], internal_date_ms: int, thread_hint: str | None = None,
               *, sending: bool = False) -> _Msg:
        """Threads as Gmail documents it: a reply joins its parent's thread when its
        References/In-Reply-To name the parent and the subjects match; a message sent
        through the API joins only the `threadId` it names (and only on those terms)."""
        parsed = email.message_from_bytes(raw, policy=email_policy.compat32)
        msgid_match = _MSGID.search(str(parsed.get("Message-ID") or ""))
        message_id = msgid_match.group(1) if msgid_match else ""
        subject_key = normalize_subject(str(parsed.get("Subject") or ""))
        mid = self._new_id()
        thread = (None if sending and not thread_hint else self._thread_for(box, parsed, subject_key, thread_hint)) or mid
        msg = _Msg(mid, thread, labels, internal_date_ms, raw, 0, message_id, subject_key, parsed)
        box.messages[mid] = msg
        if message_id:
            box.by_message_id.setdefault(message_id, mid)
        self._log(box, "messageAdded", msg)
        return msg

    # ---- test control (Python API) ---------------------------------------------------------------

    def deliver(self, user: str | None, raw: bytes, labels: tuple[str, ...] | list[str] = (), sent: bool = False, *,
                internal_date: float | None = None, backdate: bool = False) -> str:
        """Put a message in a mailbox as Gmail would on arrival (or on sending, `sent`).

        `labels` are ids or names (user labels are created). internalDate is now,
        `internal_date` (epoch seconds) when given, or the Date header with `backdate`.
        """
        with self._lock:
            box = self.mailbox(user)
            ids = {"SENT"} if sent else {"INBOX", "UNREAD"}
            ids |= {self._label_id(box, name, create=True) for name in labels}
            when = self.now() if internal_date is None else internal_date
            if backdate and internal_date is None:
                try:
                    header = email.message_from_bytes(raw, policy=email_policy.compat32).get("Date")
                    when = parsedate_to_datetime(str(header)).timestamp() if header else when
                except Exception:
                    pass
            return self._store(box, bytes(raw), ids, int(when * 1000)).id

    def add_label(self, user: str | None, message_id: str, label: str) -> None:
        with self._lock:
            box = self.mailbox(user)
            self._modify(box, message_id, [self._label_id(box, label, create=True)], [], by_hand=False)

    def remove_label(self, user: str | None, message_id: str, label: str) -> None:
        with self._lock:
            box = self.mailbox(user)
            self._modify(box, message_id, [], [self._label_id(box, label, create=True)], by_hand=False)

    def trash(self, user: str | None, message_id: str) -> None:
        with self._lock:
            self._trash(self.mailbox(user), message_id)

    def untrash(self, user: str | None, message_id: str) -> None:
        with self._lock:
            self._untrash(self.mailbox(user), message_id)

    def delete(self, user: str | None, message_id: str) -> None:
        """Permanent deletion: a messageDeleted record."""
        with self._lock:
            self._delete(self.mailbox(user), message_id)

    def expire_history(self, user: str | None = None, before: int | None = None) -> None:
        """Every history id issued so far (or below `before`) answers 404 from now on.

        The mailbox's historyId jumps past the floor, so a fresh getProfile gives a
        usable id again, as after a real expiry.
        """
        with self._lock:
            boxes = [self.mailbox(user)] if user else list(self._mailboxes.values())
            for box in boxes:
                if before is None:
                    box.history_id += 1 + secrets.randbelow(self.history_gap)
                    box.history_floor = box.history_id
                else:
                    box.history_floor = int(before)
                box.history = [r for r in box.history if r.id > box.history_floor]

    def message(self, user: str | None, message_id: str) -> dict:
        with self._lock:
            box = self.mailbox(user)
            return self._render(box, self._get_msg(box, message_id), "minimal", None)

    # ---- mutations ------------------------------------------------------------------------------

    def _get_msg(self, box: Mailbox, message_id: str) -> _Msg:
        msg = box.messages.get(message_id)
        if msg is None:
            raise not_found()
        return msg

    def _modify(self, box: Mailbox, message_id: str, add: list[str], remove: list[str], *, by_hand: bool = True) -> _Msg:
        msg = self._get_msg(box, message_id)
        if len(add) > 100 or len(remove) > 100:
            raise bad_request("Too many label ids: at most 100 may be added or removed.")
        for lid in list(add) + list(remove):
            if lid not in box.labels:
                raise bad_request(f"Invalid label: {lid}")
            if by_hand and lid in UNSETTABLE_LABELS:
                raise bad_request(f"Invalid label: {lid}")
        added = tuple(lid for lid in dict.fromkeys(add) if lid not in msg.label_ids)
        msg.label_ids |= set(added)
        if added:
            self._log(box, "labelAdded", msg, added)
        removed = tuple(lid for lid in dict.fromkeys(remove) if lid in msg.label_ids)
        msg.label_ids -= set(removed)
        if removed:
            self._log(box, "labelRemoved", msg, removed)
        return msg

    def _trash(self, box: Mailbox, message_id: str) -> _Msg:
        msg = self._get_msg(box, message_id)
        if "TRASH" not in msg.label_ids:
            msg.label_ids.add("TRASH")
            self._log(box, "labelAdded", msg, ("TRASH",))
        return msg

    def _untrash(self, box: Mailbox, message_id: str) -> _Msg:
        msg = self._get_msg(box, message_id)
        if "TRASH" in msg.label_ids:
            msg.label_ids.discard("TRASH")
            self._log(box, "labelRemoved", msg, ("TRASH",))
        return msg

    def _delete(self, box: Mailbox, message_id: str) -> None:
        msg = self._get_msg(box, message_id)
        del box.messages[message_id]
        if box.by_message_id.get(msg.message_id) == message_id:
            del box.by_message_id[msg.message_id]
        self._log(box, "messageDeleted", msg)

    # ---- push -------------------------------------------------------------------------------------

    def _notify(self, box: Mailbox, msg: _Msg) -> None:
        watch = box.watch
        if self.push is None or watch is None or watch["expiration"] <= self.now() * 1000:
            return
        wanted = set(watch.get("labelIds") or [])
        if wanted:
            hit = bool(wanted & msg.label_ids)
            if (watch.get("labelFilterBehavior") or "include").lower() == "exclude" and hit:
                return
            if (watch.get("labelFilterBehavior") or "include").lower() != "exclude" and not hit:
                return
        hid: int | str = str(box.history_id) if self.push_history_id_as_string else box.history_id
        data = json.dumps({"emailAddress": box.email, "historyId": hid}).encode()
        now = rfc3339(self.now())
        mid = str(secrets.randbelow(10**16))
        envelope = {
            "message": {"data": base64.b64encode(data).decode(), "messageId": mid, "message_id": mid,
                        "publishTime": now, "publish_time": now},
            "subscription": "projects/emulator/subscriptions/" + watch["topicName"].rsplit("/", 1)[-1] + "-push",
        }
        self.pushes.append(envelope)
        target = self.push
        if callable(target):
            threading.Thread(target=_safe_call, args=(target, envelope), daemon=True).start()
        else:
            threading.Thread(target=_post, args=(str(target), envelope), daemon=True).start()

    # ---- quota ------------------------------------------------------------------------------------

    def _charge(self, box: Mailbox, method: str) -> None:
        """Spend `method`'s units in the user's rolling minute, or refuse with userRateLimitExceeded."""
        cost = self.costs.get(method, 5)
        with self._lock:
            now = self.now()
            while box.spent and box.spent[0][0] <= now - QUOTA_WINDOW_S:
                box.spent.popleft()
            used = sum(u for _, u in box.spent)
            if self.enforce_quota and used + cost > self.quota_per_minute:
                self.rate_limited += 1
                need, retry_at = used + cost - self.quota_per_minute, now
                for t, u in box.spent:
                    need -= u
                    retry_at = t + QUOTA_WINDOW_S
                    if need <= 0:
                        break
                raise rate_limited(self.rate_limit_status, retry_at)
            box.spent.append((now, cost))
            self.units[method] += cost

    # ---- API methods ------------------------------------------------------------------------------

    def get_profile(self, box: Mailbox, q: dict) -> dict:
        return {"emailAddress": box.email, "messagesTotal": len(box.messages),
                "threadsTotal": len({m.thread_id for m in box.messages.values()}), "historyId": str(box.history_id)}

    def labels_list(self, box: Mailbox, q: dict) -> dict:
        return {"labels": [dict(label) for label in box.labels.values()]}

    def labels_get(self, box: Mailbox, q: dict, label_id: str) -> dict:
        if label_id not in box.labels:
            raise not_found()
        return dict(box.labels[label_id])

    def labels_create(self, box: Mailbox, q: dict, body: dict) -> dict:
        name = str((body or {}).get("name") or "").strip()
        if not name:
            raise bad_request("Invalid label name")
        if any(label["name"].lower() == name.lower() for label in box.labels.values()):
            raise ApiError(409, "Label name exists or conflicts", reason="duplicate", status="ALREADY_EXISTS")
        return dict(box.labels[self._label_id(box, name, create=True)])

    def history_list(self, box: Mailbox, q: dict) -> dict:
        start_raw = _one(q, "startHistoryId")
        try:
            start = int(start_raw) if start_raw is not None else None
        except ValueError:
            start = None
        if start is None or start < 0:
            raise bad_request("Missing/invalid parameter: startHistoryId")
        if start < box.history_floor:
            raise not_found()
        types = set(q.get("historyTypes") or HISTORY_TYPES)
        if not types <= set(HISTORY_TYPES):
            raise bad_request("Invalid value for historyTypes")
        label = _one(q, "labelId")
        size = _page_size(q)
        token = _one(q, "pageToken")
        state = _untoken(token) if token else {"after": start, "empty": self.history_empty_pages}
        if state.get("empty", 0) > 0:
            state["empty"] -= 1
            return {"history": [], "historyId": str(box.history_id), "nextPageToken": _token(state)}
        after = int(state.get("after", start))
        out: list[dict] = []
        more = False
        for rec in box.history:
            if rec.id <= after:
                continue
            if rec.kind not in types:
                continue
            if label and label not in rec.label_ids and label not in rec.message_labels:
                continue
            if len(out) == size:
                more = True
                break
            out.append(_render_record(rec))
            after = rec.id
        body: dict[str, Any] = {"historyId": str(box.history_id)}
        if out:
            body["history"] = out
        if more:
            body["nextPageToken"] = _token({"after": after})
        return body

    def messages_list(self, box: Mailbox, q: dict) -> dict:
        size = _page_size(q)
        label_ids = q.get("labelIds") or []
        for lid in label_ids:
            if lid not in box.labels:
                raise bad_request(f"Invalid label: {lid}")
        include_spam_trash = (_one(q, "includeSpamTrash") or "false").lower() == "true"
        matcher = _query_matcher(_one(q, "q") or "", box)
        token = _one(q, "pageToken")
        pos = _untoken(token) if token else None
        hits = []
        for m in box.messages.values():
            if not set(label_ids) <= m.label_ids:
                continue
            if not include_spam_trash and (m.label_ids & {"SPAM", "TRASH"}) - set(label_ids):
                continue
            if not matcher(m):
                continue
            hits.append(m)
        hits.sort(key=lambda m: (m.internal_date_ms, int(m.id, 16)), reverse=True)
        total = len(hits)
        if pos is not None:
            key = (int(pos["d"]), int(pos["i"], 16))
            hits = [m for m in hits if (m.internal_date_ms, int(m.id, 16)) < key]
        page, rest = hits[:size], hits[size:]
        body: dict[str, Any] = {"resultSizeEstimate": total}
        if page:
            body["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
        if rest:
            body["nextPageToken"] = _token({"d": page[-1].internal_date_ms, "i": page[-1].id})
        return body

    def messages_get(self, box: Mailbox, q: dict, message_id: str) -> dict:
        fmt = (_one(q, "format") or "full").lower()
        if fmt not in FORMATS:
            raise bad_request(f"Invalid value for format: {fmt}")
        headers = q.get("metadataHeaders") or None
        return self._render(box, self._get_msg(box, message_id), fmt, headers)

    def messages_send(self, box: Mailbox, q: dict, body: dict) -> dict:
        raw_b64 = (body or {}).get("raw")
        if not raw_b64:
            raise bad_request("Invalid request: 'raw' RFC822 payload message string or uploading message via /upload/* URL required")
        try:
            raw = b64url_decode(raw_b64)
        except Exception:
            raise bad_request("Invalid value for ByteString: raw") from None
        if len(raw) > self.max_message_bytes:
            raise ApiError(413, "Request Entity Too Large", reason="uploadTooLarge", status="INVALID_ARGUMENT")
        parsed = email.message_from_bytes(raw, policy=email_policy.compat32)
        recipients = _recipients(parsed)
        if not recipients:
            raise bad_request("Invalid To header")
        thread_hint = body.get("threadId")
        if thread_hint and not any(m.thread_id == thread_hint for m in box.messages.values()):
            raise not_found()
        self._check_send_limit(box)
        fault = self._take_send_fault()
        if fault is not None and fault[1] == "before":
            raise fault_error(str(fault[0]))
        extra = b""
        if not parsed.get("Message-ID"):
            extra += f"Message-ID: <{secrets.token_hex(12)}@mail.gmail.com>\r\n".encode()
        if not parsed.get("Date"):
            extra += ("Date: " + email.utils.format_datetime(datetime.fromtimestamp(self.now(), tz=timezone.utc)) + "\r\n").encode()
        if not parsed.get("From"):
            extra += f"From: {box.email}\r\n".encode()
        now_ms = int(self.now() * 1000)
        msg = self._store(box, extra + raw, {"SENT"}, now_ms, thread_hint=thread_hint, sending=True)
        box.sends.append(self.now())
        delivered = _without_bcc(extra + raw)
        for addr in dict.fromkeys(recipients):
            other = self._mailboxes.get(addr)
            if other is not None and other is not box:
                self._store(other, delivered, {"INBOX", "UNREAD"}, now_ms)
        if fault is not None:
            raise fault_error(str(fault[0]))
        return {"id": msg.id, "threadId": msg.thread_id, "labelIds": sorted(msg.label_ids)}

    def _check_send_limit(self, box: Mailbox) -> None:
        """The rolling-24-hour sending limit; the refusal says when a send fits again."""
        now = self.now()
        while box.sends and box.sends[0] <= now - DAY_S:
            box.sends.popleft()
        if len(box.sends) < self.send_limit_per_day:
            return
        self.rate_limited += 1
        retry_at = box.sends[0] + DAY_S
        err = rate_limited(429, retry_at)
        err.body_item_message = "Daily user sending limit exceeded."
        err.headers["Retry-After"] = str(max(1, int(retry_at - now + 0.999)))
        raise err

    def messages_modify(self, box: Mailbox, q: dict, message_id: str, body: dict) -> dict:
        add = list((body or {}).get("addLabelIds") or [])
        remove = list((body or {}).get("removeLabelIds") or [])
        msg = self._modify(box, message_id, add, remove)
        return self._render(box, msg, "minimal", None)

    def users_watch(self, box: Mailbox, q: dict, body: dict) -> dict:
        topic = str((body or {}).get("topicName") or "")
        if not re.fullmatch(r"projects/[^/]+/topics/[^/]+", topic):
            raise bad_request("Invalid topicName does not match projects/SOME-ANDROID-PROJECT/topics/*")
        now_ms = int(self.now() * 1000)
        if box.watch and box.watch["expiration"] > now_ms and box.watch["topicName"] != topic:
            raise bad_request("Only one user push notification client allowed per developer (call /stop then try again)")
        expiration = now_ms + 7 * 86400 * 1000
        box.watch = {"topicName": topic, "labelIds": list(body.get("labelIds") or []),
                     "labelFilterBehavior": body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include",
                     "expiration": expiration}
        return {"historyId": str(box.history_id), "expiration": str(expiration)}

    def users_stop(self, box: Mailbox, q: dict) -> dict:
        box.watch = None
        return {}

    def _render(self, box: Mailbox, msg: _Msg, fmt: str, wanted_headers: list[str] | None) -> dict:
        out: dict[str, Any] = {"id": msg.id, "threadId": msg.thread_id, "labelIds": sorted(msg.label_ids)}
        if fmt != "raw":
            out["snippet"] = _snippet(msg.parse())
        out.update({"sizeEstimate": len(msg.raw), "historyId": str(msg.history_id),
                    "internalDate": str(msg.internal_date_ms)})
        if fmt == "raw":
            out["raw"] = b64url(msg.raw)
        elif fmt == "metadata":
            parsed = msg.parse()
            names = {h.lower() for h in wanted_headers} if wanted_headers else None
            headers = [{"name": k, "value": _header_text(v)} for k, v in parsed.items()
                       if names is None or k.lower() in names]
            out["payload"] = {"mimeType": parsed.get_content_type(), "headers": headers}
        elif fmt == "full":
            out["payload"] = _payload(msg.parse(), "", msg.id)
        return out


_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+$")


def _recipients(parsed: Message) -> list[str]:
    """Every To/Cc/Bcc address, lower-cased; a malformed one refuses the send with
    Gmail's "Invalid <Header> header"."""
    out: list[str] = []
    for header in ("To", "Cc", "Bcc"):
        values = [str(v) for v in parsed.get_all(header, [])]
        if not values:
            continue
        pairs = email.utils.getaddresses(values)
        if not pairs or any(not _ADDRESS.match(addr) for _, addr in pairs):
            raise bad_request(f"Invalid {header} header")
        out += [addr.lower() for _, addr in pairs]
    return out


def _without_bcc(raw: bytes) -> bytes:
    """What recipients get: the message without its Bcc header (and its folded lines)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, rest = raw.partition(b"\n\n")
    nl = b"\r\n" if sep == b"\r\n\r\n" else b"\n"
    kept: list[bytes] = []
    skipping = False
    for line in head.split(nl):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return nl.join(kept) + sep + rest


def _header_text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _safe_call(fn: Callable[[dict], Any], envelope: dict) -> None:
    try:
        fn(envelope)
    except Exception:  # a push receiver's failure is its own: Pub/Sub just retries later
        pass


def _post(url: str, envelope: dict) -> None:
    try:
        import httpx

        httpx.post(url, json=envelope, timeout=10)
    except Exception:
        pass


def _snippet(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.get_filename():
            try:
                data = part.get_payload(decode=True) or b""
                text = data.decode(part.get_content_charset() or "utf-8", errors="replace")
            except Exception:
                continue
            return " ".join(text.split())[:200]
    return ""


def _payload(part: Message, part_id: str, message_id: str) -> dict:
    """The MIME tree as Gmail's `payload`: leaf bodies base64url, attachments by id only."""
    node: dict[str, Any] = {"partId": part_id, "mimeType": part.get_content_type(),
                            "filename": str(part.get_filename() or ""),
                            "headers": [{"name": k, "value": _header_text(v)} for k, v in part.items()]}
    if part.is_multipart():
        node["body"] = {"size": 0}
        children = part.get_payload() if isinstance(part.get_payload(), list) else []
        node["parts"] = [_payload(child, f"{part_id}.{i}" if part_id else str(i), message_id)
                         for i, child in enumerate(children)]
        return node
    try:
        data = part.get_payload(decode=True) or b""
    except Exception:
        data = b""
    if node["filename"]:
        node["body"] = {"attachmentId": "ANGj" + b64url(f"{message_id}:{part_id}".encode()).rstrip("="), "size": len(data)}
    else:
        node["body"] = {"size": len(data), "data": b64url(data)}
    return node


def _render_record(rec: _Record) -> dict:
    ref = {"id": rec.message_id, "threadId": rec.thread_id}
    out: dict[str, Any] = {"id": str(rec.id), "messages": [dict(ref)]}
    if rec.kind == "messageAdded":
        out["messagesAdded"] = [{"message": {**ref, "labelIds": list(rec.message_labels)}}]
    elif rec.kind == "messageDeleted":
        out["messagesDeleted"] = [{"message": dict(ref)}]
    elif rec.kind == "labelAdded":
        out["labelsAdded"] = [{"message": {**ref, "labelIds": list(rec.message_labels)}, "labelIds": list(rec.label_ids)}]
    else:
        out["labelsRemoved"] = [{"message": {**ref, "labelIds": list(rec.message_labels)}, "labelIds": list(rec.label_ids)}]
    return out


def _one(q: dict, name: str) -> str | None:
    values = q.get(name)
    return values[0] if values else None


def _page_size(q: dict) -> int:
    raw = _one(q, "maxResults")
    if raw is None:
        return 100
    try:
        size = int(raw)
    except ValueError:
        raise bad_request(f"Invalid value for maxResults: {raw}") from None
    if size < 1:
        raise bad_request(f"Invalid value for maxResults: {raw}")
    return min(size, 500)


def _epoch(value: str) -> float:
    if re.fullmatch(r"\d+", value):
        return float(value)
    match = re.fullmatch(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})", value)
    if not match:
        raise bad_request(f"Invalid query: {value}")
    # Gmail reads a date in the user's time zone; the emulator's users live in UTC
    return datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=timezone.utc).timestamp()


def _query_matcher(query: str, box: Mailbox) -> Callable[[_Msg], bool]:
    """Operators understood: after:, before: (epoch seconds or yyyy/mm/dd), rfc822msgid:,
    label:, in: (inbox, sent, trash, spam, anywhere), is: (unread, starred). Others: 400."""
    tests: list[Callable[[_Msg], bool]] = []
    for term in query.split():
        key, sep, value = term.partition(":")
        key = key.lower()
        if not sep or not value:
            raise bad_request(f"Unsupported query term: {term}")
        if key in ("after", "before"):
            ms = _epoch(value) * 1000
            tests.append((lambda m, ms=ms: m.internal_date_ms > ms) if key == "after" else (lambda m, ms=ms: m.internal_date_ms < ms))
        elif key == "rfc822msgid":
            wanted = _norm_msgid(value)
            tests.append(lambda m, w=wanted: _norm_msgid(m.message_id) == w)
        elif key in ("label", "in", "is"):
            if key == "in" and value.lower() == "anywhere":
                continue
            name = value.replace("-", " ")
            lid = next((i for i, label in box.labels.items() if label["name"].lower() in (name.lower(), value.lower())), None)
            if lid is None:
                lid = value.upper()
            tests.append(lambda m, lid=lid: lid in m.label_ids)
        else:
            raise bad_request(f"Unsupported query term: {term}")
    return lambda m: all(t(m) for t in tests)


# ---- HTTP --------------------------------------------------------------------------------------------

_ROUTES: list[tuple[str, re.Pattern, str]] = [
    ("GET", re.compile(r"^/gmail/v1/users/([^/]+)/profile$"), "users.getProfile"),
    ("POST", re.compile(r"^/gmail/v1/users/([^/]+)/watch$"), "users.watch"),
    ("POST", re.compile(r"^/gmail/v1/users/([^/]+)/stop$"), "users.stop"),
    ("GET", re.compile(r"^/gmail/v1/users/([^/]+)/history$"), "users.history.list"),
    ("GET", re.compile(r"^/gmail/v1/users/([^/]+)/labels$"), "users.labels.list"),
    ("POST", re.compile(r"^/gmail/v1/users/([^/]+)/labels$"), "users.labels.create"),
    ("GET", re.compile(r"^/gmail/v1/users/([^/]+)/labels/([^/]+)$"), "users.labels.get"),
    ("GET", re.compile(r"^/gmail/v1/users/([^/]+)/messages$"), "users.messages.list"),
    ("POST", re.compile(r"^/gmail/v1/users/([^/]+)/messages/send$"), "users.messages.send"),
    ("GET", re.compile(r"^/gmail/v1/users/([^/]+)/messages/([^/]+)$"), "users.messages.get"),
    ("POST", re.compile(r"^/gmail/v1/users/([^/]+)/messages/([^/]+)/modify$"), "users.messages.modify"),
    ("POST", re.compile(r"^/gmail/v1/users/([^/]+)/messages/([^/]+)/trash$"), "users.messages.trash"),
    ("POST", re.compile(r"^/gmail/v1/users/([^/]+)/messages/([^/]+)/untrash$"), "users.messages.untrash"),
    ("DELETE", re.compile(r"^/gmail/v1/users/([^/]+)/messages/([^/]+)$"), "users.messages.delete"),
]


def dispatch(state: GmailState, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
             body: bytes) -> tuple[int, dict, dict[str, str]]:
    """One API call (direct or inside a batch) -> (status, JSON body, headers)."""
    path = unquote(path)
    for verb, pattern, name in _ROUTES:
        match = pattern.match(path)
        if match and verb == method.upper():
            break
    else:
        return 404, {"error": {"code": 404, "message": f"Not Found: {method} {path}", "status": "NOT_FOUND"}}, {}
    state.calls[name] += 1
    try:
        auth = headers.get("authorization", "")
        user = state.user_for_token(auth[7:].strip()) if auth.lower().startswith("bearer ") else None
        if user is None:
            raise unauthenticated()
        fault = state._take_fault(name)
        if fault is not None:
            raise fault
        payload: Any = {}
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                raise bad_request("Invalid JSON payload received.") from None
        with state._lock:
            box = state._resolve(unquote(match.group(1)), user)
            state._charge(box, name)
            args = match.groups()[1:]
            result = _call(state, name, box, query, args, payload)
        fields = _one(query, "fields")
        if fields:
            result = apply_fields(result, parse_fields(fields))
        return 200, result, {}
    except ApiError as err:
        return err.code, err.body(), err.headers


def _call(state: GmailState, name: str, box: Mailbox, q: dict, args: tuple, payload: Any) -> dict:
    if name == "users.getProfile":
        return state.get_profile(box, q)
    if name == "users.watch":
        return state.users_watch(box, q, payload)
    if name == "users.stop":
        return state.users_stop(box, q)
    if name == "users.history.list":
        return state.history_list(box, q)
    if name == "users.labels.list":
        return state.labels_list(box, q)
    if name == "users.labels.create":
        return state.labels_create(box, q, payload)
    if name == "users.labels.get":
        return state.labels_get(box, q, args[0])
    if name == "users.messages.list":
        return state.messages_list(box, q)
    if name == "users.messages.send":
        return state.messages_send(box, q, payload)
    if name == "users.messages.get":
        return state.messages_get(box, q, args[0])
    if name == "users.messages.modify":
        return state.messages_modify(box, q, args[0], payload)
    if name == "users.messages.trash":
        return state._render(box, state._trash(box, args[0]), "minimal", None)
    if name == "users.messages.untrash":
        return state._render(box, state._untrash(box, args[0]), "minimal", None)
    if name == "users.messages.delete":
        state._delete(box, args[0])
        return {}
    raise not_found()



MAX_BATCH = 100


def handle_batch(state: GmailState, content_type: str, body: bytes, outer_auth: str) -> tuple[int, bytes, str]:
    """Gmail's `/batch/gmail/v1`: multipart/mixed in, multipart/mixed out, each inner call
    authorised and charged on its own."""
    try:
        parts = batch_parts(content_type, body, MAX_BATCH)
    except BatchRefused as exc:
        return 400, json.dumps(bad_request(str(exc)).body()).encode(), "application/json"
    state.batches += 1
    state.batch_sizes.append(len(parts))

    def keep(payload: bytes) -> None:
        if state.record_responses:
            state.responses.append(payload)

    out, kind = serve_parts(parts, outer_auth, lambda m, p, q, h, b: dispatch(state, m, p, q, h, b),
                            invalid=lambda: bad_request("Invalid batch part").body(), on_payload=keep)
    return 200, out, kind


def create_app(state: GmailState | None = None) -> FastAPI:
    """The Gmail API, its batch endpoint, a minimal OAuth token endpoint and /_emulator."""
    state = state or GmailState()
    app = FastAPI(title="Gmail API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gmail = state
    app.add_middleware(MethodOverride)

    def respond(status: int, body: dict, headers: dict[str, str]) -> Response:
        resp = EscapedJSONResponse(body, status_code=status, headers=headers)
        if state.record_responses:
            state.responses.append(bytes(resp.body))
        return resp

    @app.api_route("/gmail/v1/{rest:path}", methods=["GET", "POST", "DELETE", "PUT", "PATCH"])
    async def api(rest: str, request: Request) -> Response:
        query: dict[str, list[str]] = {}
        for k, v in request.query_params.multi_items():
            query.setdefault(k, []).append(v)
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        return respond(*dispatch(state, request.method, request.url.path, query, headers, body))

    @app.post("/batch/gmail/v1")
    async def batch(request: Request) -> Response:
        body = await request.body()
        status, content, ctype = handle_batch(state, request.headers.get("content-type", ""), body,
                                              request.headers.get("authorization", ""))
        return Response(content, status_code=status, media_type=None, headers={"Content-Type": ctype})

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            return EscapedJSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        return EscapedJSONResponse(state.issue_access_token(str(form["refresh_token"])))

    # ---- admin ----------------------------------------------------------------------------------

    def admin(fn: Callable[[], Any]) -> Response:
        try:
            result = fn()
        except (ValueError, KeyError, TypeError) as err:
            return EscapedJSONResponse({"error": str(err)}, status_code=400)
        except ApiError as err:
            return EscapedJSONResponse(err.body(), status_code=err.code)
        return EscapedJSONResponse(result if result is not None else {"ok": True})

    @app.post("/_emulator/deliver")
    async def deliver(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: {"id": state.deliver(b.get("user"), b64url_decode(b["raw"]), tuple(b.get("labels") or ()),
                                                  bool(b.get("sent")), internal_date=b.get("internal_date"),
                                                  backdate=bool(b.get("backdate")))})

    @app.post("/_emulator/label")
    async def label(request: Request) -> Response:
        b = await request.json()
        fn = state.add_label if b.get("action", "add") == "add" else state.remove_label
        return admin(lambda: fn(b.get("user"), b["id"], b["label"]))

    @app.post("/_emulator/trash")
    async def trash(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.trash(b.get("user"), b["id"]))

    @app.post("/_emulator/delete")
    async def delete(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.delete(b.get("user"), b["id"]))

    @app.post("/_emulator/expire_history")
    async def expire(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.expire_history(b.get("user"), b.get("before")))

    @app.post("/_emulator/faults")
    async def faults(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.inject_fault(b["kind"], b.get("method", "any"), int(b.get("count", 1)),
                                                retry_after=b.get("retry_after")))

    @app.post("/_emulator/send_faults")
    async def send_faults(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.fail_sends(int(b.get("count", 1)), status=int(b.get("status", 500)),
                                              when=str(b.get("when", "after"))))

    @app.delete("/_emulator/faults")
    async def clear() -> Response:
        return admin(state.clear_faults)

    add_config_clock_stats(app, state, admin)

    @app.post("/_emulator/reset_stats")
    async def reset() -> Response:
        return admin(state.reset_stats)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Run the Gmail API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8093)
    parser.add_argument("--user", default="me@acme.example")
    parser.add_argument("--no-quota", action="store_true")
    args = parser.parse_args(argv)
    state = GmailState(default_user=args.user, enforce_quota=not args.no_quota)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
