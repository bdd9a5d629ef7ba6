"""Sync health as OpenTelemetry metrics, recorded on the worker.

The mailbox workflow computes each connection's health figures (models/health.py) and
hands them, outside replay, to the listener `make_worker` registers here
(`record_health`); this module turns them into instruments. All carry the
`connection_id` attribute (an id, never content):

    concord.sync.cycles                      counter, outcome=succeeded|failed
    concord.sync.cycle.duration              histogram, s
    concord.sync.completion_rate             gauge, window=run|recent
    concord.sync.error_rate                  gauge, code=<error code> (quarantined / items)
    concord.sync.consistency                 gauge (items in a final state / items)
    concord.sync.recovery.last / .max        gauges, s
    concord.sync.cycle.last / .mean_recent   gauges, s
    concord.sync.cycle.trend_ratio           gauge (last / mean of recent)

One MeterProvider per process (OpenTelemetry allows one). `setup_metrics` installs it;
readers are fixed at creation, so tests call `memory_reader()` before anything else.
A Prometheus endpoint is served when `prometheus_port()` names a port
(CONCORD_PROMETHEUS_PORT); it needs the `prometheus` extra
(opentelemetry-exporter-prometheus).
"""

from __future__ import annotations

import threading

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource

from models.errors import Fatal
from models.health import add_listener
from models.workflow import HealthMetrics

ENV_PROMETHEUS_PORT = "CONCORD_PROMETHEUS_PORT"
METER_NAME = "concord.sync"

_lock = threading.Lock()
_provider: MeterProvider | None = None
_memory: InMemoryMetricReader | None = None
_prometheus_port: int | None = None


def prometheus_port() -> int | None:
    """The port to serve /metrics on (None: no Prometheus endpoint); a bad value stops the
    process with one line naming the variable."""
    import settings

    try:
        return settings.load().prometheus_port
    except settings.SettingsError as exc:
        raise Fatal(str(exc)) from None


def _prometheus_reader(port: int) -> MetricReader:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise Fatal(f"{ENV_PROMETHEUS_PORT} needs the opentelemetry-exporter-prometheus package "
                    "(pip install 'concord[prometheus]'), or leave it unset") from exc
    start_http_server(port)
    return PrometheusMetricReader()


def setup_metrics(service_name: str = "concord", reader: MetricReader | None = None) -> MeterProvider:
    """Install the process's MeterProvider once and return it.

    `reader` (tests) and, when configured, the Prometheus reader are its readers. A
    second call returns the provider already installed, whatever it is given."""
    global _provider, _prometheus_port
    with _lock:
        if _provider is not None:
            return _provider
        readers: list[MetricReader] = [reader] if reader is not None else []
        port = prometheus_port()
        if port is not None:
            readers.append(_prometheus_reader(port))
            _prometheus_port = port
        _provider = MeterProvider(metric_readers=readers,
                                  resource=Resource.create({SERVICE_NAME: service_name}))
        metrics.set_meter_provider(_provider)
        return _provider


def memory_reader() -> InMemoryMetricReader:
    """The process's in-memory reader for tests (installs the provider with it on first use)."""
    global _memory
    if _memory is None:
        if _provider is not None:
            raise RuntimeError("the MeterProvider was installed without an in-memory reader; "
                               "call memory_reader() before setup_metrics()")
        _memory = InMemoryMetricReader()
        setup_metrics(reader=_memory)
    return _memory


class _Instruments:
    def __init__(self) -> None:
        meter = metrics.get_meter(METER_NAME)
        self.cycles = meter.create_counter("concord.sync.cycles", unit="{cycle}",
                                           description="sync cycles by outcome")
        self.duration = meter.create_histogram("concord.sync.cycle.duration", unit="s",
                                               description="wall time of a sync cycle (workflow time)")
        self.completion = meter.create_gauge("concord.sync.completion_rate", unit="1",
                                             description="cycles succeeded / attempted (window=run|recent)")
        self.error_rate = meter.create_gauge("concord.sync.error_rate", unit="1",
                                             description="quarantined items by error code / items processed")
        self.consistency = meter.create_gauge("concord.sync.consistency", unit="1",
                                              description="items in a final state / items")
        self.recovery_last = meter.create_gauge("concord.sync.recovery.last", unit="s",
                                                description="first failing cycle -> next success, last time")
        self.recovery_max = meter.create_gauge("concord.sync.recovery.max", unit="s",
                                               description="first failing cycle -> next success, longest")
        self.cycle_last = meter.create_gauge("concord.sync.cycle.last", unit="s", description="last cycle's wall time")
        self.cycle_mean = meter.create_gauge("concord.sync.cycle.mean_recent", unit="s",
                                             description="mean wall time of the recent cycles")
        self.trend = meter.create_gauge("concord.sync.cycle.trend_ratio", unit="1",
                                        description="last cycle / mean of recent (above 1: slower)")


_instruments: _Instruments | None = None


def _get() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def record_health(connection_id: str, hm: HealthMetrics, ok: bool) -> None:
    """The listener: one finished cycle's figures into the instruments."""
    ins = _get()
    conn = {"connection_id": connection_id}
    ins.cycles.add(1, {**conn, "outcome": "succeeded" if ok else "failed"})
    if hm.last_cycle_s is not None:
        ins.duration.record(hm.last_cycle_s, conn)
        ins.cycle_last.set(hm.last_cycle_s, conn)
    if hm.mean_recent_cycle_s is not None:
        ins.cycle_mean.set(hm.mean_recent_cycle_s, conn)
    if hm.cycle_trend_ratio is not None:
        ins.trend.set(hm.cycle_trend_ratio, conn)
    if hm.completion_rate is not None:
        ins.completion.set(hm.completion_rate, {**conn, "window": "run"})
    if hm.recent_completion_rate is not None:
        ins.completion.set(hm.recent_completion_rate, {**conn, "window": "recent"})
    for code, rate in hm.error_rate_by_code.items():
        ins.error_rate.set(rate, {**conn, "code": code})
    if hm.consistency is not None:
        ins.consistency.set(hm.consistency, conn)
    if hm.last_recovery_s is not None:
        ins.recovery_last.set(hm.last_recovery_s, conn)
    if hm.max_recovery_s is not None:
        ins.recovery_max.set(hm.max_recovery_s, conn)


def install_health_listener() -> None:
    """Let the workflows of this process report their health figures (idempotent)."""
    add_listener(record_health)
