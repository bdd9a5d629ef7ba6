"""The reference CRM's own API, shaped like a product's: not like our sync engine.

It is what the demo, tests and benchmarks sync against, so it behaves the way real
platforms do where that matters to sync: optimistic concurrency by version,
idempotency keys on writes, per-organisation validation rules, accounts that
contacts get linked to, soft deletes that show up as tombstones in a change feed,
and edits made by CRM users that the sync engine has to notice.

Every write runs in one transaction under its organisation's lock (see schema.py
for why that keeps the change feed gap-free under concurrent writers).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from models.errors import ConnectorError, Fatal, NotFound, PreconditionFailed, Transient, ValidationRejected
from models.contact import Contact, ContactRecord
from models.record import SideRecord
from platforms.reference_crm import mail_schema
from platforms.reference_crm import outbox_schema  # noqa: F401  (its table joins create_all)
from platforms.reference_crm import pm_schema  # noqa: F401  (its tables join create_all)
from platforms.reference_crm import rules as rules_mod
from platforms.reference_crm import schema as t
from platforms.reference_crm.rules import Rule

log = logging.getLogger(__name__)

# Mail providers whose domain says nothing about the employer. The CRM keeps its own
# list rather than importing the sync core's: it stands for a customer's product.
FREE_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com",
        "yahoo.com", "yahoo.co.uk", "ymail.com", "icloud.com", "me.com", "mac.com", "aol.com",
        "proton.me", "protonmail.com", "gmx.com", "gmx.de", "gmx.net", "web.de", "mail.com",
        "zoho.com", "yandex.com", "fastmail.com", "hey.com", "qq.com", "163.com",
    }
)
_LEGAL_SUFFIXES = {"inc", "incorporated", "ltd", "limited", "llc", "gmbh", "ag", "corp", "corporation",
                   "co", "company", "plc", "sa", "sas", "bv", "nv", "oy", "ab", "srl", "pty", "llp"}
_KEY_CHUNK = 500


class IdempotencyKeyReused(Fatal):
    """The same idempotency key came back with a different request: a caller bug."""

    code = "idempotency_key_reused"


#: the contact fields this platform's table holds, each in its own column
STORED_FIELDS: tuple[str, ...] = ("given_name", "family_name", "company", "job_title", "notes", "emails", "phones",
                                  "prefix", "middle_name", "suffix", "nickname", "department", "birthday",
                                  "addresses", "websites")
_JSON_FIELDS = frozenset({"emails", "phones", "addresses", "websites"})


def _column_values(contact: Contact) -> dict[str, Any]:
    values = {f: ([v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in getattr(contact, f)]
                  if f in _JSON_FIELDS else getattr(contact, f)) for f in STORED_FIELDS}
    values["custom_fields"] = contact.custom_fields()
    return values


def kept(new: Contact, old: Contact, keep: Iterable[str]) -> Contact:
    """`new` with the fields named in `keep` as `old` has them (a partial update).

    `custom:<name>` keeps one custom field, `custom` all of them.
    """
    keep = set(keep)
    if not keep:
        return new
    update: dict[str, Any] = {f: getattr(old, f) for f in keep if f in Contact.model_fields and f != "custom"}
    if "custom" in keep:
        update["custom"] = old.custom
    else:
        names = {k.partition(":")[2] for k in keep if k.startswith("custom:")}
        if names:
            mine = {k: v for k, v in new.custom_fields().items() if k not in names}
            theirs = {k: v for k, v in old.custom_fields().items() if k in names}
            update["custom"] = [f"{k}={v}" for k, v in {**mine, **theirs}.items()]
    return new.model_copy(update=update)


def company_key(name: str) -> str:
    """Fold a company name for account matching: case, punctuation and legal suffixes go."""
    words = re.findall(r"\w+", (name or "").casefold())
    while len(words) > 1 and words[-1] in _LEGAL_SUFFIXES:
        words.pop()
    return " ".join(words)


def email_domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].strip().lower() if "@" in email else ""


@dataclass(frozen=True)
class CrmContact:
    """A contact row as the CRM holds it (soft-deleted rows keep their last content)."""

    id: str
    org_id: str
    owner_id: str | None
    contact: Contact
    account_id: str | None
    deleted: bool
    version: int
    updated_at: float
    change_seq: int

    def to_side_record(self) -> SideRecord:
        return ContactRecord(
            side="platform",
            external_id=self.id,
            content=None if self.deleted else self.contact,
            deleted=self.deleted,
            etag=str(self.version),
            updated_at=self.updated_at,
            owner=self.owner_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "org_id": self.org_id, "owner_id": self.owner_id,
            "contact": self.contact.model_dump(mode="json"), "account_id": self.account_id,
            "deleted": self.deleted, "version": self.version, "updated_at": self.updated_at,
            "change_seq": self.change_seq,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CrmContact":
        return cls(**{**d, "contact": Contact(**d["contact"])})

    @classmethod
    def from_row(cls, r: Any) -> "CrmContact":
        return cls(
            id=r.id, org_id=r.org_id, owner_id=r.owner_id,
            contact=Contact(
                **{f: getattr(r, f) or (() if f in _JSON_FIELDS else "") for f in STORED_FIELDS},
                custom=[f"{k}={v}" for k, v in (r.custom_fields or {}).items()],
            ),
            account_id=r.account_id, deleted=bool(r.deleted), version=int(r.version),
            updated_at=float(r.updated_at), change_seq=int(r.change_seq),
        )


@dataclass(frozen=True)
class Account:
    id: str
    org_id: str
    name: str
    domain: str | None


@dataclass(frozen=True)
class ContactWrite:
    """One item of `ReferenceCrm.write_contacts`: a create when `contact_id` is None.

    The fields are create_contact's and update_contact's keyword arguments, so an item
    means exactly what the same single call would (`keep`: an update's fields left as
    stored; a create has nothing to keep).
    """

    contact: Contact
    contact_id: str | None = None
    owner_id: str | None = None
    expected_version: int | None = None
    idempotency_key: str | None = None
    keep: tuple[str, ...] = ()


#: the most items one `write_contacts` call takes (the bulk endpoint's page size)
MAX_BATCH = 500

# The statements a contact write runs, built once with bound parameters: building one
# per call (`.values(...)`, `.where(...)`) cost more CPU than running it, and a bulk
# write runs several per record.
_INSERT_CHANGE = t.change_log.insert()
_SET_CHANGE_RECORD = t.change_log.update().where(t.change_log.c.seq == sa.bindparam("b_seq"))
_INSERT_CONTACT = t.contacts.insert()
_UPDATE_CONTACT = t.contacts.update().where(t.contacts.c.id == sa.bindparam("b_id"))
_LOAD_CONTACT = sa.select(t.contacts).where(t.contacts.c.org_id == sa.bindparam("b_org"),
                                            t.contacts.c.id == sa.bindparam("b_id"))
_INSERT_IDEMPOTENCY = t.idempotency.insert()


class _Batch:
    """One batch write's state.

    What it reads once for all its items instead of once per item: the rules, the
    accounts its contacts can link to, the records it updates and the results its
    idempotency keys already hold. These stay true for the whole transaction because
    every write to the organisation (account changes and CRM users' edits included)
    holds its lock; the batch's own writes are tracked, so a later item sees what an
    earlier one did.

    And what it writes once at the end instead of once per item: the change log's
    record ids, the email index, the idempotency keys and the records read back for
    the answers. An item's answer is the record as that item left it, so when a later
    item writes the same record again, the earlier answer is read first (`settle`).
    """

    def __init__(self, conn: Connection, org_id: str, items: Sequence[ContactWrite], rules: list[Rule]) -> None:
        self.rules = rules
        keys = list(dict.fromkeys(i.idempotency_key for i in items if i.idempotency_key))
        ids = list(dict.fromkeys(i.contact_id for i in items if i.contact_id))
        self._done: dict[str, tuple[str, Any]] = {}  # key -> (fingerprint, stored result)
        if keys:
            q = sa.select(t.idempotency.c.key, t.idempotency.c.fingerprint, t.idempotency.c.result).where(
                t.idempotency.c.org_id == org_id, t.idempotency.c.key.in_(keys))
            self._done = {r.key: (r.fingerprint, r.result) for r in conn.execute(q)}
        self._rows: dict[str, Any] = {}
        if ids:
            q = sa.select(t.contacts).where(t.contacts.c.org_id == org_id, t.contacts.c.id.in_(ids))
            self._rows = {r.id: r for r in conn.execute(q)}
        # Accounts by domain and by name key, first in id order: _link_account's choice.
        # An update that keeps fields links by what it keeps from the stored record (or
        # from an earlier item's contact, already among the items').
        linked = [i.contact for i in items]
        linked += [CrmContact.from_row(self._rows[i.contact_id]).contact for i in items
                   if i.keep and i.contact_id in self._rows]
        domains = sorted({d for c in linked for d in _link_domains(c)})
        names = sorted({company_key(c.company) for c in linked} - {""})
        self._by_domain: dict[str, str] = {}
        self._by_name: dict[str, str] = {}
        self._rank: dict[str, int] = {}
        if domains or names:
            q = (sa.select(t.accounts.c.id, t.accounts.c.domain, t.accounts.c.name_key)
                 .where(t.accounts.c.org_id == org_id,
                        sa.or_(t.accounts.c.domain.in_(domains), t.accounts.c.name_key.in_(names)))
                 .order_by(t.accounts.c.id))
            for rank, r in enumerate(conn.execute(q)):
                self._rank[r.id] = rank
                if r.domain is not None:
                    self._by_domain.setdefault(r.domain, r.id)
                self._by_name.setdefault(r.name_key, r.id)
        #: each item's answer so far: a record, an error, or None until its record is read back
        self.out: list[CrmContact | ConnectorError | None] = []
        self.names: list[dict] = []  # change-log rows of creates, to name with their record
        self.emails: dict[str, Sequence[str]] = {}  # the email index per record written (last write)
        self.keys: list[tuple[int, str, str]] = []  # (item, key, fingerprint) to store with its answer
        self._unread: dict[str, list[int]] = {}  # record id -> items whose answer it is
        self._record_of: dict[int, str] = {}

    def link(self, contact: Contact) -> str | None:
        """ReferenceCrm._link_account, answered from the accounts read for the batch."""
        hits = [self._by_domain[d] for d in _link_domains(contact) if d in self._by_domain]
        if hits:
            return min(hits, key=self._rank.__getitem__)
        key = company_key(contact.company)
        return self._by_name.get(key) if key else None

    def row(self, contact_id: str) -> Any:
        """The record as read at the start of the batch (stale once `written`)."""
        return self._rows.get(contact_id)

    def written(self, contact_id: str) -> bool:
        """Whether an earlier item of the batch changed this record."""
        return contact_id in self.emails

    def replay(self, key: str | None, fp: str) -> CrmContact | int | None:
        """_idem_lookup over the keys read for the batch and those its items used: the
        stored record, or the earlier item whose answer it is (not read back yet)."""
        if not key or key not in self._done:
            return None
        stored_fp, result = self._done[key]
        if stored_fp != fp:
            raise IdempotencyKeyReused("idempotency key reused with a different request")
        return result if isinstance(result, int) else CrmContact.from_json(result)

    def answered(self, item: int, key: str | None, fp: str, rec: CrmContact) -> None:
        """An item answered without a write (a save that changes nothing)."""
        if key:
            self._done[key] = (fp, rec.to_json())
            self.keys.append((item, key, fp))

    def wrote(self, item: int, record_id: str, contact: Contact, key: str | None, fp: str) -> None:
        """An item wrote `record_id`: its answer is read back later, its key stored then."""
        self.emails[record_id] = contact.email_addresses()
        self._unread.setdefault(record_id, []).append(item)
        self._record_of[item] = record_id
        if key:
            self._done[key] = (fp, item)
            self.keys.append((item, key, fp))

    def record_of(self, item: int) -> str:
        return self._record_of[item]

    def settle(self, record_id: str, rec: CrmContact) -> None:
        """`rec` is the record as the items waiting on it left it: their answer."""
        for item in self._unread.pop(record_id, ()):
            self.out[item] = rec

    def unread(self) -> list[str]:
        return list(self._unread)


def _db_errors(fn: Callable) -> Callable:
    """Database trouble (locked, connection lost) is Transient to callers, per models.errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise Transient(f"reference CRM database unavailable ({type(exc.orig).__name__})") from exc

    return wrapper


def in_savepoint(conn: Connection, write: Callable[[], Any]) -> Any:
    """`write()` inside a savepoint of the batch's transaction: a refused item (any
    ConnectorError but Transient) rolls back alone and is returned in its place;
    Transient (database trouble) fails the whole batch.

    Plain SQL with one reused name: SQLAlchemy's begin_nested() compiles a new
    statement per savepoint, which cost more than the item's own writes.
    """
    conn.exec_driver_sql("SAVEPOINT batch_item")
    try:
        done = write()
    except Transient:
        raise
    except ConnectorError as exc:
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT batch_item")
        done = exc
    conn.exec_driver_sql("RELEASE SAVEPOINT batch_item")
    return done


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _create_fingerprint(contact: Contact, owner_id: str | None) -> str:
    return _fingerprint({"op": "create", "contact": contact.model_dump(mode="json"), "owner": owner_id})


def _update_fingerprint(contact_id: str, contact: Contact, owner_id: str | None, expected_version: int | None,
                        keep: Sequence[str] = ()) -> str:
    """`keep` sorted; an update keeping nothing has the fingerprint it had before `keep` existed."""
    return _fingerprint({"op": "update", "id": contact_id, "contact": contact.model_dump(mode="json"),
                         "owner": owner_id, "expected": expected_version, **({"keep": list(keep)} if keep else {})})


def _link_domains(contact: Contact) -> list[str]:
    """The email domains an account can be found by: not the free mail providers'."""
    return sorted({d for d in (email_domain(e) for e in contact.email_addresses()) if d and d not in FREE_DOMAINS})


class ReferenceCrm:
    """The CRM. Thread-safe: every call opens its own connection and transaction."""

    def __init__(
        self,
        engine_or_url: Engine | str,
        *,
        create_schema: bool = True,
    ) -> None:
        self.engine = t.make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        if create_schema:
            t.metadata.create_all(self.engine)
            t.add_missing_columns(self.engine)

    @functools.cached_property
    def mail(self) -> "Any":
        """The email-logging part of the CRM (leads, opportunities, activities): mail_service.CrmMail."""
        from platforms.reference_crm.mail_service import CrmMail

        return CrmMail(self)

    @functools.cached_property
    def outbox(self) -> "Any":
        """Mail users queue for Concord to send from their mailbox: outbox_service.CrmOutbox."""
        from platforms.reference_crm.outbox_service import CrmOutbox

        return CrmOutbox(self)

    @functools.cached_property
    def calendar(self) -> "Any":
        """The project-management calendar (projects, events, series): pm_service.CrmCalendar."""
        from platforms.reference_crm.pm_service import CrmCalendar

        return CrmCalendar(self)

    # ---------------------------------------------------------------- plumbing

    @contextmanager
    def _write(self, org_id: str) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(crm_write=True)
            with conn.begin():
                self._lock_org(conn, org_id)
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def _lock_org(self, conn: Connection, org_id: str) -> None:
        """Serialise this organisation's writers until commit (the feed's gap-freedom rests on it)."""
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(insert(t.orgs).values(org_id=org_id, created_at=time.time()).on_conflict_do_nothing())
        # SQLite ignores FOR UPDATE; BEGIN IMMEDIATE already made us the only writer.
        conn.execute(sa.select(t.orgs.c.org_id).where(t.orgs.c.org_id == org_id).with_for_update())

    def _next_seq(self, conn: Connection, org_id: str, record_id: str | None, op: str, actor: str) -> int:
        res = conn.execute(
            _INSERT_CHANGE, {"org_id": org_id, "record_id": record_id, "op": op, "actor": actor, "at": time.time()}
        )
        return int(res.inserted_primary_key[0])

    def _rules(self, conn: Connection, org_id: str) -> list[Rule]:
        rows = conn.execute(
            sa.select(t.rules).where(t.rules.c.org_id == org_id).order_by(t.rules.c.position)
        ).all()
        return [Rule.from_row(r) for r in rows]

    def _link_account(self, conn: Connection, org_id: str, contact: Contact) -> str | None:
        """Email domain (non-free) first, then company name; deterministic when several match."""
        domains = _link_domains(contact)
        if domains:
            hit = conn.execute(
                sa.select(t.accounts.c.id)
                .where(t.accounts.c.org_id == org_id, t.accounts.c.domain.in_(domains))
                .order_by(t.accounts.c.id)
                .limit(1)
            ).scalar()
            if hit:
                return hit
        key = company_key(contact.company)
        if key:
            return conn.execute(
                sa.select(t.accounts.c.id)
                .where(t.accounts.c.org_id == org_id, t.accounts.c.name_key == key)
                .order_by(t.accounts.c.id)
                .limit(1)
            ).scalar()
        return None

    def _load(self, conn: Connection, org_id: str, contact_id: str) -> Any:
        return conn.execute(_LOAD_CONTACT, {"b_org": org_id, "b_id": contact_id}).first()

    def _idem_lookup(self, conn: Connection, org_id: str, key: str | None, fp: str) -> CrmContact | None:
        if not key:
            return None
        row = conn.execute(
            sa.select(t.idempotency).where(t.idempotency.c.org_id == org_id, t.idempotency.c.key == key)
        ).first()
        if row is None:
            return None
        if row.fingerprint != fp:
            raise IdempotencyKeyReused("idempotency key reused with a different request")
        return CrmContact.from_json(row.result)

    def _idem_store(self, conn: Connection, org_id: str, key: str | None, fp: str, rec: CrmContact) -> None:
        if key:
            conn.execute(
                _INSERT_IDEMPOTENCY,
                {"org_id": org_id, "key": key, "fingerprint": fp, "record_id": rec.id,
                 "result": rec.to_json(), "created_at": time.time()},
            )

    def _save(
        self,
        conn: Connection,
        org_id: str,
        existing: Any,
        contact: Contact,
        owner_id: str | None,
        actor: str,
        enforce_rules: bool,
    ) -> CrmContact:
        """Validate, link, stamp a new sequence number and write one contact (create or update)."""
        saved = self._save_row(conn, org_id, existing, contact, owner_id, actor, enforce_rules)
        if isinstance(saved, CrmContact):
            return saved
        mail_schema.index_emails(conn, org_id, "contact", saved, contact.email_addresses())
        return CrmContact.from_row(self._load(conn, org_id, saved))

    def _save_row(
        self,
        conn: Connection,
        org_id: str,
        existing: Any,
        contact: Contact,
        owner_id: str | None,
        actor: str,
        enforce_rules: bool,
        *,
        batch: _Batch | None = None,
    ) -> str | CrmContact:
        """_save's checks and its row: the id of the record written, or the record itself
        when the save changes nothing. A batch supplies the rules and accounts it read
        and names its creates' change-log rows at its end."""
        if enforce_rules:
            err = rules_mod.first_violation(self._rules(conn, org_id) if batch is None else batch.rules, contact)
            if err is not None:
                raise err
        account_id = self._link_account(conn, org_id, contact) if batch is None else batch.link(contact)
        values = _column_values(contact)
        now = time.time()
        if existing is None:
            seq = self._next_seq(conn, org_id, None, "create", actor)
            record_id = f"crm_c_{seq}"
            if batch is None:
                conn.execute(_SET_CHANGE_RECORD, {"b_seq": seq, "record_id": record_id})
            else:
                batch.names.append({"b_seq": seq, "record_id": record_id})
            conn.execute(
                _INSERT_CONTACT,
                dict(id=record_id, org_id=org_id, owner_id=owner_id, account_id=account_id, deleted=False,
                     version=1, updated_at=now, change_seq=seq, **values),
            )
        else:
            record_id = existing.id
            before = CrmContact.from_row(existing)
            if before.contact == contact and before.owner_id == owner_id and before.account_id == account_id:
                return before  # a no-op save is not a change: no version bump, no feed entry
            seq = self._next_seq(conn, org_id, record_id, "update", actor)
            conn.execute(
                _UPDATE_CONTACT,
                dict(b_id=record_id, owner_id=owner_id, account_id=account_id, version=existing.version + 1,
                     updated_at=now, change_seq=seq, **values),
            )
        return record_id

    @staticmethod
    def _check_version(existing: Any, expected_version: int | None) -> None:
        if expected_version is not None and int(existing.version) != int(expected_version):
            raise PreconditionFailed("record changed since it was read", detail={"current_version": existing.version})

    # ---------------------------------------------------------------- contacts

    @_db_errors
    def create_contact(
        self,
        org_id: str,
        contact: Contact,
        *,
        owner_id: str | None = None,
        idempotency_key: str | None = None,
        actor: str = "api",
        enforce_rules: bool = True,
    ) -> CrmContact:
        fp = _create_fingerprint(contact, owner_id)
        with self._write(org_id) as conn:
            done = self._idem_lookup(conn, org_id, idempotency_key, fp)
            if done is not None:
                return done
            rec = self._save(conn, org_id, None, contact, owner_id, actor, enforce_rules)
            self._idem_store(conn, org_id, idempotency_key, fp, rec)
            return rec

    @_db_errors
    def update_contact(
        self,
        org_id: str,
        contact_id: str,
        contact: Contact,
        *,
        owner_id: str | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        actor: str = "api",
        enforce_rules: bool = True,
        keep: Iterable[str] = (),
    ) -> CrmContact:
        """Replace the contact's fields but those in `keep`. `owner_id` None keeps the current owner."""
        keep = sorted(set(keep))
        fp = _update_fingerprint(contact_id, contact, owner_id, expected_version, keep)
        with self._write(org_id) as conn:
            done = self._idem_lookup(conn, org_id, idempotency_key, fp)
            if done is not None:
                return done
            existing = self._load(conn, org_id, contact_id)
            if existing is None or existing.deleted:
                raise NotFound("contact not found")
            self._check_version(existing, expected_version)
            if keep:
                contact = kept(contact, CrmContact.from_row(existing).contact, keep)
            rec = self._save(conn, org_id, existing, contact, owner_id if owner_id is not None else existing.owner_id,
                             actor, enforce_rules)
            self._idem_store(conn, org_id, idempotency_key, fp, rec)
            return rec

    @_db_errors
    def write_contacts(
        self,
        org_id: str,
        items: Sequence[ContactWrite],
        *,
        actor: str = "api",
        enforce_rules: bool = True,
    ) -> list[CrmContact | ConnectorError]:
        """Creates and updates in one transaction: the bulk endpoint.

        A commit per record made the first sync of a big mailbox spend most of its time
        committing. Here the batch commits once and each item runs in a savepoint of its
        own, so an item the CRM refuses (a rule, a stale version, a missing record, a
        reused key) is rolled back alone and answered with its error in its place while
        the others land. An item means what the same create_contact / update_contact
        call would: the same idempotency keys and fingerprints, and a change number per
        changed record in the order given, drawn under the organisation's lock. Database
        trouble fails the whole batch (Transient): none of it is committed, and a retry
        with the same keys is safe.
        """
        if len(items) > MAX_BATCH:
            raise Fatal(f"a batch write takes at most {MAX_BATCH} items")
        with self._write(org_id) as conn:
            batch = _Batch(conn, org_id, items, self._rules(conn, org_id) if enforce_rules else [])
            for pos, item in enumerate(items):
                batch.out.append(in_savepoint(
                    conn, lambda: self._write_item(conn, org_id, pos, item, actor, enforce_rules, batch)))
            self._finish_batch(conn, org_id, batch)
        assert all(a is not None for a in batch.out)
        return batch.out  # type: ignore[return-value]

    def _write_item(self, conn: Connection, org_id: str, pos: int, item: ContactWrite, actor: str,
                    enforce_rules: bool, batch: _Batch) -> CrmContact | None:
        """One item of write_contacts: create_contact's or update_contact's body on the
        batch's reads. None: it wrote its record, read back for its answer at the end.
        What the batch is to do for the item is noted after the item's last statement,
        so an item rolled back to its savepoint leaves nothing for the end to act on (a
        create's change-log row to name is rolled back with it: naming it changes nothing)."""
        key = item.idempotency_key
        contact = item.contact
        if item.contact_id is None:
            fp = _create_fingerprint(item.contact, item.owner_id)
            done = self._replay(conn, org_id, batch, key, fp)
            if done is not None:
                return done
            saved = self._save_row(conn, org_id, None, item.contact, item.owner_id, actor, enforce_rules, batch=batch)
        else:
            keep = sorted(set(item.keep))
            fp = _update_fingerprint(item.contact_id, item.contact, item.owner_id, item.expected_version, keep)
            done = self._replay(conn, org_id, batch, key, fp)
            if done is not None:
                return done
            if batch.written(item.contact_id):
                existing = self._load(conn, org_id, item.contact_id)
                batch.settle(item.contact_id, CrmContact.from_row(existing))  # before this item changes it
            else:
                existing = batch.row(item.contact_id)
            if existing is None or existing.deleted:
                raise NotFound("contact not found")
            self._check_version(existing, item.expected_version)
            if keep:
                contact = kept(contact, CrmContact.from_row(existing).contact, keep)
            owner_id = item.owner_id if item.owner_id is not None else existing.owner_id
            saved = self._save_row(conn, org_id, existing, contact, owner_id, actor, enforce_rules, batch=batch)
        if isinstance(saved, CrmContact):
            batch.answered(pos, key, fp, saved)
            return saved
        batch.wrote(pos, saved, contact, key, fp)  # as stored: with its kept fields
        return None

    def _replay(self, conn: Connection, org_id: str, batch: _Batch, key: str | None, fp: str) -> CrmContact | None:
        done = batch.replay(key, fp)
        if isinstance(done, int):  # an earlier item of this batch, its record not read back yet
            record_id = batch.record_of(done)
            batch.settle(record_id, CrmContact.from_row(self._load(conn, org_id, record_id)))
            done = batch.out[done]
            assert isinstance(done, CrmContact)
        return done

    def _finish_batch(self, conn: Connection, org_id: str, batch: _Batch) -> None:
        """The writes every item left for the end, in a few statements for all of them."""
        if batch.names:
            conn.execute(_SET_CHANGE_RECORD, batch.names)
        mail_schema.index_emails_many(conn, org_id, "contact", batch.emails)
        unread = batch.unread()
        for i in range(0, len(unread), _KEY_CHUNK):
            q = sa.select(t.contacts).where(t.contacts.c.org_id == org_id, t.contacts.c.id.in_(unread[i:i + _KEY_CHUNK]))
            for row in conn.execute(q):
                batch.settle(row.id, CrmContact.from_row(row))
        now = time.time()
        rows = []
        for pos, key, fp in batch.keys:
            rec = batch.out[pos]
            assert isinstance(rec, CrmContact)
            rows.append({"org_id": org_id, "key": key, "fingerprint": fp, "record_id": rec.id,
                         "result": rec.to_json(), "created_at": now})
        if rows:
            conn.execute(_INSERT_IDEMPOTENCY, rows)

    @_db_errors
    def delete_contact(
        self,
        org_id: str,
        contact_id: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        actor: str = "api",
    ) -> CrmContact:
        """Soft delete: the row stays as a tombstone so the feed can report it.

        Deleting an already-deleted contact returns the tombstone unchanged; an id
        this organisation never had raises NotFound.
        """
        fp = _fingerprint({"op": "delete", "id": contact_id, "expected": expected_version})
        with self._write(org_id) as conn:
            done = self._idem_lookup(conn, org_id, idempotency_key, fp)
            if done is not None:
                return done
            existing = self._load(conn, org_id, contact_id)
            if existing is None:
                raise NotFound("contact not found")
            if not existing.deleted:
                self._check_version(existing, expected_version)
                seq = self._next_seq(conn, org_id, contact_id, "delete", actor)
                conn.execute(
                    t.contacts.update()
                    .where(t.contacts.c.id == contact_id)
                    .values(deleted=True, version=existing.version + 1, updated_at=time.time(), change_seq=seq)
                )
                mail_schema.index_emails(conn, org_id, "contact", contact_id, ())
            rec = CrmContact.from_row(self._load(conn, org_id, contact_id))
            self._idem_store(conn, org_id, idempotency_key, fp, rec)
            return rec

    @_db_errors
    def get_contact(self, org_id: str, contact_id: str, *, include_deleted: bool = False) -> CrmContact | None:
        with self._read() as conn:
            row = self._load(conn, org_id, contact_id)
        if row is None or (row.deleted and not include_deleted):
            return None
        return CrmContact.from_row(row)

    @_db_errors
    def get_contacts(self, org_id: str, contact_ids: Sequence[str]) -> dict[str, CrmContact]:
        """Rows by id, tombstones included; ids of other organisations are simply absent."""
        out: dict[str, CrmContact] = {}
        ids = list(dict.fromkeys(contact_ids))
        with self._read() as conn:
            for i in range(0, len(ids), _KEY_CHUNK):
                rows = conn.execute(
                    sa.select(t.contacts).where(t.contacts.c.org_id == org_id, t.contacts.c.id.in_(ids[i:i + _KEY_CHUNK]))
                ).all()
                out.update((r.id, CrmContact.from_row(r)) for r in rows)
        return out

    @_db_errors
    def list_contacts(
        self,
        org_id: str,
        *,
        owner_id: str | None = None,
        account_id: str | None = None,
        include_deleted: bool = False,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[CrmContact]:
        q = sa.select(t.contacts).where(t.contacts.c.org_id == org_id)
        if owner_id is not None:
            q = q.where(t.contacts.c.owner_id == owner_id)
        if account_id is not None:
            q = q.where(t.contacts.c.account_id == account_id)
        if not include_deleted:
            q = q.where(t.contacts.c.deleted.is_(False))
        q = q.order_by(t.contacts.c.change_seq).limit(limit).offset(offset)
        with self._read() as conn:
            return [CrmContact.from_row(r) for r in conn.execute(q).all()]

    @_db_errors
    def changes_since(self, org_id: str, cursor: int | None, limit: int = 500) -> tuple[list[CrmContact], int]:
        """Contacts changed after `cursor` (a sequence number), oldest first, tombstones included.

        A contact changed several times since the cursor appears once, in its latest
        state. The returned cursor is the last record's sequence number (or the
        given cursor when nothing changed); resuming from it neither repeats nor
        skips a committed change.
        """
        after = int(cursor or 0)
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.contacts)
                .where(t.contacts.c.org_id == org_id, t.contacts.c.change_seq > after)
                .order_by(t.contacts.c.change_seq)
                .limit(limit)
            ).all()
        recs = [CrmContact.from_row(r) for r in rows]
        return recs, (recs[-1].change_seq if recs else after)

    @_db_errors
    def feed_head(self, org_id: str) -> int:
        """The newest change number in this organisation's feed (0 before its first change).

        Numbers only grow, so no cursor this database issued is larger: a larger one
        comes from another database (a restored backup, a CRM rebuilt under a store
        that kept its cursor), and trusting it would skip every change up to it.
        """
        with self._read() as conn:
            head = conn.execute(
                sa.select(sa.func.max(t.contacts.c.change_seq)).where(t.contacts.c.org_id == org_id)
            ).scalar()
        return int(head or 0)

    # ---------------------------------------------------------------- user edits (tests, demo)

    def user_create(self, org_id: str, owner_id: str, *, user: str = "crm_user", enforce_rules: bool = True,
                    **fields: Any) -> CrmContact:
        """A CRM user adds a contact in the CRM's UI."""
        return self.create_contact(org_id, Contact(**fields), owner_id=owner_id, actor=user,
                                   enforce_rules=enforce_rules)

    def user_edit(self, org_id: str, contact_id: str, *, user: str = "crm_user", enforce_rules: bool = True,
                  **fields: Any) -> CrmContact:
        """A CRM user changes some fields of a contact; the rest stay as they are."""
        current = self.get_contact(org_id, contact_id)
        if current is None:
            raise NotFound("contact not found")
        merged = Contact(**{**current.contact.model_dump(), **fields})
        return self.update_contact(org_id, contact_id, merged, expected_version=current.version, actor=user,
                                   enforce_rules=enforce_rules)

    def user_delete(self, org_id: str, contact_id: str, *, user: str = "crm_user") -> CrmContact:
        return self.delete_contact(org_id, contact_id, actor=user)

    # ---------------------------------------------------------------- accounts

    def _relink(self, conn: Connection, org_id: str, account_id: str) -> None:
        """Re-evaluate links of contacts that are unlinked or linked to `account_id`.

        A changed link is a change to the contact, so it gets a new version and a feed entry.
        """
        rows = conn.execute(
            sa.select(t.contacts).where(
                t.contacts.c.org_id == org_id,
                t.contacts.c.deleted.is_(False),
                sa.or_(t.contacts.c.account_id.is_(None), t.contacts.c.account_id == account_id),
            )
        ).all()
        for r in rows:
            new = self._link_account(conn, org_id, CrmContact.from_row(r).contact)
            if new != r.account_id:
                seq = self._next_seq(conn, org_id, r.id, "relink", "system")
                conn.execute(
                    t.contacts.update().where(t.contacts.c.id == r.id).values(
                        account_id=new, version=r.version + 1, updated_at=time.time(), change_seq=seq
                    )
                )

    @staticmethod
    def _norm_domain(domain: str | None) -> str | None:
        d = (domain or "").strip().lower().removeprefix("www.").lstrip("@")
        return d or None

    @_db_errors
    def create_account(self, org_id: str, name: str, domain: str | None = None, *, actor: str = "api") -> Account:
        with self._write(org_id) as conn:
            seq = self._next_seq(conn, org_id, None, "account_create", actor)
            acc = Account(f"crm_a_{seq}", org_id, name, self._norm_domain(domain))
            conn.execute(t.change_log.update().where(t.change_log.c.seq == seq).values(record_id=acc.id))
            conn.execute(t.accounts.insert().values(id=acc.id, org_id=org_id, name=name, name_key=company_key(name),
                                                    domain=acc.domain, updated_at=time.time()))
            self._relink(conn, org_id, acc.id)
            return acc

    @_db_errors
    def update_account(self, org_id: str, account_id: str, *, name: str | None = None, domain: str | None = None,
                       actor: str = "api") -> Account:
        with self._write(org_id) as conn:
            row = conn.execute(sa.select(t.accounts).where(t.accounts.c.org_id == org_id,
                                                           t.accounts.c.id == account_id)).first()
            if row is None:
                raise NotFound("account not found")
            new_name = row.name if name is None else name
            new_domain = row.domain if domain is None else self._norm_domain(domain)
            self._next_seq(conn, org_id, account_id, "account_update", actor)
            conn.execute(t.accounts.update().where(t.accounts.c.id == account_id).values(
                name=new_name, name_key=company_key(new_name), domain=new_domain, updated_at=time.time()))
            self._relink(conn, org_id, account_id)
            return Account(account_id, org_id, new_name, new_domain)

    @_db_errors
    def delete_account(self, org_id: str, account_id: str, *, actor: str = "api") -> None:
        with self._write(org_id) as conn:
            n = conn.execute(t.accounts.delete().where(t.accounts.c.org_id == org_id,
                                                       t.accounts.c.id == account_id)).rowcount
            if not n:
                raise NotFound("account not found")
            self._next_seq(conn, org_id, account_id, "account_delete", actor)
            self._relink(conn, org_id, account_id)

    @_db_errors
    def get_account(self, org_id: str, account_id: str) -> Account | None:
        with self._read() as conn:
            r = conn.execute(sa.select(t.accounts).where(t.accounts.c.org_id == org_id,
                                                         t.accounts.c.id == account_id)).first()
        return Account(r.id, r.org_id, r.name, r.domain) if r else None

    @_db_errors
    def list_accounts(self, org_id: str) -> list[Account]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.accounts).where(t.accounts.c.org_id == org_id)
                                .order_by(t.accounts.c.name, t.accounts.c.id)).all()
        return [Account(r.id, r.org_id, r.name, r.domain) for r in rows]

    @_db_errors
    def accounts_by_domain(self, org_id: str, domain: str) -> list[Account]:
        d = self._norm_domain(domain)
        with self._read() as conn:
            rows = conn.execute(sa.select(t.accounts).where(t.accounts.c.org_id == org_id, t.accounts.c.domain == d)
                                .order_by(t.accounts.c.id)).all()
        return [Account(r.id, r.org_id, r.name, r.domain) for r in rows]

    # ---------------------------------------------------------------- rules

    @_db_errors
    def configure_rules(self, org_id: str, rules: Sequence[Rule]) -> None:
        """Replace the organisation's rule set. Existing records are not re-checked (as in real CRMs)."""
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise Fatal("rule names must be unique within an organisation")
        for r in rules:
            rules_mod.validate_definition(r)
        with self._write(org_id) as conn:
            conn.execute(t.rules.delete().where(t.rules.c.org_id == org_id))
            if rules:
                conn.execute(t.rules.insert(), [{"org_id": org_id, "position": i, **r.to_row()}
                                                for i, r in enumerate(rules)])

    @_db_errors
    def get_rules(self, org_id: str) -> list[Rule]:
        with self._read() as conn:
            return self._rules(conn, org_id)

    def check_rules(self, org_id: str, contact: Contact) -> ValidationRejected | None:
        """What a save of `contact` would be refused for, without saving."""
        return rules_mod.first_violation(self.get_rules(org_id), contact)
