"""The webhook server that wakes mailbox and organisation workflows.

Providers push "something changed" (never the change itself): Graph change and
lifecycle notifications, Gmail through a Pub/Sub push subscription, Calendar
channel pings (headers only), and our own platforms (CRM) signing with a
per-organisation key. Each one is authenticated, mapped to a connection, and turned
into a `wake` of that mailbox's workflow; the workflow then reads the provider's
delta with its stored cursor, so a notification carries no data we must trust.
A platform's webhook wakes its organisation's workflow (`org-sync/<org_id>`) once:
that workflow reads the platform for all the org's mailboxes and wakes only those a
change concerns.

Why it is built this way:

- Replies are fast and never wait on Temporal: Graph wants 2xx within 3 s (10 s for
  the validation handshake), Pub/Sub and Calendar redeliver slow answers. A route
  only authenticates (one indexed read), asks the `Waker` for a wake and answers;
  the signal is sent afterwards by a task on the server's loop.
- Bursts coalesce: a mailbox import fires thousands of notifications, and one
  cycle reads them all. The `Waker` signals a connection at most once per window,
  plus one trailing signal for what arrived after the first was sent, so nothing
  that arrived during a cycle is left unread.
- Secrets are compared in constant time and only their sha256 is stored
  (store/subscriptions.py). A forged or stale notification is answered like a
  real one where the provider would otherwise retry for hours (Graph: 202), and
  counted by reason at GET /webhooks/stats (admin token only); it is never signalled.
- Gmail pushes are authenticated by the OIDC token Pub/Sub signs for the push
  service account (Google's keys, our audience, that account), not by a secret in
  the URL: a URL ends up in access logs, proxies' included.
- Platforms sign a timestamp with the body; a stale timestamp or a signature
  already seen inside the window is refused, so a captured request cannot be
  replayed.
- Bodies are read as a stream and refused at the first byte past the limit
  (api/bodies.py), chunked or not.
- No email address, token or clientState is ever logged; Gmail addresses are
  looked up by their sha256 only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import heapq
import hmac
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from api.bodies import CLOSE_CONNECTION, BodyTooLarge, read_body
from connectors.registry import CALENDAR_CHANNEL, GMAIL_WATCH, GRAPH_SUBSCRIPTION
from connectors.id_tokens import (
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
    CachedKeys,
    InvalidIdToken,
    KeysUnavailable,
    verify_id_token,
)
from store import repo
from store import subscriptions as subs

log = logging.getLogger("concord.webhooks")

#: signal(connection_id, org_id, provider, reason): delivers one wake to a workflow.
Signal = Callable[[str, str, str, str], Awaitable[None]]
#: lookup(connection_id) -> (org_id, provider), or None when it must not be woken.
Lookup = Callable[[str], Optional[tuple[str, str]]]
#: platform_secret(org_id) -> the key that org's platform signs with, or None.
PlatformSecret = Callable[[str], Optional[bytes]]

#: Larger bodies are refused before parsing; real notification batches are far smaller.
MAX_BODY_BYTES = 1 << 20
#: The workflow history keeps the reason; a trailing signal joins several.
MAX_REASON_CHARS = 200

#: A platform's X-Concord-Timestamp may be this far from our clock, either way.
PLATFORM_TOLERANCE_S = 300
#: Gmail history ids and Calendar message numbers are unsigned 64-bit integers.
_UINT64 = re.compile(r"[0-9]{1,20}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

CALENDAR_STATES = ("sync", "exists", "not_exists")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


# --------------------------------------------------------------------- counters


@dataclass
class Counters:
    """What the server did with what it received. Mutated on the server's loop only."""

    accepted: int = 0
    accepted_by_source: Counter = field(default_factory=Counter)
    rejected_by_reason: Counter = field(default_factory=Counter)
    sync_acknowledged: int = 0
    wake_requests: int = 0
    signals_started: int = 0
    signals_sent: int = 0
    signal_errors: int = 0
    dropped_inactive: int = 0

    @property
    def coalesced(self) -> int:
        """Wake requests that rode on another request's signal instead of their own."""
        return self.wake_requests - self.signals_started

    def accept(self, source: str) -> None:
        self.accepted += 1
        self.accepted_by_source[source] += 1

    def reject(self, reason: str) -> None:
        self.rejected_by_reason[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "accepted_by_source": dict(self.accepted_by_source),
            "rejected": sum(self.rejected_by_reason.values()),
            "rejected_by_reason": dict(self.rejected_by_reason),
            "sync_acknowledged": self.sync_acknowledged,
            "wake_requests": self.wake_requests,
            "signals_started": self.signals_started,
            "signals_sent": self.signals_sent,
            "signal_errors": self.signal_errors,
            "dropped_inactive": self.dropped_inactive,
            "coalesced": self.coalesced,
        }


# ------------------------------------------------------------------------ waker


@dataclass
class _Slot:
    in_flight: bool = False
    last_started: float = -math.inf
    pending: bool = False
    timer: asyncio.TimerHandle | None = None
    reasons: set[str] = field(default_factory=set)


class Waker:
    """Turns wake requests into at most one signal per connection per window.

    The first request for an idle connection is signalled at once (low latency for
    a single change). Requests arriving while that signal is being sent, or within
    `window_s` of it, set one pending flag; when the window closes a single trailing
    signal goes out. A request that arrives while the signal is in flight is not
    folded into it: the workflow may already have started reading, and the change
    might be after its read.

    `wake()` must be called on the event loop that owns the Waker (the server's);
    it never blocks. Failed signals are retried with backoff, then counted and
    dropped: the workflow's poll timer is the safety net.
    """

    def __init__(
        self,
        signal: Signal,
        lookup: Lookup,
        *,
        window_s: float = 1.0,
        counters: Counters | None = None,
        max_concurrent: int = 32,
        attempts: int = 3,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.signal = signal
        self.lookup = lookup
        self.window_s = float(window_s)
        self.counters = counters or Counters()
        self.attempts = max(1, attempts)
        self.retry_backoff_s = retry_backoff_s
        self._max_concurrent = max_concurrent
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[str, _Slot] = {}
        self._tasks: set[asyncio.Task] = set()

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._sem = asyncio.Semaphore(self._max_concurrent)
        elif self._loop is not loop:
            raise RuntimeError("Waker used from a second event loop")
        return loop

    def wake(self, connection_id: str, reason: str) -> None:
        loop = self._bind()
        self.counters.wake_requests += 1
        slot = self._slots.get(connection_id)
        if slot is None:
            slot = self._slots[connection_id] = _Slot()
        slot.reasons.add(reason)
        if slot.pending:
            return
        if slot.timer is not None:  # an idle slot's forget timer: the slot is busy again
            slot.timer.cancel()
            slot.timer = None
        if slot.in_flight or loop.time() - slot.last_started < self.window_s:
            slot.pending = True
            if not slot.in_flight:
                self._schedule(connection_id, slot, slot.last_started + self.window_s)
            return
        self._fire(connection_id, slot)

    def idle(self) -> bool:
        return not self._tasks and not any(s.pending for s in self._slots.values())

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every requested wake has been sent (or given up on)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.idle():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("waker did not drain")
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        self._slots.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # internals ---------------------------------------------------------------

    def _schedule(self, connection_id: str, slot: _Slot, when: float) -> None:
        assert self._loop is not None
        if slot.timer is not None:
            slot.timer.cancel()
        slot.timer = self._loop.call_at(max(when, self._loop.time()), self._on_timer, connection_id)

    def _on_timer(self, connection_id: str) -> None:
        slot = self._slots.get(connection_id)
        if slot is None:
            return
        slot.timer = None
        if slot.in_flight:
            return
        if slot.pending:
            self._fire(connection_id, slot)
        else:
            del self._slots[connection_id]  # idle for a whole window: forget it

    def _fire(self, connection_id: str, slot: _Slot) -> None:
        assert self._loop is not None
        reason = ",".join(sorted(slot.reasons))[:MAX_REASON_CHARS]
        slot.reasons.clear()
        slot.pending = False
        slot.in_flight = True
        slot.last_started = self._loop.time()
        self.counters.signals_started += 1
        task = self._loop.create_task(self._send(connection_id, slot, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, connection_id: str, slot: _Slot, reason: str) -> None:
        assert self._sem is not None
        try:
            async with self._sem:
                target = await asyncio.to_thread(self.lookup, connection_id)
                if target is None:
                    self.counters.dropped_inactive += 1
                    return
                org_id, provider = target
                for attempt in range(self.attempts):
                    try:
                        await self.signal(connection_id, org_id, provider, reason)
                    except Exception as exc:  # noqa: BLE001 - any failure: retry, then count
                        if attempt + 1 >= self.attempts:
                            self.counters.signal_errors += 1
                            log.warning("wake signal failed for connection %s: %s", connection_id, type(exc).__name__)
                            return
                        await asyncio.sleep(self.retry_backoff_s * (2**attempt))
                    else:
                        self.counters.signals_sent += 1
                        return
        except Exception as exc:  # noqa: BLE001 - the lookup failed (store down): count, keep serving
            self.counters.signal_errors += 1
            log.warning("wake lookup failed for connection %s: %s", connection_id, type(exc).__name__)
        finally:
            slot.in_flight = False
            if self._slots.get(connection_id) is slot:
                self._schedule(connection_id, slot, slot.last_started + self.window_s)


# ------------------------------------------------------------ production pieces


def store_lookup(sessions) -> Lookup:
    """Org and provider of a connection from the store; disconnected ones are not woken
    (a signal-with-start would bring their workflow back)."""

    def lookup(connection_id: str) -> tuple[str, str] | None:
        with sessions() as s:
            row = repo.get_connection(s, connection_id)
        if row is None or row.status == "disconnected":
            return None
        return row.org_id, row.provider

    return lookup


def store_org_lookup(sessions) -> Lookup:
    """An organisation with an active mailbox has a workflow to wake; one without has
    nothing to sync the platform's change to (and is not started for it). Its workflow
    has no provider: the second element is empty."""

    def lookup(org_id: str) -> tuple[str, str] | None:
        with sessions() as s:
            active = repo.list_connections(s, org_id=org_id, status="active")
        return (org_id, "") if active else None

    return lookup


def temporal_signal(client, *, task_queue: str | None = None, poll_interval_s: float = 300.0) -> Signal:
    """The production signal: signal-with-start of `wake` (workers.client.start_sync)."""
    from workers.client import start_sync
    from workers.temporal_client import TASK_QUEUE

    tq = task_queue or TASK_QUEUE

    async def signal(connection_id: str, org_id: str, provider: str, reason: str) -> None:
        await start_sync(client, connection_id, org_id, provider, poll_interval_s=poll_interval_s, task_queue=tq,
                         reason=reason)

    return signal


def temporal_org_signal(client, *, task_queue: str | None = None, poll_interval_s: float = 300.0) -> Signal:
    """The organisation's signal: signal-with-start of `wake` of `org-sync/<org_id>`
    (workers.client.start_org_sync), for the org waker keyed by organisation."""
    from workers.client import start_org_sync
    from workers.temporal_client import TASK_QUEUE

    tq = task_queue or TASK_QUEUE

    async def signal(org_id: str, _org_id: str, _provider: str, reason: str) -> None:
        await start_org_sync(client, org_id, poll_interval_s=poll_interval_s, task_queue=tq, reason=reason)

    return signal


def lazy_temporal_signal(target: str, namespace: str = "default", *, build: Callable[..., Signal] = temporal_signal,
                         **kwargs) -> Signal:
    """`build(client, **kwargs)` (`temporal_signal` or `temporal_org_signal`), connecting on
    first use (the app factory is synchronous)."""
    from workers.temporal_client import connect

    state: dict[str, Any] = {}
    lock = asyncio.Lock()

    async def signal(connection_id: str, org_id: str, provider: str, reason: str) -> None:
        if "signal" not in state:
            async with lock:
                if "signal" not in state:
                    state["signal"] = build(await connect(target, namespace), **kwargs)
        await state["signal"](connection_id, org_id, provider, reason)

    return signal


PLATFORM_KEY_CONTEXT = b"concord/platform-webhook/v1\x00"


def derived_platform_secrets(master_key: bytes) -> PlatformSecret:
    """Per-organisation signing keys derived from one server key: nothing to store,
    and one organisation's key says nothing about another's."""
    if len(master_key) < 16:
        raise ValueError("platform webhook master key must be at least 16 bytes")

    def secret(org_id: str) -> bytes:
        return hmac.new(master_key, PLATFORM_KEY_CONTEXT + org_id.encode("utf-8"), hashlib.sha256).digest()

    return secret


def platform_signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The X-Concord-Signature value a platform sends with `X-Concord-Timestamp: <timestamp>`
    (unix seconds): `sha256=<hex HMAC-SHA256 of b"<timestamp>." + the raw body>`."""
    return "sha256=" + hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def platform_headers(secret: bytes, body: bytes, *, now: Callable[[], float] = time.time) -> dict[str, str]:
    """Both headers a platform sends with `body`, signed now."""
    ts = int(now())
    return {"X-Concord-Timestamp": str(ts), "X-Concord-Signature": platform_signature(secret, body, ts)}


class ReplayGuard:
    """The platform signatures accepted within the last window, so a replay is refused.

    Only signatures that verified are remembered, so only a key holder can fill
    it; each is forgotten once its timestamp is too old to pass the freshness check
    anyway. Bounded: when `max_entries` live signatures are held, new requests are
    refused (503, the platform retries with a new timestamp) rather than forgetting
    one that could then be replayed. Per process: replicas behind a load balancer
    each keep their own.
    """

    def __init__(self, window_s: float = PLATFORM_TOLERANCE_S, max_entries: int = 100_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, signature: str, timestamp: int, now: float) -> str | None:
        """None if this signature is new (and now remembered), else why it is refused."""
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if signature in self._seen:
            return "replayed"
        if len(self._seen) >= self.max_entries:
            return "replay_cache_full"
        self._seen.add(signature)
        heapq.heappush(self._expiry, (timestamp + self.window_s, signature))
        return None


@dataclass
class PubSubPushAuth:
    """Who may push Gmail notifications: Pub/Sub, proven by the OIDC token it puts in
    `Authorization: Bearer` for the subscription's push service account.

    The token must be signed by Google (keys at `certs_url`), issued by
    accounts.google.com, unexpired, for `audience` (what the push subscription is
    configured with; Google's default is the endpoint URL) and carry the verified
    `email` of `service_account`. The audience alone proves nothing (anyone can
    create a subscription with any audience); the service account is ours.
    """

    audience: str
    service_account: str
    certs_url: str = GOOGLE_CERTS_URL
    keys: CachedKeys = field(default_factory=CachedKeys)

    def refusal(self, bearer: str) -> str | None:
        """None when `bearer` is a genuine push's token, else why it is refused. Raises KeysUnavailable."""
        if not bearer:
            return "missing_token"
        try:
            claims = verify_id_token(bearer, keys=self.keys, certs_url=self.certs_url,
                                     audience=self.audience, issuers=GOOGLE_ISSUERS)
        except InvalidIdToken as e:
            return "bad_token" if e.reason == "invalid_token" else e.reason
        if claims.get("email") != self.service_account or claims.get("email_verified") is not True:
            return "wrong_service_account"
        return None


# ----------------------------------------------------------------------- router


@dataclass
class WebhookDeps:
    sessions: Any
    #: wakes mailbox workflows (provider pushes)
    waker: Waker
    #: wakes organisation workflows (platform webhooks): keyed by org id, looked up with
    #: `store_org_lookup`; None refuses platform webhooks (503)
    org_waker: Waker | None = None
    #: how Gmail pushes are authenticated; None refuses them all
    pubsub: PubSubPushAuth | None = None
    platform_secret: PlatformSecret | None = None
    #: `Authorization: Bearer <admin_token>` reads GET /webhooks/stats; None hides the route
    admin_token: str | None = None
    replays: ReplayGuard = field(default_factory=ReplayGuard)
    clock: Callable[[], float] = time.time
    #: how long a Graph subscription row read from the store answers for later posts
    #: (0: read the store on every post). A row marked by a lifecycle event here is
    #: dropped at once; one removed elsewhere may still wake its mailbox for this long,
    #: which costs a cycle and nothing else (a wake is a hint).
    subscription_cache_s: float = 5.0

    @property
    def counters(self) -> Counters:
        return self.waker.counters


class _Bad(Exception):
    """A malformed request: answered 400 and counted under `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise _Bad("malformed_json") from None


def _str(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Bad("missing_field")
    return value


def _b64(data: str) -> bytes:
    # Pub/Sub sends standard base64; accept the urlsafe alphabet and missing padding too.
    cleaned = data.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("bad_base64") from None


def _history_id(value: Any) -> int:
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
    if isinstance(value, str) and _UINT64.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64:
        return value
    raise _Bad("missing_field" if value is None else "bad_history_id")


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


async def _body(request: Request) -> bytes:
    try:
        return await read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        raise _Bad("too_large") from None


def _bearer(request: Request) -> str:
    """The credential of `Authorization: Bearer <credential>`, or ""."""
    scheme, _, credential = (request.headers.get("authorization") or "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def webhook_router(deps: WebhookDeps) -> APIRouter:
    router = APIRouter(prefix="/webhooks")
    counters = deps.counters
    waker = deps.waker
    sessions = deps.sessions

    def bad(reason: str) -> Response:
        counters.reject(reason)
        if reason == "too_large":
            return JSONResponse({"error": reason}, status_code=413, headers=CLOSE_CONNECTION)
        return JSONResponse({"error": reason}, status_code=400)

    def forbidden(reason: str) -> Response:
        counters.reject(reason)
        return JSONResponse({"error": "forbidden"}, status_code=403)

    # --- Microsoft Graph ------------------------------------------------------

    def _graph_items(raw: bytes, lifecycle: bool) -> list[dict]:
        body = _json(raw)
        if not isinstance(body, dict) or not isinstance(body.get("value"), list):
            raise _Bad("missing_field")
        items = body["value"]
        for item in items:
            if not isinstance(item, dict):
                raise _Bad("missing_field")
            _str(item, "subscriptionId")
            if lifecycle:
                _str(item, "lifecycleEvent")
        return items

    def _graph_store(ids: list[str]):
        with sessions() as s:
            return subs.find_by_external_ids(s, GRAPH_SUBSCRIPTION.name, ids)

    #: external id -> (row, good until); known subscriptions only (an unknown id is
    #: read again next time, so a subscription created a moment ago is found)
    graph_rows: dict[str, tuple[Any, float]] = {}

    async def _graph_rows(items: list[dict]) -> dict[str, Any]:
        ids = [i["subscriptionId"] for i in items]
        ttl = deps.subscription_cache_s
        if ttl <= 0:
            return await run_in_threadpool(_graph_store, ids)
        now = time.monotonic()
        found: dict[str, Any] = {}
        missing: list[str] = []
        for item in items:
            sub_id = item["subscriptionId"]
            hit = graph_rows.get(sub_id)
            # A remembered row that would refuse this post is read again: the store may
            # hold a re-created subscription (new secret) under the same id.
            if hit is not None and hit[1] > now and hit[0].status != "removed" \
                    and subs.secret_matches(hit[0], item.get("clientState")):
                found[sub_id] = hit[0]
            else:
                missing.append(sub_id)
        if missing:
            rows = await run_in_threadpool(_graph_store, missing)
            if len(graph_rows) > 100_000:
                graph_rows.clear()
            for sub_id, row in rows.items():
                graph_rows[sub_id] = (row, now + ttl)
            found.update(rows)
        return found

    def _apply_marks(marks: list[tuple[str, str]]) -> None:
        with sessions.begin() as s:
            for sub_id, status in marks:
                subs.mark_status(s, sub_id, status)

    async def _graph(request: Request, lifecycle: bool) -> Response:
        # The handshake comes first and touches nothing: Graph allows it 10 s.
        token = request.query_params.get("validationToken")
        if token is not None:
            # Echoed verbatim, so never let a browser sniff it into HTML.
            return PlainTextResponse(token, status_code=200, headers={"X-Content-Type-Options": "nosniff"})
        try:
            items = _graph_items(await _body(request), lifecycle)
        except _Bad as e:
            return bad(e.reason)
        rows = await _graph_rows(items) if items else {}
        wakes: list[tuple[str, str]] = []
        marks: list[tuple[str, str]] = []
        for item in items:
            row = rows.get(item["subscriptionId"])
            if row is None:
                counters.reject("unknown_subscription")
                continue
            if not subs.secret_matches(row, item.get("clientState")):
                counters.reject("bad_client_state")
                continue
            event = item.get("lifecycleEvent")
            if event is not None:
                if event not in LIFECYCLE_EVENTS:
                    counters.reject("unknown_lifecycle_event")
                    continue
                if event == "reauthorizationRequired":
                    marks.append((row.id, "needs_renewal"))
                elif event == "subscriptionRemoved":
                    marks.append((row.id, "removed"))
                counters.accept("graph_lifecycle")
                wakes.append((row.connection_id, f"graph:{event}"))
                continue
            if row.status == "removed":
                counters.reject("subscription_removed")
                continue
            counters.accept("graph")
            wakes.append((row.connection_id, "graph"))
        if marks:
            await run_in_threadpool(_apply_marks, marks)
            for item in items:
                graph_rows.pop(item["subscriptionId"], None)
        for cid, reason in wakes:
            waker.wake(cid, reason)
        # 202 whatever the outcome: Graph retries anything else for hours, and the
        # sender learns nothing about which subscription ids exist.
        return Response(status_code=202)

    @router.post("/graph")
    async def graph(request: Request) -> Response:
        return await _graph(request, lifecycle=False)

    @router.post("/graph/lifecycle")
    async def graph_lifecycle(request: Request) -> Response:
        return await _graph(request, lifecycle=True)

    # --- Gmail via Pub/Sub push ---------------------------------------------------

    def _gmail_store(key: str):
        with sessions() as s:
            return subs.find_by_external_id(s, GMAIL_WATCH.name, key)

    @router.post("/gmail")
    async def gmail(request: Request) -> Response:
        if deps.pubsub is None:
            return forbidden("pubsub_not_configured")
        try:  # on a thread: the first check of a key set fetches it
            refused = await run_in_threadpool(deps.pubsub.refusal, _bearer(request))
        except KeysUnavailable:
            counters.reject("keys_unavailable")  # Pub/Sub redelivers until Google's keys are back
            return JSONResponse({"error": "keys_unavailable"}, status_code=503)
        if refused is not None:
            return forbidden(refused)
        try:
            envelope = _json(await _body(request))
            if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), dict):
                raise _Bad("missing_field")
            data = _json(_b64(_str(envelope["message"], "data")))
            if not isinstance(data, dict):
                raise _Bad("missing_field")
            address = _str(data, "emailAddress")
            _history_id(data.get("historyId"))  # validated; the workflow reads from its own cursor
        except _Bad as e:
            return bad(e.reason)
        row = await run_in_threadpool(_gmail_store, subs.email_key(address))
        # Unknown or removed watches are acknowledged (2xx) so Pub/Sub stops redelivering.
        if row is None:
            counters.reject("unknown_subscription")
            return Response(status_code=204)
        if row.status == "removed":
            counters.reject("subscription_removed")
            return Response(status_code=204)
        counters.accept("gmail")
        waker.wake(row.connection_id, "gmail")
        return Response(status_code=204)

    # --- Google Calendar channels ----------------------------------------------

    def _calendar_store(channel_id: str):
        with sessions() as s:
            return subs.find_by_external_id(s, CALENDAR_CHANNEL.name, channel_id)

    @router.post("/calendar")
    async def calendar(request: Request) -> Response:
        h = request.headers
        channel_id = h.get("x-goog-channel-id")
        state = h.get("x-goog-resource-state")
        number = h.get("x-goog-message-number")
        if not channel_id or not state:
            return bad("missing_field")
        if state not in CALENDAR_STATES:
            return bad("bad_resource_state")
        if number is not None and not _UINT64.fullmatch(number.strip()):
            return bad("bad_message_number")
        row = await run_in_threadpool(_calendar_store, channel_id)
        if row is None:
            return forbidden("unknown_subscription")
        if not subs.secret_matches(row, h.get("x-goog-channel-token")):
            return forbidden("bad_token")
        if row.status == "removed":
            return forbidden("subscription_removed")
        if state == "sync":  # the channel was just created: nothing changed yet
            counters.sync_acknowledged += 1
            return Response(status_code=200)
        counters.accept("calendar")
        waker.wake(row.connection_id, f"calendar:{state}")
        return Response(status_code=200)

    # --- platforms (CRM) ----------------------------------------------------------

    @router.post("/platform/{org_id}")
    async def platform(org_id: str, request: Request) -> Response:
        # The signature is over the raw body, so it travels in the header; a
        # "signature" field inside the body cannot sign that body and is ignored.
        try:
            raw = await _body(request)
        except _Bad as e:
            return bad(e.reason)
        secret = deps.platform_secret(org_id) if deps.platform_secret is not None else None
        if secret is None:
            return forbidden("unknown_org")
        stamp = (request.headers.get("x-concord-timestamp") or "").strip()
        if not _TIMESTAMP.fullmatch(stamp):
            return forbidden("bad_timestamp")
        now = deps.clock()
        if abs(now - int(stamp)) > PLATFORM_TOLERANCE_S:
            return forbidden("stale_timestamp")
        presented = (request.headers.get("x-concord-signature") or "").strip().lower()
        expected = platform_signature(secret, raw, int(stamp))
        if not presented.startswith("sha256="):
            presented = "sha256=" + presented
        if not _equal(presented, expected):
            return forbidden("bad_signature")
        replay = deps.replays.admit(expected, int(stamp), now)
        if replay == "replay_cache_full":
            counters.reject(replay)
            return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "5"})
        if replay is not None:
            return forbidden(replay)
        try:
            body = _json(raw)
            if not isinstance(body, dict) or not isinstance(body.get("record_ids"), list):
                raise _Bad("missing_field")
            if not all(isinstance(r, (str, int)) and not isinstance(r, bool) for r in body["record_ids"]):
                raise _Bad("missing_field")
        except _Bad as e:
            return bad(e.reason)
        if deps.org_waker is None:
            counters.reject("not_configured")
            return JSONResponse({"error": "not_configured"}, status_code=503)
        counters.accept("platform")
        # One wake of the organisation's workflow: it reads the platform once and wakes
        # only the mailboxes the changes concern (not every mailbox of the org).
        if body["record_ids"]:
            deps.org_waker.wake(org_id, "platform")
        return JSONResponse({"organisation": 1 if body["record_ids"] else 0}, status_code=202)

    # --- observability --------------------------------------------------------------

    @router.get("/stats")
    async def stats(request: Request) -> Response:
        if deps.admin_token is None:  # not configured: as if the route did not exist
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if not _equal(_bearer(request), deps.admin_token):
            return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return JSONResponse(counters.snapshot(), headers={"Cache-Control": "no-store"})

    return router
