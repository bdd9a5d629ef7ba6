"""A seeded world for the demo, the end-to-end tests and the benchmarks.

A Google mailbox (People emulator, real HTTP) and the reference CRM, seeded so
that every path shows: near-duplicates on both sides, a contact with a malformed
address, a CRM record that breaks a validation rule, and CRM records owned by the
connected user that must reach the mailbox.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bench.datagen import make_near_duplicate, make_people
from connectors.google_people import contact_to_person
from emulators.google_people import PeopleState, create_app
from emulators.server import RunningServer, serve
from models.contact import Contact
from platforms.reference_crm.seed import seed_organisation
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.db import make_engine, migrate, session_factory

EMULATOR_TOKEN = "emulator-token"


@dataclass
class Scenario:
    org_id: str
    connection_id: str
    user_id: str
    people: PeopleState
    emulator: RunningServer
    crm: ReferenceCrm
    sessions: object
    mailbox_contacts: list[Contact] = field(default_factory=list)
    #: seeded resource names, in the order of mailbox_contacts
    resource_names: list[str] = field(default_factory=list)
    malformed_resource: str = ""
    crm_seed: object = None

    def close(self) -> None:
        self.emulator.stop()


def build_scenario(store_url: str, crm_url: str, *, org_id: str = "org_demo", connection_id: str = "conn-google-1",
                   user_id: str = "user_1", n_mailbox: int = 30, n_crm: int = 40, near_duplicates: int = 8,
                   seed: int = 7, settings: dict | None = None, emulator_port: int = 0) -> Scenario:
    rng = random.Random(seed)
    people = make_people(n_mailbox, seed)
    state = PeopleState(static_tokens=(EMULATOR_TOKEN,))
    names = state.seed([contact_to_person(c) for c in people])
    # A contact typed badly in the Gmail UI: the address is not an address.
    malformed = state.seed([{"names": [{"givenName": "Broken", "familyName": "Address"}],
                             "emailAddresses": [{"value": "broken.address@@example"}]}], validate=False)[0]
    server = serve(create_app(state), port=emulator_port)

    crm = ReferenceCrm(crm_url)
    crm_seed = seed_organisation(crm, org_id, n=n_crm, seed=seed, owner_ids=(user_id, "user_2"),
                                 mailbox_contacts=people[:near_duplicates])

    migrate(store_url)
    sessions = session_factory(make_engine(store_url))
    with sessions.begin() as s:
        if repo.get_org(s, org_id) is None:
            repo.create_org(s, org_id, "Demo organisation", settings or {"policy": "newest_wins"})
        if repo.get_connection(s, connection_id) is None:
            repo.create_connection(s, id=connection_id, org_id=org_id, user_id=user_id, provider="google",
                                   account_ref=f"acct-{connection_id}",
                                   settings={"endpoint": server.base_url, "token": EMULATOR_TOKEN})
    _ = rng
    return Scenario(org_id, connection_id, user_id, state, server, crm, sessions, people, names, malformed, crm_seed)


def near_duplicate(contact: Contact, seed: int = 0) -> Contact:
    return make_near_duplicate(contact, random.Random(seed))
