"""Local Google and Microsoft OAuth 2.0 authorization servers.

Faithful enough that the real client libraries (google-auth-oauthlib,
google-auth, msal) run their normal code paths against them: authorization
endpoint with consent auto-approved (or denied), token endpoint with
authorization_code + PKCE and refresh_token grants, rotating refresh tokens,
revocation, the wire error shapes each provider uses, and RS256-signed ID
tokens whose keys are served where the providers serve theirs (Google's
`oauth2/v1/certs` and `v3/certs`, Microsoft's `jwks_uri`); the RSA key is made
at run time. The `OAuthState` behind an app is what tests steer (deny consent,
withdraw consent, fail the next token calls, forge the next ID tokens), what the
Google People / Graph emulators ask whether a bearer token is valid, and what
mints the OIDC tokens of Pub/Sub pushes.

Both providers must be served over TLS: msal refuses http authorities, and
oauthlib (under google-auth-oauthlib) refuses http endpoints. Use
`make_self_signed_cert()` and `emulators.server.serve(..., certfile=, keyfile=)`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from emulators.json_response import EscapedJSONResponse

Provider = Literal["google", "microsoft"]

GOOGLE_ISSUER = "https://accounts.google.com"
# Google answers with the long form of the OpenID shorthand scopes; a client that
# asked for "email" sees "https://www.googleapis.com/auth/userinfo.email" back.
_GOOGLE_SCOPE_ALIASES = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}
_MS_RESERVED = {"openid", "profile", "offline_access", "email"}
_MS_MULTI_TENANT = {"common", "organizations", "consumers"}
#: What Google sends with its key documents (the keys rotate; clients cache this long).
_KEYS_CACHE_CONTROL = "public, max-age=21600, must-revalidate, no-transform"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(claims: dict) -> str:
    """An `alg: none` JWT: what a forger sends when it has no key (tests expect it refused)."""
    header = {"typ": "JWT", "alg": "none"}
    return ".".join(
        [_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()), ""]
    )


@dataclass(frozen=True)
class SigningKey:
    """An RSA key an emulated issuer signs ID tokens with, made at run time, and its public forms:
    an x509 certificate (Google's `oauth2/v1/certs` document maps key ids to these) and a
    JWK (Google's `oauth2/v3/certs`, Microsoft's `jwks_uri`)."""

    kid: str
    private_pem: bytes = field(repr=False)
    cert_pem: str
    jwk: dict

    @classmethod
    def generate(cls, kid: str | None = None) -> "SigningKey":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = kid or secrets.token_hex(20)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emulated-issuer")])
        now = datetime.now(timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
            .sign(key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        numbers = key.public_key().public_numbers()

        def b64int(n: int) -> str:
            return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": b64int(numbers.n),
               "e": b64int(numbers.e), "x5t": _b64url(hashlib.sha1(der).digest()),
               "x5c": [base64.b64encode(der).decode("ascii")]}
        private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        return cls(kid, private_pem, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), jwk)

    def sign(self, claims: dict) -> str:
        """An RS256 JWT of `claims`, with this key's id in the header."""
        from google.auth import crypt, jwt

        return jwt.encode(crypt.RSASigner.from_string(self.private_pem, key_id=self.kid), claims).decode("ascii")


def s256(verifier: str) -> str:
    # A verifier outside RFC 7636's ASCII alphabet cannot match; it must not crash the check.
    return _b64url(hashlib.sha256(verifier.encode("utf-8", "surrogatepass")).digest())


def _same_secret(a: str, b: str) -> bool:
    """Constant-time equality that also takes non-ASCII input (str compare_digest raises on it)."""
    return secrets.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------- state


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uris: set[str]


@dataclass
class OAuthUser:
    email: str
    name: str
    sub: str
    oid: str
    tenant_id: str


@dataclass
class Grant:
    """One user's consent to one client: every token issued under it dies with it."""

    id: str
    client_id: str
    user: OAuthUser
    scopes: tuple[str, ...]
    revoked: bool = False


@dataclass
class AccessTokenInfo:
    token: str
    grant: Grant
    expires_at: float
    revoked: bool = False

    @property
    def user(self) -> OAuthUser:
        return self.grant.user

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.grant.scopes

    @property
    def client_id(self) -> str:
        return self.grant.client_id


@dataclass
class RefreshTokenInfo:
    token: str
    grant: Grant
    rotated: bool = False  # replaced by a newer one; presenting it again is reuse
    revoked: bool = False


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    user: OAuthUser
    scopes: tuple[str, ...]
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    offline: bool
    expires_at: float
    redeemed_grant: Grant | None = None


@dataclass
class OAuthState:
    """What one emulated authorization server knows; thread-safe (the server runs on its own thread)."""

    provider: Provider
    #: Issue a new refresh token on every refresh and invalidate the presented one.
    #: Microsoft always rotates; Google does not by default.
    rotate_refresh_tokens: bool | None = None
    #: After rotation, refuse the replaced refresh token (and treat its reuse as theft).
    #: Strict by default so a client that keeps the old token fails loudly; Microsoft
    #: in practice keeps old ones valid for a while (UNCONFIRMED): set False to mimic that.
    invalidate_rotated: bool = True
    access_token_ttl: int = 3599
    code_ttl: int = 600
    #: Consent screen answer: False makes the authorize endpoint redirect with error=access_denied.
    approve_consent: bool = True
    #: Tenant id Microsoft users belong to.
    tenant_id: str = "9188040d-6c67-4c5b-b112-36a304b66dad"
    clock: Callable[[], float] = time.time
    clients: dict[str, OAuthClient] = field(default_factory=dict)
    users: dict[str, OAuthUser] = field(default_factory=dict)
    default_user: str | None = None
    access_tokens: dict[str, AccessTokenInfo] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshTokenInfo] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    consent_withdrawn: set[str] = field(default_factory=set)
    counters: Counter = field(default_factory=Counter)
    #: Status codes the next token requests answer with (popped one per request).
    token_failures: list[int] = field(default_factory=list)
    #: Seconds the token endpoint sleeps before answering (timeouts).
    token_delay: float = 0.0
    revocations: list[str] = field(default_factory=list)  # kinds revoked via /revoke, never the token
    #: How the next ID tokens are made: "signed" (with `signing_key`, served at the certs
    #: endpoints), "unsigned" (alg none) or "foreign_key" (the same key id, another key).
    id_token_mode: Literal["signed", "unsigned", "foreign_key"] = "signed"
    #: Claims put over the ones an ID token would carry (expired, another audience...);
    #: a None value leaves the claim out.
    id_token_overrides: dict = field(default_factory=dict)
    _signing_key: SigningKey | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        if self.rotate_refresh_tokens is None:
            self.rotate_refresh_tokens = self.provider == "microsoft"

    # -- setup

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str] | set[str]) -> OAuthClient:
        with self._lock:
            c = OAuthClient(client_id, client_secret, set(redirect_uris))
            self.clients[client_id] = c
            return c

    def add_user(self, email: str, name: str | None = None) -> OAuthUser:
        with self._lock:
            digits = str(int(hashlib.sha256(email.encode()).hexdigest(), 16))[:21]
            u = OAuthUser(
                email=email,
                name=name or email.split("@")[0],
                sub=digits if self.provider == "google" else _b64url(hashlib.sha256(b"sub" + email.encode()).digest()),
                oid=str(uuid.uuid5(uuid.NAMESPACE_URL, "oid:" + email)),
                tenant_id=self.tenant_id,
            )
            self.users[email] = u
            if self.default_user is None:
                self.default_user = email
            return u

    def fail_next_token_requests(self, count: int = 1, status: int = 503) -> None:
        with self._lock:
            self.token_failures.extend([status] * count)

    # -- steering

    def revoke_refresh_tokens(self, email: str) -> int:
        """Kill every refresh token of a user (password reset, admin revocation). Access tokens live on until expiry."""
        with self._lock:
            n = 0
            for rt in self.refresh_tokens.values():
                if rt.grant.user.email == email and not rt.revoked:
                    rt.revoked = True
                    n += 1
            return n

    def withdraw_consent(self, email: str) -> None:
        """The user removed the app from their account: refreshes fail with consent_required."""
        with self._lock:
            self.consent_withdrawn.add(email)
            for g in self.grants.values():
                if g.user.email == email:
                    g.revoked = True

    def restore_consent(self, email: str) -> None:
        with self._lock:
            self.consent_withdrawn.discard(email)

    def validate_access_token(self, token: str, required_scope: str | None = None) -> AccessTokenInfo | None:
        """For resource-server emulators: the token's info if it is live (and carries the scope)."""
        with self._lock:
            info = self.access_tokens.get(token)
            if info is None or info.revoked or info.grant.revoked or info.expires_at <= self.clock():
                return None
            if required_scope is not None and required_scope not in info.scopes:
                return None
            return info

    def issued(self, email: str | None = None) -> dict[str, list[str]]:
        """Tokens handed out so far (tests compare them with what the client stored)."""
        with self._lock:
            return {
                "access": [t for t, i in self.access_tokens.items() if email is None or i.user.email == email],
                "refresh": [t for t, i in self.refresh_tokens.items() if email is None or i.grant.user.email == email],
            }

    # -- ID tokens

    @property
    def signing_key(self) -> SigningKey:
        """The issuer's key, made on first use (RSA generation costs a few tens of ms)."""
        with self._lock:
            if self._signing_key is None:
                self._signing_key = SigningKey.generate()
            return self._signing_key

    def certs(self) -> dict[str, str]:
        """Google's `oauth2/v1/certs` document: key id -> x509 PEM."""
        return {self.signing_key.kid: self.signing_key.cert_pem}

    def jwks(self) -> dict:
        """A JWK Set: Google's `oauth2/v3/certs`, Microsoft's `jwks_uri`."""
        return {"keys": [dict(self.signing_key.jwk)]}

    def id_token(self, claims: dict) -> str:
        """An ID token as this issuer makes them, unless steered (`id_token_mode`, `id_token_overrides`)."""
        with self._lock:
            claims = {k: v for k, v in {**claims, **self.id_token_overrides}.items() if v is not None}
            mode = self.id_token_mode
        if mode == "unsigned":
            return unsigned_jwt(claims)
        if mode == "foreign_key":
            return SigningKey.generate(kid=self.signing_key.kid).sign(claims)
        return self.signing_key.sign(claims)

    def pubsub_push_token(self, audience: str, service_account: str, *, lifetime_s: int = 3600, **claims) -> str:
        """The OIDC token Pub/Sub puts in `Authorization: Bearer` of a push (signed by Google
        for the subscription's push service account, `aud` = the configured audience)."""
        now = int(self.clock())
        sub = str(int(hashlib.sha256(service_account.encode()).hexdigest(), 16))[:21]
        body = {"aud": audience, "azp": sub, "email": service_account, "email_verified": True,
                "iat": now, "exp": now + lifetime_s, "iss": GOOGLE_ISSUER, "sub": sub}
        return self.id_token({**body, **claims})

    # -- internals

    def _new_access(self, grant: Grant) -> AccessTokenInfo:
        prefix = "ya29.emu-" if self.provider == "google" else "EwB.emu-"
        info = AccessTokenInfo(prefix + secrets.token_urlsafe(32), grant, self.clock() + self.access_token_ttl)
        self.access_tokens[info.token] = info
        return info

    def _new_refresh(self, grant: Grant) -> RefreshTokenInfo:
        prefix = "1//emu-" if self.provider == "google" else "M.C5.emu-"
        info = RefreshTokenInfo(prefix + secrets.token_urlsafe(40), grant)
        self.refresh_tokens[info.token] = info
        return info


# ---------------------------------------------------------------- shared protocol logic


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str, **extra) -> None:
        self.status, self.error, self.description, self.extra = status, error, description, extra


def _client_auth(state: OAuthState, request: Request, form: dict) -> OAuthClient:
    """client_secret_basic (oauthlib's default) or client_secret_post (msal's)."""
    client_id, secret = form.get("client_id"), form.get("client_secret")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            raw = base64.b64decode(header[6:]).decode()
            from urllib.parse import unquote

            cid, _, sec = raw.partition(":")
            client_id, secret = unquote(cid), unquote(sec)
        except Exception:
            raise _OAuthError(401, "invalid_client", "Unauthorized") from None
    client = state.clients.get(client_id or "")
    if client is None or not secret or not _same_secret(client.client_secret, secret):
        raise _OAuthError(401, "invalid_client", "Unauthorized")
    return client


def _form_post(uri: str, params: dict) -> HTMLResponse:
    """response_mode=form_post: the browser POSTs the answer, keeping the code out of URLs and history."""
    from html import escape

    inputs = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(str(v))}"/>' for k, v in params.items() if v is not None
    )
    return HTMLResponse(
        f'<html><body onload="document.forms[0].submit()"><form method="POST" action="{escape(uri)}">'
        f"{inputs}</form></body></html>",
        headers={"Cache-Control": "no-store"},
    )


def _redirect(uri: str, params: dict, response_mode: str | None = None) -> Response:
    if response_mode == "form_post":
        return _form_post(uri, params)
    parts = urlsplit(uri)
    query = parse_qsl(parts.query) + [(k, v) for k, v in params.items() if v is not None]
    return RedirectResponse(urlunsplit(parts._replace(query=urlencode(query))), status_code=302)


def _authorize(state: OAuthState, q: dict, *, deny_description: str) -> Response:
    with state._lock:
        state.counters["authorize"] += 1
        client = state.clients.get(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri", "")
        # Bad client or redirect: an error page, never a redirect (no open redirector).
        if client is None:
            return HTMLResponse("Error 401: invalid_client", status_code=401)
        if redirect_uri not in client.redirect_uris:
            return HTMLResponse("Error 400: redirect_uri_mismatch", status_code=400)
        st = q.get("state")
        mode = q.get("response_mode")
        if q.get("response_type") != "code":
            return _redirect(redirect_uri, {"error": "unsupported_response_type", "state": st}, mode)
        method = q.get("code_challenge_method") or ("plain" if q.get("code_challenge") else None)
        if method not in (None, "S256", "plain"):
            return _redirect(redirect_uri, {"error": "invalid_request", "error_description": "Invalid code_challenge_method", "state": st}, mode)
        if not state.approve_consent:
            state.counters["consent_denied"] += 1
            return _redirect(redirect_uri, {"error": "access_denied", "error_description": deny_description, "state": st}, mode)
        email = q.get("login_hint") if q.get("login_hint") in state.users else state.default_user
        if email is None:
            return HTMLResponse("no user signed in to the emulator", status_code=400)
        scopes = tuple(q.get("scope", "").split())
        offline = (
            q.get("access_type") == "offline"
            if state.provider == "google"
            else "offline_access" in scopes
        )
        code = AuthCode(
            code=("4/emu-" if state.provider == "google" else "1.emu-") + secrets.token_urlsafe(32),
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            user=state.users[email],
            scopes=scopes,
            code_challenge=q.get("code_challenge"),
            code_challenge_method=method,
            nonce=q.get("nonce"),
            offline=offline,
            expires_at=state.clock() + state.code_ttl,
        )
        state.codes[code.code] = code
        state.consent_withdrawn.discard(email)  # consenting again undoes a withdrawal
        params = {"state": st, "code": code.code}
        if state.provider == "google":
            params["scope"] = " ".join(_GOOGLE_SCOPE_ALIASES.get(s, s) for s in scopes)
        else:
            params["session_state"] = str(uuid.uuid4())
        return _redirect(redirect_uri, params, mode)


def _token_response(state: OAuthState, grant: Grant, *, with_refresh: RefreshTokenInfo | None, nonce: str | None, issuer: str) -> dict:
    access = state._new_access(grant)
    now = int(state.clock())
    body: dict = {
        "access_token": access.token,
        "expires_in": state.access_token_ttl,
        "token_type": "Bearer",
    }
    user = grant.user
    if state.provider == "google":
        body["scope"] = " ".join(_GOOGLE_SCOPE_ALIASES.get(s, s) for s in grant.scopes)
        if "openid" in grant.scopes:
            claims = {"iss": GOOGLE_ISSUER, "azp": grant.client_id, "aud": grant.client_id, "sub": user.sub,
                      "iat": now, "exp": now + 3600}
            if {"email", _GOOGLE_SCOPE_ALIASES["email"]} & set(grant.scopes):
                claims.update(email=user.email, email_verified=True)
            if nonce:
                claims["nonce"] = nonce
            body["id_token"] = state.id_token(claims)
    else:
        body["scope"] = " ".join(s for s in grant.scopes if s != "offline_access")
        body["ext_expires_in"] = state.access_token_ttl
        body["client_info"] = _b64url(json.dumps({"uid": user.oid, "utid": user.tenant_id}).encode())
        if "openid" in grant.scopes:
            # Entra names the user's own tenant in `iss`, whatever authority was asked.
            claims = {"ver": "2.0", "iss": issuer.replace("{tenantid}", user.tenant_id), "aud": grant.client_id,
                      "iat": now, "nbf": now, "exp": now + 3600, "sub": user.sub, "oid": user.oid,
                      "tid": user.tenant_id, "preferred_username": user.email, "name": user.name}
            if nonce:
                claims["nonce"] = nonce
            body["id_token"] = state.id_token(claims)
    if with_refresh is not None:
        body["refresh_token"] = with_refresh.token
    return body


def _check_pkce(code: AuthCode, verifier: str | None, microsoft: bool) -> None:
    if code.code_challenge is None:
        return
    if not verifier:
        raise _OAuthError(400, "invalid_grant", "AADSTS50148: The code_verifier is missing." if microsoft else "Missing code verifier.")
    computed = s256(verifier) if code.code_challenge_method == "S256" else verifier
    if not _same_secret(computed, code.code_challenge):
        raise _OAuthError(
            400,
            "invalid_grant",
            "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the authorization request."
            if microsoft
            else "Invalid code verifier.",
        )


def _token(state: OAuthState, request: Request, form: dict, issuer: str) -> dict:
    ms = state.provider == "microsoft"
    client = _client_auth(state, request, form)
    grant_type = form.get("grant_type")
    now = state.clock()
    if grant_type == "authorization_code":
        state.counters["token_authorization_code"] += 1
        code = state.codes.get(form.get("code", ""))
        if code is None or code.client_id != client.client_id:
            raise _OAuthError(400, "invalid_grant", "AADSTS70000: The provided value for the 'code' parameter is not valid." if ms else "Malformed auth code.")
        if code.redeemed_grant is not None:
            # RFC 6749 4.1.2: a replayed code revokes what it already produced.
            code.redeemed_grant.revoked = True
            raise _OAuthError(400, "invalid_grant", "AADSTS54005: OAuth2 Authorization code was already redeemed." if ms else "Bad Request")
        if code.expires_at <= now:
            raise _OAuthError(400, "invalid_grant", "AADSTS70008: The provided authorization code has expired." if ms else "Bad Request")
        if form.get("redirect_uri") != code.redirect_uri:
            raise _OAuthError(400, "invalid_grant" if ms else "redirect_uri_mismatch", "AADSTS50011: The redirect URI does not match." if ms else "Bad Request")
        _check_pkce(code, form.get("code_verifier"), ms)
        grant = Grant(secrets.token_hex(8), client.client_id, code.user, code.scopes)
        state.grants[grant.id] = grant
        code.redeemed_grant = grant
        rt = state._new_refresh(grant) if code.offline else None
        return _token_response(state, grant, with_refresh=rt, nonce=code.nonce, issuer=issuer)

    if grant_type == "refresh_token":
        state.counters["token_refresh"] += 1
        rt = state.refresh_tokens.get(form.get("refresh_token", ""))
        if rt is None or rt.grant.client_id != client.client_id:
            raise _OAuthError(400, "invalid_grant", "AADSTS9002313: Invalid request. Request is malformed or invalid." if ms else "Bad Request")
        user = rt.grant.user
        if ms and user.email in state.consent_withdrawn:
            raise _OAuthError(
                400,
                "invalid_grant",
                "AADSTS65001: The user or administrator has not consented to use the application.",
                suberror="consent_required",
                error_codes=[65001],
            )
        if rt.rotated and state.invalidate_rotated:
            # Reuse of a rotated refresh token: assume theft and kill the whole grant.
            rt.grant.revoked = True
            state.counters["refresh_token_reuse"] += 1
        if rt.revoked or rt.grant.revoked or (rt.rotated and state.invalidate_rotated):
            raise _OAuthError(
                400,
                "invalid_grant",
                "AADSTS50173: The provided grant has expired due to it being revoked." if ms else "Token has been expired or revoked.",
                **({"error_codes": [50173]} if ms else {}),
            )
        new_rt = None
        if state.rotate_refresh_tokens:
            rt.rotated = True
            new_rt = state._new_refresh(rt.grant)
        return _token_response(state, rt.grant, with_refresh=new_rt, nonce=None, issuer=issuer)

    raise _OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")


async def _form(request: Request) -> dict:
    """application/x-www-form-urlencoded body (parsed here: no python-multipart dependency)."""
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


async def _handle_token(state: OAuthState, request: Request, issuer: str) -> Response:
    form = await _form(request)
    with state._lock:
        state.counters["token"] += 1
        delay = state.token_delay
        failure = state.token_failures.pop(0) if state.token_failures else None
    if delay:
        import asyncio

        await asyncio.sleep(delay)
    if failure is not None:
        state.counters["token_failed"] += 1
        return EscapedJSONResponse({"error": "temporarily_unavailable", "error_description": "Service unavailable"}, status_code=failure)
    try:
        with state._lock:
            body = _token(state, request, form, issuer)
        return EscapedJSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
    except _OAuthError as e:
        with state._lock:
            state.counters["token_error"] += 1
            state.counters[f"token_error:{e.error}"] += 1
        body = {"error": e.error, "error_description": e.description, **e.extra}
        if state.provider == "microsoft":
            body.setdefault("error_codes", [int(e.description[6:].split(":")[0])] if e.description.startswith("AADSTS") else [])
            body.update(timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
                        trace_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))
        return EscapedJSONResponse(body, status_code=e.status)


# ---------------------------------------------------------------- apps


def _no_keepalive(app: FastAPI) -> None:
    """Close each connection after its response.

    uvicorn's shutdown waits on idle keep-alive TLS connections (for the peer's
    close_notify) long after clients have gone, which made every test teardown
    hang; one handshake per call costs nothing at emulator volumes.
    """

    @app.middleware("http")
    async def close_after_response(request: Request, call_next):
        response = await call_next(request)
        response.headers["Connection"] = "close"
        return response


def google_app(state: OAuthState) -> FastAPI:
    """accounts.google.com + oauth2.googleapis.com on one origin: /o/oauth2/v2/auth, /token, /revoke."""
    assert state.provider == "google"
    app = FastAPI(title="Google OAuth emulator")
    app.state.oauth = state
    _no_keepalive(app)

    @app.get("/o/oauth2/v2/auth")
    @app.get("/o/oauth2/auth")
    async def authorize(request: Request):
        return _authorize(state, dict(request.query_params), deny_description="")

    @app.post("/token")
    async def token(request: Request):
        return await _handle_token(state, request, GOOGLE_ISSUER)

    # www.googleapis.com: the keys Google signs ID tokens (sign-in, Pub/Sub push) with.
    @app.get("/oauth2/v1/certs")
    async def certs():
        with state._lock:
            state.counters["certs"] += 1
        return EscapedJSONResponse(state.certs(), headers={"Cache-Control": _KEYS_CACHE_CONTROL})

    @app.get("/oauth2/v3/certs")
    async def jwks():
        with state._lock:
            state.counters["certs"] += 1
        return EscapedJSONResponse(state.jwks(), headers={"Cache-Control": _KEYS_CACHE_CONTROL})

    @app.api_route("/revoke", methods=["GET", "POST"])
    async def revoke(request: Request):
        params = dict(request.query_params)
        if request.method == "POST":
            params.update(await _form(request))
        token = params.get("token", "")
        with state._lock:
            state.counters["revoke"] += 1
            grant = None
            if token in state.refresh_tokens:
                grant = state.refresh_tokens[token].grant
                state.revocations.append("refresh")
            elif token in state.access_tokens:
                grant = state.access_tokens[token].grant
                state.revocations.append("access")
            if grant is None or grant.revoked:
                return EscapedJSONResponse({"error": "invalid_token", "error_description": "Token expired or revoked"}, status_code=400)
            # Google: revoking either token ends the whole grant (refresh and access).
            grant.revoked = True
            for info in state.access_tokens.values():
                if info.grant is grant:
                    info.revoked = True
            for info in state.refresh_tokens.values():
                if info.grant is grant:
                    info.revoked = True
        return EscapedJSONResponse({})

    return app


def microsoft_app(state: OAuthState) -> FastAPI:
    """login.microsoftonline.com: discovery, authorize and token under /{tenant}/."""
    assert state.provider == "microsoft"
    app = FastAPI(title="Microsoft identity platform emulator")
    app.state.oauth = state
    _no_keepalive(app)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def issuer(request: Request, tenant: str) -> str:
        # Multi-tenant authorities publish a template; each token names its user's tenant.
        return f"{base(request)}/{{tenantid}}/v2.0" if tenant in _MS_MULTI_TENANT else f"{base(request)}/{tenant}/v2.0"

    @app.get("/{tenant}/v2.0/.well-known/openid-configuration")
    async def discovery(tenant: str, request: Request):
        with state._lock:
            state.counters["discovery"] += 1
        b = base(request)
        return {
            "issuer": issuer(request, tenant),
            "authorization_endpoint": f"{b}/{tenant}/oauth2/v2.0/authorize",
            "token_endpoint": f"{b}/{tenant}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{b}/{tenant}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{b}/{tenant}/oauth2/v2.0/logout",
            "jwks_uri": f"{b}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "tenant_region_scope": "EU",
        }

    @app.get("/{tenant}/oauth2/v2.0/authorize")
    async def authorize(tenant: str, request: Request):
        return _authorize(
            state,
            dict(request.query_params),
            deny_description="AADSTS65004: User declined to consent to access the app.",
        )

    @app.get("/{tenant}/discovery/v2.0/keys")
    async def keys(tenant: str):
        with state._lock:
            state.counters["certs"] += 1
        return EscapedJSONResponse(state.jwks(), headers={"Cache-Control": _KEYS_CACHE_CONTROL})

    @app.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request):
        return await _handle_token(state, request, f"{base(request)}/{{tenantid}}/v2.0")

    return app


# ---------------------------------------------------------------- TLS


def make_self_signed_cert(directory: str | Path, host: str = "127.0.0.1") -> tuple[str, str]:
    """A throwaway certificate for `host` (IP SAN + localhost), valid two days.

    The certificate is its own CA so clients can trust exactly it
    (`requests.Session.verify = cert_path`) and nothing else.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(timezone.utc)
    try:
        san: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        san = [x509.DNSName(host)]
    san.append(x509.DNSName("localhost"))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)
