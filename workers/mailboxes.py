"""Build the mailbox connector for a connection.

A connection's settings say where its provider API lives (`endpoint`: the real API
or a local emulator) and, optionally, other OAuth endpoints (`oauth`: see
`connectors.credentials.ProviderConfig.with_settings`). Tokens come from the vault,
refreshed through the provider. A static `token` setting exists only for emulators
and the demo (workers/scenario.py) and skips the vault entirely. Which connector a
provider gets, and how, is the registry's (connectors/registry.py).
"""

from __future__ import annotations

from typing import Any

from activities.pipeline import ConnectionInfo
from connectors import registry
from connectors.credentials import CredentialFactory, ProviderConfig
from connectors.protocols import MailboxContacts


class MailboxBuilder:
    """`MailboxFactory` with the vault path: the worker gives it to every kind's pipeline."""

    def __init__(self, sessions, vault, providers: ProviderConfig | None = None) -> None:
        self.credentials = CredentialFactory(sessions, vault, providers)

    def __call__(self, info: ConnectionInfo) -> MailboxContacts:
        static = _static_mailbox(info)
        if static is not None:
            return static
        settings = info.settings or {}
        return registry.get(info.provider).contacts(self.credentials, info.connection_id, settings, **_tuning(settings))


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
    return registry.get(info.provider).static_contacts(settings.get("endpoint"), token, **_tuning(settings))


class MailBuilder:
    """`MailFactory`: a connection's mail connector, fetching what its logging policy
    allows (`MailFetchOptions`: in metadata-only mode no body is ever requested)."""

    def __init__(self, credentials: CredentialFactory) -> None:
        self.credentials = credentials

    def __call__(self, info: ConnectionInfo, options):
        settings = info.settings or {}
        provider = registry.get(info.provider)
        if settings.get("token"):
            return provider.static_mail(settings, settings["token"], info.connection_id, options)
        return provider.mail(self.credentials, info.connection_id, settings, options)


class CalendarBuilder:
    """`MailboxFactory` for the calendar kind: a connection's calendar connector (Google
    Calendar, Microsoft Graph events), on vault tokens or an emulator's static token."""

    def __init__(self, credentials: CredentialFactory) -> None:
        self.credentials = credentials

    def __call__(self, info: ConnectionInfo):
        settings = info.settings or {}
        provider = registry.get(info.provider)
        if settings.get("token"):
            return provider.static_calendar(settings, settings["token"], info.account_ref)
        return provider.calendar(self.credentials, info.connection_id, settings)
