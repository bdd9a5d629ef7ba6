"""Keeping secrets that travel in URLs out of the access log.

Some secrets cannot leave the URL: an OAuth callback's `code` and `state` (Google
redirects with them), Graph's `validationToken`, a signed connect link's `sig`,
and whatever an operator still has in a push endpoint (`?token=`). uvicorn logs
every request line with its query string, so a filter on the "uvicorn.access"
logger replaces the values of those parameters before any handler sees them.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

ACCESS_LOGGER = "uvicorn.access"
PLACEHOLDER = "[redacted]"
#: Compared case-insensitively, after percent-decoding the name (as the app decodes it).
SENSITIVE_PARAMS = frozenset({
    "token", "code", "state", "sig", "signature", "validationtoken", "session_state",
    "access_token", "id_token", "refresh_token", "client_secret", "code_verifier",
})


def redact_query(target: str) -> str:
    """`target` (a path with its query) with the sensitive parameters' values replaced."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = []
    for pair in query.split("&"):
        name, eq, _value = pair.partition("=")
        if eq and unquote_plus(name).strip().lower() in SENSITIVE_PARAMS:
            pair = f"{name}={PLACEHOLDER}"
        pairs.append(pair)
    return f"{path}?{'&'.join(pairs)}"


class RedactQuerySecrets(logging.Filter):
    """Rewrites the request target among a record's arguments (uvicorn passes
    client, method, path-with-query, HTTP version and status as arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        return True


def install(logger_name: str = ACCESS_LOGGER) -> None:
    """Add the filter once (the app factory may run more than once in a process)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactQuerySecrets) for f in logger.filters):
        logger.addFilter(RedactQuerySecrets())
