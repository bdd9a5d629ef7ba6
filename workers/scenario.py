"""A seeded world for the demo, the end-to-end tests and the benchmarks.

A mailbox (Google People or Microsoft Graph emulator, real HTTP) and the reference
CRM, seeded so that every path shows: near-duplicates on both sides, a contact with
a malformed address, a CRM record that breaks a validation rule, and CRM records
owned by the connected user that must reach the mailbox. One organisation can hold
several connections (Google and Microsoft side by side).
"""

from __future__ import annotations

import uuid

from dataclasses import dataclass, field
from typing import Protocol

from activities.pipeline import mailbox_progress, mailbox_stream
from emulators.people_data import make_people
from connectors.google_people import contact_to_person, person_to_record
from connectors import registry
from connectors.graph_contacts import contact_to_item, item_to_record
from emulators.server import RunningServer, serve
from models.contact import Contact
from models.errors import Fatal
from platforms.reference_crm.seed import seed_organisation
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.db import make_engine, migrate, session_factory

EMULATOR_TOKEN = "emulator-token"


class MailboxDriver(Protocol):
    """What a test or the demo does to a mailbox 'as its user', whatever the provider."""

    provider: str
    server: RunningServer

    def seed(self, contacts: list[Contact]) -> list[str]: ...
    def seed_malformed(self) -> str: ...
    def edit(self, external_id: str, **fields: str) -> None: ...
    def delete(self, external_id: str) -> None: ...
    def expire_cursor(self) -> None: ...
    def contacts(self) -> dict[str, Contact]: ...
    def fail_listing(self, status: int, count: int = 1, retry_after: int | None = None) -> None: ...
    def slow_writes(self, seconds: float) -> None: ...
    def write_requests(self) -> int: ...
    def requests(self) -> int: ...


class GoogleMailbox:
    provider = "google"

    def __init__(self, port: int = 0) -> None:
        from emulators.google_people import PeopleState, create_app

        self.state = PeopleState(static_tokens=(EMULATOR_TOKEN,))
        self.server = serve(create_app(self.state), port=port)

    def seed(self, contacts):
        return self.state.seed([contact_to_person(c) for c in contacts])

    def seed_malformed(self):
        return self.state.seed([{"names": [{"givenName": "Broken", "familyName": "Address"}],
                                 "emailAddresses": [{"value": "broken.address@@example"}]}], validate=False)[0]

    def edit(self, external_id, **fields):
        current = person_to_record(self.state.person(external_id)).content or Contact()
        wanted = current.model_copy(update=fields)
        person = contact_to_person(wanted)
        self.state.user_edit(external_id, {k: person.get(k, []) for k in
                                           ("names", "emailAddresses", "phoneNumbers", "organizations", "biographies")})

    def delete(self, external_id):
        self.state.user_delete(external_id)

    def expire_cursor(self):
        self.state.expire_sync_tokens()

    def contacts(self):
        out = {}
        for p in self.state.all_persons():
            rec = person_to_record(p)
            if not rec.deleted and rec.content is not None:
                out[rec.external_id] = rec.content
        return out

    def fail_listing(self, status, count=1, retry_after=None):
        self.state.inject_fault(str(status), op="list", count=count, retry_after=retry_after)

    def slow_writes(self, seconds):
        self.state.configure(latency={"create": seconds} if seconds else {}, latency_phase="after")

    def write_requests(self):
        ops = self.state.stats()["ops"]
        return ops.get("create", 0)

    def requests(self):
        return sum(self.state.stats()["ops"].values())


class MicrosoftMailbox:
    provider = "microsoft"

    def __init__(self, port: int = 0) -> None:
        from emulators.graph import GraphState, create_app

        self.state = GraphState(tokens={EMULATOR_TOKEN})
        self.server = serve(create_app(self.state), port=port)

    def seed(self, contacts):
        return self.state.seed([contact_to_item(c) for c in contacts])

    def seed_malformed(self):
        return self.state.seed([{"givenName": "Broken", "surname": "Address",
                                 "emailAddresses": [{"address": "broken.address@@example"}]}])[0]

    def edit(self, external_id, **fields):
        item = self.state.contact(external_id)
        current = item_to_record(item).content or Contact()
        self.state.user_edit(external_id, contact_to_item(current.model_copy(update=fields), item))

    def delete(self, external_id):
        self.state.user_delete(external_id)

    def expire_cursor(self):
        self.state.expire_delta_tokens()

    def contacts(self):
        out = {}
        for item_id in list(self.state._items):  # immutable ids, as our connector sees them
            item = self.state.contact(item_id)
            if item is not None:
                rec = item_to_record(item)
                if rec.content is not None:
                    out[rec.external_id] = rec.content
        return out

    def fail_listing(self, status, count=1, retry_after=None):
        self.state.inject_fault(status, count=count, retry_after=retry_after, method="GET", path="delta")

    def slow_writes(self, seconds):
        self.state.latency = seconds

    def write_requests(self):
        return self.state.stats().get("batch_items", 0)

    def requests(self):
        return self.state.stats().get("requests", 0)


@dataclass
class Scenario:
    org_id: str
    connection_id: str
    user_id: str
    mailbox: MailboxDriver
    crm: ReferenceCrm
    sessions: object
    mailbox_contacts: list[Contact] = field(default_factory=list)
    #: seeded mailbox ids, in the order of mailbox_contacts
    resource_names: list[str] = field(default_factory=list)
    malformed_resource: str = ""
    crm_seed: object = None

    @property
    def people(self):
        """The Google emulator's state (Google scenarios only)."""
        return self.mailbox.state

    @property
    def emulator(self) -> RunningServer:
        return self.mailbox.server

    def close(self) -> None:
        self.mailbox.server.stop()


#: The emulated mailbox of each provider the registry names.
EMULATED_MAILBOXES = {m.provider: m for m in (GoogleMailbox, MicrosoftMailbox)}


def make_mailbox(provider: str, port: int = 0) -> MailboxDriver:
    try:
        driver = EMULATED_MAILBOXES[registry.get(provider).name]
    except KeyError:
        raise Fatal(f"no emulated mailbox for provider {provider!r}") from None
    return driver(port)


def connect_mailbox(sessions, *, org_id: str, connection_id: str, user_id: str, mailbox: MailboxDriver) -> None:
    """The store rows an OAuth connect would create, pointing at an emulator with a static token.

    A store kept from an earlier run (`make demo --keep`) already has the connection: it is
    pointed at this emulator, since the old one has gone, and forgets the old one's delta
    cursor (a Graph deltaLink is a URL on the old emulator): the next cycle lists in full."""
    settings = {"endpoint": mailbox.server.base_url, "token": EMULATOR_TOKEN}
    with sessions.begin() as s:
        row = repo.get_connection(s, connection_id)
        if row is None:
            repo.create_connection(s, id=connection_id, org_id=org_id, user_id=user_id, provider=mailbox.provider,
                                   account_ref=f"acct-{connection_id}", settings=settings)
        elif (row.settings or {}).get("endpoint") != settings["endpoint"]:
            repo.set_connection_settings(s, connection_id, {**(row.settings or {}), **settings})
            repo.set_cursor(s, connection_id, mailbox_stream("contacts"), None)
            repo.set_cursor(s, connection_id, mailbox_progress("contacts"), None)  # a round under way, on the old one


def build_scenario(store_url: str, crm_url: str, *, provider: str = "google", org_id: str | None = None,
                   connection_id: str = "conn-google-1", user_id: str = "user_1", n_mailbox: int = 30,
                   n_crm: int = 40, near_duplicates: int = 8, seed: int = 7, settings: dict | None = None,
                   emulator_port: int = 0, seed_crm: bool = True) -> Scenario:
    # An organisation of its own unless named: its workflow (org-sync/<org_id>) outlives
    # the scenario on a shared server, bound to the task queue that first started it.
    org_id = org_id or f"org-{uuid.uuid4().hex[:8]}"
    people = make_people(n_mailbox, seed)
    mailbox = make_mailbox(provider, emulator_port)
    names = mailbox.seed(people)
    malformed = mailbox.seed_malformed()

    crm = ReferenceCrm(crm_url)
    crm_seed = None
    if seed_crm:
        crm_seed = seed_organisation(crm, org_id, n=n_crm, seed=seed, owner_ids=(user_id, "user_2"),
                                     mailbox_contacts=people[:near_duplicates])

    migrate(store_url)
    sessions = session_factory(make_engine(store_url))
    with sessions.begin() as s:
        if repo.get_org(s, org_id) is None:
            repo.create_org(s, org_id, "Demo organisation", settings or {"policy": "newest_wins"})
    connect_mailbox(sessions, org_id=org_id, connection_id=connection_id, user_id=user_id, mailbox=mailbox)
    return Scenario(org_id, connection_id, user_id, mailbox, crm, sessions, people, names, malformed, crm_seed)
