"""Moved to the `telemetry` package (activities open spans, so tracing sits below
them). This name stays only so older imports keep working."""

from telemetry.tracing import *  # noqa: F401,F403
