"""Tracing setup for workers, starters and tests.

One global tracer provider per process (OpenTelemetry allows only one), with
the exporter picked by the standard OpenTelemetry variables (read through
`settings`; CONCORD_OTEL_EXPORTER still works as a fallback alias of
OTEL_TRACES_EXPORTER) so the same code runs in the demo, in tests and against a
collector:

    OTEL_TRACES_EXPORTER=console  (default) spans as one JSON line each, on stdout
                                  or appended to CONCORD_OTEL_FILE so the demo's
                                  own output stays readable
    OTEL_TRACES_EXPORTER=otlp     opentelemetry-exporter-otlp, endpoint from the
                                  standard OTEL_EXPORTER_OTLP_ENDPOINT (and
                                  OTEL_EXPORTER_OTLP_PROTOCOL=grpc for gRPC)
    OTEL_TRACES_EXPORTER=none     spans are made but not exported

OTEL_SERVICE_NAME, when set, names the service instead of the entry point's name.

Span attributes are ids and counts only: traces leave the process and are not
encrypted, so contact fields, subjects and addresses must never reach them.
`activity_span` enforces that.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

import settings
from models.errors import ConnectorError, Fatal

__all__ = [
    "InMemorySpanExporter",
    "ActivitySpan",
    "activity_span",
    "memory_exporter",
    "setup_tracing",
]

ENV_EXPORTER = "OTEL_TRACES_EXPORTER"
#: The older name, read when OTEL_TRACES_EXPORTER is unset.
ENV_EXPORTER_ALIAS = "CONCORD_OTEL_EXPORTER"
ENV_FILE = "CONCORD_OTEL_FILE"
TRACER_NAME = "concord.activities"

_lock = threading.Lock()
_provider: TracerProvider | None = None
#: Keys of exporters already attached, so a second setup call adds nothing.
_attached: set[object] = set()
_memory: InMemorySpanExporter | None = None
_open_files: list[IO[str]] = []


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + os.linesep


def _global_provider(service_name: str, config: settings.Settings) -> TracerProvider:
    """The process's SDK provider, created and installed on first use.

    If something else already installed an SDK provider we add to it rather
    than fight it: `set_tracer_provider` ignores a second call anyway.
    """
    global _provider
    if _provider is not None:
        return _provider
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        _provider = current
    else:
        name = config.otel_service_name or service_name
        _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        trace.set_tracer_provider(_provider)
    return _provider


def _otlp_exporter(config: settings.Settings) -> SpanExporter:
    protocol = config.otel_exporter_otlp_protocol
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise Fatal(
            f"{ENV_EXPORTER}=otlp needs the opentelemetry-exporter-otlp package "
            "(pip install opentelemetry-exporter-otlp), or set it to console or none"
        ) from exc
    # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT / _HEADERS itself.
    return OTLPSpanExporter()


def _env_processor(config: settings.Settings) -> tuple[object, object | None]:
    """(attachment key, span processor or None) for the exporter the settings name."""
    kind = config.otel_traces_exporter.strip().lower()
    if kind == "none":
        return ("none",), None
    if kind == "console":
        path = config.otel_file
        key = ("console", os.path.abspath(path) if path else None)
        if key in _attached:
            return key, None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the provider
            _open_files.append(out)
            exporter = ConsoleSpanExporter(out=out, formatter=_one_line)
        else:
            exporter = ConsoleSpanExporter(formatter=_one_line)
        return key, SimpleSpanProcessor(exporter)
    if kind == "otlp":
        key = ("otlp", config.otel_exporter_otlp_endpoint)
        if key in _attached:
            return key, None
        return key, BatchSpanProcessor(_otlp_exporter(config))
    raise Fatal(f"{ENV_EXPORTER} (or {ENV_EXPORTER_ALIAS}) must be console, otlp or none, not {kind!r}")


def setup_tracing(service_name: str = "concord", exporter: SpanExporter | None = None) -> TracerProvider:
    """Install tracing once per process and return the provider.

    With `exporter`, that exporter is attached (synchronously, so tests see
    spans as soon as they end) instead of the one the settings name.
    Calling again with the same settings or the same exporter object attaches
    nothing new, so every entry point may call this without doubling spans.
    """
    with _lock:
        config = settings.load()
        provider = _global_provider(service_name, config)
        if exporter is not None:
            key: object = ("object", id(exporter))
            processor: object | None = None if key in _attached else SimpleSpanProcessor(exporter)
        else:
            key, processor = _env_processor(config)
        if processor is not None and key not in _attached:
            provider.add_span_processor(processor)  # type: ignore[arg-type]
            _attached.add(key)
        elif processor is None:
            _attached.add(key)
        return provider


def memory_exporter() -> InMemorySpanExporter:
    """The process's in-memory exporter for tests, attached on first use.

    Shared because processors cannot be removed from a provider: a fresh
    exporter per test would leave the old ones collecting forever. Call
    `.clear()` at the start of a test.
    """
    global _memory
    if _memory is None:
        _memory = InMemorySpanExporter()
    setup_tracing(exporter=_memory)
    return _memory


_MAX_ID_LEN = 200


def _check_value(key: str, value: object) -> object:
    """Let through numbers, booleans and id-like strings; refuse anything that reads like content."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) <= _MAX_ID_LEN and "@" not in value and not any(c.isspace() for c in value):
            return value
        raise Fatal(f"span attribute {key!r} must be an id or a count, not free text", detail={"key": key})
    raise Fatal(
        f"span attribute {key!r} must be an id or a count, not {type(value).__name__}",
        detail={"key": key},
    )


def _attr_name(key: str) -> str:
    return key if "." in key else f"concord.{key}"


class ActivitySpan:
    """The span an activity is running in; `set` adds counts as they become known."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def set(self, **attrs: object) -> None:
        for key, value in attrs.items():
            self.span.set_attribute(_attr_name(key), _check_value(key, value))  # type: ignore[arg-type]


@contextmanager
def activity_span(name: str, **attrs: object) -> Iterator[ActivitySpan]:
    """One span per activity step, carrying ids and counts (`concord.<key>`).

    A failure marks the span as an error with the exception's class and, for
    connector errors, their stable code; the message is left out because it
    can quote provider data.
    """
    checked = {_attr_name(k): _check_value(k, v) for k, v in attrs.items()}
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name, attributes=checked, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield ActivitySpan(span)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            if isinstance(exc, ConnectorError):
                span.set_attribute("concord.error_code", exc.code)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
