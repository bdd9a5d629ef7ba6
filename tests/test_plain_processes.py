"""docker-compose.yml's commands, run as plain processes: the production shape without Docker.

A Temporal dev server started WITHOUT Concord's search attributes (as a fresh cluster
is), the PostgreSQL server on 127.0.0.1:5432 with two database names that do not exist
yet, then exactly what the compose services run, in their order:

  setup   `concord setup`   (twice: the second run finds everything done)
  api     `concord api`     healthy by its compose healthcheck (`concord health --http .../healthz`)
  worker  `concord worker`  healthy by `concord health`

and a mailbox (the Google People emulator, a static-token connection) started with
`concord start CONN ORG google`, until `concord state CONN` shows a finished cycle with
links in the store: one sync end to end through the processes compose would run.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from emulators.server import free_port
from workers.devstack import find_temporal_cli, free_port_pair, probe_temporal
from workers.temporal_client import SEARCH_ATTRIBUTE_KEYS

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("CONCORD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CONCORD = str(Path(sys.executable).parent / "concord")  # the console script `pip install` made


def _drop(names: list[str]) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN.replace("+psycopg", ""), autocommit=True) as conn:
        for name in names:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(PG_ADMIN.replace("+psycopg", ""), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


class Processes:
    """Long-running processes of the test, each in its own group, logs in files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=self.tmp, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def alive(self, name: str) -> None:
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)}"

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            codes[name] = proc.returncode
        return codes


def _wait(what: str, check, timeout: float, procs: Processes, watch: tuple[str, ...] = ()):
    deadline = time.monotonic() + timeout
    while True:
        for name in watch:
            procs.alive(name)
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s\n" + "\n".join(
            f"--- {n}.log\n{procs.log(n)}" for n in watch)
        time.sleep(0.3)


def _concord(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CONCORD, *args], env=env, capture_output=True, text=True, timeout=timeout)


async def test_compose_commands_as_plain_processes_sync_a_mailbox_end_to_end(tmp_path):
    from tests.conftest import _pg_available

    if not _pg_available():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable (see ../shared/STACK.md)")
    assert os.access(CONCORD, os.X_OK), f"no console script at {CONCORD}: `make install`"
    procs = Processes(tmp_path)
    tag = uuid.uuid4().hex[:8]
    store_db, crm_db = f"concord_pp_store_{tag}", f"concord_pp_crm_{tag}"
    base = PG_ADMIN.rsplit("/", 1)[0]
    port, ui_port = free_port_pair()
    target = f"127.0.0.1:{port}"
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCORD_", "OTEL_"))}
    env.update(
        CONCORD_TEMPORAL=target,
        CONCORD_STORE_URL=f"{base}/{store_db}",
        CONCORD_CRM_URL=f"{base}/{crm_db}",
        CONCORD_VAULT_KEYS="k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        CONCORD_CONNECT_KEY=secrets.token_hex(32),
        CONCORD_OTEL_EXPORTER="none",
    )
    try:
        # A fresh cluster: no `--search-attribute` flags, so only `concord setup` can register them.
        procs.start("temporal", [find_temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
                                 "--ui-port", str(ui_port), "--log-level", "error"], env)
        # -- setup: waits for Temporal itself (started a moment ago), creates both databases
        done = _concord(env, "setup", "--wait", "60")
        assert done.returncode == 0, done.stderr + done.stdout
        names = ", ".join(sorted(k.name for k in SEARCH_ATTRIBUTE_KEYS))
        assert f"store database {base}/{store_db}: created" in done.stdout
        assert f"CRM database {base}/{crm_db}: created" in done.stdout
        assert f"registered {names}" in done.stdout, done.stdout
        assert _exists(store_db) and _exists(crm_db)
        again = _concord(env, "setup", "--wait", "10")
        assert again.returncode == 0, again.stderr
        assert ": created" not in again.stdout and "already registered" in again.stdout, again.stdout
        assert await probe_temporal(target)

        # -- api and worker, healthy by their compose healthchecks
        procs.start("api", [CONCORD, "api", "--host", "127.0.0.1", "--port", str(api_port)], env)
        procs.start("worker", [CONCORD, "worker"], env)
        healthz = f"http://127.0.0.1:{api_port}/healthz"

        def api_up() -> bool:
            try:
                return httpx.get(healthz, timeout=2, trust_env=False).status_code == 200
            except httpx.TransportError:
                return False

        _wait("GET /healthz answered 200", api_up, 45, procs, ("api", "worker"))
        for argv in (["health", "--http", healthz], ["health"]):  # the api's, then the worker's
            checked = _concord(env, *argv)
            assert (checked.returncode, checked.stdout.strip()) == (0, "ok"), checked.stderr

        # -- a mailbox: the emulator and its connection row (what the OAuth connect would store)
        from workers.scenario import build_scenario

        scenario = build_scenario(env["CONCORD_STORE_URL"], env["CONCORD_CRM_URL"], provider="google",
                                  connection_id=f"conn-pp-{tag}", n_mailbox=8, n_crm=6, near_duplicates=2)
        try:
            cid, org = scenario.connection_id, scenario.org_id
            started = _concord(env, "start", cid, org, "google", "--poll", "30")
            assert started.returncode == 0, started.stderr

            def synced():
                state = _concord(env, "state", cid, timeout=30)
                if state.returncode != 0:
                    return None
                body = json.loads(state.stdout)
                return body if body["cycles"] >= 1 and body["store"]["links"] > 0 else None

            state = _wait("one sync cycle with links", synced, 60, procs, ("worker",))
            assert state["health"] != "failing" and state["last_error"] is None, state
        finally:
            scenario.close()
            scenario.crm.engine.dispose()
    finally:
        procs.stop_all()
        _drop([store_db, crm_db])
