"""The activity boundary: no failure leaves an activity carrying a value.

An activity's exception becomes a Temporal failure: its message, type and cause
chain are written into workflow history (ActivityTaskFailed, and `lastFailure` of a
pending activity) and into the worker's log. Messages of ordinary exceptions quote
their input: a pydantic ValidationError prints `input_value={'contact': <an email
address>}`, SQLAlchemy prints the statement's parameters, a KeyError prints the key.
Connector errors are already converted by `activities.errors.to_application_error`
to class and code; this interceptor makes that true for everything else, at one
place every activity passes through:

- an ApplicationError we raised keeps its type, retry flags and delay, but loses any
  details and cause (its message is ours, class name and code only);
- any other exception becomes ApplicationError(type=<its class name>), retryable,
  with a message naming only the class;
- cancellation passes through untouched.

The original is logged with its traceback frames (file, line, function) but not its
message, so an operator can still find where it broke.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

log = logging.getLogger("concord.activities")


def scrubbed(exc: BaseException) -> ApplicationError:
    """The value-free failure to report for `exc`."""
    if isinstance(exc, ApplicationError):
        return ApplicationError(
            str(exc.message), type=exc.type, non_retryable=exc.non_retryable,
            next_retry_delay=exc.next_retry_delay, category=exc.category,
        )
    name = type(exc).__name__
    return ApplicationError(f"{name} (message withheld: it may quote synced content)", type=name)


def _frames(exc: BaseException) -> str:
    return "".join(traceback.format_tb(exc.__traceback__)).rstrip()


#: what Temporal itself must see as it is: cancellation, async completion, shutdown
_PASS_THROUGH = (asyncio.CancelledError, CancelledError, activity._CompleteAsyncError,  # type: ignore[attr-defined]
                 KeyboardInterrupt, SystemExit)


class _ScrubInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput):
        try:
            return await self.next.execute_activity(input)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure crosses the boundary here
            clean = scrubbed(exc)
            if not isinstance(exc, ApplicationError):
                info = activity.info()
                log.warning("activity %s attempt %d failed with %s\n%s", info.activity_type, info.attempt,
                            type(exc).__name__, _frames(exc))
            raise clean from None


class ScrubFailures(Interceptor):
    """Worker interceptor: put it on every worker that runs Concord's activities."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ScrubInbound(next)
