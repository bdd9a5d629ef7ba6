"""Build the mailbox connector for a connection.

A connection's settings say where its provider lives (`endpoint`: the real API or
a local emulator) and how to authenticate. Tokens are read from the vault when one
is configured; a static `token` setting exists only for emulators and the demo.
"""

from __future__ import annotations

from activities.contacts import ConnectionInfo
from connectors.errors import Fatal
from connectors.protocols import MailboxContacts

GOOGLE_PEOPLE_ENDPOINT = "https://people.googleapis.com/"
GRAPH_ENDPOINT = "https://graph.microsoft.com/"


def build_mailbox(info: ConnectionInfo) -> MailboxContacts:
    settings = info.settings or {}
    endpoint = settings.get("endpoint")
    token = settings.get("token")
    if info.provider == "google":
        from connectors.google_people import GooglePeopleContacts

        if token:
            return GooglePeopleContacts.for_emulator(endpoint or GOOGLE_PEOPLE_ENDPOINT, token=token)
        raise Fatal("google connection has no credentials (connect it through OAuth first)")
    if info.provider == "microsoft":
        from connectors.graph_contacts import GraphContacts

        if token:
            return GraphContacts(endpoint or GRAPH_ENDPOINT, lambda: token)
        raise Fatal("microsoft connection has no credentials (connect it through OAuth first)")
    raise Fatal(f"unknown provider {info.provider!r}")
