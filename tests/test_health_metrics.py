"""Sync health metrics: a mailbox that fails, then recovers, on the Temporal dev server.

The state query's `health_metrics` shows the completion rate below 1, the recovery
time, error rates by code and cycle durations; the OpenTelemetry instruments the
worker records see the same cycles; `concord status` prints them, and refuses a
connection that has no workflow in one line with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from activities.pipeline import KindPipeline
from models.health import record_cycle
from models.workflow import HealthMetrics, MailboxSyncInput, StoreSummary, SyncState
from store.db import make_engine, session_factory
from telemetry.metrics import memory_reader
from tests.e2e_rig import Rig, throwaway_keyring
from tests.memory_connectors import MemoryMailbox, MemoryPlatform, unavailable
from tests.test_cli import _target, concord
from tests.test_kinds import TASKS, Task, TaskRecord
from workers import client as api
from workers.scenario import build_scenario
from workers.status import render_status
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker
from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


def test_figures_fold_cycles_in_order():
    """Pure: rates, recovery from the first failing cycle's start, duration trend."""
    hm = HealthMetrics()
    store = StoreSummary(items={"applied": 8, "quarantined": 2}, quarantined_by_code={"validation": 2}, links=8)
    record_cycle(hm, started=0, ended=2, ok=True, store=store)
    record_cycle(hm, started=10, ended=13, ok=False, store=store)
    record_cycle(hm, started=40, ended=44, ok=False, store=store)
    record_cycle(hm, started=100, ended=106, ok=True, store=store)
    assert (hm.cycles_attempted, hm.cycles_succeeded, hm.completion_rate) == (4, 2, 0.5)
    assert hm.recent_outcomes == [True, False, False, True]
    assert hm.last_recovery_s == hm.max_recovery_s == 96  # 10 (first failing start) -> 106
    assert hm.failure_started_at is None and hm.recoveries == 1
    assert hm.error_rate_by_code == {"validation": 0.2} and hm.consistency == 0.8
    assert hm.last_cycle_s == 6 and hm.mean_recent_cycle_s == 3.75 and hm.cycle_trend_ratio == 1.6
    assert hm.cycle_slope_s == 1.3  # 2, 3, 4, 6 s: getting slower
    # An older state, without the section, still loads.
    old = SyncState.model_validate({"connection_id": "c", "cycles": 3})
    assert old.health_metrics.cycles_attempted == 0
    assert "0 of 0 succeeded" in render_status(old)


def test_prometheus_port_comes_from_the_environment(monkeypatch):
    from models.errors import Fatal
    from telemetry.metrics import ENV_PROMETHEUS_PORT, prometheus_port

    monkeypatch.delenv(ENV_PROMETHEUS_PORT, raising=False)
    assert prometheus_port() is None
    monkeypatch.setenv(ENV_PROMETHEUS_PORT, " 9464 ")
    assert prometheus_port() == 9464
    for bad in ("metrics", "0", "70000"):
        monkeypatch.setenv(ENV_PROMETHEUS_PORT, bad)
        with pytest.raises(Fatal):
            prometheus_port()


def _points(reader, connection_id: str) -> dict[str, list]:
    """metric name -> data points of this connection."""
    out: dict[str, list] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                pts = [p for p in m.data.data_points if p.attributes.get("connection_id") == connection_id]
                if pts:
                    out.setdefault(m.name, []).extend(pts)
    return out


async def test_failing_then_recovering_mailbox_shows_its_health(temporal_env, urls):
    reader = memory_reader()
    store_url, crm_url = urls
    sc = build_scenario(store_url, crm_url, connection_id=f"h-{uuid.uuid4().hex[:6]}",
                        org_id=f"org-{uuid.uuid4().hex[:6]}")
    mailbox = MemoryMailbox(record=TaskRecord, id_prefix="task")
    platform = MemoryPlatform(record=TaskRecord)
    for title in ("Write spec", "Call Ada", "Review PR"):
        mailbox.user_create(Task(title=title, status="open"))
    mailbox.user_create(Task(title="   ", status="open"))  # no title: quarantined by its validation rule
    sessions = session_factory(make_engine(store_url))
    tasks = KindPipeline(sessions, TASKS, platform, lambda info: mailbox)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    acts = build_activities(store_url, crm_url, keyring=throwaway_keyring())
    cid = sc.connection_id
    try:
        async with make_worker(temporal_env.client, acts, task_queue=tq, extra_activities=tasks.activities()):
            r = Rig(temporal_env, sc, tq)
            await api.start_org_sync(temporal_env.client, sc.org_id, task_queue=tq, poll_interval_s=3600,
                                     kinds=["tasks"])
            await temporal_env.client.start_workflow(
                MailboxSyncWorkflow.run,
                MailboxSyncInput(connection_id=cid, org_id=sc.org_id, provider="google", poll_interval_s=3600,
                                 kinds=["tasks"], activity_attempts=2),
                id=workflow_id(cid), task_queue=tq)
            await r.wait_cycles(1)
            st = await r.settle(0)
            assert st.health == "active", st.last_error
            hm = st.health_metrics
            assert hm.completion_rate == 1.0 and hm.last_recovery_s is None

            # The platform refuses writes: the cycle fails (twice), then it comes back.
            platform.faults.fail_calls(unavailable(), op="upsert", count=1000)
            [spec] = [i for i, t in mailbox.contacts().items() if t.title == "Write spec"]
            mailbox.user_edit(spec, Task(title="Write spec", status="done"))
            st = await r.cycle()
            assert st.health == "failing"
            await api.wake(temporal_env.client, cid, "test")
            st = await r.settle(st.cycles)
            assert st.health == "failing" and st.health_metrics.failure_started_at is not None
            await asyncio.sleep(0.5)
            platform.faults.clear()
            st = await r.cycle()
            assert st.health == "active", st.last_error

            hm = st.health_metrics
            assert hm.cycles_attempted == st.cycles and hm.cycles_succeeded < hm.cycles_attempted
            assert 0 < hm.completion_rate < 1 and hm.recent_completion_rate == hm.completion_rate
            assert hm.recent_outcomes[-1] is True and False in hm.recent_outcomes
            assert hm.last_recovery_s is not None and hm.last_recovery_s > 0.5
            assert hm.max_recovery_s >= hm.last_recovery_s and hm.recoveries == 1
            assert hm.failure_started_at is None
            assert hm.error_rate_by_code and all(0 < v < 1 for v in hm.error_rate_by_code.values())
            assert hm.items_processed >= 4 and 0 < hm.consistency < 1 and hm.links == 3
            assert hm.last_cycle_s > 0 and len(hm.recent_cycle_s) == hm.cycles_attempted
            assert hm.mean_recent_cycle_s > 0 and hm.cycle_trend_ratio > 0 and hm.cycle_slope_s is not None

            # The worker's OpenTelemetry instruments saw the same cycles.
            pts = _points(reader, cid)
            by_outcome = {p.attributes["outcome"]: p.value for p in pts["concord.sync.cycles"]}
            assert by_outcome == {"succeeded": hm.cycles_succeeded,
                                  "failed": hm.cycles_attempted - hm.cycles_succeeded}
            assert pts["concord.sync.cycle.duration"][0].count == hm.cycles_attempted
            assert {p.attributes["window"]: p.value for p in pts["concord.sync.completion_rate"]}["run"] == \
                hm.completion_rate
            assert {p.attributes["code"] for p in pts["concord.sync.error_rate"]} == set(hm.error_rate_by_code)
            assert pts["concord.sync.recovery.last"][0].value == hm.last_recovery_s
            for name in ("concord.sync.consistency", "concord.sync.recovery.max", "concord.sync.cycle.last",
                         "concord.sync.cycle.mean_recent", "concord.sync.cycle.trend_ratio"):
                assert name in pts, name

            # `concord status`: a summary for a person, the raw figures with --json.
            target = _target(temporal_env)
            res = await concord("--temporal", target, "status", cid)
            assert res.returncode == 0, res.stderr
            out = res.stdout
            assert f"connection {cid}: active" in out
            assert f"{hm.cycles_succeeded} of {hm.cycles_attempted} succeeded" in out
            for code in hm.error_rate_by_code:
                assert code in out
            assert "recovery" in out and "cycle time" in out
            res = await concord("--temporal", target, "status", "--json", cid)
            assert res.returncode == 0, res.stderr
            raw = json.loads(res.stdout)
            assert raw["health_metrics"]["last_recovery_s"] == hm.last_recovery_s
            assert raw["health_metrics"]["completion_rate"] == hm.completion_rate

            res = await concord("--temporal", target, "status", "no-such-connection")
            assert res.returncode != 0 and res.stdout == ""
            assert len(res.stderr.strip().splitlines()) == 1 and "no-such-connection" in res.stderr
    finally:
        sc.close()
