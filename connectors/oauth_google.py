"""Connecting a Google mailbox: authorization-code flow with state and PKCE, refresh, revoke.

Libraries: google-auth-oauthlib's `Flow` builds the consent URL and redeems the
code (it takes any `auth_uri`/`token_uri`, so it points at the emulator as it
does at Google); google-auth's `Credentials.refresh` does the refresh grant.
Google has no revocation call in either library, so `revoke` is one plain
`requests` POST to the documented revocation endpoint.

oauthlib refuses plain-http endpoints, so the emulator is served over TLS in
tests and the demo too (see `emulators.oauth.make_self_signed_cert`).

This module also holds the pieces both providers share (scope table, pending
flow storage, the flow-rejected error); `connectors.oauth_microsoft` imports them.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

import requests

from models.errors import Fatal, ReauthRequired, Transient
from connectors.id_tokens import (
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
    CachedKeys,
    InvalidIdToken,
    KeysUnavailable,
    verify_id_token,
)
from models.oauth import PENDING_FLOW_TTL, PendingFlow, PendingFlows  # noqa: F401 (shared, re-exported)
from store.vault import TokenSet, TokenVault

# ===================================================================== shared

#: Narrowest scopes per capability and provider. Identity scopes (who connected)
#: are added by each flow: Google "openid" + userinfo.email, Microsoft's
#: "openid profile offline_access" are added by msal itself.
SCOPES: dict[str, dict[str, tuple[str, ...]]] = {
    "contacts": {
        "google": ("https://www.googleapis.com/auth/contacts",),
        "microsoft": ("Contacts.ReadWrite", "offline_access"),
    },
    # Mail logging reads messages and labels; two-way send sends. gmail.modify would
    # also allow trashing mail, which the product never does.
    "mail": {
        "google": ("https://www.googleapis.com/auth/gmail.readonly", "https://www.googleapis.com/auth/gmail.send"),
        "microsoft": ("Mail.Read", "Mail.Send", "offline_access"),
    },
    # Events only: the product never creates or deletes calendars.
    "calendar": {
        "google": ("https://www.googleapis.com/auth/calendar.events",),
        "microsoft": ("Calendars.ReadWrite", "offline_access"),
    },
}

#: "email" would come back as the userinfo.email URL and trip oauthlib's scope-changed
#: check; asking for the long form up front avoids that.
GOOGLE_IDENTITY_SCOPES = ("openid", "https://www.googleapis.com/auth/userinfo.email")

def scopes_for(provider: str, capabilities: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The union of the scopes the given capabilities need, in a stable order."""
    out: list[str] = []
    for cap in capabilities:
        try:
            wanted = SCOPES[cap][provider]
        except KeyError:
            raise Fatal(f"no scopes defined for capability {cap!r} on provider {provider!r}") from None
        out.extend(s for s in wanted if s not in out)
    return tuple(out)


class FlowRejected(ReauthRequired):
    """The connect attempt cannot complete: the user has to start it again.

    `reason`: unknown_state (forged, replayed or already used), expired_state,
    provider_error (the user denied consent, ...), code_rejected (the provider
    refused the code: replayed, PKCE mismatch), no_refresh_token,
    id_token_rejected (missing, or its signature, issuer, audience or expiry is wrong).
    """

    code = "oauth_flow_rejected"

    def __init__(self, message: str, *, reason: str, provider_error: str | None = None) -> None:
        super().__init__(message, detail={"reason": reason, "provider_error": provider_error})
        self.reason = reason
        self.provider_error = provider_error


class InMemoryPendingFlows:
    """One-process implementation (tests, the embedded demo)."""

    def __init__(self, ttl: timedelta = PENDING_FLOW_TTL, clock: Callable[[], float] = time.time) -> None:
        self._flows: dict[str, PendingFlow] = {}
        self._lock = threading.Lock()
        self._ttl = ttl.total_seconds()
        self._clock = clock

    def put(self, flow: PendingFlow) -> None:
        with self._lock:
            cutoff = self._clock() - self._ttl
            for k in [k for k, f in self._flows.items() if f.created_at < cutoff]:
                del self._flows[k]
            self._flows[flow.state] = flow

    def take(self, state: str) -> PendingFlow | None:
        with self._lock:
            return self._flows.pop(state, None)

    def __len__(self) -> int:
        return len(self._flows)


@dataclass(frozen=True)
class HttpOptions:
    """How to reach the provider. Production: defaults. Tests: the emulator's own certificate.

    `trust_env=False` matters whenever `verify` is a path: requests otherwise lets
    REQUESTS_CA_BUNDLE from the environment override it.
    """

    verify: bool | str = True
    trust_env: bool = True
    timeout: float = 30.0

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = self.trust_env
        s.verify = self.verify
        return s


@dataclass(frozen=True)
class ConnectedAccount:
    """What a finished flow yields: the mailbox identity and its first tokens."""

    provider: str
    account_id: str  # stable provider id (Google sub, Microsoft oid.tid): never the email
    email: str | None
    tokens: TokenSet
    connection_hint: dict

    def __repr__(self) -> str:  # no email, no tokens
        return f"ConnectedAccount(provider={self.provider!r}, account_id={self.account_id!r}, tokens={self.tokens!r})"


def verified_identity(token: Any, *, keys: CachedKeys, certs_url: str, audience: str, issuers) -> dict:
    """The claims of the id_token a token endpoint returned, once verified
    (connectors/id_tokens.py says why we verify it although it came over TLS)."""
    if not isinstance(token, str) or not token:
        raise FlowRejected("the provider returned no id_token", reason="id_token_rejected")
    try:
        return verify_id_token(token, keys=keys, certs_url=certs_url, audience=audience, issuers=issuers)
    except InvalidIdToken as e:
        raise FlowRejected(f"the provider's id_token was refused: {e.reason}", reason="id_token_rejected") from None
    except KeysUnavailable:
        raise Transient("the provider's signing keys are unreachable") from None


def _expires_at(expires_in: Any, now: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(now + float(expires_in), tz=timezone.utc)
    except (TypeError, ValueError):
        return None


def _check_pending(pending: PendingFlows, params: Mapping[str, str], provider: str, clock: Callable[[], float]) -> PendingFlow:
    """The shared callback checks: known, unused, unexpired state; no provider error."""
    state = params.get("state")
    flow = pending.take(state) if state else None
    if flow is None or flow.provider != provider or not secrets.compare_digest(flow.state, state or ""):
        raise FlowRejected("unknown or already used OAuth state", reason="unknown_state")
    if clock() - flow.created_at > PENDING_FLOW_TTL.total_seconds():
        raise FlowRejected("the connect attempt expired; start again", reason="expired_state")
    if params.get("error"):
        raise FlowRejected(
            f"the provider refused the authorization: {params['error']}",
            reason="provider_error",
            provider_error=str(params["error"]),
        )
    if not params.get("code"):
        raise FlowRejected("the callback carries no authorization code", reason="provider_error")
    return flow


# ===================================================================== Google

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_REVOKE_URI = "https://oauth2.googleapis.com/revoke"


class VaultRefresh:
    """`refresh_connection` for a provider client with `vault` and `refresh(rt, connection_id=)`."""

    vault: "TokenVault | None"

    def refresh_connection(self, connection_id: str) -> TokenSet:
        """Refresh from and back into the vault."""
        if self.vault is None:
            raise Fatal("refresh_connection needs a vault")
        current = self.vault.get(connection_id)
        if current is None or not current.refresh_token:
            raise ReauthRequired("no refresh token stored for this connection")
        return self.refresh(current.refresh_token, connection_id=connection_id)  # type: ignore[attr-defined]


class GoogleOAuth(VaultRefresh):
    """The Google side of connecting a mailbox.

    `vault`, when given, receives rotated tokens inside `refresh(..., connection_id=)`
    before they are returned, so a crash right after a refresh never loses the only
    valid refresh token.
    """

    provider = "google"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        *,
        pending: PendingFlows,
        capabilities: tuple[str, ...] = ("contacts",),
        auth_uri: str = GOOGLE_AUTH_URI,
        token_uri: str = GOOGLE_TOKEN_URI,
        revoke_uri: str = GOOGLE_REVOKE_URI,
        certs_uri: str = GOOGLE_CERTS_URL,
        http: HttpOptions = HttpOptions(),
        vault: TokenVault | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.pending = pending
        self.scopes = GOOGLE_IDENTITY_SCOPES + scopes_for("google", capabilities)
        self.auth_uri, self.token_uri, self.revoke_uri = auth_uri, token_uri, revoke_uri
        self.certs_uri = certs_uri
        self.http = http
        self.vault = vault
        self.clock = clock
        self._session = http.session()
        self._keys = CachedKeys(self._session, timeout=http.timeout)

    def close(self) -> None:
        """Drop pooled TLS connections (workers keep one instance; tests make many)."""
        self._session.close()

    def __repr__(self) -> str:
        return f"GoogleOAuth(client_id={self.client_id!r}, token_uri={self.token_uri!r})"

    def _flow(self, state: str, code_verifier: str):
        from google_auth_oauthlib.flow import Flow

        flow = Flow.from_client_config(
            {
                "web": {
                    "client_id": self.client_id,
                    "client_secret": self._client_secret,
                    "auth_uri": self.auth_uri,
                    "token_uri": self.token_uri,
                    "redirect_uris": [self.redirect_uri],
                }
            },
            scopes=list(self.scopes),
            redirect_uri=self.redirect_uri,
            state=state,
            code_verifier=code_verifier,
            autogenerate_code_verifier=False,
        )
        session = flow.oauth2session  # a requests.Session underneath
        session.trust_env = self.http.trust_env
        session.verify = self.http.verify

        def server_errors_are_transient(resp):
            if resp.status_code >= 500 or resp.status_code == 429:
                raise Transient(f"Google token endpoint answered {resp.status_code}")
            return resp

        session.register_compliance_hook("access_token_response", server_errors_are_transient)
        return flow

    # -- flow

    def start(self, connection_hint: dict | None = None, *, login_hint: str | None = None) -> tuple[str, PendingFlow]:
        """Consent URL to send the user to, and the pending flow stored under its state."""
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 chars of the RFC 7636 alphabet
        flow = self._flow(state, verifier)
        extra = {"login_hint": login_hint} if login_hint else {}
        url, returned_state = flow.authorization_url(
            access_type="offline",  # a refresh token
            prompt="consent",  # ... every time, not only on the very first consent
            include_granted_scopes="false",  # never widen to scopes granted earlier
            state=state,
            **extra,
        )
        assert returned_state == state
        pending = PendingFlow(
            state=state,
            provider=self.provider,
            redirect_uri=self.redirect_uri,
            scopes=self.scopes,
            code_verifier=verifier,
            created_at=self.clock(),
            connection_hint=dict(connection_hint or {}),
        )
        self.pending.put(pending)
        return url, pending

    def finish(self, callback_params: Mapping[str, str]) -> ConnectedAccount:
        """Redeem the callback's code; raises FlowRejected for anything but a clean consent."""
        from oauthlib.oauth2.rfc6749.errors import OAuth2Error

        flow_state = _check_pending(self.pending, callback_params, self.provider, self.clock)
        flow = self._flow(flow_state.state, flow_state.code_verifier)
        now = self.clock()
        try:
            token = flow.fetch_token(code=callback_params["code"], timeout=self.http.timeout)
        except Transient:
            self.pending.put(flow_state)  # the code was not spent: let the callback be retried
            raise
        except requests.RequestException as e:
            self.pending.put(flow_state)
            raise Transient(f"Google token endpoint unreachable: {type(e).__name__}") from None
        except OAuth2Error as e:
            if e.error in ("invalid_client", "unauthorized_client"):
                raise Fatal(f"Google rejected the client credentials: {e.error}") from None
            raise FlowRejected(
                f"Google refused the authorization code: {e.error}", reason="code_rejected", provider_error=e.error
            ) from None
        finally:
            flow.oauth2session.close()
        if not token.get("refresh_token"):
            raise FlowRejected("Google returned no refresh token", reason="no_refresh_token")
        claims = verified_identity(token.get("id_token"), keys=self._keys, certs_url=self.certs_uri,
                                   audience=self.client_id, issuers=GOOGLE_ISSUERS)
        if not claims.get("sub"):
            raise FlowRejected("Google returned no account identity (id_token)", reason="code_rejected")
        scope = token.get("scope") or ()
        tokens = TokenSet(
            access_token=token["access_token"],
            refresh_token=token["refresh_token"],
            expires_at=_expires_at(token.get("expires_in"), now),
            scopes=tuple(scope.split() if isinstance(scope, str) else scope),
        )
        return ConnectedAccount(self.provider, claims["sub"], claims.get("email"), tokens, flow_state.connection_hint)

    # -- refresh and revoke

    def refresh(self, refresh_token: str, *, connection_id: str | None = None) -> TokenSet:
        """A fresh access token. The returned refresh token is the one to keep from now on."""
        import google.auth.exceptions as gexc
        from google.auth.transport.requests import Request
        from google.oauth2.credentials import Credentials

        creds = Credentials(
            token=None,
            refresh_token=refresh_token,
            client_id=self.client_id,
            client_secret=self._client_secret,
            token_uri=self.token_uri,
        )
        request = _TimeoutRequest(self._session, self.http.timeout)
        try:
            creds.refresh(request)
        except gexc.RefreshError as e:
            data = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
            error = data.get("error")
            if getattr(e, "retryable", False) or error in ("temporarily_unavailable", "server_error"):
                raise Transient("Google token endpoint is failing; retry later") from None
            if error == "invalid_grant":
                raise ReauthRequired("Google refused the refresh token (revoked or expired)", detail={"provider_error": error}) from None
            raise Fatal(f"Google refresh failed: {error or 'unexpected answer'}") from None
        except gexc.TransportError:
            raise Transient("Google token endpoint unreachable") from None
        tokens = TokenSet(
            access_token=creds.token,
            # google-auth keeps the presented token unless the answer carried a new one.
            refresh_token=creds.refresh_token,
            expires_at=creds.expiry.replace(tzinfo=timezone.utc) if creds.expiry else None,
            scopes=tuple(creds.granted_scopes or ()),
        )
        if self.vault is not None and connection_id is not None:
            self.vault.put_tokens(connection_id, tokens)
        return tokens

    def revoke(self, token: str) -> bool:
        """Revoke a refresh (or access) token: Google ends the whole grant.

        Returns False when Google says the token was already invalid, which for a
        disconnect is as good as done.
        """
        try:
            resp = self._session.post(
                self.revoke_uri,
                data={"token": token},
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=self.http.timeout,
            )
        except requests.RequestException as e:
            raise Transient(f"Google revoke endpoint unreachable: {type(e).__name__}") from None
        if resp.status_code == 200:
            return True
        if resp.status_code >= 500 or resp.status_code == 429:
            raise Transient(f"Google revoke answered {resp.status_code}")
        if resp.status_code == 400:
            return False
        raise Fatal(f"Google revoke answered {resp.status_code}")


class _TimeoutRequest:
    """google-auth's requests transport with a timeout (it defaults to 120 s)."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        from google.auth.transport.requests import Request

        self._request = Request(session)
        self._timeout = timeout

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        return self._request(url, method=method, body=body, headers=headers, timeout=timeout or self._timeout, **kwargs)
