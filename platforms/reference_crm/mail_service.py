"""The reference CRM's email-logging API: leads, opportunities, email activities.

Kept apart from service.py (contacts and accounts) so the contact side stays the
size it was; it shares the CRM's engine, its organisation lock and its change log
(`ReferenceCrm._write`, `_next_seq`, `_save`), so a lead's creation or conversion
lands in the same gap-free feed discipline as a contact's.

Like a real product, the CRM converts a lead into a contact but does not move the
lead's logged mail: that is left to the integration (Concord calls `move_emails`
after reading `conversions_since`), which is exactly the case the mail kind must handle.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from models.contact import Contact
from models.errors import ConnectorError, Fatal, NotFound, ValidationRejected
from models.mail import VISIBILITY_LEVELS
from models.mail_log import AccountRef, Association, Conversion, EmailLog, LoggedEmail, NewPerson, OpportunityRef, Person
from platforms.reference_crm import mail_rules
from platforms.reference_crm import mail_schema as m
from platforms.reference_crm import schema as t
from platforms.reference_crm.mail_rules import MailRule
from platforms.reference_crm.service import _KEY_CHUNK, IdempotencyKeyReused, _db_errors, _fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from platforms.reference_crm.service import ReferenceCrm

STAGES = ("open", "won", "lost")


def most_restrictive(a: str, b: str) -> str:
    return VISIBILITY_LEVELS[min(VISIBILITY_LEVELS.index(a), VISIBILITY_LEVELS.index(b))]


def cut(level: str, subject: str | None, body: str | None) -> tuple[str | None, str | None]:
    """What a visibility level lets the CRM keep: the subject from "subject" up, the body at "full" only."""
    rank = VISIBILITY_LEVELS.index(level)
    keep_subject = rank >= VISIBILITY_LEVELS.index("subject")
    keep_body = level == "full"
    return (subject if keep_subject else None), (body if keep_body else None)


def _emails(values: Iterable[Any]) -> list[str]:
    """Lower-cased, de-duplicated, first one kept first (it is the primary address).

    A contact row holds an address as a string, or a typed one as {"address": ...}."""
    plain = (str(e.get("address") or "") if isinstance(e, dict) else str(e or "") for e in values)
    return list(dict.fromkeys(e.strip().lower() for e in plain if e.strip()))


@dataclass(frozen=True)
class Lead:
    id: str
    org_id: str
    owner_id: str | None
    given_name: str
    family_name: str
    company: str
    emails: tuple[str, ...]
    status: str
    converted_contact_id: str | None
    change_seq: int

    @classmethod
    def from_row(cls, r: Any) -> "Lead":
        return cls(r.id, r.org_id, r.owner_id, r.given_name, r.family_name, r.company, tuple(r.emails or ()),
                   r.status, r.converted_contact_id, int(r.change_seq))

    def to_person(self) -> Person:
        name = " ".join(p for p in (self.given_name, self.family_name) if p)
        return Person(id=self.id, kind="lead", emails=self.emails, name=name, owner=self.owner_id)


@dataclass(frozen=True)
class Opportunity:
    id: str
    org_id: str
    name: str
    account_id: str | None
    stage: str
    contact_roles: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EmailActivity:
    """An email activity as a CRM user sees it, with who has it and what it is attached to."""

    id: str
    org_id: str
    key: str
    thread_key: str
    weak_thread: bool
    visibility: str
    subject: str | None
    body_text: str | None
    sender: str | None
    recipients: tuple[str, ...]
    occurred_at: float | None
    direction: str
    attachments: tuple[str, ...]
    created_at: float
    updated_at: float
    users: tuple[str, ...] = ()
    associations: tuple[Association, ...] = ()
    #: the message had no Message-ID: `key` was derived from its headers
    synthesized_key: bool = False


def _contact_person(r: Any) -> Person:
    name = " ".join(p for p in (r.given_name, r.family_name) if p)
    return Person(id=r.id, kind="contact", emails=tuple(_emails(r.emails or ())), name=name,
                  account_id=r.account_id, owner=r.owner_id)


class CrmMail:
    """Mail objects of one ReferenceCrm (reach it as `crm.mail`). Thread-safe like the CRM."""

    def __init__(self, crm: "ReferenceCrm") -> None:
        self.crm = crm

    # ---------------------------------------------------------------- rules

    @_db_errors
    def configure_rules(self, org_id: str, rules: Sequence[MailRule]) -> None:
        """Replace the organisation's mail rules (existing records are not re-checked)."""
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise Fatal("rule names must be unique within an organisation")
        for r in rules:
            mail_rules.validate_definition(r)
        with self.crm._write(org_id) as conn:
            conn.execute(m.mail_rules.delete().where(m.mail_rules.c.org_id == org_id))
            if rules:
                conn.execute(m.mail_rules.insert(), [{"org_id": org_id, "position": i, **r.to_row()}
                                                     for i, r in enumerate(rules)])

    def _rules(self, conn: Connection, org_id: str) -> list[MailRule]:
        rows = conn.execute(sa.select(m.mail_rules).where(m.mail_rules.c.org_id == org_id)
                            .order_by(m.mail_rules.c.position)).all()
        return [MailRule.from_row(r) for r in rows]

    @_db_errors
    def get_rules(self, org_id: str) -> list[MailRule]:
        with self.crm._read() as conn:
            return self._rules(conn, org_id)

    # ---------------------------------------------------------------- leads

    def _insert_lead(self, conn: Connection, org_id: str, *, emails: Sequence[str], given_name: str,
                     family_name: str, company: str, owner_id: str | None, actor: str, enforce_rules: bool) -> Lead:
        addrs = _emails(emails)
        values = {"given_name": (given_name or "").strip(), "family_name": (family_name or "").strip(),
                  "company": (company or "").strip(), "emails": addrs, "owner_id": owner_id}
        if enforce_rules:
            err = mail_rules.first_violation(self._rules(conn, org_id), "lead", values)
            if err is not None:
                raise err
        seq = self.crm._next_seq(conn, org_id, None, "lead_create", actor)
        lead_id = f"crm_l_{seq}"
        conn.execute(t.change_log.update().where(t.change_log.c.seq == seq).values(record_id=lead_id))
        conn.execute(m.leads.insert().values(id=lead_id, org_id=org_id, status="open", converted_contact_id=None,
                                             updated_at=time.time(), change_seq=seq, **values))
        m.index_emails(conn, org_id, "lead", lead_id, addrs)
        return Lead(lead_id, org_id, owner_id, values["given_name"], values["family_name"], values["company"],
                    tuple(addrs), "open", None, seq)

    @_db_errors
    def create_lead(self, org_id: str, *, emails: Sequence[str], given_name: str = "", family_name: str = "",
                    company: str = "", owner_id: str | None = None, actor: str = "api",
                    enforce_rules: bool = True) -> Lead:
        """A CRM user adds a lead (first address is the primary one)."""
        with self.crm._write(org_id) as conn:
            return self._insert_lead(conn, org_id, emails=emails, given_name=given_name, family_name=family_name,
                                     company=company, owner_id=owner_id, actor=actor, enforce_rules=enforce_rules)

    @_db_errors
    def get_lead(self, org_id: str, lead_id: str) -> Lead | None:
        with self.crm._read() as conn:
            r = conn.execute(sa.select(m.leads).where(m.leads.c.org_id == org_id, m.leads.c.id == lead_id)).first()
        return Lead.from_row(r) if r else None

    @_db_errors
    def list_leads(self, org_id: str, *, status: str | None = None) -> list[Lead]:
        q = sa.select(m.leads).where(m.leads.c.org_id == org_id)
        if status is not None:
            q = q.where(m.leads.c.status == status)
        with self.crm._read() as conn:
            return [Lead.from_row(r) for r in conn.execute(q.order_by(m.leads.c.change_seq)).all()]

    @_db_errors
    def convert_lead(self, org_id: str, lead_id: str, *, account_id: str | None = None,
                     create_opportunity: str | None = None, actor: str = "api") -> Conversion:
        """Turn a lead into a contact carrying all its addresses; optionally open an opportunity.

        The contact is linked to `account_id` when given, else by the CRM's usual
        domain/company matching. Converting a converted lead again returns its first
        conversion (a double click in the UI is not a second conversion). The new contact
        passes the organisation's contact rules like any other save (a refusal raises
        ValidationRejected and nothing changes). The lead's email activities stay where
        they are: moving them is the integration's job.
        """
        with self.crm._write(org_id) as conn:
            lead = conn.execute(sa.select(m.leads).where(m.leads.c.org_id == org_id, m.leads.c.id == lead_id)
                                .with_for_update()).first()
            if lead is None:
                raise NotFound("lead not found")
            if lead.status == "converted":
                done = conn.execute(sa.select(m.conversions).where(m.conversions.c.org_id == org_id,
                                                                   m.conversions.c.lead_id == lead_id)).first()
                return self._conversion(done)
            if account_id is not None and conn.execute(sa.select(t.accounts.c.id).where(
                    t.accounts.c.org_id == org_id, t.accounts.c.id == account_id)).first() is None:
                raise NotFound("account not found")
            contact = Contact(given_name=lead.given_name, family_name=lead.family_name,
                              emails=list(lead.emails or ()), company=lead.company)
            rec = self.crm._save(conn, org_id, None, contact, lead.owner_id, actor, True)
            if account_id is not None and account_id != rec.account_id:
                conn.execute(t.contacts.update().where(t.contacts.c.id == rec.id).values(account_id=account_id))
            acct = account_id if account_id is not None else rec.account_id
            opp_id = None
            if create_opportunity:
                opp_id = self._insert_opportunity(conn, org_id, create_opportunity, acct, {rec.id: "primary"},
                                                  "open", actor)
            seq = self.crm._next_seq(conn, org_id, lead_id, "lead_convert", actor)
            conn.execute(m.leads.update().where(m.leads.c.id == lead_id).values(
                status="converted", converted_contact_id=rec.id, change_seq=seq, updated_at=time.time()))
            m.index_emails(conn, org_id, "lead", lead_id, ())
            head = conn.execute(sa.select(sa.func.max(m.conversions.c.seq))
                                .where(m.conversions.c.org_id == org_id)).scalar()
            cseq = int(head or 0) + 1  # dense: drawn under the organisation lock
            conn.execute(m.conversions.insert().values(
                org_id=org_id, seq=cseq, lead_id=lead_id, contact_id=rec.id, account_id=acct,
                opportunity_id=opp_id, actor=actor, at=time.time()))
            return Conversion(lead_id=lead_id, contact_id=rec.id, account_id=acct, opportunity_id=opp_id, seq=cseq)

    @staticmethod
    def _conversion(r: Any) -> Conversion:
        return Conversion(lead_id=r.lead_id, contact_id=r.contact_id, account_id=r.account_id,
                          opportunity_id=r.opportunity_id, seq=int(r.seq))

    @_db_errors
    def conversions_head(self, org_id: str) -> int:
        with self.crm._read() as conn:
            head = conn.execute(sa.select(sa.func.max(m.conversions.c.seq))
                                .where(m.conversions.c.org_id == org_id)).scalar()
        return int(head or 0)

    @_db_errors
    def conversions_since(self, org_id: str, after: int, limit: int = 500) -> tuple[list[Conversion], int]:
        """Conversions numbered above `after`, oldest first, and the number to resume after."""
        with self.crm._read() as conn:
            rows = conn.execute(sa.select(m.conversions)
                                .where(m.conversions.c.org_id == org_id, m.conversions.c.seq > after)
                                .order_by(m.conversions.c.seq).limit(limit)).all()
        out = [self._conversion(r) for r in rows]
        return out, (out[-1].seq if out else after)

    # ---------------------------------------------------------------- opportunities

    def _insert_opportunity(self, conn: Connection, org_id: str, name: str, account_id: str | None,
                            roles: Mapping[str, str], stage: str, actor: str) -> str:
        if stage not in STAGES:
            raise Fatal(f"unknown opportunity stage {stage!r}")
        seq = self.crm._next_seq(conn, org_id, None, "opportunity_create", actor)
        opp_id = f"crm_o_{seq}"
        conn.execute(t.change_log.update().where(t.change_log.c.seq == seq).values(record_id=opp_id))
        conn.execute(m.opportunities.insert().values(id=opp_id, org_id=org_id, name=name, account_id=account_id,
                                                     stage=stage, updated_at=time.time(), change_seq=seq))
        if roles:
            conn.execute(m.contact_roles.insert(), [
                {"opportunity_id": opp_id, "contact_id": cid, "org_id": org_id, "role": role or ""}
                for cid, role in roles.items()
            ])
        return opp_id

    @_db_errors
    def create_opportunity(self, org_id: str, name: str, *, account_id: str | None = None,
                           contact_roles: Mapping[str, str] | Sequence[str] = (), stage: str = "open",
                           actor: str = "api") -> Opportunity:
        """A CRM user opens a deal; `contact_roles` maps contact id -> role (a plain list: role "")."""
        roles = dict(contact_roles) if isinstance(contact_roles, Mapping) else {c: "" for c in contact_roles}
        with self.crm._write(org_id) as conn:
            opp_id = self._insert_opportunity(conn, org_id, name, account_id, roles, stage, actor)
        return Opportunity(opp_id, org_id, name, account_id, stage, tuple(sorted(roles.items())))

    @_db_errors
    def set_opportunity_stage(self, org_id: str, opportunity_id: str, stage: str, *, actor: str = "api") -> None:
        if stage not in STAGES:
            raise Fatal(f"unknown opportunity stage {stage!r}")
        with self.crm._write(org_id) as conn:
            seq = self.crm._next_seq(conn, org_id, opportunity_id, "opportunity_update", actor)
            n = conn.execute(m.opportunities.update().where(
                m.opportunities.c.org_id == org_id, m.opportunities.c.id == opportunity_id,
            ).values(stage=stage, change_seq=seq, updated_at=time.time())).rowcount
            if not n:
                raise NotFound("opportunity not found")

    # ---------------------------------------------------------------- lookups

    @_db_errors
    def people_by_email(self, org_id: str, emails: Sequence[str]) -> dict[str, list[Person]]:
        """Live contacts and open leads holding each address (any of theirs), through the index.

        Keys are the addresses as asked; each list has contacts first, then leads, by id.
        """
        wanted = {e: e.strip().lower() for e in emails if e and e.strip()}
        lowered = sorted(set(wanted.values()))
        holders: dict[str, list[tuple[str, str]]] = {}
        people: dict[tuple[str, str], Person] = {}
        with self.crm._read() as conn:
            for i in range(0, len(lowered), _KEY_CHUNK):
                for r in conn.execute(sa.select(m.person_emails).where(
                        m.person_emails.c.org_id == org_id,
                        m.person_emails.c.email.in_(lowered[i:i + _KEY_CHUNK]))).all():
                    holders.setdefault(r.email, []).append((r.person_kind, r.person_id))
            ids = {k: sorted({pid for hs in holders.values() for kind, pid in hs if kind == k})
                   for k in ("contact", "lead")}
            for i in range(0, len(ids["contact"]), _KEY_CHUNK):
                for r in conn.execute(sa.select(t.contacts).where(
                        t.contacts.c.org_id == org_id, t.contacts.c.id.in_(ids["contact"][i:i + _KEY_CHUNK]))).all():
                    people[("contact", r.id)] = _contact_person(r)
            for i in range(0, len(ids["lead"]), _KEY_CHUNK):
                for r in conn.execute(sa.select(m.leads).where(
                        m.leads.c.org_id == org_id, m.leads.c.id.in_(ids["lead"][i:i + _KEY_CHUNK]))).all():
                    people[("lead", r.id)] = Lead.from_row(r).to_person()
        out: dict[str, list[Person]] = {}
        for asked, low in wanted.items():
            found = [people[h] for h in sorted(holders.get(low, ()), key=lambda h: (h[0] != "contact", h[1]))
                     if h in people]
            if found:
                out[asked] = found
        return out

    @_db_errors
    def accounts_by_domains(self, org_id: str, domains: Sequence[str]) -> dict[str, list[AccountRef]]:
        norm = {d: self.crm._norm_domain(d) for d in domains if d and d.strip()}
        values = sorted({v for v in norm.values() if v})
        by_domain: dict[str, list[AccountRef]] = {}
        with self.crm._read() as conn:
            for i in range(0, len(values), _KEY_CHUNK):
                for r in conn.execute(sa.select(t.accounts).where(
                        t.accounts.c.org_id == org_id, t.accounts.c.domain.in_(values[i:i + _KEY_CHUNK]))
                        .order_by(t.accounts.c.id)).all():
                    by_domain.setdefault(r.domain, []).append(AccountRef(id=r.id, name=r.name, domain=r.domain))
        return {d.strip().lower(): by_domain[v] for d, v in norm.items() if v in by_domain}

    @_db_errors
    def open_opportunities(self, org_id: str, contact_ids: Sequence[str]) -> dict[str, list[OpportunityRef]]:
        ids = sorted(set(contact_ids))
        if not ids:
            return {}
        roles = m.contact_roles
        opps = m.opportunities
        with self.crm._read() as conn:
            pairs: list[tuple[str, str]] = []
            for i in range(0, len(ids), _KEY_CHUNK):
                pairs += [(r.contact_id, r.opportunity_id) for r in conn.execute(
                    sa.select(roles.c.contact_id, roles.c.opportunity_id)
                    .join(opps, opps.c.id == roles.c.opportunity_id)
                    .where(roles.c.org_id == org_id, opps.c.org_id == org_id, opps.c.stage == "open",
                           roles.c.contact_id.in_(ids[i:i + _KEY_CHUNK]))).all()]
            opp_ids = sorted({o for _, o in pairs})
            refs: dict[str, OpportunityRef] = {}
            for i in range(0, len(opp_ids), _KEY_CHUNK):
                chunk = opp_ids[i:i + _KEY_CHUNK]
                members: dict[str, list[str]] = {}
                for r in conn.execute(sa.select(roles.c.opportunity_id, roles.c.contact_id)
                                      .where(roles.c.opportunity_id.in_(chunk))
                                      .order_by(roles.c.contact_id)).all():
                    members.setdefault(r.opportunity_id, []).append(r.contact_id)
                for r in conn.execute(sa.select(opps).where(opps.c.id.in_(chunk))).all():
                    refs[r.id] = OpportunityRef(id=r.id, name=r.name, account_id=r.account_id,
                                                contact_ids=tuple(members.get(r.id, ())))
        out: dict[str, list[OpportunityRef]] = {}
        for cid, oid in sorted(pairs):
            out.setdefault(cid, []).append(refs[oid])
        return out

    # ---------------------------------------------------------------- people capture

    @_db_errors
    def create_person(self, org_id: str, new: NewPerson, *, idempotency_key: str | None = None,
                      actor: str = "sync") -> tuple[Person, bool]:
        """Create a lead or contact from an unknown participant; (person, created).

        Runs under the organisation lock, so the address check and the insert cannot
        race another capture of the same address: whoever comes second gets the first
        one's person (created False). A contact holding the address wins over a lead.
        """
        fp = _fingerprint({"op": "create_person", "person": new.model_dump(mode="json")})
        email = (new.email or "").strip().lower()
        with self.crm._write(org_id) as conn:
            if idempotency_key:
                row = conn.execute(sa.select(t.idempotency).where(
                    t.idempotency.c.org_id == org_id, t.idempotency.c.key == idempotency_key)).first()
                if row is not None:
                    if row.fingerprint != fp:
                        raise IdempotencyKeyReused("idempotency key reused with a different request")
                    return Person.model_validate(row.result["person"]), bool(row.result["created"])
            if not email or "@" not in email:
                raise ValidationRejected("an email address is required", field="email")
            holders = conn.execute(sa.select(m.person_emails.c.person_kind, m.person_emails.c.person_id).where(
                m.person_emails.c.org_id == org_id, m.person_emails.c.email == email)).all()
            person: Person | None = None
            for kind, pid in sorted(holders, key=lambda h: (h[0] != "contact", h[1])):
                if kind == "contact":
                    r = self.crm._load(conn, org_id, pid)
                    person = _contact_person(r) if r is not None and not r.deleted else None
                else:
                    r = conn.execute(sa.select(m.leads).where(m.leads.c.id == pid)).first()
                    person = Lead.from_row(r).to_person() if r is not None else None
                if person is not None:
                    break
            created = person is None
            if person is None and new.kind == "contact":
                contact = Contact(given_name=new.given_name, family_name=new.family_name, emails=[email],
                                  company=new.company)
                rec = self.crm._save(conn, org_id, None, contact, new.owner, actor, True)
                person = _contact_person(self.crm._load(conn, org_id, rec.id))
            elif person is None:
                person = self._insert_lead(conn, org_id, emails=[email], given_name=new.given_name,
                                           family_name=new.family_name, company=new.company, owner_id=new.owner,
                                           actor=actor, enforce_rules=True).to_person()
            if idempotency_key:
                conn.execute(t.idempotency.insert().values(
                    org_id=org_id, key=idempotency_key, fingerprint=fp, record_id=person.id,
                    result={"person": person.model_dump(mode="json"), "created": created}, created_at=time.time()))
            return person, created

    @_db_errors
    def reindex_emails(self, org_id: str) -> int:
        """Rebuild the address index from the rows (a database that predates the index); people indexed."""
        n = 0
        with self.crm._write(org_id) as conn:
            conn.execute(m.person_emails.delete().where(m.person_emails.c.org_id == org_id))
            for r in conn.execute(sa.select(t.contacts).where(t.contacts.c.org_id == org_id,
                                                              t.contacts.c.deleted.is_(False))).all():
                m.index_emails(conn, org_id, "contact", r.id, _emails(r.emails or ()))
                n += 1
            for r in conn.execute(sa.select(m.leads).where(m.leads.c.org_id == org_id,
                                                           m.leads.c.status == "open")).all():
                m.index_emails(conn, org_id, "lead", r.id, r.emails)
                n += 1
        return n

    # ---------------------------------------------------------------- email activities

    @_db_errors
    def log_emails(self, org_id: str, logs: Sequence[EmailLog]) -> list[LoggedEmail | ConnectorError]:
        """Create or extend activities by key, one savepoint per item; per-item outcomes in order.

        Items are written in key order (answers still in request order) so two batches
        holding the same keys lock their rows in one order and cannot deadlock.
        """
        out: list[LoggedEmail | ConnectorError | None] = [None] * len(logs)
        with self.crm.engine.connect() as conn:
            conn.execution_options(crm_write=True)
            with conn.begin():
                rules = self._rules(conn, org_id)
                for i in sorted(range(len(logs)), key=lambda i: (logs[i].key, i)):
                    try:
                        with conn.begin_nested():
                            out[i] = self._log_one(conn, org_id, logs[i], rules)
                    except (ValidationRejected, NotFound, Fatal) as exc:
                        out[i] = exc
        return out  # type: ignore[return-value]

    def _log_one(self, conn: Connection, org_id: str, log: EmailLog, rules: list[MailRule]) -> LoggedEmail:
        ea = m.email_activities
        if log.visibility not in VISIBILITY_LEVELS:
            raise ValidationRejected("unknown visibility level", field="visibility")
        subject, body = cut(log.visibility, log.subject, log.body_text)
        now = time.time()
        inserted = conn.execute(m.insert_for(conn)(ea).values(
            id=f"crm_e_{uuid.uuid4().hex[:20]}", org_id=org_id, idem_key=log.key, thread_key=log.thread_key,
            weak_thread=log.weak_thread, synthesized_key=log.synthesized_key, visibility=log.visibility,
            subject=subject, body_text=body,
            sender=log.sender, recipients=list(log.recipients), occurred_at=log.occurred_at,
            direction=log.direction, attachments=list(log.attachments), created_at=now, updated_at=now,
        ).on_conflict_do_nothing(index_elements=["org_id", "idem_key"]).returning(ea.c.id))
        # RETURNING, not rowcount: drivers disagree on rowcount for a skipped ON CONFLICT.
        created = inserted.first() is not None
        # Whoever inserted, the row now exists; lock it so concurrent extensions apply one after another.
        row = conn.execute(sa.select(ea).where(ea.c.org_id == org_id, ea.c.idem_key == log.key)
                           .with_for_update()).one()
        level = most_restrictive(row.visibility, log.visibility)
        # Fill what the first log lacked (a mailbox without bodies logged it first), then
        # cut to the resulting level, which erases what a lowered level now hides.
        subject, body = cut(level, row.subject if row.subject is not None else subject,
                            row.body_text if row.body_text is not None else body)
        old_assoc = {(a.object_type, a.object_id) for a in conn.execute(
            sa.select(m.activity_associations).where(m.activity_associations.c.activity_id == row.id)).all()}
        old_users = {u.user_id for u in conn.execute(
            sa.select(m.activity_users).where(m.activity_users.c.activity_id == row.id)).all()}
        assoc = old_assoc | {(a.object_type, a.object_id) for a in log.associations}
        users = old_users | set(log.users)
        err = mail_rules.first_violation(rules, "email_activity", {
            "subject": subject, "body_text": body, "sender": row.sender, "recipients": row.recipients,
            "thread_key": row.thread_key, "attachments": row.attachments,
            "associations": sorted(assoc), "users": sorted(users),
        })
        if err is not None:
            raise err  # the savepoint rolls back this item's insert or extension only
        if (level, subject, body) != (row.visibility, row.subject, row.body_text):
            conn.execute(ea.update().where(ea.c.id == row.id).values(
                visibility=level, subject=subject, body_text=body, updated_at=now))
        ins = m.insert_for(conn)
        if users - old_users:
            conn.execute(ins(m.activity_users).values(
                [{"activity_id": row.id, "user_id": u} for u in sorted(users - old_users)]).on_conflict_do_nothing())
        if assoc - old_assoc:
            conn.execute(ins(m.activity_associations).values(
                [{"activity_id": row.id, "object_type": ot, "object_id": oid, "org_id": org_id}
                 for ot, oid in sorted(assoc - old_assoc)]).on_conflict_do_nothing())
        return LoggedEmail(activity_id=row.id, created=created, visibility=level)

    @_db_errors
    def remove_emails(self, org_id: str, keys: Sequence[str]) -> list[str | None]:
        """Delete activities by key, with their users and associations; the removed id, or None if absent."""
        ea = m.email_activities
        out: list[str | None] = []
        with self.crm.engine.connect() as conn:
            conn.execution_options(crm_write=True)
            with conn.begin():
                for key in keys:
                    aid = conn.execute(sa.select(ea.c.id).where(ea.c.org_id == org_id, ea.c.idem_key == key)
                                       .with_for_update()).scalar()
                    if aid is not None:
                        conn.execute(m.activity_users.delete().where(m.activity_users.c.activity_id == aid))
                        conn.execute(m.activity_associations.delete()
                                     .where(m.activity_associations.c.activity_id == aid))
                        conn.execute(ea.delete().where(ea.c.id == aid))
                    out.append(aid)
        return out

    @_db_errors
    def move_emails(self, org_id: str, lead_id: str, to: Sequence[Association]) -> int:
        """Re-point every activity attached to the lead onto `to`; how many activities moved.

        Each lead association row is deleted before its activity gets the new ones, and
        only a delete that removed a row counts, so a concurrent or repeated move of
        the same lead moves each activity once.
        """
        aa = m.activity_associations
        targets = sorted({(a.object_type, a.object_id) for a in (Association.model_validate(x) for x in to)})
        moved = 0
        with self.crm.engine.connect() as conn:
            conn.execution_options(crm_write=True)
            with conn.begin():
                ids = [r.activity_id for r in conn.execute(sa.select(aa.c.activity_id).where(
                    aa.c.org_id == org_id, aa.c.object_type == "lead", aa.c.object_id == lead_id)
                    .order_by(aa.c.activity_id)).all()]
                ins = m.insert_for(conn)
                for aid in ids:
                    gone = conn.execute(aa.delete().where(aa.c.activity_id == aid, aa.c.object_type == "lead",
                                                          aa.c.object_id == lead_id)).rowcount
                    if not gone:
                        continue
                    if targets:
                        conn.execute(ins(aa).values([
                            {"activity_id": aid, "object_type": ot, "object_id": oid, "org_id": org_id}
                            for ot, oid in targets]).on_conflict_do_nothing())
                    moved += 1
        return moved

    # ---------------------------------------------------------------- reading activities (UI, tests)

    def _activities(self, conn: Connection, q: Any) -> list[EmailActivity]:
        rows = conn.execute(q).all()
        ids = [r.id for r in rows]
        users: dict[str, list[str]] = {}
        assoc: dict[str, list[Association]] = {}
        for i in range(0, len(ids), _KEY_CHUNK):
            chunk = ids[i:i + _KEY_CHUNK]
            for u in conn.execute(sa.select(m.activity_users).where(m.activity_users.c.activity_id.in_(chunk))
                                  .order_by(m.activity_users.c.user_id)).all():
                users.setdefault(u.activity_id, []).append(u.user_id)
            for a in conn.execute(sa.select(m.activity_associations)
                                  .where(m.activity_associations.c.activity_id.in_(chunk))
                                  .order_by(m.activity_associations.c.object_type,
                                            m.activity_associations.c.object_id)).all():
                assoc.setdefault(a.activity_id, []).append(Association(object_type=a.object_type,
                                                                       object_id=a.object_id))
        return [EmailActivity(
            id=r.id, org_id=r.org_id, key=r.idem_key, thread_key=r.thread_key, weak_thread=bool(r.weak_thread),
            visibility=r.visibility, subject=r.subject, body_text=r.body_text, sender=r.sender,
            recipients=tuple(r.recipients or ()), occurred_at=r.occurred_at, direction=r.direction,
            attachments=tuple(r.attachments or ()), created_at=float(r.created_at), updated_at=float(r.updated_at),
            users=tuple(users.get(r.id, ())), associations=tuple(assoc.get(r.id, ())),
            synthesized_key=bool(r.synthesized_key),
        ) for r in rows]

    @_db_errors
    def list_email_activities(self, org_id: str, *, object_type: str | None = None, object_id: str | None = None,
                              user_id: str | None = None, limit: int = 1000) -> list[EmailActivity]:
        """Activities of the organisation, optionally those attached to one record or held by one user."""
        ea = m.email_activities
        q = sa.select(ea).where(ea.c.org_id == org_id)
        if object_type is not None or object_id is not None:
            aa = m.activity_associations
            sub = sa.select(aa.c.activity_id).where(aa.c.org_id == org_id)
            if object_type is not None:
                sub = sub.where(aa.c.object_type == object_type)
            if object_id is not None:
                sub = sub.where(aa.c.object_id == object_id)
            q = q.where(ea.c.id.in_(sub))
        if user_id is not None:
            q = q.where(ea.c.id.in_(sa.select(m.activity_users.c.activity_id)
                                    .where(m.activity_users.c.user_id == user_id)))
        q = q.order_by(ea.c.occurred_at, ea.c.created_at, ea.c.id).limit(limit)
        with self.crm._read() as conn:
            return self._activities(conn, q)

    @_db_errors
    def get_activity_by_key(self, org_id: str, key: str) -> EmailActivity | None:
        ea = m.email_activities
        with self.crm._read() as conn:
            found = self._activities(conn, sa.select(ea).where(ea.c.org_id == org_id, ea.c.idem_key == key))
        return found[0] if found else None
