"""The Graph emulator served over HTTP, for the Graph connector tests."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from emulators.graph import GraphState, create_app
from emulators.server import serve

TOKEN = "emulator-token"


@contextmanager
def running_graph(seed: int) -> Iterator[tuple[GraphState, str]]:
    """(state, base URL) of a Graph emulator that accepts TOKEN, stopped on exit."""
    state = GraphState(tokens={TOKEN}, seed=seed)
    server = serve(create_app(state))
    try:
        yield state, server.base_url
    finally:
        server.stop()
