"""HTTP endpoints that connect a mailbox: consent redirect, callback, connection + vault.

    GET  /connect/{provider}/start?org_id=&user_id=   -> 302 to the provider's consent page
    GET  /connect/{provider}/callback                  <- Google (query parameters)
    POST /connect/{provider}/callback                  <- Microsoft (response_mode=form_post)

Why it is built this way:

- The state and the PKCE verifier are made by connectors/oauth_*.py; the pending
  half of the flow is kept by a `PendingFlows` (store/pending_flows.py in
  production), so any replica can take the callback.
- account_ref is the provider's stable account id (Google `sub`, Microsoft
  `oid.tid`), never the email: emails change and are personal data. The same
  org + provider + account connecting again is a *reconnect*: the connection id
  (and its workflow, links, cursors) is reused.
- Connection row, tokens (sealed in the vault) and status commit in one
  transaction; the workflow is started only after that commit, through an
  injected `on_connected` callable (Temporal in production, a recorder in tests).
- Nothing sensitive in the answer: the page names the connection id only.
- The callback reads its (form_post) body as a stream with a small ceiling
  (api/bodies.py) and answers 400, not 500, to one that is not UTF-8.
- Who may connect for which org/user is the host application's decision: pass
  `authorize_start` (e.g. checks the caller's session). Without it the endpoint
  trusts its query parameters, which is only right behind the host's own auth.
"""

from __future__ import annotations

import sqlalchemy as sa

import html
import inspect
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api.bodies import CLOSE_CONNECTION, BodyTooLarge, read_body
from models.errors import ConnectorError, Fatal, Transient
from connectors import registry
from connectors.oauth_google import FlowRejected, PendingFlows
from store import repo
from store.vault import TokenVault
from connectors.credentials import ProviderConfig

log = logging.getLogger(__name__)

#: A form_post callback carries a code, a state and a session state: a few KiB at most.
MAX_CALLBACK_BYTES = 64 * 1024


class InvalidRequest(Exception):
    """A malformed request (raised by `authorize_start` too): answered 400 with `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Connected:
    """What the callback hands to `on_connected`: ids only."""

    connection_id: str
    org_id: str
    provider: str
    reconnect: bool


OnConnected = Callable[[Connected], Awaitable[None] | None]


@dataclass
class ConnectDeps:
    sessions: Any
    vault: TokenVault
    pending: PendingFlows
    providers: ProviderConfig
    #: Starts (or wakes) the connection's workflow; see `temporal_on_connected`.
    on_connected: OnConnected
    #: Settings for a new connection, per provider (API endpoint, OAuth endpoint overrides).
    connection_settings: Callable[[str], dict] = field(default=lambda provider: {})
    new_connection_id: Callable[[str], str] = field(default=lambda provider: f"conn-{provider}-{uuid.uuid4().hex[:16]}")
    #: (request, org_id, user_id) -> bool: may this caller connect a mailbox for them?
    #: May raise InvalidRequest for a malformed request.
    authorize_start: Callable[[Request, str, str], bool | Awaitable[bool]] | None = None


def temporal_on_connected(client, *, task_queue: str | None = None, poll_interval_s: float = 300.0) -> OnConnected:
    """Production `on_connected`: signal-with-start the workflow, then `reconnected` for a reconnect."""

    async def on_connected(c: Connected) -> None:
        from workers.client import handle, start_sync
        from workflows.mailbox_sync import MailboxSyncWorkflow

        kwargs: dict = {"poll_interval_s": poll_interval_s}
        if task_queue:
            kwargs["task_queue"] = task_queue
        await start_sync(client, c.connection_id, c.org_id, c.provider, **kwargs)
        if c.reconnect:
            await handle(client, c.connection_id).signal(MailboxSyncWorkflow.reconnected)

    return on_connected


def _error(status: int, error: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def connect_router(deps: ConnectDeps) -> APIRouter:
    router = APIRouter(prefix="/connect", tags=["connect"])
    clients: dict[str, Any] = {}
    guard = threading.Lock()

    def oauth(provider: str):
        # One connector per provider: msal fetches its discovery document once.
        with guard:
            if provider not in clients:
                clients[provider] = deps.providers.oauth(provider, pending=deps.pending)
            return clients[provider]

    def known(provider: str) -> bool:
        return provider in registry.PROVIDERS

    @router.get("/{provider}/start")
    async def start(provider: str, org_id: str, user_id: str, request: Request) -> Response:
        if not known(provider):
            return _error(404, "unknown_provider", f"no such provider: {provider}")
        if deps.authorize_start is not None:
            try:
                allowed = deps.authorize_start(request, org_id, user_id)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
            except InvalidRequest as e:
                return _error(400, e.reason, e.message)
            if not allowed:
                return _error(403, "forbidden", "not allowed to connect a mailbox for this user")

        def begin() -> str | None:
            with deps.sessions.begin() as s:
                if repo.get_org(s, org_id) is None:
                    return None
            url, _ = oauth(provider).start({"org_id": org_id, "user_id": user_id})
            return url

        try:
            url = await run_in_threadpool(begin)
        except ConnectorError as exc:
            return _error(503 if isinstance(exc, Transient) else 500, exc.code, "the identity provider is not reachable or not configured")
        if url is None:
            return _error(404, "unknown_org", "no such organisation")
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    @router.api_route("/{provider}/callback", methods=["GET", "POST"])
    async def callback(provider: str, request: Request) -> Response:
        if not known(provider):
            return _error(404, "unknown_provider", f"no such provider: {provider}")
        params = dict(request.query_params)
        if request.method == "POST":
            try:
                form = (await read_body(request, MAX_CALLBACK_BYTES)).decode("utf-8")
            except BodyTooLarge:
                return _error(413, "too_large", "the callback body is larger than any provider sends",
                              CLOSE_CONNECTION)
            except UnicodeDecodeError:
                return _error(400, "bad_encoding", "the callback body is not UTF-8")
            params.update(parse_qsl(form, keep_blank_values=True))
        try:
            connected = await run_in_threadpool(_finish, deps, oauth(provider), provider, params)
        except FlowRejected as exc:
            return _error(400, exc.reason, _rejection_message(exc))
        except Transient:
            return _error(503, "provider_unavailable", "the identity provider did not answer; try connecting again")
        except ConnectorError as exc:
            log.error("connect callback failed", extra={"provider": provider, "code": exc.code})
            return _error(500, exc.code, "the connection could not be completed")
        started = True
        try:
            result = deps.on_connected(connected)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # the connection is stored; sync can be started again later
            started = False
            log.error("starting sync failed", extra={"connection_id": connected.connection_id, "error": type(exc).__name__})
        body = {
            "connection_id": connected.connection_id,
            "provider": provider,
            "status": "active",
            "reconnected": connected.reconnect,
            "sync_started": started,
        }
        if _wants_html(request):
            word = "reconnected" if connected.reconnect else "connected"
            return HTMLResponse(
                f"<!doctype html><title>Mailbox {word}</title><p>Your {html.escape(provider)} mailbox is {word}."
                f" You can close this window.</p><p><small>connection {html.escape(connected.connection_id)}</small></p>",
                headers={"Cache-Control": "no-store"},
            )
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return router


def _rejection_message(exc: FlowRejected) -> str:
    return {
        "unknown_state": "this connect link is unknown or was already used; start connecting again",
        "expired_state": "this connect attempt expired; start connecting again",
        "provider_error": (
            "access was not granted" + (f" ({exc.provider_error})" if exc.provider_error else "")
            + "; start connecting again"
        ),
        "code_rejected": "the provider refused the authorization; start connecting again",
        "no_refresh_token": "the provider granted no offline access; start connecting again",
        "id_token_rejected": "the provider's proof of identity could not be verified; start connecting again",
    }.get(exc.reason, "the connect attempt failed; start connecting again")


def _finish(deps: ConnectDeps, oauth: Any, provider: str, params: dict) -> Connected:
    account = oauth.finish(params)
    hint = account.connection_hint or {}
    org_id, user_id = hint.get("org_id"), hint.get("user_id")
    if not org_id or not user_id:
        raise Fatal("the pending flow carries no org/user")
    try:
        return _store_connection(deps, provider, org_id, user_id, account)
    except sa.exc.IntegrityError:
        # Another callback for the same account won the race: this one is a reconnect.
        return _store_connection(deps, provider, org_id, user_id, account)


def _store_connection(deps, provider: str, org_id: str, user_id: str, account) -> "Connected":
    with deps.sessions.begin() as s:
        existing = repo.find_connection(s, org_id, provider, account.account_id)
        if existing is not None:
            connection_id, reconnect = existing.id, True
            repo.set_connection_status(s, connection_id, "active")
        else:
            connection_id, reconnect = deps.new_connection_id(provider), False
            repo.create_connection(
                s,
                id=connection_id,
                org_id=org_id,
                user_id=user_id,
                provider=provider,
                account_ref=account.account_id,
                status="active",
                settings=dict(deps.connection_settings(provider) or {}),
            )
        deps.vault.put_tokens(connection_id, account.tokens, bind=s)
    return Connected(connection_id, org_id, provider, reconnect)
