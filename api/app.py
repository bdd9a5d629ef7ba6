"""The HTTP application: one FastAPI app assembled from routers.

Routers are built by their own modules from explicit dependencies (sessions, a
Waker, secrets) and only combined here, so a test can serve exactly the routers it
exercises and adding one (the connect flow) is one more item in `routers`.
"""

from __future__ import annotations

import os
from typing import Iterable

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
    return create_app([router])
