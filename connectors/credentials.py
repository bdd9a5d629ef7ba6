"""Vault-backed credentials for the mailbox connectors.

Why it is built this way:

- The vault is the only token store. Workers are stateless; every provider call
  asks a `VaultTokenSource` for an access token, which reads the vault and
  refreshes 60 s before expiry. Rotated refresh tokens are written back before the
  new access token is used, so a crash right after a refresh never loses the only
  valid refresh token.
- Refreshes of one connection are serialised: Microsoft rotates refresh tokens and
  treats reuse of a replaced one as theft (the whole grant dies), so two threads
  refreshing with the same refresh token would disconnect the user. A per-process
  lock plus, on PostgreSQL, a transaction-scoped advisory lock around
  "re-read, refresh, store" makes the second caller find and use the first one's
  fresh token instead.
- A refresh refused for good raises `ReauthRequired` and marks the connection
  `needs_reauth` in the store, so the state is visible even before the workflow
  hears about it.
- The OAuth client configuration (ids, secrets, endpoints) comes from
  `ProviderConfig` (environment). A connection's settings may only point it at
  other *endpoints* (emulators, a sovereign cloud authority); never at tokens or
  secrets.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy as sa
from google.oauth2.credentials import Credentials

from models.errors import AuthExpired, Fatal, ReauthRequired
from connectors.id_tokens import GOOGLE_CERTS_URL
from connectors.oauth_google import (
    GOOGLE_AUTH_URI,
    GOOGLE_REVOKE_URI,
    GOOGLE_TOKEN_URI,
    GoogleOAuth,
    HttpOptions,
    PendingFlow,
)
import settings
from connectors import registry
from connectors.oauth_microsoft import MicrosoftOAuth
from store import repo
from store.vault import TokenSet, TokenVault

#: Refresh this long before the access token's recorded expiry.
LEEWAY_SECONDS = 60.0
DEFAULT_MS_AUTHORITY = "https://login.microsoftonline.com/organizations"

#: Keys a connection's settings may set under "oauth": endpoints only.
OVERRIDABLE = frozenset({"auth_uri", "token_uri", "revoke_uri", "certs_uri", "authority", "ca_file"})
_FORBIDDEN_HINTS = ("secret", "refresh_token", "access_token", "password")


@dataclass(frozen=True)
class ProviderConfig:
    """How this deployment talks to the identity providers (one OAuth app per provider)."""

    google_client_id: str = ""
    google_client_secret: str = field(default="", repr=False)
    google_auth_uri: str = GOOGLE_AUTH_URI
    google_token_uri: str = GOOGLE_TOKEN_URI
    google_revoke_uri: str = GOOGLE_REVOKE_URI
    #: Where Google publishes the keys its id_tokens are signed with.
    google_certs_uri: str = GOOGLE_CERTS_URL
    ms_client_id: str = ""
    ms_client_secret: str = field(default="", repr=False)
    ms_authority: str = DEFAULT_MS_AUTHORITY
    #: Public base URL of the API serving api/connect.py (redirect URIs hang off it).
    public_url: str = "http://127.0.0.1:8000/"
    #: A CA bundle to trust for the identity provider (emulators with a test certificate).
    ca_file: str | None = None
    capabilities: tuple[str, ...] = ("contacts",)
    timeout: float = 30.0

    @classmethod
    def from_env(cls, config: settings.Settings | None = None) -> "ProviderConfig":
        """From the deployment's settings (`config`, else as the environment has them now)."""
        s = config or settings.load()
        return cls(
            google_client_id=s.google_client_id,
            google_client_secret=s.google_client_secret.get_secret_value(),
            google_auth_uri=s.google_auth_uri,
            google_token_uri=s.google_token_uri,
            google_revoke_uri=s.google_revoke_uri,
            google_certs_uri=s.google_certs_uri,
            ms_client_id=s.ms_client_id,
            ms_client_secret=s.ms_client_secret.get_secret_value(),
            ms_authority=s.ms_authority,
            public_url=s.public_url or cls.public_url,
            ca_file=s.oauth_ca_file,
        )

    def with_settings(self, settings: dict | None) -> "ProviderConfig":
        """This config with a connection's endpoint overrides (`settings["oauth"]`) applied."""
        over = dict((settings or {}).get("oauth") or {})
        bad = [k for k in over if k not in OVERRIDABLE]
        if bad or any(h in k.lower() for k in (settings or {}) for h in _FORBIDDEN_HINTS):
            raise Fatal("connection settings may override OAuth endpoints only, never secrets or tokens")
        if not over:
            return self
        return replace(
            self,
            google_auth_uri=over.get("auth_uri", self.google_auth_uri),
            google_token_uri=over.get("token_uri", self.google_token_uri),
            google_revoke_uri=over.get("revoke_uri", self.google_revoke_uri),
            google_certs_uri=over.get("certs_uri", self.google_certs_uri),
            ms_authority=over.get("authority", self.ms_authority),
            ca_file=over.get("ca_file", self.ca_file),
        )

    def redirect_uri(self, provider: str) -> str:
        return self.public_url.rstrip("/") + f"/connect/{provider}/callback"

    @property
    def http(self) -> HttpOptions:
        if self.ca_file:
            return HttpOptions(verify=self.ca_file, trust_env=False, timeout=self.timeout)
        return HttpOptions(timeout=self.timeout)

    def oauth(self, provider: str, *, pending=None, vault: TokenVault | None = None,
              clock: Callable[[], float] = time.time):
        """The provider's OAuth connector. Without `pending` it can refresh and revoke, not connect."""
        pending = pending if pending is not None else _NoFlows()
        return registry.get(provider).oauth(self, pending=pending, vault=vault, clock=clock)


class _NoFlows:
    """Pending-flow storage for connectors that only refresh and revoke."""

    def put(self, flow: PendingFlow) -> None:
        raise Fatal("this OAuth connector was built for refresh only")

    def take(self, state: str) -> PendingFlow | None:
        return None


# ----------------------------------------------------------------- token source

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _lock_for(connection_id: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(connection_id, threading.Lock())


def _advisory_key(connection_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b"concord-refresh:" + connection_id.encode()).digest()[:8], "big", signed=True)


class VaultTokenSource:
    """Access tokens of one connection, read from the vault and refreshed through the provider."""

    def __init__(self, connection_id: str, oauth: GoogleOAuth | MicrosoftOAuth, vault: TokenVault, sessions, *,
                 leeway_seconds: float = LEEWAY_SECONDS, now: Callable[[], datetime] | None = None) -> None:
        self.connection_id = connection_id
        self.oauth = oauth
        self.vault = vault
        self.sessions = sessions
        self.leeway = leeway_seconds
        self._now = now or (lambda: datetime.now(timezone.utc))
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"VaultTokenSource(connection_id={self.connection_id!r})"

    def tokens(self, *, presented: str | None = None, force: bool = False) -> TokenSet:
        """Live tokens. `force` with the `presented` token (a 401 answer): refresh unless
        someone already replaced that token in the vault."""
        current = self.vault.get(self.connection_id)
        if current is None or not (current.access_token or current.refresh_token):
            raise self._reauth("no tokens stored for this connection (connect it again)")
        if self._usable(current, presented, force):
            return current
        with _lock_for(self.connection_id):
            return self._refresh_locked(presented, force)

    def access_token(self) -> str:
        """For token_provider hooks (GraphContacts)."""
        return self.tokens().access_token

    def _usable(self, tokens: TokenSet, presented: str | None, force: bool) -> bool:
        if not tokens.access_token or tokens.expired(self._now(), self.leeway):
            return False
        return not (force and (presented is None or presented == tokens.access_token))

    def _refresh_locked(self, presented: str | None, force: bool) -> TokenSet:
        with self.sessions.begin() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _advisory_key(self.connection_id)})
            current = self.vault.get(self.connection_id, bind=s)
            if current is not None and self._usable(current, presented, force):
                return current  # another thread or worker refreshed while we waited
            if current is None or not current.refresh_token:
                raise_later = "no refresh token stored for this connection (connect it again)"
            else:
                raise_later = None
                try:
                    fresh = self.oauth.refresh(current.refresh_token)
                except ReauthRequired as e:
                    raise_later = e.message
                else:
                    self.vault.put_tokens(self.connection_id, fresh, bind=s)
                    self.refreshes += 1
        if raise_later is not None:
            raise self._reauth(raise_later)
        return TokenSet(fresh.access_token, fresh.refresh_token or current.refresh_token, fresh.expires_at, fresh.scopes)

    def _reauth(self, message: str) -> ReauthRequired:
        with self.sessions.begin() as s:
            row = repo.get_connection(s, self.connection_id)
            if row is not None and row.status in ("active", "paused"):
                repo.set_connection_status(s, self.connection_id, "needs_reauth")
        return ReauthRequired(message, detail={"connection_id": self.connection_id})


class VaultGoogleCredentials(Credentials):
    """google-auth credentials whose refresh goes through the vault.

    google-auth calls `refresh` before a request when the token is stale and again
    on a 401 (google_auth_httplib2.AuthorizedHttp); both go to `VaultTokenSource`,
    which stores rotated tokens. `refresh_token` only reports that a refresh is
    possible (GooglePeopleContacts enables refresh-on-401 on it); the real one never
    leaves the vault.
    """

    def __init__(self, source: VaultTokenSource) -> None:
        super().__init__(token=None, token_uri=source.oauth.token_uri)
        self._source = source

    @property
    def refresh_token(self):  # type: ignore[override]
        return "<held in the vault>"

    @property
    def expired(self) -> bool:  # type: ignore[override]
        if self.expiry is None:
            return False
        return datetime.now(timezone.utc).replace(tzinfo=None) >= self.expiry - timedelta(seconds=self._source.leeway)

    @property
    def valid(self) -> bool:  # type: ignore[override]
        return self.token is not None and not self.expired

    def refresh(self, request: Any) -> None:
        presented = self.token
        tokens = self._source.tokens(presented=presented, force=presented is not None)
        self.token = tokens.access_token
        # google-auth compares expiry with a naive UTC now.
        self.expiry = tokens.expires_at.astimezone(timezone.utc).replace(tzinfo=None) if tokens.expires_at else None


class CredentialFactory:
    """Builds token sources and credentials per connection; keeps one OAuth client per config.

    msal fetches the authority's discovery document when its app is built, so
    OAuth connectors are cached per (provider, endpoints) rather than made per call.
    """

    def __init__(self, sessions, vault: TokenVault, providers: ProviderConfig | None = None) -> None:
        self.sessions = sessions
        self.vault = vault
        self.providers = providers or ProviderConfig.from_env()
        self._oauth: dict[tuple, Any] = {}
        self._guard = threading.Lock()

    def oauth_for(self, provider: str, settings: dict | None = None):
        cfg = self.providers.with_settings(settings)
        key = (provider, cfg)
        with self._guard:
            client = self._oauth.get(key)
            if client is None:
                client = self._oauth[key] = cfg.oauth(provider)
            return client

    def close(self) -> None:
        with self._guard:
            for client in self._oauth.values():
                client.close()
            self._oauth.clear()

    def _connection(self, connection_id: str):
        with self.sessions.begin() as s:
            row = repo.get_connection(s, connection_id)
        if row is None:
            raise Fatal(f"unknown connection {connection_id!r}")
        return row

    def token_source(self, connection_id: str, *, provider: str | None = None, settings: dict | None = None) -> VaultTokenSource:
        if provider is None:
            row = self._connection(connection_id)
            provider, settings = row.provider, row.settings
        return VaultTokenSource(connection_id, self.oauth_for(provider, settings), self.vault, self.sessions)

    def google_credentials(self, connection_id: str, settings: dict | None = None) -> VaultGoogleCredentials:
        return VaultGoogleCredentials(self.token_source(connection_id, provider=registry.GOOGLE.name, settings=settings))

    def graph_token_provider(self, connection_id: str, settings: dict | None = None) -> Callable[[], str]:
        return self.token_source(connection_id, provider=registry.MICROSOFT.name, settings=settings).access_token


# ----------------------------------------------------------------- 401 handling


class PresentedToken:
    """Token provider that remembers the last token handed out (per thread), so a 401
    can force a refresh of exactly that token."""

    def __init__(self, source: VaultTokenSource) -> None:
        self.source = source
        self._local = threading.local()

    def __call__(self) -> str:
        token = self.source.access_token()
        self._local.token = token
        return token

    def refresh(self) -> None:
        self.source.tokens(presented=getattr(self._local, "token", None), force=True)


class RefreshOn401:
    """GraphContacts raises AuthExpired on a 401 and has no refresh of its own: refresh
    the token once and repeat the call. A 401 means the provider did nothing, so
    repeating a write is safe; a refused refresh surfaces as ReauthRequired."""

    def __init__(self, inner: Any, tokens: PresentedToken) -> None:
        self._inner = inner
        self._tokens = tokens

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except AuthExpired:
                self._tokens.refresh()
                return attr(*args, **kwargs)

        return call

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()
