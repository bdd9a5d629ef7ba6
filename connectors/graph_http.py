"""HTTP plumbing shared by the Microsoft Graph connectors (contacts and mail).

One call under a mailbox's in-flight budget, the translation of Graph's error
answers into ConnectorErrors (see `connectors.graph_contacts` for the mapping),
and `GraphConnection`, the client plumbing both connectors build on (base URL,
HTTP client, in-flight budget, call count, subscription calls).
"""

from __future__ import annotations

import email.utils
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Self
from urllib.parse import quote

import httpx

from models.errors import (AuthExpired, ConnectorError, CursorExpired, Fatal, NotFound, PreconditionFailed, RateLimited,
                           ReauthRequired, Transient, ValidationRejected)

_CURSOR_CODES = {"syncstatenotfound", "resyncrequired", "syncstateinvalid"}

_SEMAPHORES: dict[str, threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


def _shared_semaphore(key: str, size: int) -> threading.BoundedSemaphore:
    """One in-flight budget per mailbox, shared by every instance in this process."""
    with _SEMAPHORES_LOCK:
        sem = _SEMAPHORES.get(key)
        if sem is None:
            sem = _SEMAPHORES[key] = threading.BoundedSemaphore(size)
        return sem


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After") or (headers or {}).get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for(status: int, headers: Any, body: Any) -> ConnectorError:
    """Translate one Graph error answer (top-level or `$batch` sub-response)."""
    err = body.get("error") if isinstance(body, dict) else None
    code = str((err or {}).get("code") or "") if isinstance(err, dict) else ""
    message = str((err or {}).get("message") or "") if isinstance(err, dict) else ""
    detail = {"status": status, "code": code}
    text = f"graph {status} {code}".strip()
    if status == 410 or code.lower() in _CURSOR_CODES:
        return CursorExpired(text, detail=detail)
    if status == 429:
        return RateLimited(text, retry_after=_retry_after(headers), detail=detail)
    if status == 503 and _retry_after(headers) is not None:
        return RateLimited(text, retry_after=_retry_after(headers), detail=detail)
    if status >= 500:
        return Transient(text, detail=detail)
    if status == 401:
        return AuthExpired(text, detail=detail)
    if status == 403:
        return ReauthRequired(text, detail=detail)
    if status in (409, 412):
        return PreconditionFailed(text, detail=detail)
    if status == 400:
        # The message names the offending property; it never carries contact values.
        return ValidationRejected(f"{text}: {message}"[:300], rule=code or None, detail=detail)
    if status == 404:
        return NotFound(text, detail=detail)
    return Fatal(text, detail=detail)


def send(
    client: httpx.Client,
    sem: threading.BoundedSemaphore,
    count: Callable[[], None],
    method: str,
    url: str,
    *,
    params: dict[str, str] | None = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    what: str = "graph",
) -> httpx.Response:
    """One HTTP call under the in-flight budget `sem`, counted by `count()`.

    A timeout or transport failure is a Transient (named after `what`); an answer of
    400 or more raises its ConnectorError (`error_for`).
    """
    with sem:
        count()
        try:
            resp = client.request(method, url, params=params, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise Transient(f"{what} timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Transient(f"{what} transport error ({type(exc).__name__})") from exc
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            body = None
        raise error_for(resp.status_code, resp.headers, body)
    return resp


def _expiry(minutes: int) -> str:
    when = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    return when.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


class GraphConnection:
    """What a Graph connector of one mailbox holds: base URL, HTTP client, in-flight budget, call count.

    The connector builds each request's headers in its `_request(method, url, *, body=...)`
    and sends it with `_send`; the subscription calls go through that `_request`.
    """

    _request: Callable[..., httpx.Response]

    def __init__(
        self,
        base_url: str,
        token_provider: Callable[[], str],
        *,
        client: httpx.Client | None,
        timeout: float,
        max_concurrency: int,
        mailbox_key: str | None,
    ) -> None:
        root = base_url.rstrip("/")
        self.base = root if root.endswith("/v1.0") else root + "/v1.0"
        self._token_provider = token_provider
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=timeout, trust_env=False)
        self.max_concurrency = max(1, int(max_concurrency))
        self._sem = (
            _shared_semaphore(mailbox_key, self.max_concurrency)
            if mailbox_key
            else threading.BoundedSemaphore(self.max_concurrency)
        )
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def calls_made(self) -> int:
        return self._calls

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self) -> None:
        with self._lock:
            self._calls += 1

    def _send(self, method: str, url: str, *, params: dict[str, str] | None = None, content: bytes | None = None,
              headers: dict[str, str] | None = None, what: str = "graph") -> httpx.Response:
        """`send` under this mailbox's budget; a relative `url` is taken from the API root."""
        if not url.startswith(("http://", "https://")):
            url = self.base + url
        return send(self._client, self._sem, self._count, method, url, params=params, content=content,
                    headers=headers, what=what)

    # ------------------------------------------------------------------ subscriptions

    def _subscribe(
        self,
        resource: str,
        notification_url: str,
        client_state: str,
        *,
        minutes: int,
        change_type: str,
        lifecycle_url: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": _expiry(minutes),
            "clientState": client_state,
        }
        if lifecycle_url:
            body["lifecycleNotificationUrl"] = lifecycle_url
        return self._request("POST", "/subscriptions", body=body).json()

    def renew_subscription(self, subscription_id: str, *, minutes: int = 4230) -> dict[str, Any]:
        return self._request(
            "PATCH", f"/subscriptions/{quote(subscription_id, safe='')}", body={"expirationDateTime": _expiry(minutes)}
        ).json()

    def delete_subscription(self, subscription_id: str) -> None:
        """Remove a subscription; one already gone counts as removed."""
        try:
            self._request("DELETE", f"/subscriptions/{quote(subscription_id, safe='')}")
        except NotFound:
            pass
