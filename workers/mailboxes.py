"""Build the mailbox connector for a connection.

A connection's settings say where its provider API lives (`endpoint`: the real API
or a local emulator) and, optionally, other OAuth endpoints (`oauth`: see
`connectors.credentials.ProviderConfig.with_settings`). Tokens come from the vault,
refreshed through the provider. A static `token` setting exists only for emulators
and the demo (workers/scenario.py) and skips the vault entirely.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from activities.pipeline import ConnectionInfo
from models.errors import AuthExpired, Fatal
from connectors.protocols import MailboxContacts
from connectors.credentials import CredentialFactory, ProviderConfig, VaultTokenSource

GOOGLE_PEOPLE_ENDPOINT = "https://people.googleapis.com/"
GRAPH_ENDPOINT = "https://graph.microsoft.com/"


class MailboxBuilder:
    """`MailboxFactory` with the vault path: give it to `ContactActivities` in the worker."""

    def __init__(self, sessions, vault, providers: ProviderConfig | None = None) -> None:
        self.credentials = CredentialFactory(sessions, vault, providers)

    def __call__(self, info: ConnectionInfo) -> MailboxContacts:
        static = _static_mailbox(info)
        if static is not None:
            return static
        settings = info.settings or {}
        endpoint = settings.get("endpoint")
        if info.provider == "google":
            from connectors.google_people import GooglePeopleContacts

            creds = self.credentials.google_credentials(info.connection_id, settings)
            return GooglePeopleContacts(endpoint or GOOGLE_PEOPLE_ENDPOINT, creds, **_tuning(settings))
        if info.provider == "microsoft":
            from connectors.graph_contacts import GraphContacts

            source = self.credentials.token_source(info.connection_id, provider="microsoft", settings=settings)
            presented = _Presented(source)
            graph = GraphContacts(endpoint or GRAPH_ENDPOINT, presented, mailbox_key=info.connection_id,
                                  **_tuning(settings))
            return RefreshOn401(graph, presented)  # type: ignore[return-value]
        raise Fatal(f"unknown provider {info.provider!r}")


class _Presented:
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

    def __init__(self, inner: Any, tokens: _Presented) -> None:
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


def _tuning(settings: dict) -> dict[str, Any]:
    """Per-connection connector tuning: `page_size` (contacts per listing page; smaller
    pages heartbeat, and resume after a lost worker, more finely)."""
    out: dict[str, Any] = {}
    if settings.get("page_size"):
        out["page_size"] = int(settings["page_size"])
    return out


def _static_mailbox(info: ConnectionInfo) -> MailboxContacts | None:
    settings = info.settings or {}
    token = settings.get("token")
    if not token:
        return None
    endpoint = settings.get("endpoint")
    if info.provider == "google":
        from connectors.google_people import GooglePeopleContacts

        return GooglePeopleContacts.for_emulator(endpoint or GOOGLE_PEOPLE_ENDPOINT, token=token, **_tuning(settings))
    if info.provider == "microsoft":
        from connectors.graph_contacts import GraphContacts

        return GraphContacts(endpoint or GRAPH_ENDPOINT, lambda: token, **_tuning(settings))
    raise Fatal(f"unknown provider {info.provider!r}")
