"""Verifying the OpenID Connect ID tokens we are handed: signature, issuer, audience, expiry.

Three senders: Google's and Microsoft's token endpoints at the end of the connect
flow, and Pub/Sub, whose push requests carry a Google-signed token of the push
service account (`Authorization: Bearer`).

OIDC Core 3.1.3.7 would let a client trust an id_token it got straight from the
token endpoint over TLS, and msal (>= 1.38) checks nothing but the nonce. We
verify anyway: the token's `sub` / `oid`+`tid` becomes the account a connection
is keyed by, so one wrong token endpoint (a proxy, a misconfigured override)
must not be able to name any account it likes.

google-auth's `id_token.verify_token` does the cryptography and the `aud`/`exp`
checks for both key formats: Google's `{kid: x509 PEM}` documents and JWK Sets
(Microsoft's `jwks_uri`, through PyJWT, which msal already depends on). It fetches
the keys on every call, so it is given `CachedKeys` as its transport: key
documents are served from memory for as long as their Cache-Control max-age says.
A token naming an unknown key id is refused without a refetch, so forged tokens
cannot make us hammer the key endpoint; providers publish new keys well before
they sign with them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Callable, Collection

import requests

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
#: Tolerated clock difference between us and the issuer for `iat` and `exp`.
CLOCK_SKEW_S = 30

_MAX_AGE = re.compile(r"max-age=(\d{1,9})")


class InvalidIdToken(Exception):
    """The token is not one we accept. `reason` is a code; the token is never in the message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(Exception):
    """The issuer's keys could not be fetched: nothing can be verified right now."""


class CachedKeys:
    """A google-auth transport (`google.auth.transport.Request`) that caches key documents.

    Only successful GETs are cached, each for the max-age its Cache-Control names
    (Google: a few hours), bounded to [`min_ttl_s`, `max_ttl_s`]; without the
    header, `default_ttl_s`. Thread-safe: token checks run on a thread pool.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        timeout: float = 10.0,
        default_ttl_s: float = 3600.0,
        min_ttl_s: float = 60.0,
        max_ttl_s: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from google.auth.transport.requests import Request

        self._request = Request(session or requests.Session())
        self._timeout = timeout
        self._ttl = (default_ttl_s, min_ttl_s, max_ttl_s)
        self._clock = clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        if method != "GET" or body is not None:
            return self._request(url, method=method, body=body, headers=headers, timeout=timeout or self._timeout,
                                 **kwargs)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(url)
        if hit is not None and hit[0] > now:
            return hit[1]
        response = self._request(url, method="GET", headers=headers, timeout=timeout or self._timeout, **kwargs)
        if response.status == 200:
            with self._lock:
                self._cache[url] = (now + self._lifetime(response.headers.get("cache-control")), response)
        return response

    def json(self, url: str) -> dict:
        """A JSON document (an OpenID configuration), cached like the keys."""
        import google.auth.exceptions as gexc

        try:
            response = self(url)
        except gexc.TransportError:
            raise KeysUnavailable(f"{url} is unreachable") from None
        if response.status != 200:
            raise KeysUnavailable(f"{url} answered {response.status}")
        try:
            doc = json.loads(response.data)
        except ValueError:
            raise KeysUnavailable(f"{url} is not JSON") from None
        if not isinstance(doc, dict):
            raise KeysUnavailable(f"{url} is not a JSON object")
        return doc

    def _lifetime(self, cache_control: str | None) -> float:
        default, low, high = self._ttl
        match = _MAX_AGE.search(cache_control or "")
        return min(max(float(match.group(1)), low), high) if match else default


def verify_id_token(
    token: str,
    *,
    keys: CachedKeys,
    certs_url: str,
    audience: str,
    issuers: Collection[str] | Callable[[dict], Collection[str]],
) -> dict:
    """The token's claims once its signature (a key from `certs_url`), `aud`, `exp`
    and `iss` check out; `issuers` may depend on the claims (Microsoft's
    multi-tenant issuer names the token's own tenant).

    Raises InvalidIdToken (refuse the request) or KeysUnavailable (try again later).
    """
    import google.auth.exceptions as gexc
    import jwt as pyjwt
    from google.oauth2 import id_token

    try:
        claims = id_token.verify_token(token, keys, audience=audience, certs_url=certs_url,
                                       clock_skew_in_seconds=CLOCK_SKEW_S)
    except gexc.TransportError:
        raise KeysUnavailable(f"{certs_url} is unreachable") from None
    except (ValueError, TypeError, KeyError, pyjwt.PyJWTError, gexc.GoogleAuthError):
        # bad signature, unknown key, unsigned, expired, wrong audience, malformed
        raise InvalidIdToken("invalid_token") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), (int, float)):
        raise InvalidIdToken("invalid_token")  # PyJWT (the JWK Set path) accepts a token without exp
    allowed = issuers(claims) if callable(issuers) else issuers
    if claims.get("iss") not in allowed:
        raise InvalidIdToken("wrong_issuer")
    return claims
