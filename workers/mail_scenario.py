"""An organisation whose people exchange mail with prospects, for the demo and the tests.

Four connected mailboxes on emulators reached through the real client libraries:
Ann and Cy on Gmail (one Gmail emulator, a token each), Bob and Dee on Microsoft
Graph (an emulator each: Graph's `/me` is one mailbox). Their logging settings
differ the way users' do: Cy logs only what he labels "CRM", Dee keeps her mail
private. The CRM knows a prospect (contact, account, opportunity) and two accounts
sharing one domain. `stages` then puts mail in the mailboxes, stage by stage, each
with what a user should see on the platform afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from emulators.gmail import GmailState
from emulators.gmail import create_app as gmail_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import RunningServer, serve
from platforms.reference_crm import ReferenceCrmMail
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.db import make_engine, migrate, session_factory
from workers.stages import connect

DOMAIN = "acme.example"
#: the organisation's logging settings (per-user overrides on each connection)
ORG_MAIL = {"own_domains": [DOMAIN], "visibility": "metadata", "auto_create": "sent"}


@dataclass
class Person:
    name: str
    email: str
    user_id: str
    provider: str
    mail: dict = field(default_factory=dict)
    connection_id: str = ""


def message(sender: str, to: list[str], subject: str, body: str, *, cc: list[str] = (), references: list[str] = (),
            headers: dict | None = None) -> tuple[bytes, str]:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    mid = make_msgid(domain=sender.rpartition("@")[2].strip(">"))
    msg["Message-ID"] = mid
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
        msg["In-Reply-To"] = f"<{references[-1]}>"
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return bytes(msg), mid.strip("<>")


class MailScenario:
    def __init__(self, store_url: str, crm_url: str, *, org_id: str | None = None,
                 connection_prefix: str | None = None) -> None:
        """`connection_prefix`: fixed connection ids (`<prefix>-ann`, ...), which a kept store
        (the demo's `--keep`) already holds: they are pointed at this run's emulators."""
        self.connection_prefix = connection_prefix
        self.org_id = org_id or f"org-{uuid.uuid4().hex[:8]}"
        migrate(store_url)
        self.sessions = session_factory(make_engine(store_url))
        self.crm = ReferenceCrm(crm_url)
        self.platform = ReferenceCrmMail(self.crm)
        self.gmail = GmailState(default_user=f"ann@{DOMAIN}")
        self.servers: list[RunningServer] = [serve(gmail_app(self.gmail))]
        self.graphs: dict[str, GraphState] = {}
        self.people = {
            "ann": Person("Ann Archer", f"ann@{DOMAIN}", "ann", "google", {"visibility": "subject"}),
            "bob": Person("Bob Baker", f"bob@{DOMAIN}", "bob", "microsoft", {"visibility": "subject"}),
            "cy": Person("Cy Cole", f"cy@{DOMAIN}", "cy", "google", {"capture": "label", "label": "CRM",
                                                                    "visibility": "subject"}),
            "dee": Person("Dee Dunn", f"dee@{DOMAIN}", "dee", "microsoft", {"visibility": "private"}),
        }
        with self.sessions.begin() as s:
            if repo.get_org(s, self.org_id) is None:
                repo.create_org(s, self.org_id, "Acme", {"mail": ORG_MAIL})
        for p in self.people.values():
            self._connect(p)
        self._seed_crm()

    # -- the mailboxes -------------------------------------------------------------
    def _connect(self, p: Person) -> None:
        token = f"token-{p.user_id}-{uuid.uuid4().hex[:6]}"
        if p.provider == "google":
            self.gmail.add_token(token, p.email)
            settings = {"gmail_endpoint": self.servers[0].base_url, "token": token, "mail": p.mail,
                        "kinds": ["mail", "send"]}
        else:
            graph = GraphState(tokens={token})
            self.graphs[p.user_id] = graph
            server = serve(graph_app(graph))
            self.servers.append(server)
            settings = {"endpoint": server.base_url, "token": token, "mail": p.mail, "kinds": ["mail", "send"]}
        p.connection_id = (f"{self.connection_prefix}-{p.user_id}" if self.connection_prefix
                           else f"mail-{p.user_id}-{uuid.uuid4().hex[:6]}")
        connect(self.sessions, p.connection_id, org_id=self.org_id, user_id=p.user_id, provider=p.provider,
                account=p.email, settings=settings, kind="mail")

    def deliver(self, who: str, raw: bytes, *, sent: bool = False) -> str:
        """A message arrives in (or is sent from) one person's mailbox; its id there."""
        p = self.people[who]
        if p.provider == "google":
            return self.gmail.deliver(p.email, raw, sent=sent)
        return self.graphs[who].mail.deliver(raw, folder="sentitems" if sent else "inbox")

    def label(self, who: str, message_id: str, label: str) -> None:
        p = self.people[who]
        if p.provider == "google":
            self.gmail.add_label(p.email, message_id, label)
        else:
            self.graphs[who].mail.add_category(message_id, label)

    def address(self, who: str) -> str:
        p = self.people[who]
        return f"{p.name} <{p.email}>"

    # -- the platform ----------------------------------------------------------------
    def _seed_crm(self) -> None:
        org = self.org_id
        known = {a.name: a for a in self.crm.list_accounts(org)}
        if "Northwind Traders" in known:  # a kept CRM (the demo's --keep): the same records
            self.northwind, self.contoso_east, self.contoso_west = (
                known["Northwind Traders"], known["Contoso East"], known["Contoso West"])
            self.pat = self.crm.get_contact(org, self.platform.people_by_email(
                org, ["pat@northwind.example"])["pat@northwind.example"][0].id)
            self.deal = next(o for o in self.platform.open_opportunities(org, [self.pat.id])[self.pat.id])
            return
        self.northwind = self.crm.create_account(org, "Northwind Traders", "northwind.example")
        self.pat = self.crm.user_create(org, "ann", given_name="Pat", family_name="Prospect",
                                        emails=["pat@northwind.example", "pat.prospect@gmail.com"])
        self.deal = self.crm.mail.create_opportunity(org, "Northwind renewal", account_id=self.northwind.id,
                                                     contact_roles={self.pat.id: "decision maker"})
        self.contoso_east = self.crm.create_account(org, "Contoso East", "contoso.example")
        self.contoso_west = self.crm.create_account(org, "Contoso West", "contoso.example")

    @property
    def connections(self) -> dict[str, str]:
        return {who: p.connection_id for who, p in self.people.items()}

    def close(self) -> None:
        for server in self.servers:
            server.stop()
