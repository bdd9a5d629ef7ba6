"""A Gmail mailbox's mail as a `MailboxMail`, through google-api-python-client.

Why the shapes below:

- The cursor is a Gmail historyId. A full listing reads getProfile's historyId
  *before* listing, so whatever changes while the listing runs is replayed by the
  next history round (a duplicate at worst, never a loss).
- Messages are fetched in multipart batches (`BatchHttpRequest` with our own
  `batch_uri`: the client's `new_batch_http_request()` ignores the endpoint
  override). A batch is one HTTP call but each inner get still costs its own 5
  units, so batching saves round trips, not quota.
- Metadata-only mode asks for `format=metadata` with `METADATA_HEADERS` and a
  `fields` mask without `snippet`: Gmail puts the first words of the body into
  `snippet` even in metadata format, and a body must never reach us in that mode.
- Quota is paced here rather than discovered by 429s: Gmail counts 15,000 units per
  user per rolling minute, and a full listing of a large mailbox spends that in
  seconds. `UnitBudget` keeps a rolling-minute log of what this connector spent and
  waits (injectable `wait`) before a call that would pass the budget. A 429/403
  that still happens (another client on the same user) leaves as RateLimited.
- Retries belong to Temporal and `activities.pacing`: requests run with
  `num_retries=0` and failures leave as `models.errors` classes, translated as in
  `connectors.google_people`.

Sending (`MailboxSend`, two-way send):

- `send` posts `{"raw": base64url, "threadId"}` as JSON (no media upload: that keeps
  https with only host and port swapped, PROVIDERS.md 0). Gmail keeps the raw
  message's Message-ID, which Concord chose before the first attempt; `find_sent`
  looks it up with `rfc822msgid:<id> in:sent`, and that lookup is what makes a retry
  after an ambiguous failure exactly-once. A reply names the parent's thread: one
  `messages.list(q="rfc822msgid:<parent>")` (5 units) gives its threadId; Gmail joins
  it only when References/In-Reply-To and the subject also match, which the caller's
  MIME already does. A parent not in this mailbox (or a thread deleted between the
  look-up and the send: 404) sends unthreaded rather than failing.
- 100 units per send are paced through the same UnitBudget as reads.
- Errors: 400 naming a To/Cc/Bcc header -> SendRejected("invalid_recipient"); 413 or
  a 400 about size -> SendRejected("too_large") (a raw over 35 MB is refused before
  any call); other 400 -> SendRejected("rejected"); 429/403 rate -> RateLimited
  (retry_after from Retry-After or "Retry after <time>", not capped for sends);
  5xx, timeouts, dropped connections -> Transient (may have sent: look in Sent).
- The daily sending limit is SendRejected("quota_exceeded"), not RateLimited: the
  refusal means "not before tomorrow", and a message the user wrote now must not go
  out a day later on its own without anyone seeing that it waited (models.errors:
  quota_exceeded is retried by a person). It is recognised by Gmail's wording
  ("sending limit" in the error) or, as the wording is UNCONFIRMED, by a retry time
  more than `DAILY_LIMIT_AFTER_S` away. `detail["retry_after"]` keeps the time.

Not thread-safe: one instance per activity invocation (httplib2.Http is not).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import deque
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

from google.oauth2.credentials import Credentials
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from connectors.google_api import GoogleConnector, api_root, build_service, can_refresh, transport
from connectors.google_people import _error_body, _retry_after, translate_http_error
from connectors.protocols import DeltaPage
from connectors.translation import untranslatable
from models.errors import (ConnectorError, CursorExpired, Fatal, NotFound, RateLimited, SendRejected, Transient,
                           ValidationRejected)
from models.mail import MailFetchOptions, MailMessage, normalize_message_id
from models.send import SentRef
from models.record import SideRecord
from sync.mail.content import METADATA_HEADERS, from_headers, parse_raw

#: quota units per method (PROVIDERS.md A)
COSTS: dict[str, int] = {
    "users.getProfile": 1,
    "users.labels.list": 1,
    "users.history.list": 2,
    "users.messages.list": 5,
    "users.messages.get": 5,
    "users.watch": 100,  # UNCONFIRMED (PROVIDERS.md A)
    "users.stop": 1,  # UNCONFIRMED
    "users.messages.send": 100,
}
#: messages.send's documented maximum message size
MAX_SEND_BYTES = 35 * 1024 * 1024
#: a rate limit whose retry time is further away than this is the daily sending limit
DAILY_LIMIT_AFTER_S = 3600.0
USER_UNITS_PER_MINUTE = 15_000
HISTORY_TYPES = ["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
SYSTEM_LABELS = frozenset({
    "INBOX", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "SENT", "DRAFT", "CHAT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES", "CATEGORY_FORUMS",
})
#: what a get returns: never `snippet` (body text), `payload` only as headers in metadata mode
META_FIELDS = "id,threadId,labelIds,historyId,internalDate,sizeEstimate,payload/mimeType,payload/headers"
RAW_FIELDS = "id,threadId,labelIds,historyId,internalDate,sizeEstimate,raw"
#: Gmail's recommended ceiling for one batch (100 is the hard limit)
MAX_BATCH = 100
WINDOW_S = 60.0
_SHARED: dict[str, "UnitBudget"] = {}
_SHARED_LOCK = threading.Lock()


class UnitBudget:
    """The units spent in the last rolling minute, and the wait before spending more.

    A log of (time, units), not a token bucket: a bucket that starts full lets a
    burst plus a minute of refill through one 60-second window, which is exactly
    what Gmail's rolling minute refuses. Share one instance between connectors of the
    same user to pace them together.
    """

    def __init__(self, units_per_minute: int = USER_UNITS_PER_MINUTE, *, headroom: float = 0.9,
                 clock: Callable[[], float] = time.monotonic, wait: Callable[[float], Any] = time.sleep) -> None:
        if not 0 < headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        self.limit = int(units_per_minute * headroom)
        self.clock = clock
        self.wait = wait
        self.waited_s = 0.0
        self._log: deque[tuple[float, int]] = deque()
        self._spent = 0
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, key: str, **kwargs: Any) -> "UnitBudget":
        """The process's budget for one mailbox: the worker builds a new connector for
        every activity, so a budget kept per instance would forget the last page's
        spending and let a listing of many pages through the rolling minute unpaced.
        The first caller's settings (clock, wait) stay with the key."""
        with _SHARED_LOCK:
            budget = _SHARED.get(key)
            if budget is None:
                budget = _SHARED[key] = cls(**kwargs)
            return budget

    def _prune(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - WINDOW_S:
            self._spent -= self._log.popleft()[1]

    def delay_for(self, units: int) -> float:
        """Seconds until `units` fit in the rolling minute (0: now)."""
        now = self.clock()
        self._prune(now)
        over = self._spent + units - self.limit
        if over <= 0 or not self._log:
            return 0.0
        for t, spent in self._log:
            over -= spent
            if over <= 0:
                return max(0.0, t + WINDOW_S - now)
        return max(0.0, self._log[-1][0] + WINDOW_S - now)

    def spend(self, units: int) -> None:
        """Wait until `units` fit, then record them. A request bigger than the whole
        budget waits for an empty window and goes alone. The wait happens outside the
        lock, so connectors sharing the budget on other threads are not held up by
        the lock, only by the budget."""
        for _ in range(1000):
            with self._lock:
                delay = self.delay_for(units)
                if delay <= 0:
                    self._log.append((self.clock(), units))
                    self._spent += units
                    return
                self.waited_s += delay
            self.wait(delay)
        with self._lock:
            self._log.append((self.clock(), units))
            self._spent += units


#: a pacing wait longer than this outlives a server's keep-alive: reconnect after it
IDLE_CONNECTION_S = 5.0


def _retry_after_from_message(message: str) -> float | None:
    """Gmail's userRateLimitExceeded says "Retry after <RFC 3339>" in its message."""
    match = re.search(r"Retry after (\d{4}-\d\d-\d\dT[\d:.]+Z)", message or "")
    if not match:
        return None
    try:
        when = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return min(900.0, max(0.0, when - time.time()))


def _retry_at_from_message(message: str) -> float | None:
    match = re.search(r"Retry after (\d{4}-\d\d-\d\dT[\d:.]+Z)", message or "")
    if not match:
        return None
    try:
        return max(0.0, datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp() - time.time())
    except ValueError:
        return None


def translate_send(err: HttpError) -> ConnectorError:
    """A messages.send refusal -> SendRejected with its reason, RateLimited, or what
    `translate` says (5xx: Transient, the message may have gone out)."""
    status = int(getattr(err.resp, "status", 0) or 0)
    body = _error_body(err)
    texts = [str(body.get("message") or "")] + [str(e.get("message") or "") for e in body.get("errors") or []
                                                 if isinstance(e, dict)]
    text = " ".join(texts)
    lowered = text.lower()
    detail = {"http_status": status, "message": text[:300]}
    if status == 413 or (status == 400 and ("too large" in lowered or "size" in lowered)):
        return SendRejected(text or "message too large", reason="too_large", detail=detail)
    if status == 400 and re.search(r"invalid (to|cc|bcc|from)? ?header|recipient", lowered):
        return SendRejected(text, reason="invalid_recipient", detail=detail)
    if status == 400:
        return SendRejected(text or "refused", reason="rejected", detail=detail)
    out = translate(err)
    if isinstance(out, RateLimited):
        wait = _retry_after(err.resp)
        if wait is None:
            wait = _retry_at_from_message(text)
        out.retry_after = wait
        if "sending limit" in lowered or (wait is not None and wait > DAILY_LIMIT_AFTER_S):
            return SendRejected(text or "daily sending limit", reason="quota_exceeded",
                                detail={**detail, "retry_after": wait})
    return out


def translate(err: HttpError, *, history: bool = False) -> ConnectorError:
    """One HttpError -> one recovery class; a history.list 404 (or a refused
    startHistoryId) means the cursor is gone, so the caller lists again."""
    out = translate_http_error(err)
    if history and isinstance(out, (NotFound, ValidationRejected)):
        return CursorExpired(out.message, detail=out.detail)
    if isinstance(out, RateLimited) and out.retry_after is None:
        out.retry_after = _retry_after_from_message(out.message)
    return out


class GmailMail(GoogleConnector):
    """One Gmail mailbox: its mail read, and mail sent through it. See the module docstring."""

    provider = "google"

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        user_id: str = "me",
        options: MailFetchOptions | None = None,
        page_size: int = 200,
        batch_size: int = 50,
        units_per_minute: int = USER_UNITS_PER_MINUTE,
        headroom: float = 0.9,
        pacing: bool = True,
        wait: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        budget: UnitBudget | None = None,
        account: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not 1 <= page_size <= 500:
            raise ValueError("page_size must be between 1 and 500")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self.base_url = api_root(base_url)
        self.user_id = user_id
        self.options = options or MailFetchOptions()
        self.page_size = page_size
        self.batch_size = batch_size
        self.pacing = pacing
        settings = dict(units_per_minute=units_per_minute, headroom=headroom, clock=clock, wait=wait)
        if budget is None:
            budget = UnitBudget.shared(f"{self.base_url}|{account}", **settings) if account else UnitBudget(**settings)
        self.budget = budget
        self.units_spent = 0
        self._can_refresh = can_refresh(credentials)
        self._service, self._authed, self._http = build_service("gmail", "v1", self.base_url, credentials, timeout=timeout)
        self._labels: dict[str, str] | None = None

    @property
    def _users(self) -> Any:
        return self._service.users()

    # ---- plumbing ----------------------------------------------------------------------

    def _pay(self, units: int) -> None:
        if self.pacing:
            before = self.budget.waited_s
            self.budget.spend(units)
            if self.budget.waited_s - before > IDLE_CONNECTION_S:
                self._drop_connections()
        self.units_spent += units

    def _drop_connections(self) -> None:
        """After a quota wait of a minute the pooled keep-alive connection is long closed by
        the server; writing to it fails (BrokenPipe) and a send would be an attempt lost.
        Open a fresh one instead."""
        for conn in list(getattr(self._http, "connections", {}).values()):
            try:
                conn.close()
            except OSError:
                pass
        getattr(self._http, "connections", {}).clear()

    def _transport(self, fn: Callable[[], Any]) -> Any:
        return transport(fn, refusal_is_auth_expired=not self._can_refresh)

    def _execute(self, method: str, request: Any, *, history: bool = False) -> dict:
        self._pay(COSTS[method])
        try:
            return self._transport(lambda: request.execute(num_retries=0)) or {}
        except HttpError as err:
            raise translate(err, history=history) from err

    def _batch_get(self, ids: Sequence[str]) -> dict[str, dict | None]:
        """Messages by id, in batches; None for one that is gone (404)."""
        fmt, fields = ("raw", RAW_FIELDS) if self.options.bodies else ("metadata", META_FIELDS)
        out: dict[str, dict | None] = {}
        for start in range(0, len(ids), self.batch_size):
            chunk = list(dict.fromkeys(ids[start : start + self.batch_size]))
            errors: dict[str, ConnectorError] = {}

            def done(request_id: str, response: Any, exception: Exception | None) -> None:
                if exception is None:
                    out[request_id] = response if isinstance(response, dict) else None
                elif isinstance(exception, HttpError):
                    err = translate(exception)
                    if isinstance(err, NotFound):
                        out[request_id] = None
                    else:
                        errors[request_id] = err
                else:
                    errors[request_id] = Transient(f"batch part failed: {type(exception).__name__}")

            batch = BatchHttpRequest(callback=done, batch_uri=self.base_url + "batch/gmail/v1")
            for mid in chunk:
                params: dict[str, Any] = {"userId": self.user_id, "id": mid, "format": fmt, "fields": fields}
                if fmt == "metadata":
                    params["metadataHeaders"] = list(METADATA_HEADERS)
                batch.add(self._users.messages().get(**params), request_id=mid)
            self._pay(COSTS["users.messages.get"] * len(chunk))
            try:
                self._transport(lambda: batch.execute(http=self._authed))
            except HttpError as err:
                raise translate(err) from err
            if errors:
                limited = [e for e in errors.values() if isinstance(e, RateLimited)]
                if limited:
                    waits = [e.retry_after for e in limited if e.retry_after is not None]
                    raise RateLimited(f"{len(limited)} of {len(chunk)} gets were rate limited",
                                      retry_after=max(waits) if waits else None, detail=limited[0].detail)
                raise next(iter(errors.values()))
        return out

    def _load_labels(self, messages: Iterable[dict | None]) -> None:
        """User label names for a page's messages: one labels.list per instance, again
        only when a label appears that was created since (1 unit each)."""
        user = {str(i) for m in messages if isinstance(m, dict) for i in m.get("labelIds") or []} - SYSTEM_LABELS
        if user and (self._labels is None or not user <= self._labels.keys()):
            body = self._execute("users.labels.list", self._users.labels().list(userId=self.user_id))
            self._labels = {str(lab.get("id")): str(lab.get("name") or lab.get("id"))
                            for lab in body.get("labels") or [] if isinstance(lab, dict)}

    def _label_names(self, ids: Iterable[str]) -> tuple[str, ...]:
        names = self._labels or {}
        return tuple(i if i in SYSTEM_LABELS else names.get(i, i) for i in ids)

    def _records(self, ids: Iterable[tuple[str, bool]], fetched: dict[str, dict | None]) -> list[SideRecord]:
        pairs = list(ids)
        self._load_labels(fetched.values())
        return [self._record(mid, None if deleted else fetched.get(mid)) for mid, deleted in pairs]

    def _record(self, message_id: str, msg: dict | None) -> SideRecord:
        if msg is None:
            return SideRecord[MailMessage](side="mailbox", external_id=message_id, deleted=True)
        try:
            return self._translate(msg)
        except Exception as exc:  # one unreadable message must not fail its page
            return untranslatable("mailbox", message_id, exc)

    def _translate(self, msg: dict) -> SideRecord:
        size = int(msg.get("sizeEstimate") or 0)
        if "raw" in msg:
            raw = base64.urlsafe_b64decode(msg["raw"] + "=" * (-len(msg["raw"]) % 4))
            content = parse_raw(raw, bodies=self.options.bodies, max_body_bytes=self.options.max_body_bytes)
        else:
            headers = [(h.get("name", ""), h.get("value", "")) for h in (msg.get("payload") or {}).get("headers") or []
                       if isinstance(h, dict)]
            content = from_headers(headers, size=size)
        label_ids = [str(x) for x in msg.get("labelIds") or []]
        received = int(msg["internalDate"]) / 1000 if msg.get("internalDate") else None
        content = content.model_copy(update={
            "labels": self._label_names(label_ids),
            "direction": "sent" if "SENT" in label_ids else "received",
            "received_at": received,
            "provider_thread_id": str(msg.get("threadId") or ""),
            "size": size or content.size,
        })
        return SideRecord[MailMessage](side="mailbox", external_id=str(msg["id"]), content=content,
                                       etag=str(msg.get("historyId") or "") or None, updated_at=received)

    # ---- reads ---------------------------------------------------------------------------

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        """One page of a full listing (cursor None) or of a history round; the round's
        start (profile historyId or stored cursor) travels inside `next_page`."""
        state: dict[str, Any] | None = None
        if page_token:
            try:
                state = json.loads(page_token)
                if not isinstance(state, dict) or state.get("m") not in ("full", "delta"):
                    raise ValueError
            except (ValueError, TypeError):
                raise Fatal("page token was not produced by this connector") from None
        if (state is None and cursor is None) or (state is not None and state["m"] == "full"):
            return self._full_page(state)
        return self._delta_page(state or {"m": "delta", "s": cursor})

    def _full_page(self, state: dict | None) -> DeltaPage:
        if state is None:
            profile = self._execute("users.getProfile", self._users.getProfile(userId=self.user_id))
            state = {"m": "full", "h": str(profile["historyId"]), "p": None}
        params: dict[str, Any] = {"userId": self.user_id, "maxResults": self.page_size}
        if self.options.since is not None:
            params["q"] = f"after:{int(self.options.since)}"
        if state.get("p"):
            params["pageToken"] = state["p"]
        body = self._execute("users.messages.list", self._users.messages().list(**params))
        ids = [str(m["id"]) for m in body.get("messages") or [] if isinstance(m, dict) and m.get("id")]
        fetched = self._batch_get(ids)
        records = self._records(((i, False) for i in ids), fetched)
        if body.get("nextPageToken"):
            return DeltaPage(records=records, next_page=json.dumps({**state, "p": body["nextPageToken"]}))
        return DeltaPage(records=records, cursor=state["h"])

    def _delta_page(self, state: dict) -> DeltaPage:
        start = str(state.get("s") or "")
        if not start.isdigit():
            raise CursorExpired("cursor is not a Gmail historyId")
        params: dict[str, Any] = {"userId": self.user_id, "startHistoryId": start, "historyTypes": HISTORY_TYPES,
                                  "maxResults": min(500, self.page_size)}
        if state.get("p"):
            params["pageToken"] = state["p"]
        body = self._execute("users.history.list", self._users.history().list(**params), history=True)
        changed = coalesce(body.get("history") or [])
        fetched = self._batch_get([mid for mid, deleted in changed.items() if not deleted])
        records = self._records(changed.items(), fetched)
        if body.get("nextPageToken"):
            return DeltaPage(records=records, next_page=json.dumps({**state, "p": body["nextPageToken"]}))
        return DeltaPage(records=records, cursor=str(body.get("historyId") or start))

    def get(self, external_id: str) -> SideRecord:
        """The message now; a tombstone when Gmail no longer has it."""
        return self._records([(external_id, False)], self._batch_get([external_id]))[0]

    # ---- send (MailboxSend) -----------------------------------------------------------------

    def send(self, raw: bytes, *, reply_to_message_id: str | None = None) -> SentRef:
        """Send `raw` as it is (its Message-ID kept); a reply joins the parent's thread."""
        if len(raw) > MAX_SEND_BYTES:
            raise SendRejected(f"message is {len(raw)} bytes, over Gmail's {MAX_SEND_BYTES}", reason="too_large",
                               detail={"size": len(raw)})
        body: dict[str, Any] = {"raw": base64.urlsafe_b64encode(raw).decode("ascii")}
        if reply_to_message_id:
            parent = self._by_message_id(reply_to_message_id, sent_only=False)
            if parent is not None and parent.provider_thread_id:
                body["threadId"] = parent.provider_thread_id
        try:
            sent = self._send(body)
        except NotFound:
            if "threadId" not in body:
                raise
            # the thread was deleted after the look-up: Gmail would start a new one anyway
            sent = self._send({"raw": body["raw"]})
        return SentRef(provider_message_id=str(sent["id"]), provider_thread_id=str(sent.get("threadId") or "") or None)

    def _send(self, body: dict[str, Any]) -> dict:
        self._pay(COSTS["users.messages.send"])
        request = self._users.messages().send(userId=self.user_id, body=body)
        try:
            return self._transport(lambda: request.execute(num_retries=0)) or {}
        except HttpError as err:
            if int(getattr(err.resp, "status", 0) or 0) == 404:
                raise NotFound("thread not found") from err
            raise translate_send(err) from err

    def find_sent(self, message_id: str) -> SentRef | None:
        """The message with this Message-ID in Sent, or None: one messages.list (5 units)."""
        return self._by_message_id(message_id, sent_only=True)

    def _by_message_id(self, message_id: str, *, sent_only: bool) -> SentRef | None:
        mid = normalize_message_id(message_id)
        if not mid:
            return None
        q = f"rfc822msgid:{mid}" + (" in:sent" if sent_only else "")
        body = self._execute("users.messages.list",
                             self._users.messages().list(userId=self.user_id, q=q, maxResults=10,
                                                         includeSpamTrash=not sent_only))
        for m in body.get("messages") or []:
            if isinstance(m, dict) and m.get("id"):
                return SentRef(provider_message_id=str(m["id"]), provider_thread_id=str(m.get("threadId") or "") or None)
        return None

    # ---- push (users.watch) ----------------------------------------------------------------

    def address(self) -> str:
        """The mailbox's address (getProfile): what a Pub/Sub push names it by."""
        profile = self._execute("users.getProfile", self._users.getProfile(userId=self.user_id))
        return str(profile.get("emailAddress") or "")

    def watch(self, topic: str, label_ids: Sequence[str] = ()) -> dict[str, Any]:
        """Start (or renew: same topic) pushing this mailbox's changes to a Pub/Sub topic.

        Returns `{"historyId", "expiration"}` (epoch ms, as a string; 7 days out). A
        different topic while a watch is active is refused (400): `stop_watch` first."""
        body: dict[str, Any] = {"topicName": topic}
        if label_ids:
            body.update(labelIds=list(label_ids), labelFilterBehavior="include")
        return self._execute("users.watch", self._users.watch(userId=self.user_id, body=body))

    def stop_watch(self) -> None:
        self._execute("users.stop", self._users.stop(userId=self.user_id))


def coalesce(history: Sequence[dict]) -> dict[str, bool]:
    """Message ids a page of history touches, in first-seen order -> deleted.

    A message added and deleted within the page is just a tombstone (no get); any
    other touch means "fetch its current state".
    """
    out: dict[str, bool] = {}
    for record in history:
        if not isinstance(record, dict):
            continue
        for key in ("messagesAdded", "labelsAdded", "labelsRemoved"):
            for item in record.get(key) or []:
                mid = str(((item or {}).get("message") or {}).get("id") or "")
                if mid:
                    out.setdefault(mid, False)
        for item in record.get("messagesDeleted") or []:
            mid = str(((item or {}).get("message") or {}).get("id") or "")
            if mid:
                out[mid] = True
    return out
