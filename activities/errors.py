"""Turn connector errors (keyed to recovery) into what Temporal's retry machinery needs."""

from __future__ import annotations

from datetime import timedelta

from temporalio.exceptions import ApplicationError

from models.errors import ConnectorError, RateLimited, ReauthRequired

#: error types the workflow reacts to by name (ApplicationError.type)
REAUTH_REQUIRED = "ReauthRequired"
FATAL = "Fatal"


def to_application_error(exc: ConnectorError) -> ApplicationError:
    """Rate limits carry the provider's delay; reauth and fatal stop retrying.

    The message names the error class and code only: provider messages can echo
    request content, and activity failures are recorded in workflow history.
    """
    message = f"{type(exc).__name__}: {exc.code}"
    if isinstance(exc, RateLimited):
        delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
        return ApplicationError(message, type="RateLimited", next_retry_delay=delay)
    if isinstance(exc, ReauthRequired):
        return ApplicationError(message, type=REAUTH_REQUIRED, non_retryable=True)
    return ApplicationError(message, type=type(exc).__name__, non_retryable=not exc.retryable)
