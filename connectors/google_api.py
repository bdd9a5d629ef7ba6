"""Client plumbing shared by the Google connectors (People contacts and Gmail).

A discovery client over httplib2 that counts the calls it makes to the API, a token
refresh allowed once on a 401 and only when the credentials can refresh, and the
translation of transport-level failures into `models.errors` (an API's HttpError
stays with its connector: each API refuses in its own words).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, NamedTuple, Self

import google_auth_httplib2
import httplib2
from google.auth import exceptions as auth_exceptions
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build

from models.errors import AuthExpired, ReauthRequired, Transient


class CountingHttp(httplib2.Http):
    """httplib2 that counts requests to the API (token refreshes are not counted)."""

    def __init__(self, *, exclude_prefix: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.count = 0
        self._exclude = exclude_prefix

    def request(self, uri, method="GET", *args, **kwargs):  # type: ignore[override]
        if not (self._exclude and str(uri).startswith(self._exclude)):
            self.count += 1
        return super().request(uri, method, *args, **kwargs)


def api_root(base_url: str) -> str:
    return base_url if base_url.endswith("/") else base_url + "/"


class GoogleClient(NamedTuple):
    service: Any  # the discovery client
    authed: google_auth_httplib2.AuthorizedHttp  # what its requests (and batches) go through
    http: CountingHttp  # counts them


def build_service(api: str, version: str, base_url: str, credentials: Credentials, *, timeout: float) -> GoogleClient:
    """The discovery client of `api` at `base_url` (ending in "/"), over an http that counts its calls."""
    http = CountingHttp(exclude_prefix=getattr(credentials, "token_uri", None), timeout=timeout)
    authed = google_auth_httplib2.AuthorizedHttp(
        credentials,
        http=http,
        # Static tokens cannot refresh: let the 401 reach us as AuthExpired.
        refresh_status_codes=(401,) if can_refresh(credentials) else (),
        max_refresh_attempts=1,
    )
    service = build(api, version, http=authed, static_discovery=True, cache_discovery=False,
                    client_options={"api_endpoint": base_url})
    return GoogleClient(service, authed, http)


def can_refresh(credentials: Credentials) -> bool:
    return bool(getattr(credentials, "refresh_token", None))


class GoogleConnector:
    """What the Google connectors share: the call count of their http, and how to reach an emulator.

    A subclass takes `(base_url, credentials, **options)` and sets `self._http` (a CountingHttp).
    """

    _http: CountingHttp

    @classmethod
    def for_emulator(cls, base_url: str, *, token: str | None = None, refresh_token: str = "emulator-refresh",
                     client_id: str = "emulator-client", client_secret: str = "emulator-secret",
                     **kwargs: Any) -> Self:
        """Against one of emulators' Google APIs: a static bearer token, or a refresh through its /token."""
        base = api_root(base_url)
        if token is not None:
            creds = Credentials(token=token)
        else:
            creds = Credentials(token=None, refresh_token=refresh_token, client_id=client_id,
                                client_secret=client_secret, token_uri=base + "token")
        return cls(base, creds, **kwargs)

    @property
    def calls_made(self) -> int:
        return self._http.count


def transport(fn: Callable[[], Any], *, refusal_is_auth_expired: bool = False) -> Any:
    """`fn()`, its token-refresh and transport failures as ConnectorErrors.

    A refused refresh is ReauthRequired (Transient when Google says it may pass);
    with `refusal_is_auth_expired` (credentials that cannot refresh) it is AuthExpired.
    """
    try:
        return fn()
    except auth_exceptions.RefreshError as err:
        if refusal_is_auth_expired:
            raise AuthExpired("access token refused and cannot be refreshed") from err
        if getattr(err, "retryable", False):
            raise Transient("token refresh failed transiently") from err
        raise ReauthRequired("token refresh was refused") from err
    except auth_exceptions.TransportError as err:
        raise Transient(f"token endpoint unreachable: {type(err).__name__}") from err
    except (socket.timeout, TimeoutError) as err:
        raise Transient("request timed out") from err
    except (ConnectionError, httplib2.HttpLib2Error, OSError) as err:
        raise Transient(f"connection failed: {type(err).__name__}") from err
