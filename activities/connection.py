"""Connection lifecycle activities: disconnect, and checking whether a connection can still authenticate.

Disconnect stops sync and ends our access; it never deletes anything in the
mailbox and keeps what was synced (items, links, CRM records: they are the
customer's record of what happened). Order matters for a crash half-way:

1. status -> "disconnected" first, so webhooks and wake-ups arriving meanwhile are ignored;
2. provider-side subscriptions (Graph subscriptions, Gmail watch, Calendar
   channels) are stopped while the tokens still work;
3. the grant is revoked at the provider (Google's revocation endpoint; Microsoft
   has none, see connectors/oauth_microsoft.py: only the local copy can go);
4. the tokens are deleted from the vault.

Every step is a no-op when already done, so the activity may run any number of
times (Temporal retries, a second disconnect click): a second Google revoke
answers 400 "already invalid", which counts as done.

Returns and history carry counts and ids only.
"""

from __future__ import annotations

import logging
from typing import Callable

from temporalio import activity

from activities.errors import to_application_error
from models.errors import ConnectorError, ReauthRequired
from store import repo
from store.vault import TokenVault
from connectors import registry
from connectors.credentials import CredentialFactory, ProviderConfig

log = logging.getLogger(__name__)

#: stop_subscriptions(connection_id, token_source_or_None, settings) -> (stopped at provider, dropped locally)
SubscriptionStopper = Callable[[str, object, dict], tuple[int, int]]


class StoreSubscriptionStopper:
    """Stops what store/subscriptions.py recorded for a connection, then forgets it.

    Graph: `DELETE /v1.0/subscriptions/{id}`; Gmail: `POST users/me/stop`;
    Calendar: `POST channels/stop {id, resourceId}` (the row's `resource` is taken
    as the channel's resourceId). A 404 or a refused token counts as stopped: the
    provider lets an orphan expire on its own (Graph <= 3 days, Gmail 7 days), and
    nothing can be done about it once the grant is gone. 5xx/429/timeouts raise
    Transient so the activity retries. Platform-side subscriptions are not the
    mailbox's and are left alone.

    Endpoints come from the connection settings (`graph_endpoint`, `gmail_endpoint`,
    `calendar_endpoint`; for Microsoft also `endpoint`) so emulators can stand in;
    the calls themselves are the registry's (`connectors.registry.SubscriptionKind`).
    """

    MAILBOX_KINDS = registry.MAILBOX_SUBSCRIPTION_KINDS

    def __init__(self, sessions, *, timeout: float = 15.0) -> None:
        self.sessions = sessions
        self.timeout = timeout

    def __call__(self, connection_id: str, source, settings: dict | None = None) -> tuple[int, int]:
        import httpx

        from models.errors import Transient
        from store import subscriptions as subs

        settings = settings or {}
        with self.sessions.begin() as s:
            rows = [r for r in subs.list_for_connection(s, connection_id) if r.provider in self.MAILBOX_KINDS]
        stopped = dropped = 0
        token = None
        if source is not None and rows:
            try:
                token = source.access_token()
            except ReauthRequired:
                token = None
        with httpx.Client(timeout=self.timeout, trust_env=False) as http:
            for row in rows:
                if token is None:
                    dropped += self._forget(row.id)
                    continue
                method, url, body = self._stop_call(row, settings)
                try:
                    resp = http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"})
                except httpx.TransportError as e:
                    raise Transient(f"stopping a subscription failed: {type(e).__name__}") from None
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise Transient(f"stopping a subscription answered {resp.status_code}")
                if resp.status_code < 300:
                    stopped += self._forget(row.id)
                else:  # 401/403/404: gone or unreachable with this grant; it expires by itself
                    dropped += self._forget(row.id)
        return stopped, dropped

    @staticmethod
    def _stop_call(row, settings: dict) -> tuple[str, str, dict | None]:
        return registry.subscription_kind(row.provider).stop_call(row.external_id, row.resource, settings)

    def _forget(self, sub_id: str) -> int:
        import sqlalchemy as sa

        from store.schema import subscriptions as table

        with self.sessions.begin() as s:
            return s.execute(sa.delete(table).where(table.c.id == sub_id)).rowcount


class ConnectionActivities:
    def __init__(
        self,
        sessions,
        vault: TokenVault,
        providers: ProviderConfig | None = None,
        *,
        credentials: CredentialFactory | None = None,
        stop_subscriptions: SubscriptionStopper | None = None,
    ) -> None:
        self.sessions = sessions
        self.vault = vault
        self.credentials = credentials or CredentialFactory(sessions, vault, providers)
        self.stop_subscriptions = stop_subscriptions or StoreSubscriptionStopper(sessions)

    def all(self) -> list:
        return [self.disconnect, self.check_auth]

    def _row(self, connection_id: str):
        with self.sessions.begin() as s:
            return repo.get_connection(s, connection_id)

    # ------------------------------------------------------------------ disconnect

    @activity.defn(name="connection.disconnect")
    def disconnect(self, connection_id: str) -> dict:
        try:
            return self._disconnect(connection_id)
        except ConnectorError as exc:
            raise to_application_error(exc) from None

    def _disconnect(self, connection_id: str) -> dict:
        counts = {
            "connection_found": 0,
            "status_changed": 0,
            "subscriptions_stopped": 0,
            "subscriptions_dropped": 0,
            "revoked_at_provider": 0,
            "revocation_unsupported": 0,
            "tokens_deleted": 0,
        }
        row = self._row(connection_id)
        if row is None:
            return counts
        counts["connection_found"] = 1
        with self.sessions.begin() as s:
            if row.status != "disconnected":
                counts["status_changed"] = int(repo.set_connection_status(s, connection_id, "disconnected"))

        tokens = self.vault.get(connection_id)
        settings = dict(row.settings or {})

        if self.stop_subscriptions is not None:
            source = None
            if tokens is not None and not settings.get("token"):
                source = self.credentials.token_source(connection_id, provider=row.provider, settings=settings)
            stopped, dropped = self.stop_subscriptions(connection_id, source, settings)
            counts["subscriptions_stopped"], counts["subscriptions_dropped"] = stopped, dropped

        if tokens is not None:
            if registry.get(row.provider).revokes:
                oauth = self.credentials.oauth_for(row.provider, settings)
                # Revoking either token ends the whole grant (Google); the refresh token
                # is the one that outlives the hour.
                token = tokens.refresh_token or tokens.access_token
                if token:
                    counts["revoked_at_provider"] = int(oauth.revoke(token))
            else:
                # Microsoft has no OAuth revocation endpoint: forgetting the tokens is
                # all an app can do; the user ends the grant in their account.
                counts["revocation_unsupported"] = 1
            counts["tokens_deleted"] = int(self.vault.delete(connection_id))
        log.info("connection disconnected", extra={"connection_id": connection_id, **counts})
        return counts

    # ------------------------------------------------------------------ check_auth

    @activity.defn(name="connection.check_auth")
    def check_auth(self, connection_id: str) -> str:
        """"active" when a provider call can be authorised now (refreshing if the access
        token is expired), "needs_reauth" when only the user can fix it,
        "disconnected" for a disconnected connection (only a reconnect revives it)."""
        try:
            return self._check_auth(connection_id)
        except ConnectorError as exc:
            raise to_application_error(exc) from None

    def _check_auth(self, connection_id: str) -> str:
        row = self._row(connection_id)
        if row is None:
            from models.errors import Fatal

            raise Fatal(f"unknown connection {connection_id!r}")
        if row.status == "disconnected":
            return "disconnected"
        settings = dict(row.settings or {})
        if settings.get("token"):  # static emulator token: nothing to refresh
            return "active"
        source = self.credentials.token_source(connection_id, provider=row.provider, settings=settings)
        try:
            # A connection marked needs_reauth must prove its grant is alive again,
            # not merely hold an unexpired access token.
            source.tokens(force=row.status == "needs_reauth")
        except ReauthRequired:
            return "needs_reauth"
        if row.status == "needs_reauth":
            with self.sessions.begin() as s:
                repo.set_connection_status(s, connection_id, "active")
        return "active"
