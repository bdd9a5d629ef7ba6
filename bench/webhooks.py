"""Webhook server throughput: accepted Graph notifications per second on one core.

The server (uvicorn, the real app from api.app, the store on SQLite by default)
runs in a subprocess pinned with os.sched_setaffinity to one CPU; the load comes
from this process, pinned to the other CPUs when there are any, through an httpx
AsyncClient with bounded concurrency: COUNT notifications spread over SUBS
subscriptions (one connection each), every one authenticated against the store.

The signal is a counting fake inside the server: the figures show how many
workflow signals the accepted notifications caused after coalescing, not what
Temporal makes of them (the wake-latency bench measures that part).

Two rates: wall-clock accepted/s, and accepted per CPU-second the server
process used (from /proc), which is the capacity of one core whether or not the
client kept it busy; `server_cpu_busy` below 1 means the client (or a neighbour on
a shared machine) was the limit, and the CPU-second figure is the one to quote.

Run: `python -m bench.webhooks` (about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

Report = Callable[..., None]

COUNT = 5_000
SUBS = 50
# httpx's async client gets slower per request as concurrency grows; 8 keeps it ahead.
CONCURRENCY = 8
WINDOW_S = 1.0


# ------------------------------------------------------------------ server side


def _serve(store_url: str, port: int, cpu: int, window_s: float) -> None:
    """Subprocess entry: the webhook app with a counting signal, pinned to `cpu`."""
    import uvicorn

    from api.app import create_app
    from api.webhooks import Waker, WebhookDeps, store_lookup, webhook_router
    from store.db import make_engine, session_factory

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    sessions = session_factory(make_engine(store_url))

    async def counting_signal(connection_id: str, org_id: str, provider: str, reason: str) -> None:
        return None  # Waker counts signals_sent; Temporal is not involved here

    waker = Waker(counting_signal, store_lookup(sessions), window_s=window_s)
    deps = WebhookDeps(sessions=sessions, waker=waker, admin_token=os.environ["CONCORD_ADMIN_TOKEN"])
    if os.environ.get("CONCORD_BENCH_SUB_CACHE_S"):  # bench/scale.py: 0 gives the intake as it was
        deps.subscription_cache_s = float(os.environ["CONCORD_BENCH_SUB_CACHE_S"])
    app = create_app([webhook_router(deps)])
    # bench/scale.py sets CONCORD_BENCH_HTTP=h11 for the intake as it was (pure-Python HTTP parsing)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
                http=os.environ.get("CONCORD_BENCH_HTTP") or "auto")


# ------------------------------------------------------------------ client side


def _seed(store_url: str, subs_n: int) -> list[tuple[str, str]]:
    from store import repo
    from store import subscriptions as subs
    from store.db import make_engine, migrate, session_factory

    migrate(store_url)
    engine = make_engine(store_url)
    out: list[tuple[str, str]] = []
    try:
        with session_factory(engine).begin() as s:
            repo.create_org(s, "org-bench", "Bench", {})
            for i in range(subs_n):
                cid = f"conn-{i:03d}"
                repo.create_connection(s, id=cid, org_id="org-bench", user_id=f"u{i}", provider="microsoft",
                                       account_ref=f"acct-{i}")
                sub_id = f"sub-{i:03d}"
                secret = subs.create_subscription(s, connection_id=cid, provider="microsoft", external_id=sub_id,
                                                  resource="me/contacts", expires_at=time.time() + 86400).secret
                out.append((sub_id, secret))
    finally:
        engine.dispose()
    return out


def _note(sub_id: str, secret: str, i: int) -> dict:
    rid = f"AAMk{i:08d}"
    return {"value": [{
        "subscriptionId": sub_id, "clientState": secret, "changeType": "updated",
        "resource": f"Users/u/Contacts/{rid}", "tenantId": "t",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Contact", "id": rid, "@odata.etag": 'W/"x"'},
    }]}


async def _drive(base: str, count: int, concurrency: int, make_request) -> tuple[float, list[float], dict[int, int]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    codes: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                r = await make_request(client, i)
                latencies.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies, codes


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process, all threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_up(base: str, proc: subprocess.Popen, admin: dict[str, str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"webhook server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/webhooks/stats", headers=admin, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("webhook server did not start")


def run(report: Report = print, *, count: int = COUNT, subs_n: int = SUBS, concurrency: int = CONCURRENCY,
        window_s: float = WINDOW_S, store_url: str | None = None) -> dict[str, float]:
    """Run the benchmark; `report(name, value, unit)` receives each figure (print works)."""
    from emulators.server import free_port

    figures: dict[str, float] = {}

    def emit(name: str, value, unit: str = "") -> None:
        figures[name] = value
        report(name, round(value, 4) if isinstance(value, float) else value, unit)

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    server_cpu = cpus[0]
    client_cpus = set(cpus[1:]) or {server_cpu}
    with tempfile.TemporaryDirectory() as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        subscriptions = _seed(url, subs_n)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        admin_token = secrets.token_urlsafe(24)  # /webhooks/stats needs it; made per run
        admin = {"Authorization": f"Bearer {admin_token}"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.webhooks", "--serve", url, str(port), str(server_cpu), str(window_s)],
            cwd=str(Path(__file__).resolve().parent.parent), env={**os.environ, "CONCORD_ADMIN_TOKEN": admin_token},
        )
        try:
            _wait_up(base, proc, admin)
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, client_cpus)
            emit("webhooks.server_cpus", 1, f"cpu {server_cpu} (subprocess, pinned)")
            emit("webhooks.client_cpus", len(client_cpus), "shared with the server" if server_cpu in client_cpus else "")

            async def warm(client, i):
                sub_id, secret = subscriptions[i % subs_n]
                return await client.post("/webhooks/graph", json=_note(sub_id, secret, i))

            asyncio.run(_drive(base, min(500, count), concurrency, warm))
            before = httpx.get(f"{base}/webhooks/stats", headers=admin).json()

            async def notify(client, i):
                sub_id, secret = subscriptions[i % subs_n]
                return await client.post("/webhooks/graph", json=_note(sub_id, secret, i))

            cpu0 = _cpu_seconds(proc.pid)
            elapsed, lat, codes = asyncio.run(_drive(base, count, concurrency, notify))
            cpu1 = _cpu_seconds(proc.pid)
            # Let the trailing signals of the last window go out before counting them.
            time.sleep(window_s + 0.5)
            after = httpx.get(f"{base}/webhooks/stats", headers=admin).json()
            accepted = after["accepted"] - before["accepted"]
            signals = after["signals_sent"] - before["signals_sent"]
            emit("webhooks.notifications", count, f"over {subs_n} subscriptions, concurrency {concurrency}")
            emit("webhooks.non_202", sum(n for c, n in codes.items() if c != 202), "")
            emit("webhooks.accepted", accepted, "")
            emit("webhooks.accepted_per_s", accepted / elapsed, "notifications/s, wall clock")
            if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
                emit("webhooks.server_cpu_s", cpu1 - cpu0, "s")
                emit("webhooks.server_cpu_busy", (cpu1 - cpu0) / elapsed, "of its one core")
                emit("webhooks.accepted_per_cpu_s", accepted / (cpu1 - cpu0), "notifications per server CPU-second")
            lat.sort()
            emit("webhooks.reply_p50_ms", statistics.median(lat) * 1000, "ms")
            emit("webhooks.reply_p99_ms", lat[int(len(lat) * 0.99) - 1] * 1000, "ms")
            emit("webhooks.signals_sent", signals, f"counting fake signal, window {window_s:g}s (Temporal: wake-latency bench)")
            emit("webhooks.signal_window_bound", subs_n * (int(elapsed / window_s) + 2), "max signals the window allows")
            emit("webhooks.coalesced", after["coalesced"] - before["coalesced"], "wake requests with no signal of their own")

        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, set(cpus))
    return figures


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        _, url, port, cpu, window = argv
        _serve(url, int(port), int(cpu), float(window))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=COUNT)
    p.add_argument("--subs", type=int, default=SUBS)
    p.add_argument("--concurrency", type=int, default=CONCURRENCY)
    p.add_argument("--window", type=float, default=WINDOW_S)
    p.add_argument("--store-url", default=None, help="default: a throwaway SQLite file")
    a = p.parse_args(argv)
    started = time.perf_counter()
    run(lambda name, value, unit="": print(f"{name:34s} {value:>12} {unit}"), count=a.count, subs_n=a.subs,
        concurrency=a.concurrency, window_s=a.window, store_url=a.store_url)
    print(f"{'webhooks.total_s':34s} {time.perf_counter() - started:>12.1f} s")


if __name__ == "__main__":
    main()
