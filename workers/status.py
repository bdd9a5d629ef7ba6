"""`concord status CONN`: a connection's sync health, for a person (or `--json` for the figures).

Everything comes from the workflow's `state` query (`SyncState.health_metrics` and
the counts beside it); nothing is read from the store.
"""

from __future__ import annotations

import json
import time

from models.workflow import HEALTH_WINDOW, SyncState


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


def _secs(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 120:
        return f"{x / 60:.1f} min"
    return f"{x:.2f} s"


def status_figures(st: SyncState) -> dict:
    """The raw figures `--json` prints."""
    hm = st.health_metrics
    return {
        "connection_id": st.connection_id,
        "health": st.health,
        "cycles": st.cycles,
        "last_error": st.last_error,
        "consecutive_failures": st.consecutive_failures,
        "health_metrics": hm.model_dump(mode="json"),
    }


def render_status(st: SyncState, now: float | None = None) -> str:
    hm = st.health_metrics
    now = time.time() if now is None else now
    lines = [f"connection {st.connection_id}: {st.health}"
             + (f" ({st.last_error})" if st.last_error else "")]
    lines.append(f"  cycles          {hm.cycles_succeeded} of {hm.cycles_attempted} succeeded "
                 f"({_pct(hm.completion_rate)}); last {len(hm.recent_outcomes)} of up to {HEALTH_WINDOW}: "
                 f"{_pct(hm.recent_completion_rate)}")
    if st.consecutive_failures:
        since = f", failing for {_secs(now - hm.failure_started_at)}" if hm.failure_started_at else ""
        lines.append(f"  failing         {st.consecutive_failures} cycle(s) in a row{since}")
    rates = ", ".join(f"{code} {_pct(rate)}" for code, rate in hm.error_rate_by_code.items()) or "none"
    lines.append(f"  items           {hm.items_processed} processed; quarantined by code: {rates}")
    lines.append(f"  consistency     {_pct(hm.consistency)} of items settled on both sides; {hm.links} links")
    lines.append(f"  recovery        last {_secs(hm.last_recovery_s)}, max {_secs(hm.max_recovery_s)} "
                 f"({hm.recoveries} recoveries)")
    trend = "n/a" if hm.cycle_trend_ratio is None else f"{hm.cycle_trend_ratio:.2f}x the mean"
    slope = "" if hm.cycle_slope_s is None else f", slope {hm.cycle_slope_s:+.3f} s/cycle"
    lines.append(f"  cycle time      last {_secs(hm.last_cycle_s)}, mean of last {len(hm.recent_cycle_s)} "
                 f"{_secs(hm.mean_recent_cycle_s)} (last is {trend}{slope})")
    return "\n".join(lines)


def status_text(st: SyncState, as_json: bool) -> str:
    return json.dumps(status_figures(st), indent=2) if as_json else render_status(st)
