"""Errors named for how to recover from them (DESIGN principle 4).

Connectors translate provider wire errors into exactly one of these. Activities
never inspect HTTP status codes; they decide by class:

    Transient            retry with backoff (Temporal's retry policy)
    RateLimited          retry after the provider's delay (ApplicationError.next_retry_delay)
    CursorExpired        drop the cursor and run a full resync (no duplicates: links match)
    AuthExpired          refresh the token; if that fails -> ReauthRequired
    ReauthRequired       the connection needs the user again; the workflow pauses
    PreconditionFailed   stale etag: re-read, re-merge, retry
    ValidationRejected   this item only: fix by rule or quarantine; the batch goes on
    NotFound             the target is gone: treat as a delete seen late
    Fatal                a bug or misconfiguration: stop and show it
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base class. `retryable` is what Temporal should do when an activity lets it escape."""

    retryable: bool = True
    #: Short machine-readable code, stable across releases (used in quarantine and metrics).
    code: str = "connector_error"

    def __init__(self, message: str = "", *, detail: dict | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.detail = detail or {}


class Transient(ConnectorError):
    code = "transient"


class RateLimited(Transient):
    code = "rate_limited"

    def __init__(self, message: str = "", *, retry_after: float | None = None, detail: dict | None = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after


class CursorExpired(ConnectorError):
    """The delta cursor is no longer valid; the caller must run a full resync."""

    code = "cursor_expired"
    retryable = False


class AuthExpired(ConnectorError):
    """The access token was refused; a refresh may fix it."""

    code = "auth_expired"


class ReauthRequired(ConnectorError):
    """The refresh failed for good (revoked, consent withdrawn): only the user can fix it."""

    code = "reauth_required"
    retryable = False


class PreconditionFailed(ConnectorError):
    """Optimistic concurrency lost (stale etag): re-read, re-merge, retry."""

    code = "precondition_failed"
    retryable = False


class ValidationRejected(ConnectorError):
    """The other end refused this one item; retrying it unchanged will not help."""

    code = "validation_rejected"
    retryable = False

    def __init__(
        self,
        message: str = "",
        *,
        field: str | None = None,
        rule: str | None = None,
        detail: dict | None = None,
    ) -> None:
        super().__init__(message, detail=detail)
        self.field = field
        self.rule = rule


class SendRejected(ConnectorError):
    """The provider refused to send this message for good: trying again sends nothing.

    `reason` is a short code shown on the outbox item: invalid_recipient, rejected,
    too_large, quota_exceeded (a daily limit, for this message: retried the next day
    only by a person)."""

    code = "send_rejected"
    retryable = False

    def __init__(self, message: str = "", *, reason: str = "rejected", detail: dict | None = None) -> None:
        super().__init__(message, detail=detail)
        self.reason = reason


class NotFound(ConnectorError):
    code = "not_found"
    retryable = False


class Fatal(ConnectorError):
    code = "fatal"
    retryable = False
