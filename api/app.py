"""The HTTP application: one FastAPI app assembled from routers.

Routers are built by their own modules from explicit dependencies (sessions, a
Waker, secrets) and only combined here, so a test can serve exactly the routers it
exercises and adding one (the connect flow) is one more item in `routers`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from typing import Iterable
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI
from pydantic import SecretStr

import settings
from api import access_log
from api.connect import ConnectDeps, InvalidRequest, connect_router, temporal_on_connected
from api.webhooks import (
    PubSubPushAuth,
    Signal,
    Waker,
    WebhookDeps,
    derived_platform_secrets,
    lazy_temporal_signal,
    temporal_org_signal,
    store_lookup,
    store_org_lookup,
    webhook_router,
)

log = logging.getLogger("concord.api")

_EXP = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[0-9a-fA-F]{64}")


def create_app(routers: Iterable[APIRouter], *, title: str = "Concord") -> FastAPI:
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    for router in routers:
        app.include_router(router)
    return app


def build_webhooks(
    sessions,
    signal: Signal,
    *,
    org_signal: Signal | None = None,
    pubsub: PubSubPushAuth | None = None,
    platform_master_key: bytes | None = None,
    admin_token: str | None = None,
    window_s: float = 1.0,
) -> tuple[APIRouter, WebhookDeps]:
    """The webhook router and the dependencies it runs on (its Wakers and counters).
    `signal` wakes mailboxes; `org_signal` wakes organisations (platform webhooks are
    refused without it)."""
    waker = Waker(signal, store_lookup(sessions), window_s=window_s)
    org_waker = (Waker(org_signal, store_org_lookup(sessions), window_s=window_s, counters=waker.counters)
                 if org_signal is not None else None)
    deps = WebhookDeps(
        sessions=sessions,
        waker=waker,
        org_waker=org_waker,
        pubsub=pubsub,
        platform_secret=derived_platform_secrets(platform_master_key) if platform_master_key else None,
        admin_token=admin_token,
    )
    return webhook_router(deps), deps


class ConfigError(SystemExit):
    """The app cannot run as configured.

    A SystemExit carrying one line: `concord api` and `uvicorn --factory
    api.app:production_app` print it and exit 1, without a traceback, and no
    stand-in secret is ever made up.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"concord api: {message}")


def production_app() -> FastAPI:
    """The deployed app, configured from the environment: every secret from the environment, none in code.

    Required: CONCORD_VAULT_KEYS (the token vault's key ring), CONCORD_CONNECT_KEY
    (hex, signs connect links). Optional: CONCORD_PLATFORM_WEBHOOK_KEY (hex, at
    least 16 bytes), CONCORD_ADMIN_TOKEN (reads /webhooks/stats and /admin/export),
    CONCORD_PUBSUB_AUDIENCE + CONCORD_PUBSUB_SERVICE_ACCOUNT (+ CONCORD_PUBSUB_CERTS_URL)
    for Gmail pushes, CONCORD_STORE_URL, CONCORD_TEMPORAL (default 127.0.0.1:7233,
    as the worker), CONCORD_TEMPORAL_NAMESPACE, and ProviderConfig's OAuth settings.
    Run with `concord api` or `uvicorn --factory api.app:production_app`.
    """
    from store.db import make_engine, migrate, session_factory
    from store.vault import KeyRing, VaultConfigError

    access_log.install()
    try:
        config = settings.load()
    except settings.SettingsError as e:
        raise ConfigError(str(e)) from None
    if config.vault_keys is None:
        raise ConfigError("CONCORD_VAULT_KEYS is not set (kid:base64key,...; the token vault's keys); not starting")
    try:
        keyring = KeyRing.from_env(config)
    except VaultConfigError as e:
        raise ConfigError(f"CONCORD_VAULT_KEYS: {e}") from None
    connect_key = _hex_key(config.connect_key, "CONCORD_CONNECT_KEY", "signs the connect links", required=True)
    platform_key = _hex_key(config.platform_webhook_key, "CONCORD_PLATFORM_WEBHOOK_KEY",
                            "derives the platforms' signing keys")
    admin_token = config.admin_token.get_secret_value() if config.admin_token else None
    if admin_token is not None and len(admin_token) < 16:
        raise ConfigError("CONCORD_ADMIN_TOKEN must be at least 16 characters")
    pubsub = _pubsub_from_env(config)

    url = config.store_url
    migrate(url)
    sessions = session_factory(make_engine(url))
    temporal = (config.temporal, config.temporal_namespace)
    router, _deps = build_webhooks(sessions, lazy_temporal_signal(*temporal),
                                   org_signal=lazy_temporal_signal(*temporal, build=temporal_org_signal),
                                   pubsub=pubsub, platform_master_key=platform_key, admin_token=admin_token)
    from api.export import export_router
    from api.health import health_router

    return create_app([router, _connect_router_from_env(sessions, url, keyring, connect_key, config),
                       health_router(sessions), export_router(sessions, admin_token)])


def _hex_key(secret: SecretStr | None, name: str, purpose: str, *, required: bool = False) -> bytes | None:
    value = secret.get_secret_value() if secret is not None else None
    if not value:
        if required:
            raise ConfigError(f"{name} is not set (hex; it {purpose}); not starting")
        return None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{name} is not hex") from None
    if len(key) < 16:
        raise ConfigError(f"{name} must be at least 16 bytes (32 hex digits)")
    return key


def _pubsub_from_env(config: settings.Settings) -> PubSubPushAuth | None:
    if config.pubsub_push_token is not None:
        log.warning("CONCORD_PUBSUB_PUSH_TOKEN is ignored: Gmail pushes are authenticated by their OIDC token "
                    "(CONCORD_PUBSUB_AUDIENCE, CONCORD_PUBSUB_SERVICE_ACCOUNT)")
    audience, account = config.pubsub_audience, config.pubsub_service_account
    if not audience and not account:
        return None  # Gmail pushes are refused
    if not audience or not account:
        raise ConfigError("CONCORD_PUBSUB_AUDIENCE and CONCORD_PUBSUB_SERVICE_ACCOUNT go together")
    return PubSubPushAuth(audience, account, certs_url=config.pubsub_certs_url)


def signed_start_authorizer(key: bytes, *, now=time.time):
    """`authorize_start` for /connect/{provider}/start: the product's backend signs
    (org_id, user_id, exp) with the shared key and redirects its user to the link,
    so nobody can start a connection in someone else's name.

    An unsigned link is refused (403); a malformed `exp` or `sig` is a bad request (400).
    """

    def authorize(request, org_id: str, user_id: str) -> bool:
        exp = request.query_params.get("exp")
        sig = request.query_params.get("sig")
        if exp is None or sig is None:
            return False
        if not _EXP.fullmatch(exp):
            raise InvalidRequest("bad_exp", "exp must be a unix time in seconds")
        if not _SIG.fullmatch(sig):
            raise InvalidRequest("bad_sig", "sig must be 64 hex digits")
        if int(exp) < now():
            return False
        return hmac.compare_digest(sig.lower().encode(), start_signature(key, org_id, user_id, int(exp)).encode())

    return authorize


def start_signature(key: bytes, org_id: str, user_id: str, exp: int) -> str:
    return hmac.new(key, f"{org_id}\n{user_id}\n{exp}".encode(), hashlib.sha256).hexdigest()


def start_link(base_url: str, provider: str, org_id: str, user_id: str, key: bytes, ttl_s: int = 600) -> str:
    """The link a product's backend hands its user to connect a mailbox."""
    exp = int(time.time()) + ttl_s
    query = urlencode({"org_id": org_id, "user_id": user_id, "exp": exp,
                       "sig": start_signature(key, org_id, user_id, exp)})
    return f"{base_url.rstrip('/')}/connect/{provider}/start?{query}"


def _connect_router_from_env(sessions, url, keyring, connect_key: bytes, config: settings.Settings):
    from store.db import make_engine
    from store.pending_flows import StorePendingFlows
    from store.vault import TokenVault
    from connectors.credentials import ProviderConfig
    from workers.temporal_client import connect

    vault = TokenVault(make_engine(url), keyring)
    state: dict = {}

    async def on_connected(c) -> None:
        if "fn" not in state:
            client = await connect(config.temporal, config.temporal_namespace)
            state["fn"] = temporal_on_connected(client)
        await state["fn"](c)

    return connect_router(ConnectDeps(
        sessions=sessions, vault=vault, pending=StorePendingFlows(sessions, vault.keyring),
        providers=ProviderConfig.from_env(config), on_connected=on_connected,
        authorize_start=signed_start_authorizer(connect_key),
    ))
