"""Waiting out a provider's rate limit (and a read's blip) inside the activity that met it.

A 429 is the provider asking us to slow down, not a failure: spending a Temporal
attempt on it lets a throttled listing of ten pages fail for good within seconds
and throws away the pages already read. So an activity sleeps for the provider's
Retry-After (heartbeating, so a lost worker is still noticed) and carries on,
within a budget; only once the budget is spent does the RateLimited error escape
to Temporal, whose retry then honours the delay (`next_retry_delay`).

A request that is safe to repeat (a listing page, a marker scan, a platform upsert
keyed for idempotency) is also repeated in place after a transient error, a few
times with a short backoff: a 20-page scan should not start over for one 503. A
mailbox create is not: one that met a 5xx may have landed, so it is left to
Temporal and the executor's recovery by marker.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from temporalio import activity

from models.errors import RateLimited, Transient

T = TypeVar("T")

#: the shortest and longest single wait; a missing Retry-After means "soon"
MIN_WAIT_S = 0.2
MAX_WAIT_S = 60.0
DEFAULT_WAIT_S = 1.0
#: total time one activity attempt may spend waiting on rate limits
DEFAULT_BUDGET_S = 900.0
HEARTBEAT_EVERY_S = 2.0
#: in-place repeats of a read after a transient error, and the first backoff (doubling)
READ_REPEATS = 3
READ_BACKOFF_S = 0.5


class Pacer:
    """Sleeps through rate limits for one activity attempt; `progress()` gives the
    heartbeat details to send while waiting (e.g. the page token to resume from)."""

    def __init__(self, progress: Callable[[], tuple] = tuple, *, budget_s: float = DEFAULT_BUDGET_S,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.progress = progress
        self.budget_s = budget_s
        self.waited_s = 0.0
        self.waits = 0
        self._sleep = sleep or _sleep_heartbeating

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args)`, repeated after each rate limit until it answers or the budget is spent."""
        while True:
            try:
                return fn(*args, **kwargs)
            except RateLimited as exc:
                self.wait(exc)

    def idempotent(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Like `call`, for a request that is safe to repeat (a read, an upsert keyed for
        idempotency): a transient error is also repeated, a few times."""
        repeats = 0
        while True:
            try:
                return self.call(fn, *args, **kwargs)
            except Transient as exc:
                if isinstance(exc, RateLimited) or repeats >= READ_REPEATS:
                    raise
                self._sleep(READ_BACKOFF_S * 2 ** repeats, self.progress)
                repeats += 1

    def wait(self, exc: RateLimited) -> None:
        """Sleep for the provider's delay, or re-raise `exc` once the budget is spent."""
        delay = min(MAX_WAIT_S, max(MIN_WAIT_S, exc.retry_after if exc.retry_after else DEFAULT_WAIT_S))
        if self.waited_s + delay > self.budget_s:
            raise exc
        self.waits += 1
        self.waited_s += delay
        self._sleep(delay, self.progress)


def _sleep_heartbeating(delay: float, progress: Callable[[], tuple]) -> None:
    end = time.monotonic() + delay
    in_activity = activity.in_activity()
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        if in_activity:
            activity.heartbeat(*progress())
        time.sleep(min(left, HEARTBEAT_EVERY_S))
