"""`make demo` as a newcomer meets it: the real demo process in a scratch directory, on
free ports, with the real dev server, emulators, worker and HTTP app.

Run once it stops by itself (`--once`, as CI runs it); run twice with `--keep` it
reuses the store; left running it serves the commands it prints until Ctrl-C, then
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from store import repo
from store.db import make_engine, session_factory
from workers import client as api
from workers.devstack import free_port_pair, probe_temporal
from workers.temporal_client import connect

DEMO = [sys.executable, "-m", "workers.demo"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env["CONCORD_OTEL_EXPORTER"] = "none"
    return env


def _run_once(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DEMO, "--once", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=240)


def _dev_server_processes(state_file: Path) -> list[int]:
    """Pids of `temporal server` processes using this state file."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start-dev" in argv and str(state_file).encode() in argv:
            pids.append(int(entry.name))
    return pids


def _counts_agree(out: str, connection_id: str) -> None:
    """The last cycle's 'open in all' figures are the reviews the demo then lists."""
    cycles = out.split("\n== ")
    last = [c for c in cycles if c.startswith(("initial", "incremental", "after the manual"))][-1]
    open_conflicts = int(re.search(r"conflicts +\d+ +new this cycle; (\d+) open in all", last).group(1))
    open_duplicates = int(re.search(r"duplicates +\d+ +new this cycle; (\d+) open in all", last).group(1))
    assert re.search(r"fixed +\d+ +validation errors fixed by a named rule", last)
    listed = re.search(rf"waiting for a person on {connection_id}: (\d+) open reviews", out)
    assert listed and int(listed.group(1)) == open_conflicts + open_duplicates


def test_demo_once_then_twice_with_keep(tmp_path):
    port, _ui = free_port_pair()
    first = _run_once(tmp_path, "--port", str(port))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "after the manual resolution" in first.stdout
    _counts_agree(first.stdout, "demo-google-1")
    # Each conflict shows its fields with the value on each side.
    conflicts = re.findall(r"review \d+: conflict .*\n +field +mailbox +CRM +last synced\n((?: {6}\S.*\n)+)",
                           first.stdout)
    assert conflicts and all(rows.strip() for rows in conflicts)
    key_file = tmp_path / ".concord" / "vault.keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()

    # A second run on the same state (one is enough: each run stops the one before it).
    kept = _run_once(tmp_path, "--port", str(port), "--keep")
    assert kept.returncode == 0, f"--keep run: {kept.stderr[-2000:]}"
    # (the organisation's first read may wake it for a second cycle before it settles)
    assert "== initial two-way sync (cycle " in kept.stdout
    assert "stopped the previous run's mailbox-sync/demo-google-1 (cancelled)" in kept.stdout
    emulator = re.search(r"Google People emulator at (\S+)", kept.stdout).group(1)
    sessions = session_factory(make_engine(f"sqlite:///{tmp_path / '.concord' / 'store.db'}"))
    with sessions() as s:
        assert repo.get_connection(s, "demo-google-1").settings["endpoint"] == emulator
    assert key_file.read_text() == key, "the dev key is made once and reused"
    assert _dev_server_processes(tmp_path / ".concord" / "temporal.db") == []


async def test_demo_keeps_the_stack_up_and_its_printed_commands_work(tmp_path):
    port, _ui = free_port_pair()
    proc = subprocess.Popen([*DEMO, "--port", str(port)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        async def until_ready() -> None:
            while True:
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line, "the demo ended early:\n" + "".join(lines) + proc.stderr.read()[-2000:]
                lines.append(line)
                if line.startswith("Ctrl-C stops it all"):
                    return

        await asyncio.wait_for(until_ready(), 240)
        out = "".join(lines)
        commands = [shlex.split(ln.strip()) for ln in lines if ln.strip().split(" ", 1)[0].endswith("concord")]
        assert {c[c.index(f"127.0.0.1:{port}") + 1] for c in commands} == {"state", "reviews", "quarantine", "resolve",
                                                                       "org-state", "status"}
        env = _env()
        for argv in commands:
            res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
            assert (res.returncode, res.stderr) == (0, ""), argv
            if "resolve" not in argv:
                json.loads(res.stdout)
        (resolve,) = [c for c in commands if "resolve" in c and "demo-google-1" in c]
        answered = int(resolve[resolve.index("resolve") + 2])

        (curl,) = [shlex.split(ln.strip()) for ln in lines if ln.strip().startswith("curl -s -X POST")]
        headers = dict(h.split(": ", 1) for h in (curl[i + 1] for i, a in enumerate(curl) if a == "-H"))
        client = await connect(f"127.0.0.1:{port}")
        org_before = await api.org_state(client, "org_demo")
        async with httpx.AsyncClient(trust_env=False) as http:
            r = await http.post(curl[4], content=curl[curl.index("-d") + 1], headers=headers, timeout=10)
        assert (r.status_code, r.json()) == (202, {"organisation": 1})
        # The webhook wakes the organisation's workflow: it reads the CRM once.
        await api.wait_for_org_cycles(client, "org_demo", org_before.cycles + 1, timeout=60)

        # The answer reaches the running worker: the review closes.
        before = re.findall(r"== after the manual resolution \(cycle (\d+)", out)
        await api.wait_for_cycles(client, "demo-google-1", int(before[-1]) + 1, timeout=60)
        sessions = session_factory(make_engine(f"sqlite:///{tmp_path / '.concord' / 'store.db'}"))
        with sessions() as s:
            assert repo.get_review(s, answered).status != "open"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        rc = await asyncio.to_thread(proc.wait, 60)
    assert rc == 0, proc.stderr.read()[-2000:]
    assert "-- stopped" in proc.stdout.read()
    assert not await probe_temporal(f"127.0.0.1:{port}", timeout=0.5)
    assert _dev_server_processes(tmp_path / ".concord" / "temporal.db") == []
