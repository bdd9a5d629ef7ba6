"""Run an ASGI emulator on a background thread, on a free or given port.

Emulators are real HTTP servers so that the real client libraries
(google-api-python-client, msal, httpx) talk to them exactly as to the provider.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn

from workers.ports import free_port, port_is_free  # noqa: F401 (re-exported for tests and bench)


class PortBusy(RuntimeError):
    pass


@dataclass
class RunningServer:
    base_url: str
    port: int
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def serve(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> RunningServer:
    """Start `app` and return once it accepts connections.

    port=0 picks a free port. A busy explicit port raises PortBusy with the port
    in the message instead of a uvicorn traceback.
    """
    if port == 0:
        port = free_port(host)
    elif not port_is_free(port, host):
        raise PortBusy(f"port {port} on {host} is already in use")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"emulator:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"emulator on port {port} did not start")
        time.sleep(0.01)
    scheme = "https" if certfile else "http"
    return RunningServer(f"{scheme}://{host}:{port}/", port, server, thread)
