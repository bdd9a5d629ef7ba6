"""Tracing for workers, starters and tests (`telemetry.tracing`): below the
activities that open spans and the workers that set the exporter up."""

from telemetry.tracing import (  # noqa: F401
    ActivitySpan,
    InMemorySpanExporter,
    activity_span,
    memory_exporter,
    setup_tracing,
)
