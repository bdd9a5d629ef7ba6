"""The one way Concord builds a Temporal client, and the names every part shares.

Worker, starter, tests and replayer must agree on the data converter (pydantic
models cross the wire) and on the tracing interceptor (so a trace follows a
sync cycle from the client call through the workflow into each activity), so
they all come through `connect` instead of calling `Client.connect` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from temporalio.client import Client, Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter

from models.errors import Transient
from workflows.attributes import ORG_ID, PROVIDER, SEARCH_ATTRIBUTE_KEYS, STATUS  # noqa: F401 (re-exported)

#: The task queue the sync worker polls and every starter targets.
TASK_QUEUE = "concord-sync"

#: Name of the tracer the interceptor uses; spans from Temporal calls carry it.
TRACER_NAME = "concord.temporal"

DATA_CONVERTER = pydantic_data_converter


def tracing_interceptor() -> TracingInterceptor:
    """A tracing interceptor bound to the global tracer provider.

    `trace.get_tracer` returns a proxy when no provider is set yet, so a client
    built before `telemetry.setup_tracing` still reports once tracing is on.
    """
    return TracingInterceptor(trace.get_tracer(TRACER_NAME))


async def connect(
    target: str,
    namespace: str = "default",
    *,
    interceptors: Sequence[Interceptor] = (),
    tracing: bool = True,
    identity: str | None = None,
) -> Client:
    """Connect with Concord's converter and interceptors.

    Interceptors on the client also apply to workers built from it, which is
    why tracing is attached here rather than on each worker.
    Raises `Transient` when the frontend cannot be reached: the caller may retry.
    """
    chain: list[Interceptor] = [tracing_interceptor()] if tracing else []
    chain.extend(interceptors)
    kwargs = {"identity": identity} if identity else {}
    try:
        return await Client.connect(
            target,
            namespace=namespace,
            data_converter=DATA_CONVERTER,
            interceptors=chain,
            **kwargs,
        )
    except RuntimeError as exc:
        raise Transient(f"Temporal frontend at {target} is not reachable", detail={"target": target}) from exc
