"""One organisation's mail world for pipeline tests: the real store, the real reference
CRM, the real mail pipeline, and mailboxes from a provider that passes the mail
contract (in memory, or an emulator's).

`cycle()` runs a connection's steps in the workflow's order, each through the same
pipeline object the worker keeps, with a new connector per step as the worker builds.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Callable

from activities.mail import MailPipeline
from models.mail import MailFetchOptions
from models.workflow import CycleRef
from platforms.reference_crm import ReferenceCrmMail
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.db import make_engine, migrate, session_factory
from tests.memory_mail import MemoryMailProvider

_cycles = itertools.count(1)


class MailWorld:
    def __init__(self, store_url: str, crm_url: str, *, org_settings: dict | None = None,
                 provider: Any = None, claim_wait_s: float = 5.0) -> None:
        migrate(store_url)
        self.engine = make_engine(store_url)
        self.sessions = session_factory(self.engine)
        self.crm = ReferenceCrm(crm_url)
        self.platform = ReferenceCrmMail(self.crm)
        self.provider = provider or MemoryMailProvider()
        self.org = f"org-{uuid.uuid4().hex[:8]}"
        self.pipeline = MailPipeline(self.sessions, self.platform, self._connector, wait=lambda s: None,
                                     claim_wait_s=claim_wait_s)
        with self.sessions.begin() as s:
            repo.create_org(s, self.org, "Acme", {"mail": {"own_domains": ["acme.example"], **(org_settings or {})}})

    def _connector(self, info, options: MailFetchOptions):
        return self.provider.connector(info.account_ref, options)

    def connect(self, address: str, *, user_id: str | None = None, mail: dict | None = None) -> str:
        cid = f"conn-{uuid.uuid4().hex[:8]}"
        with self.sessions.begin() as s:
            repo.create_connection(s, id=cid, org_id=self.org, user_id=user_id or address.split("@")[0],
                                   provider="google", account_ref=address, settings={"mail": mail or {}})
        return cid

    def cycle(self, cid: str) -> dict[str, Any]:
        ref = CycleRef(connection_id=cid, cycle_id=f"c{next(_cycles)}")
        p = self.pipeline
        return {"fetch": p.fetch_mailbox(ref), "platform": p.fetch_platform(ref), "plan": p.plan(ref),
                "write": p.write(ref)}

    def items(self, cid: str) -> dict[str, Any]:
        """mailbox id -> item row (status, rule, error_code)."""
        with self.sessions() as s:
            rows = repo.items_by_status(s, cid, ["pending", "applied", "skipped", "conflict", "duplicate",
                                                 "quarantined", "deferred"], kind="mail")
        return {r.external_id: r for r in rows}

    def activities(self, **filters) -> list:
        return self.crm.mail.list_email_activities(self.org, **filters)

    def activity(self, message_id: str):
        return self.crm.mail.get_activity_by_key(self.org, message_id)

    def wait_until(self, check: Callable[[], bool], cycles: Callable[[], None], tries: int = 5) -> bool:
        for _ in range(tries):
            if check():
                return True
            cycles()
        return check()


class GmailProvider:
    """Mailboxes on one Gmail emulator (a token per user), read by the real GmailMail."""

    def __init__(self) -> None:
        from emulators.gmail import GmailState, create_app
        from emulators.server import serve

        self.state = GmailState(enforce_quota=False)
        self.server = serve(create_app(self.state))
        self._tokens: dict[str, str] = {}

    def _token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = f"t-{uuid.uuid4().hex[:8]}"
            self.state.add_token(self._tokens[user], user)
        return self._tokens[user]

    def deliver(self, user: str, raw: bytes, *, sent: bool = False, labels: tuple[str, ...] = ()) -> str:
        self._token(user)
        return self.state.deliver(user, raw, labels=labels, sent=sent)

    def add_label(self, user: str, mid: str, label: str) -> None:
        self.state.add_label(user, mid, label)

    def remove_label(self, user: str, mid: str, label: str) -> None:
        self.state.remove_label(user, mid, label)

    def delete(self, user: str, mid: str) -> None:
        self.state.delete(user, mid)

    def expire(self, user: str) -> None:
        self.state.expire_history(user)

    def fail_sends(self, count: int = 1, *, after_store: bool = True) -> None:
        self.state.fail_sends(count, status=503, when="after" if after_store else "before")

    def sent_by(self, user: str, message_id: str) -> list[str]:
        """The user's sent messages carrying this Message-ID, read from the emulator itself."""
        from models.mail import normalize_message_id

        box = self.state.mailbox(user)
        return [m.id for m in list(box.messages.values())
                if "SENT" in m.label_ids and normalize_message_id(m.message_id) == message_id]

    def connector(self, user: str, options: MailFetchOptions):
        from connectors.gmail_mail import GmailMail

        return GmailMail.for_emulator(self.server.base_url, token=self._token(user), options=options, account=user)

    def close(self) -> None:
        self.server.stop()


class GraphProvider:
    """Mailboxes on Graph emulators (Graph's /me is one mailbox: a server per user), read
    by the real GraphMail."""

    def __init__(self) -> None:
        self._boxes: dict[str, tuple[Any, Any]] = {}

    def _box(self, user: str):
        if user not in self._boxes:
            from emulators.graph import GraphState, create_app
            from emulators.server import serve

            state = GraphState(tokens={"t"})
            self._boxes[user] = (state, serve(create_app(state)))
        return self._boxes[user]

    def deliver(self, user: str, raw: bytes, *, sent: bool = False, labels: tuple[str, ...] = ()) -> str:
        return self._box(user)[0].mail.deliver(raw, folder="sentitems" if sent else "inbox", categories=labels)

    def add_label(self, user: str, mid: str, label: str) -> None:
        self._box(user)[0].mail.add_category(mid, label)

    def remove_label(self, user: str, mid: str, label: str) -> None:
        self._box(user)[0].mail.remove_category(mid, label)

    def delete(self, user: str, mid: str) -> None:
        self._box(user)[0].mail.delete(mid)

    def expire(self, user: str) -> None:
        self._box(user)[0].mail.expire_delta_tokens()

    def fail_sends(self, count: int = 1, *, after_store: bool = True) -> None:
        for state, _ in self._boxes.values():
            state.mail.fail_sends(count, status=503, when="after" if after_store else "before")

    def sent_by(self, user: str, message_id: str) -> list[str]:
        from models.mail import normalize_message_id

        mail = self._box(user)[0].mail
        sent = mail.folder_id("sentitems")
        return [m.immutable_id for m in list(mail._messages.values())
                if not m.deleted and m.folder_id == sent
                and normalize_message_id(m.data.get("internetMessageId")) == message_id]

    def connector(self, user: str, options: MailFetchOptions):
        from connectors.graph_mail import GraphMail

        return GraphMail(self._box(user)[1].base_url, lambda: "t", options=options, mailbox_key=user)

    def close(self) -> None:
        for _, server in self._boxes.values():
            server.stop()


def provider_named(name: str):
    return {"memory": MemoryMailProvider, "gmail": GmailProvider, "graph": GraphProvider}[name]()
