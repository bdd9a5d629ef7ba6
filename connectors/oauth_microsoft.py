"""Connecting a Microsoft 365 mailbox through msal's ConfidentialClientApplication.

msal builds the consent URL (state, PKCE S256, nonce), checks the callback's
state and the id_token's nonce, and redeems the code. msal (>= 1.38) checks
nothing else of the id_token, so `finish` verifies its signature against the
authority's `jwks_uri`, its issuer (the discovery document's, with the token's
own tenant in multi-tenant authorities), audience and expiry. Refreshes
use `acquire_token_by_refresh_token` with the refresh token kept in *our* vault:
workers are stateless, so msal's own token cache is switched off (`_NoCache`)
instead of growing by one account per connection served.

The Microsoft identity platform has no OAuth revocation endpoint. `revoke`
therefore only forgets: it deletes the vault row when given a connection id.
Ending the grant at Microsoft is the user's (or admin's) act in their account
(My Apps / Enterprise applications); the emulator's `withdraw_consent` models it.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable, Mapping

import msal
import requests
from msal.exceptions import MsalServiceError

from models.errors import Fatal, ReauthRequired, Transient
from connectors.id_tokens import CachedKeys, KeysUnavailable
from connectors.oauth_google import (
    SCOPES,
    ConnectedAccount,
    FlowRejected,
    HttpOptions,
    InMemoryPendingFlows,
    PendingFlow,
    PendingFlows,
    VaultRefresh,
    _check_pending,
    _expires_at,
    scopes_for,
    verified_identity,
)
from store.vault import TokenSet, TokenVault

__all__ = [
    "SCOPES",
    "MSAL_RESERVED_SCOPES",
    "MicrosoftOAuth",
    "FlowRejected",
    "PendingFlow",
    "PendingFlows",
    "InMemoryPendingFlows",
    "HttpOptions",
    "ConnectedAccount",
]

#: msal adds these to every request itself and raises if they are passed in.
MSAL_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})

#: AAD error codes that only the user can fix (consent withdrawn, revoked, expired,
#: password changed, MFA or conditional access now required).
_REAUTH_ERRORS = {"invalid_grant", "interaction_required", "consent_required", "login_required"}
_TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error"}


class _NoCache(msal.TokenCache):
    """The vault is the token store; msal must not keep a second copy in memory."""

    def add(self, event, now=None):  # noqa: D401 - msal hook
        return None


class MicrosoftOAuth(VaultRefresh):
    provider = "microsoft"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        *,
        pending: PendingFlows,
        authority: str = "https://login.microsoftonline.com/organizations",
        capabilities: tuple[str, ...] = ("contacts",),
        http: HttpOptions = HttpOptions(),
        vault: TokenVault | None = None,
        clock: Callable[[], float] = time.time,
        response_mode: str = "form_post",
    ) -> None:
        """`response_mode="form_post"` (RFC 9700 4.3.1): the callback endpoint receives
        the code in a POST body, out of URLs, logs and browser history; pass the
        form fields to `finish` exactly as query parameters would be."""
        self.client_id = client_id
        self.response_mode = response_mode
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.pending = pending
        self.authority = authority
        self.scopes = scopes_for("microsoft", capabilities)
        # What msal is given: resource scopes only (it adds openid profile offline_access).
        self.request_scopes = [s for s in self.scopes if s not in MSAL_RESERVED_SCOPES]
        self.http = http
        self.vault = vault
        self.clock = clock
        self._app: msal.ConfidentialClientApplication | None = None
        self._session: requests.Session | None = None
        self._keys: CachedKeys | None = None

    def close(self) -> None:
        """Drop pooled TLS connections (workers keep one instance; tests make many)."""
        if self._session is not None:
            self._session.close()

    def __repr__(self) -> str:
        return f"MicrosoftOAuth(client_id={self.client_id!r}, authority={self.authority!r})"

    @property
    def app(self) -> msal.ConfidentialClientApplication:
        """Built on first use: construction fetches the authority's discovery document."""
        if self._app is None:
            session = self._session = self.http.session()
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._client_secret,
                    authority=self.authority,
                    instance_discovery=False,
                    http_client=session,
                    timeout=self.http.timeout,
                    token_cache=_NoCache(),
                )
            except requests.RequestException as e:
                raise Transient(f"Microsoft authority unreachable: {type(e).__name__}") from None
            except ValueError as e:  # msal: bad authority or unreadable discovery document
                raise Fatal(f"Microsoft authority misconfigured: {e}") from None
            self._keys = CachedKeys(session, timeout=self.http.timeout)
        return self._app

    def _verified_claims(self, id_token) -> dict:
        """The id_token's claims, checked against the keys and issuer the authority publishes."""
        assert self._keys is not None
        discovery = self.authority.rstrip("/") + "/v2.0/.well-known/openid-configuration"
        try:
            config = self._keys.json(discovery)
        except KeysUnavailable:
            raise Transient("Microsoft's OpenID configuration is unreachable") from None
        issuer, jwks_uri = config.get("issuer"), config.get("jwks_uri")
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
            raise Fatal("Microsoft's OpenID configuration names no issuer or jwks_uri")
        return verified_identity(
            id_token, keys=self._keys, certs_url=jwks_uri, audience=self.client_id,
            issuers=lambda claims: {issuer.replace("{tenantid}", str(claims.get("tid")))},
        )

    # -- flow

    def start(self, connection_hint: dict | None = None, *, login_hint: str | None = None) -> tuple[str, PendingFlow]:
        state = secrets.token_urlsafe(32)
        flow = self.app.initiate_auth_code_flow(
            self.request_scopes,
            redirect_uri=self.redirect_uri,
            state=state,
            login_hint=login_hint,
            prompt="select_account",
            response_mode=self.response_mode,
        )
        pending = PendingFlow(
            state=state,
            provider=self.provider,
            redirect_uri=self.redirect_uri,
            scopes=self.scopes,
            code_verifier=flow["code_verifier"],
            created_at=self.clock(),
            connection_hint=dict(connection_hint or {}),
            extra={"msal_flow": flow},
        )
        self.pending.put(pending)
        return flow["auth_uri"], pending

    def finish(self, callback_params: Mapping[str, str]) -> ConnectedAccount:
        flow_state = _check_pending(self.pending, callback_params, self.provider, self.clock)
        now = self.clock()
        try:
            result = self.app.acquire_token_by_auth_code_flow(
                flow_state.extra["msal_flow"], dict(callback_params)
            )
        except (MsalServiceError, requests.HTTPError) as e:  # msal raises for 5xx
            self.pending.put(flow_state)
            raise Transient(f"Microsoft token endpoint failed: {_status(e)}") from None
        except requests.RequestException as e:
            self.pending.put(flow_state)
            raise Transient(f"Microsoft token endpoint unreachable: {type(e).__name__}") from None
        except (ValueError, RuntimeError) as e:  # msal's own checks: state mismatch (ValueError), nonce (RuntimeError)
            raise FlowRejected(f"msal rejected the callback: {type(e).__name__}", reason="code_rejected") from None
        if "error" in result:
            error = result["error"]
            if error in _TRANSIENT_ERRORS:
                self.pending.put(flow_state)
                raise Transient(f"Microsoft token endpoint: {error}")
            if error in ("invalid_client", "unauthorized_client"):
                raise Fatal(f"Microsoft rejected the client credentials: {error}")
            raise FlowRejected(
                f"Microsoft refused the authorization code: {error} {_aadsts(result)}".strip(),
                reason="code_rejected",
                provider_error=error,
            )
        if not result.get("refresh_token"):
            raise FlowRejected("Microsoft returned no refresh token (offline_access missing?)", reason="no_refresh_token")
        claims = self._verified_claims(result.get("id_token"))
        oid, tid = claims.get("oid"), claims.get("tid")
        if not oid or not tid:
            raise FlowRejected("Microsoft returned no account identity (id_token)", reason="code_rejected")
        return ConnectedAccount(
            self.provider,
            f"{oid}.{tid}",  # msal's home_account_id shape
            claims.get("preferred_username") or claims.get("email"),
            self._tokens(result, now),
            flow_state.connection_hint,
        )

    # -- refresh and revoke

    def refresh(self, refresh_token: str, *, connection_id: str | None = None) -> TokenSet:
        """A fresh access token and the rotated refresh token (Microsoft rotates on every refresh)."""
        now = self.clock()
        try:
            result = self.app.acquire_token_by_refresh_token(refresh_token, scopes=self.request_scopes)
        except (MsalServiceError, requests.HTTPError) as e:  # msal raises for 5xx
            raise Transient(f"Microsoft token endpoint failed: {_status(e)}") from None
        except requests.RequestException as e:
            raise Transient(f"Microsoft token endpoint unreachable: {type(e).__name__}") from None
        if "error" in result:
            error = result["error"]
            detail = {"provider_error": error, "suberror": result.get("suberror"), "aadsts": _aadsts(result)}
            if error in _REAUTH_ERRORS or result.get("suberror") in ("consent_required", "bad_token"):
                raise ReauthRequired(f"Microsoft refused the refresh token: {error} {_aadsts(result)}".strip(), detail=detail)
            if error in _TRANSIENT_ERRORS:
                raise Transient(f"Microsoft token endpoint: {error}", detail=detail)
            raise Fatal(f"Microsoft refresh failed: {error} {_aadsts(result)}".strip(), detail=detail)
        tokens = self._tokens(result, now)
        if self.vault is not None and connection_id is not None:
            self.vault.put_tokens(connection_id, tokens)
        return tokens

    def revoke(self, token: str | None = None, *, connection_id: str | None = None) -> bool:
        """Forget the tokens (no revocation endpoint exists at Microsoft); True if something was removed."""
        if self.vault is not None and connection_id is not None:
            return self.vault.delete(connection_id)
        return False

    @staticmethod
    def _tokens(result: dict, now: float) -> TokenSet:
        scope = result.get("scope") or ""
        return TokenSet(
            access_token=result["access_token"],
            refresh_token=result.get("refresh_token"),
            expires_at=_expires_at(result.get("expires_in"), now),
            scopes=tuple(scope.split() if isinstance(scope, str) else scope),
        )


def _aadsts(result: dict) -> str:
    """The AADSTS code only (the description can echo user details)."""
    codes = result.get("error_codes") or []
    return f"AADSTS{codes[0]}" if codes else ""


def _status(e: Exception) -> str:
    resp = getattr(e, "response", None)
    if resp is not None:
        return str(resp.status_code)
    return str(e)[:40]  # msal: "HTTP Error: 503"
