"""Admin routes the Google emulators (People, Gmail) answer alike under `/_emulator/`."""

from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI, Request, Response


def add_config_clock_stats(app: FastAPI, state: Any, admin: Callable[[Callable[[], Any]], Response]) -> None:
    """`POST /_emulator/config` (state.configure), `POST /_emulator/clock/advance` and
    `GET /_emulator/stats`, each answered through the emulator's own `admin`."""

    @app.post("/_emulator/config")
    async def config(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.configure(**b))

    @app.post("/_emulator/clock/advance")
    async def advance(request: Request) -> Response:
        b = await request.json()
        return admin(lambda: state.advance_clock(float(b["seconds"])))

    @app.get("/_emulator/stats")
    async def stats() -> Response:
        return admin(state.stats)
