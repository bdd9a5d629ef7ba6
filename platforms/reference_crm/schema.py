"""Tables of the reference CRM, in its own MetaData and its own database.

The CRM is a stand-in for a customer's product, so it never shares tables with the
sync store: a real platform would not either.

How the change feed stays gap-free under concurrent writers
-----------------------------------------------------------
Every write allocates a number from `crm_change_log.seq` (an identity/sequence on
PostgreSQL, an AUTOINCREMENT rowid on SQLite) and stamps it on the contact row as
`change_seq`. A plain sequence is not enough on its own: writer A may draw 10, writer
B draw 11 and commit first; a reader then sees 11, stores cursor 11 and never sees
10 once A commits. So every write transaction first locks its organisation's row in
`crm_orgs` (SELECT ... FOR UPDATE on PostgreSQL; SQLite has one writer at a time,
enforced with BEGIN IMMEDIATE) and only then draws its number. Within one
organisation numbers are therefore drawn in commit order, and a reader that sees
number N also sees every smaller number of that organisation: the feed may have
gaps (rolled-back transactions, other organisations' numbers) but never a hole that
fills in later. Feeds are per organisation, so organisations do not wait on each other.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

orgs = sa.Table(
    "crm_orgs",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# One row per write, and the source of the global sequence (see module docstring).
change_log = sa.Table(
    "crm_change_log",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("record_id", sa.String(64), nullable=True),
    sa.Column("op", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Column("at", sa.Float, nullable=False),
    sqlite_autoincrement=True,  # never reuse a number after the last row is removed
)

contacts = sa.Table(
    "crm_contacts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("owner_id", sa.String(128), nullable=True),
    sa.Column("given_name", sa.Text, nullable=False, default=""),
    sa.Column("family_name", sa.Text, nullable=False, default=""),
    sa.Column("emails", sa.JSON, nullable=False),
    sa.Column("phones", sa.JSON, nullable=False),
    sa.Column("company", sa.Text, nullable=False, default=""),
    sa.Column("job_title", sa.Text, nullable=False, default=""),
    sa.Column("notes", sa.Text, nullable=False, default=""),
    # Added with the richer contact; nullable so `add_missing_columns` can add them to a
    # table created before (NULL reads as empty).
    sa.Column("prefix", sa.Text, nullable=True),
    sa.Column("middle_name", sa.Text, nullable=True),
    sa.Column("suffix", sa.Text, nullable=True),
    sa.Column("nickname", sa.Text, nullable=True),
    sa.Column("department", sa.Text, nullable=True),
    sa.Column("birthday", sa.String(10), nullable=True),
    sa.Column("addresses", sa.JSON, nullable=True),
    sa.Column("websites", sa.JSON, nullable=True),
    # the organisation's custom fields: {"name": "value"}
    sa.Column("custom_fields", sa.JSON, nullable=True),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
    sa.Index("ix_crm_contacts_feed", "org_id", "change_seq"),
    sa.Index("ix_crm_contacts_account", "account_id"),
)

accounts = sa.Table(
    "crm_accounts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    # Name folded for matching contacts' company ("ACME, Inc." -> "acme"); see service.company_key.
    sa.Column("name_key", sa.String(255), nullable=False),
    # Lower-cased bare domain ("example.com"), or NULL for an account known by name only.
    sa.Column("domain", sa.String(255), nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_crm_accounts_org_domain", "org_id", "domain"),
    sa.Index("ix_crm_accounts_org_name", "org_id", "name_key"),
)

idempotency = sa.Table(
    "crm_idempotency_keys",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    # Digest of what was asked, so a reused key with another payload is caught.
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("record_id", sa.String(64), nullable=True),
    # The record as the first call returned it; a retry returns exactly this.
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

rules = sa.Table(
    "crm_rules",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("field", sa.String(64), nullable=True),
    sa.Column("params", sa.JSON, nullable=False),
)


def add_missing_columns(engine: Engine) -> list[str]:
    """The CRM's one migration step: columns this code has and an existing table lacks.

    The CRM creates its tables with `create_all`, which never alters a table that
    exists; a database created before a column was added gets it here (every such
    column is nullable). Returns the columns added.
    """
    added: list[str] = []
    inspector = sa.inspect(engine)
    for table in (contacts,):
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        with engine.begin() as conn:
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                    added.append(column.name)
    return added


def make_engine(url: str) -> Engine:
    """An engine set up for the CRM's locking discipline.

    On SQLite, write transactions must start with BEGIN IMMEDIATE: a deferred
    transaction that reads and then writes can fail to upgrade its lock when two
    threads write at once. Connections opened with execution option
    `crm_write=True` get BEGIN IMMEDIATE; readers get a plain BEGIN (WAL lets them
    read while someone writes).
    """
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # pragma: no cover - trivial wiring
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        if ":memory:" not in url:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin(conn):  # pragma: no cover - trivial wiring
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("crm_write") else "BEGIN")

    return engine
