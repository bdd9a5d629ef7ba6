"""The reference CRM's tables for email logging: leads, opportunities, email activities.

They live on the CRM's own MetaData (schema.metadata), so `ReferenceCrm` creates them
with the contact tables through the same `create_all`.

Why an address index table
--------------------------
Mail is matched to people by every address they hold, secondary ones included. The
contacts' and leads' `emails` columns are JSON lists, which no portable index can
search, so `crm_person_emails` holds one row per (address, person), rewritten in the
same transaction as every write that changes a person's addresses. Only live people
are indexed: a soft-deleted contact or a converted lead no longer receives mail.

Why email activities are not under the organisation lock
--------------------------------------------------------
Activities are not in the change feed, so logging one draws no sequence number and
needs no org lock. Two mailboxes logging the same message at the same moment are
kept to one activity by the UNIQUE (org_id, idem_key) constraint (INSERT ... ON
CONFLICT DO NOTHING, then the row is locked and extended), never by a read-then-write.

Conversions feed
----------------
`crm_conversions.seq` is dense per organisation: it is drawn as max+1 while the
organisation row is locked (every conversion is a locked write), so a reader that
sees number N has every smaller number already, and a cursor larger than the head
was never issued by this database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from platforms.reference_crm.schema import metadata

leads = sa.Table(
    "crm_leads",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("owner_id", sa.String(128), nullable=True),
    sa.Column("given_name", sa.Text, nullable=False, default=""),
    sa.Column("family_name", sa.Text, nullable=False, default=""),
    sa.Column("company", sa.Text, nullable=False, default=""),
    # Primary address first, then secondary ones; lower-cased.
    sa.Column("emails", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="open"),
    sa.Column("converted_contact_id", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
    sa.Index("ix_crm_leads_feed", "org_id", "change_seq"),
)

person_emails = sa.Table(
    "crm_person_emails",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(320), primary_key=True),
    sa.Column("person_kind", sa.String(16), primary_key=True),
    sa.Column("person_id", sa.String(64), primary_key=True),
    sa.Index("ix_crm_person_emails_person", "org_id", "person_kind", "person_id"),
)

opportunities = sa.Table(
    "crm_opportunities",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("stage", sa.String(16), nullable=False, default="open"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
)

contact_roles = sa.Table(
    "crm_opportunity_contact_roles",
    metadata,
    sa.Column("opportunity_id", sa.String(64), primary_key=True),
    sa.Column("contact_id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False, default=""),
    sa.Index("ix_crm_contact_roles_contact", "org_id", "contact_id"),
)

email_activities = sa.Table(
    "crm_email_activities",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    # EmailLog.key: what makes a second log of one message extend the first.
    sa.Column("idem_key", sa.String(512), nullable=False),
    sa.Column("thread_key", sa.String(512), nullable=False, default=""),
    sa.Column("weak_thread", sa.Boolean, nullable=False, default=False),
    sa.Column("synthesized_key", sa.Boolean, nullable=False, default=False),
    sa.Column("visibility", sa.String(16), nullable=False),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("body_text", sa.Text, nullable=True),
    sa.Column("sender", sa.String(320), nullable=True),
    sa.Column("recipients", sa.JSON, nullable=False),
    sa.Column("occurred_at", sa.Float, nullable=True),
    sa.Column("direction", sa.String(16), nullable=False, default="received"),
    sa.Column("attachments", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("org_id", "idem_key", name="uq_crm_email_activities_key"),
    sa.Index("ix_crm_email_activities_thread", "org_id", "thread_key"),
)

activity_users = sa.Table(
    "crm_email_activity_users",
    metadata,
    sa.Column("activity_id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
)

activity_associations = sa.Table(
    "crm_email_activity_associations",
    metadata,
    sa.Column("activity_id", sa.String(64), primary_key=True),
    sa.Column("object_type", sa.String(64), primary_key=True),
    sa.Column("object_id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Index("ix_crm_email_assoc_object", "org_id", "object_type", "object_id"),
)

conversions = sa.Table(
    "crm_conversions",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("lead_id", sa.String(64), nullable=False, unique=True),
    sa.Column("contact_id", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("opportunity_id", sa.String(64), nullable=True),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Column("at", sa.Float, nullable=False),
)

mail_rules = sa.Table(
    "crm_mail_rules",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("object", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
)


def insert_for(conn: Connection):
    """The dialect's INSERT, for ON CONFLICT DO NOTHING (PostgreSQL and SQLite share the API)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


# Built once: a contact write runs it for every record (see service._INSERT_CONTACT).
_UNINDEX_PERSON = person_emails.delete().where(
    person_emails.c.org_id == sa.bindparam("b_org"), person_emails.c.person_kind == sa.bindparam("b_kind"),
    person_emails.c.person_id == sa.bindparam("b_person"))


def _plain_addresses(emails) -> list[str]:
    """Lower-cased, de-duplicated, sorted: `emails` holds plain addresses (str, or a typed
    email whose str is its address) or stored ones as {"address": ...}."""
    plain = [str(e.get("address") or "") if isinstance(e, dict) else str(e) for e in emails or ()]
    return sorted({e.strip().lower() for e in plain if e.strip()})


def index_emails(conn: Connection, org_id: str, kind: str, person_id: str, emails) -> None:
    """Make the address index hold exactly `emails` for this person (empty: unindex it).

    Called inside the write that changes the person, so a lookup never sees an
    address the person no longer holds, nor misses one it just gained.
    """
    conn.execute(_UNINDEX_PERSON, {"b_org": org_id, "b_kind": kind, "b_person": person_id})
    addrs = _plain_addresses(emails)
    if addrs:
        conn.execute(person_emails.insert(), [
            {"org_id": org_id, "email": a, "person_kind": kind, "person_id": person_id} for a in addrs
        ])


def index_emails_many(conn: Connection, org_id: str, kind: str, emails_of: dict[str, Sequence[str]]) -> None:
    """index_emails for many people in a few statements (a bulk write's end)."""
    ids = list(emails_of)
    for i in range(0, len(ids), 500):
        conn.execute(person_emails.delete().where(
            person_emails.c.org_id == org_id, person_emails.c.person_kind == kind,
            person_emails.c.person_id.in_(ids[i:i + 500])))
    rows = [{"org_id": org_id, "email": a, "person_kind": kind, "person_id": pid}
            for pid, emails in emails_of.items()
            for a in _plain_addresses(emails)]
    if rows:
        conn.execute(person_emails.insert(), rows)
