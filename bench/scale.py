"""Scale: many mailbox workflows on few workers, and webhook intake per CPU-second.

On a Temporal dev server of its own (SQLite state file), with worker processes of
its own (`python -m bench.scale worker`), each hosting the real MailboxSyncWorkflow:

1. idle: N mailbox workflows started without a wake-up and a one-day poll interval,
   on one worker whose workflow cache holds them all (the production default cache
   is 1,000; evicted workflows cost nothing in memory and a replay when woken).
   Figures: the worker's RSS before and after (growth per workflow) and its CPU over
   an idle window (per workflow per hour). Baseline: the same worker with none.
2. woken at once: M mailboxes (already past their first cycle) get `wake` together;
   the time until every one has finished its cycle, and cycles/s. The kind is a
   bench-only one whose steps return empty results at once (and subscription upkeep
   likewise), so this measures the workflow and Temporal side of a cycle (7 activity
   round trips), not connectors or the store (`bench sync` measures those).
   Baseline: one mailbox woken alone, its cycle time.
3. the same with 2 worker processes on one task queue: cycles per process.
4. webhook intake (bench/webhooks.py): accepted notifications per server CPU-second
   and reply p99, in the same run: before (a store read per post, uvicorn parsing HTTP
   with h11), with the 5 s subscription cache alone, and after (cache and httptools).

Run: `python -m bench scale` (full: 10,000 idle, 1,000 woken), `--quick` (500, 100).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from models.workflow import FetchResult, PlanSummary, RejectionSummary, StoreSummary, WriteSummary

REPO_ROOT = Path(__file__).resolve().parent.parent
KIND = "scale"
STEPS = ("fetch_mailbox", "fetch_platform", "plan", "write", "handle_rejections", "retry_quarantined", "summarize")
#: webhook intake before this work (bench/webhooks.py, notifications per server CPU-second)
WEBHOOK_BASELINE_PER_CPU_S = 1_031


@dataclass
class Sizes:
    idle: int = 10_000
    woken: int = 1_000
    idle_window_s: float = 60.0
    webhooks: int = 5_000

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(idle=500, woken=100, idle_window_s=5.0, webhooks=500)


# ----------------------------------------------------------------------------- worker process


def _activities() -> list:
    """The bench kind's steps and subscription upkeep: empty results, no I/O."""
    from temporalio import activity

    counts = {"cycles": 0}

    def make(step: str):
        if step in ("fetch_mailbox", "fetch_platform"):
            def fn(ref) -> FetchResult:
                return FetchResult(stream=step)
        elif step == "plan":
            def fn(ref, approve) -> PlanSummary:
                return PlanSummary()
        elif step == "write":
            def fn(ref) -> WriteSummary:
                return WriteSummary()
        elif step == "handle_rejections":
            def fn(ref) -> RejectionSummary:
                return RejectionSummary()
        elif step == "retry_quarantined":
            def fn(cid) -> int:
                return 0
        else:
            def fn(cid) -> StoreSummary:
                counts["cycles"] += 1  # the last step of a cycle
                return StoreSummary()
        return activity.defn(fn, name=f"{KIND}.{step}")

    def maintain(cid) -> dict:
        return {}

    acts = [make(s) for s in STEPS] + [activity.defn(maintain, name="subscriptions.maintain")]
    return acts, counts


def _rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_main(argv: list[str]) -> None:
    """`python -m bench.scale worker`: MailboxSyncWorkflow and the bench kind's steps; every
    half second writes its cycles, RSS and CPU to a JSON file."""
    import concurrent.futures

    from temporalio.worker import Worker

    from workers.temporal_client import connect
    from workflows.mailbox_sync import MailboxSyncWorkflow

    p = argparse.ArgumentParser(prog="bench.scale worker")
    p.add_argument("--target", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--cache", type=int, default=1000)
    args = p.parse_args(argv)
    acts, counts = _activities()

    def write_stats(ready: bool) -> None:
        tmp = args.stats + ".tmp"
        Path(tmp).write_text(json.dumps({"ready": ready, "cycles": counts["cycles"], "rss_kb": _rss_kb(),
                                         "cpu_s": _cpu_s(), "pid": os.getpid()}))
        os.replace(tmp, args.stats)

    async def main() -> None:
        client = await connect(args.target, tracing=False)
        worker = Worker(client, task_queue=args.task_queue, workflows=[MailboxSyncWorkflow], activities=acts,
                        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=16),
                        max_concurrent_activities=16, max_cached_workflows=args.cache)
        async with worker:
            while True:
                write_stats(True)
                await asyncio.sleep(0.5)

    write_stats(False)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


class WorkerProcess:
    def __init__(self, target: str, task_queue: str, workdir: Path, cache: int = 1000) -> None:
        name = uuid.uuid4().hex[:6]
        self.stats_path = workdir / f"scale-worker-{name}.json"
        self.log_path = workdir / f"scale-worker-{name}.log"
        self.cmd = [sys.executable, "-m", "bench.scale", "worker", "--target", target, "--task-queue", task_queue,
                    "--stats", str(self.stats_path), "--cache", str(cache)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, "CONCORD_OTEL_EXPORTER": "none"})
        deadline = time.monotonic() + timeout
        while not self.stats().get("ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scale worker did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def rss_kb(self) -> int:
        return _rss_kb(self.proc.pid)

    def cpu_s(self) -> float:
        return _cpu_s(self.proc.pid)

    def cycles(self) -> int:
        return int(self.stats().get("cycles", 0))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ----------------------------------------------------------------------------- driving


async def _start_many(client, task_queue: str, n: int, *, wake: bool, poll_s: float, prefix: str,
                      concurrency: int = 32) -> list[str]:
    from models.workflow import MailboxSyncInput
    from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id

    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    queue = list(ids)

    async def starter() -> None:
        while queue:
            cid = queue.pop()
            await client.start_workflow(
                MailboxSyncWorkflow.run,
                MailboxSyncInput(connection_id=cid, org_id="org-scale", provider="google", poll_interval_s=poll_s,
                                 kinds=[KIND], wake=wake),
                id=workflow_id(cid), task_queue=task_queue)

    await asyncio.gather(*(starter() for _ in range(concurrency)))
    return ids


async def _signal_all(client, ids: list[str], concurrency: int = 64) -> None:
    from workflows.mailbox_sync import workflow_id

    queue = list(ids)

    async def signaller() -> None:
        while queue:
            await client.get_workflow_handle(workflow_id(queue.pop())).signal("wake", "bench")

    await asyncio.gather(*(signaller() for _ in range(concurrency)))


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _idle_task_queue_drained(client, task_queue: str, workers: list[WorkerProcess], n: int,
                                   timeout: float) -> None:
    """Every idle workflow has had its first task: the worker's CPU has gone quiet."""
    deadline = time.monotonic() + timeout
    last = workers[0].cpu_s()
    quiet = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = workers[0].cpu_s()
        quiet = quiet + 1 if now - last < 0.03 else 0
        if quiet >= 3:
            return
        last = now
    raise RuntimeError("the worker did not go idle")


async def _idle(report, client, dev_target: str, workdir: Path, sizes: Sizes, say) -> None:
    tq = f"scale-idle-{uuid.uuid4().hex[:6]}"
    w = WorkerProcess(dev_target, tq, workdir, cache=sizes.idle + 100)
    w.start()
    try:
        await asyncio.sleep(2.0)
        rss0, cpu0 = w.rss_kb(), w.cpu_s()
        await asyncio.sleep(min(10.0, sizes.idle_window_s))
        base_cpu = w.cpu_s() - cpu0
        base_window = min(10.0, sizes.idle_window_s)
        report("scale.idle.baseline_rss", rss0 / 1024, "MiB", "the worker with no workflow")
        report("scale.idle.baseline_cpu_per_s", base_cpu / base_window, "CPU-s/s", "the worker with no workflow")
        say(f"starting {sizes.idle:,} idle mailbox workflows (no wake-up, poll interval one day)")
        t0 = time.perf_counter()
        await _start_many(client, tq, sizes.idle, wake=False, poll_s=86_400, prefix=f"idle-{tq[-6:]}")
        started_s = time.perf_counter() - t0
        await _idle_task_queue_drained(client, tq, [w], sizes.idle, timeout=600)
        report("scale.idle.workflows", sizes.idle, "", "on one worker, all in its workflow cache")
        report("scale.idle.start_per_s", sizes.idle / started_s, "workflows/s", "start_workflow, 32 at a time")
        rss1 = w.rss_kb()
        report("scale.idle.worker_rss", rss1 / 1024, "MiB", f"baseline {rss0 / 1024:.1f} MiB")
        report("scale.idle.rss_per_workflow", (rss1 - rss0) / sizes.idle, "KiB", "RSS growth / workflows")
        cpu0 = w.cpu_s()
        t0 = time.perf_counter()
        await asyncio.sleep(sizes.idle_window_s)
        window = time.perf_counter() - t0
        cpu = w.cpu_s() - cpu0
        report("scale.idle.window_s", window, "s")
        report("scale.idle.worker_cpu_per_s", cpu / window, "CPU-s/s",
               f"baseline {base_cpu / base_window:.4f} with no workflow")
        report("scale.idle.cpu_ms_per_workflow_hour", max(0.0, cpu / window - base_cpu / base_window)
               * 3600 * 1000 / sizes.idle, "ms", "above the empty worker's")
    finally:
        w.stop()


async def _woken(report, client, dev_target: str, workdir: Path, sizes: Sizes, processes: int, say) -> None:
    from workflows.mailbox_sync import workflow_id

    tq = f"scale-wake-{uuid.uuid4().hex[:6]}"
    workers = [WorkerProcess(dev_target, tq, workdir, cache=max(1000, sizes.woken + 100)) for _ in range(processes)]
    for w in workers:
        w.start()
    prefix = f"p{processes}"
    try:
        total = lambda: sum(w.cycles() for w in workers)  # noqa: E731
        # Baseline: one mailbox alone, past its first cycle, woken by itself.
        [solo] = await _start_many(client, tq, 1, wake=True, poll_s=86_400, prefix=f"solo-{tq[-6:]}")
        await _until(lambda: total() >= 1, 60, "the solo mailbox's first cycle")
        solo_times = []
        for _ in range(3):
            before = total()
            t0 = time.perf_counter()
            await client.get_workflow_handle(workflow_id(solo)).signal("wake", "bench")
            await _until(lambda: total() > before, 60, "the solo mailbox's cycle")
            solo_times.append(time.perf_counter() - t0)
        solo_s = sorted(solo_times)[1]

        say(f"{processes} worker process(es): starting {sizes.woken:,} mailboxes (first cycle each)")
        base = total()
        ids = await _start_many(client, tq, sizes.woken, wake=True, poll_s=86_400, prefix=f"{prefix}-{tq[-6:]}")
        await _until(lambda: total() >= base + sizes.woken, 600, "every mailbox's first cycle")
        await asyncio.sleep(1.0)
        before = [w.cycles() for w in workers]
        cpu_before = [w.cpu_s() for w in workers]
        say(f"waking {sizes.woken:,} mailboxes at once")
        t0 = time.perf_counter()
        await _signal_all(client, ids)
        signalled_s = time.perf_counter() - t0
        await _until(lambda: total() >= sum(before) + sizes.woken, 900, "every woken mailbox's cycle")
        elapsed = time.perf_counter() - t0
        per_process = [w.cycles() - b for w, b in zip(workers, before)]
        cpu = [w.cpu_s() - c for w, c in zip(workers, cpu_before)]
        name = f"scale.wake{processes}"
        report(f"{name}.mailboxes", sizes.woken, "", f"{processes} worker process(es), one task queue")
        report(f"{name}.signal_s", signalled_s, "s", "sending every wake signal, 64 at a time")
        report(f"{name}.all_done_s", elapsed, "s", f"baseline: one mailbox alone {solo_s:.3f} s")
        report(f"{name}.cycles_per_s", sizes.woken / elapsed, "cycles/s", f"baseline 1 / {solo_s:.3f} s = "
               f"{1 / solo_s:.1f} cycles/s, one at a time")
        report(f"{name}.worker_cpu_ms_per_cycle", sum(cpu) * 1000 / sizes.woken, "ms", "all worker processes")
        for i, n in enumerate(per_process):
            report(f"{name}.process{i + 1}_cycles", n, "cycles", f"{n / max(1, sizes.woken):.0%} of the burst")
    finally:
        for w in workers:
            w.stop()


def _webhooks(report, sizes: Sizes, say) -> None:
    from bench import webhooks

    figures = {}
    # before: the intake as it was (a store read per post, uvicorn on h11); after: as it is
    runs = (("before", {"CONCORD_BENCH_SUB_CACHE_S": "0", "CONCORD_BENCH_HTTP": "h11"}),
            ("cache_only", {"CONCORD_BENCH_SUB_CACHE_S": "", "CONCORD_BENCH_HTTP": "h11"}),
            ("after", {"CONCORD_BENCH_SUB_CACHE_S": "", "CONCORD_BENCH_HTTP": ""}))
    for label, env in runs:
        say(f"webhook intake, {label}: " + ", ".join(f"{k}={v or 'unset'}" for k, v in env.items()))
        old = {k: os.environ.get(k) for k in env}
        for k, v in env.items():
            if v:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)
        try:
            figures[label] = webhooks.run(lambda *a, **k: None, count=sizes.webhooks)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    before, after = figures["before"], figures["after"]
    report("scale.webhooks.notifications", sizes.webhooks, "", "per run, 50 subscriptions, concurrency 8")
    for key, unit in (("accepted_per_cpu_s", "notifications per server CPU-second"), ("reply_p99_ms", "ms"),
                      ("reply_p50_ms", "ms"), ("accepted_per_s", "notifications/s, wall clock")):
        b, a = before.get(f"webhooks.{key}", float("nan")), after.get(f"webhooks.{key}", float("nan"))
        c = figures["cache_only"].get(f"webhooks.{key}", float("nan"))
        note = f"before {b:,.1f}, subscription cache alone {c:,.1f} (same run)"
        if key == "accepted_per_cpu_s":
            note += f"; recorded baseline {WEBHOOK_BASELINE_PER_CPU_S:,}, goal 2,000"
        report(f"scale.webhooks.{key}", a, unit, note)
    report("scale.webhooks.non_202", after.get("webhooks.non_202", 0), "", f"before {before.get('webhooks.non_202', 0)}")


async def _run(report, sizes: Sizes, say) -> None:
    from workers.devstack import DevServer, free_port_pair
    from workers.temporal_client import connect

    with tempfile.TemporaryDirectory(prefix="concord-bench-scale-") as tmp:
        workdir = Path(tmp)
        port, ui_port = free_port_pair()
        # In memory: the dev server's SQLite file, not the worker, would be what a
        # 10,000-workflow start measures.
        dev = DevServer(port, ui_port, db_path=None, log_path=workdir / "temporal.log", reuse_existing=False,
                        log_level="error", announce=say)
        await dev.astart()
        try:
            client = await connect(dev.target, tracing=False)
            await _idle(report, client, dev.target, workdir, sizes, say)
            await _woken(report, client, dev.target, workdir, sizes, 1, say)
            await _woken(report, client, dev.target, workdir, sizes, 2, say)
        finally:
            await asyncio.to_thread(dev.stop)


def run(report, *, quick: bool = False, say: Callable[[str], None] = print, sizes: Sizes | None = None) -> None:
    sizes = sizes or (Sizes.quick() if quick else Sizes())
    say(f"sizes: {sizes.idle:,} idle workflows, {sizes.woken:,} woken at once, idle window "
        f"{sizes.idle_window_s:g} s, {sizes.webhooks:,} webhook notifications")
    asyncio.run(_run(report, sizes, say))
    _webhooks(report, sizes, say)  # runs its own event loops


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        worker_main(argv[1:])
        return
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    run(lambda name, value, unit="", note="": print(f"{name:44s} {value!s:>14} {unit} {note}"), quick=a.quick)


if __name__ == "__main__":
    from bench.report import exit_after_printing

    main()
    exit_after_printing(0)
