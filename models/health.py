"""Sync health figures of one connection, as pure functions over what the workflow has.

`record_cycle` runs in the mailbox workflow at the end of each cycle: its inputs are
workflow.now() around the cycle, whether it went through, and the store summary the
activities returned. It issues no command and reads no clock of its own, so replay
computes the same figures.

The OpenTelemetry side lives in telemetry/metrics.py: the worker registers a listener
here (`add_listener`), and the workflow hands each finished cycle's figures to the
listeners outside replay (`notify`), the way Temporal's own workflow metric meter
skips replay. A listener only records; it cannot change what the workflow does.
"""

from __future__ import annotations

from collections.abc import Callable

from models.workflow import FINAL_ITEM_STATES, HEALTH_WINDOW, HealthMetrics, StoreSummary

#: (connection_id, the figures after the cycle, the cycle's outcome) -> None
Listener = Callable[[str, HealthMetrics, bool], None]
_listeners: list[Listener] = []


def record_cycle(hm: HealthMetrics, *, started: float, ended: float, ok: bool, store: StoreSummary) -> None:
    """Fold one finished cycle (succeeded or not) into the figures, in place."""
    duration = max(0.0, ended - started)
    hm.cycles_attempted += 1
    hm.cycles_succeeded += int(ok)
    hm.completion_rate = round(hm.cycles_succeeded / hm.cycles_attempted, 4)
    hm.recent_outcomes = (hm.recent_outcomes + [ok])[-HEALTH_WINDOW:]
    hm.recent_completion_rate = round(sum(hm.recent_outcomes) / len(hm.recent_outcomes), 4)

    if ok:
        if hm.failure_started_at is not None:
            recovery = round(max(0.0, ended - hm.failure_started_at), 3)
            hm.last_recovery_s = recovery
            hm.max_recovery_s = max(hm.max_recovery_s or 0.0, recovery)
            hm.recoveries += 1
            hm.failure_started_at = None
    elif hm.failure_started_at is None:
        hm.failure_started_at = started

    hm.last_cycle_s = round(duration, 3)
    hm.recent_cycle_s = (hm.recent_cycle_s + [hm.last_cycle_s])[-HEALTH_WINDOW:]
    recent = hm.recent_cycle_s
    mean = sum(recent) / len(recent)
    hm.mean_recent_cycle_s = round(mean, 3)
    hm.cycle_trend_ratio = round(hm.last_cycle_s / mean, 3) if mean > 0 else None
    hm.cycle_slope_s = _slope(recent)

    apply_store(hm, store)


def apply_store(hm: HealthMetrics, store: StoreSummary) -> None:
    """Error rates by code and consistency from the store's counts (summed over kinds)."""
    items = sum(store.items.values())
    hm.items_processed = items
    hm.links = store.links
    hm.error_rate_by_code = {code: round(n / items, 4) for code, n in sorted(store.quarantined_by_code.items())
                             if items and n}
    final = sum(n for status, n in store.items.items() if status in FINAL_ITEM_STATES)
    hm.consistency = round(final / items, 4) if items else None


def _slope(values: list[float]) -> float | None:
    """Least-squares slope of values over their index (seconds per cycle)."""
    n = len(values)
    if n < 2:
        return None
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return round(num / den, 4)


def add_listener(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def notify(connection_id: str, hm: HealthMetrics, ok: bool) -> None:
    """Hand a finished cycle's figures to the listeners; a listener's failure is dropped
    (metrics must never fail a cycle)."""
    for listener in list(_listeners):
        try:
            listener(connection_id, hm, ok)
        except Exception:  # noqa: BLE001 - a broken exporter must not break syncing
            pass
