"""The HTTP application: one FastAPI app assembled from routers.

Routers are built by their own modules from explicit dependencies (sessions, a
Waker, secrets) and only combined here, so a test can serve exactly the routers it
exercises and adding one (the connect flow) is one more item in `routers`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Iterable
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI

from api.webhooks import (
    Signal,
    Waker,
    WebhookDeps,
    derived_platform_secrets,
    lazy_temporal_signal,
    store_lookup,
    webhook_router,
)


def create_app(routers: Iterable[APIRouter], *, title: str = "Concord") -> FastAPI:
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    for router in routers:
        app.include_router(router)
    return app


def build_webhooks(
    sessions,
    signal: Signal,
    *,
    pubsub_token: str | None = None,
    platform_master_key: bytes | None = None,
    window_s: float = 1.0,
) -> tuple[APIRouter, WebhookDeps]:
    """The webhook router and the dependencies it runs on (its Waker and counters)."""
    waker = Waker(signal, store_lookup(sessions), window_s=window_s)
    deps = WebhookDeps(
        sessions=sessions,
        waker=waker,
        pubsub_token=pubsub_token,
        platform_secret=derived_platform_secrets(platform_master_key) if platform_master_key else None,
    )
    return webhook_router(deps), deps


def production_app() -> FastAPI:
    """The deployed app, configured from the environment : every secret from the environment, none in code.

    CONCORD_STORE_URL, CONCORD_TEMPORAL (default 127.0.0.1:7233, as the worker),
    CONCORD_TEMPORAL_NAMESPACE, CONCORD_PUBSUB_PUSH_TOKEN, CONCORD_PLATFORM_WEBHOOK_KEY
    (hex, at least 16 bytes). Run with `uvicorn --factory api.app:production_app`.
    """
    from store.db import make_engine, migrate, session_factory

    url = os.environ.get("CONCORD_STORE_URL")
    migrate(url)
    sessions = session_factory(make_engine(url))
    signal = lazy_temporal_signal(
        os.environ.get("CONCORD_TEMPORAL", "127.0.0.1:7233"),
        os.environ.get("CONCORD_TEMPORAL_NAMESPACE", "default"),
    )
    key = os.environ.get("CONCORD_PLATFORM_WEBHOOK_KEY")
    router, _deps = build_webhooks(
        sessions,
        signal,
        pubsub_token=os.environ.get("CONCORD_PUBSUB_PUSH_TOKEN") or None,
        platform_master_key=bytes.fromhex(key) if key else None,
    )
    routers = [router]
    if os.environ.get("CONCORD_VAULT_KEYS"):
        routers.append(_connect_router_from_env(sessions, url))
    return create_app(routers)


def signed_start_authorizer(key: bytes, *, now=time.time):
    """`authorize_start` for /connect/{provider}/start: the product's backend signs
    (org_id, user_id, exp) with the shared key and redirects its user to the link,
    so nobody can start a connection in someone else's name."""

    def authorize(request, org_id: str, user_id: str) -> bool:
        exp = request.query_params.get("exp", "")
        sig = request.query_params.get("sig", "")
        if not exp.isdigit() or int(exp) < now():
            return False
        return hmac.compare_digest(sig, start_signature(key, org_id, user_id, int(exp)))

    return authorize


def start_signature(key: bytes, org_id: str, user_id: str, exp: int) -> str:
    return hmac.new(key, f"{org_id}\n{user_id}\n{exp}".encode(), hashlib.sha256).hexdigest()


def start_link(base_url: str, provider: str, org_id: str, user_id: str, key: bytes, ttl_s: int = 600) -> str:
    """The link a product's backend hands its user to connect a mailbox."""
    exp = int(time.time()) + ttl_s
    query = urlencode({"org_id": org_id, "user_id": user_id, "exp": exp,
                       "sig": start_signature(key, org_id, user_id, exp)})
    return f"{base_url.rstrip('/')}/connect/{provider}/start?{query}"


def _connect_router_from_env(sessions, url):
    from api.connect import ConnectDeps, connect_router, temporal_on_connected
    from store.db import make_engine
    from store.pending_flows import StorePendingFlows
    from store.vault import KeyRing, TokenVault
    from workers.credentials import ProviderConfig
    from workers.temporal_client import connect

    vault = TokenVault(make_engine(url), KeyRing.from_env())
    state: dict = {}

    async def on_connected(c) -> None:
        if "fn" not in state:
            client = await connect(os.environ.get("CONCORD_TEMPORAL", "127.0.0.1:7233"),
                                   os.environ.get("CONCORD_TEMPORAL_NAMESPACE", "default"))
            state["fn"] = temporal_on_connected(client)
        await state["fn"](c)

    key = os.environ.get("CONCORD_CONNECT_KEY")
    if not key:
        raise RuntimeError("CONCORD_CONNECT_KEY (hex) is needed to sign connect links")
    return connect_router(ConnectDeps(
        sessions=sessions, vault=vault, pending=StorePendingFlows(sessions, vault.keyring),
        providers=ProviderConfig.from_env(), on_connected=on_connected,
        authorize_start=signed_start_authorizer(bytes.fromhex(key)),
    ))
