"""A fault-injecting HTTP proxy in front of a provider emulator (like toxiproxy).

The connectors talk to the proxy exactly as to the provider; the proxy forwards to
the emulator, except for the requests it answers itself with a throttle (429 with
Retry-After) or an outage (503), in the provider's own error shape. Refused
requests never reach the emulator, as a real front end's refusals do not reach
the mailbox. It also reports each write the emulator answered, so a test can kill
a worker right after a create landed and before its activity recorded it.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from typing import Callable

import httpx

from emulators.server import RunningServer, serve

#: requests that create contacts: People batchCreate/createContact, Graph $batch with a POST
_PEOPLE_CREATE = re.compile(r"(batchCreateContacts|:createContact)")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class Chaos:
    def __init__(self, target: str, provider: str, *, seed: int = 0) -> None:
        self.target = target.rstrip("/")
        self.provider = provider
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        #: share of requests answered with a throttle or an outage instead of forwarded
        self.fault_rate = 0.0
        #: when set, every create is answered with this status (an outage of writes)
        self.fail_creates: int | None = None
        #: called (on the proxy's thread) after the emulator answered a create with 2xx
        self.on_create: Callable[[], None] | None = None
        self.stats: Counter = Counter()
        self._deck: list[int | None] = []
        #: listing requests (delta pages) answered with a status instead, by their number (1-based)
        self.fail_nth: dict[int, int] = {}
        self._listings = 0
        self.server: RunningServer | None = None
        self._client = httpx.AsyncClient(timeout=60, trust_env=False)

    # ------------------------------------------------------------------ running
    def start(self) -> "Chaos":
        async def app(scope, receive, send) -> None:  # a plain function: uvicorn's ASGI3 detection
            await self._app(scope, receive, send)

        self.server = serve(app)
        return self

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return self.server.base_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def requests(self) -> int:
        with self.lock:
            return sum(n for k, n in self.stats.items() if k != "forwarded_list")

    # ------------------------------------------------------------------ faults
    def _is_create(self, method: str, path: str, body: bytes) -> bool:
        if method != "POST":
            return False
        if self.provider == "google":
            return bool(_PEOPLE_CREATE.search(path))
        if path.endswith("/$batch"):
            try:
                subs = json.loads(body).get("requests") or []
            except ValueError:
                return False
            return any(r.get("method") == "POST" for r in subs)
        return path.endswith("/contacts")

    def _deal(self) -> int | None:
        """The next card of a shuffled deck of ten: `fault_rate` of them refusals, half
        throttles and half outages. Exactly that share over every ten requests, at
        random places, so a run's rate does not depend on luck."""
        if not self.fault_rate:
            return None
        if not self._deck:
            n = max(1, round(self.fault_rate * 10))
            self._deck = [429 if i % 2 == 0 else 503 for i in range(n)] + [None] * (10 - n)
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    def _refusal(self, status: int) -> tuple[int, dict, bytes]:
        if self.provider == "google":
            name = "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"
            body = {"error": {"code": status, "message": "chaos", "status": name}}
        else:
            code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
            body = {"error": {"code": code, "message": "chaos"}}
        headers = {"content-type": "application/json"}
        if status == 429:
            headers["retry-after"] = "1"
        return status, headers, json.dumps(body).encode()

    def _is_listing(self, method: str, path: str) -> bool:
        if method != "GET":
            return False
        return path.endswith("/connections") if self.provider == "google" else "/delta" in path

    def _decide(self, method: str, path: str, body: bytes) -> int | None:
        with self.lock:
            if self._is_listing(method, path):
                self._listings += 1
                scripted = self.fail_nth.get(self._listings)
                if scripted is not None:
                    self.stats[f"refused_{scripted}"] += 1
                    return scripted
                self.stats["forwarded_list"] += 1
            creating = self._is_create(method, path, body)
            if creating and self.fail_creates:
                self.stats[f"refused_{self.fail_creates}"] += 1
                return self.fail_creates
            status = self._deal()
            if status is not None:
                self.stats[f"refused_{status}"] += 1
                return status
            self.stats["forwarded"] += 1
            return None

    # ------------------------------------------------------------------ ASGI
    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        refused = self._decide(method, path, body)
        if refused is not None:
            status, headers, payload = self._refusal(refused)
        else:
            query = scope.get("query_string", b"").decode()
            url = self.target + path + (f"?{query}" if query else "")
            headers_in = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() not in _HOP_HEADERS}
            resp = await self._client.request(method, url, content=body, headers=headers_in)
            status, payload = resp.status_code, resp.content
            # (The Host header went through unchanged: links the emulator builds, such as
            # Graph's nextLink, point back at the proxy, as a provider's point at itself.)
            headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
            if status < 300 and self._is_create(method, path, body) and self.on_create is not None:
                self.on_create()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": payload})
