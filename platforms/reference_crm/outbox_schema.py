"""The reference CRM's outbox: mail a CRM user writes on a record for Concord to send.

The table lives on the CRM's MetaData (schema.metadata), so `ReferenceCrm` creates it
with the others through one `create_all`.

Why outbox items are in the change feed
---------------------------------------
Concord learns about new items and about changes a user makes (a cancel) by reading
`outbox_since`, and it must never miss one: an item it skips is a message nobody
sends. So every write to an item (queue, each state move, cancel) runs under the
organisation lock and stamps a fresh number from `crm_change_log` on `change_seq`,
exactly like contacts (see schema.py's docstring). A reader that has seen number N of
an organisation has every smaller number of it, so resuming after N skips nothing,
and an item changed several times since is reported once, in its latest state.

Why recipients and attachments are JSON
---------------------------------------
They are only ever read with the item (never searched), and the protocol reports
them as lists of objects; a child table would buy nothing but joins.
"""

from __future__ import annotations

import sqlalchemy as sa

from platforms.reference_crm.schema import metadata

outbox = sa.Table(
    "crm_outbox",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    # The CRM user sending it: Concord sends through that user's connected mailbox.
    sa.Column("user_id", sa.String(128), nullable=False),
    # Lists of {"email", "name"}.
    sa.Column("to_addrs", sa.JSON, nullable=False),
    sa.Column("cc_addrs", sa.JSON, nullable=False),
    sa.Column("bcc_addrs", sa.JSON, nullable=False),
    sa.Column("subject", sa.Text, nullable=False, default=""),
    sa.Column("html", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    # List of {"filename", "content_type", "data_b64"}.
    sa.Column("attachments", sa.JSON, nullable=False),
    # The logged email activity's key (its normalised Message-ID) this replies to.
    sa.Column("reply_to_key", sa.String(512), nullable=True),
    sa.Column("record_type", sa.String(64), nullable=True),
    sa.Column("record_id", sa.String(64), nullable=True),
    sa.Column("send_at", sa.Float, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(255), nullable=True),
    # Chosen by Concord before the first attempt; never changes once set (exactly-once anchor).
    sa.Column("message_id", sa.String(998), nullable=True),
    sa.Column("provider_message_id", sa.String(512), nullable=True),
    sa.Column("provider_thread_id", sa.String(512), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
    sa.Index("ix_crm_outbox_feed", "org_id", "change_seq"),
    sa.Index("ix_crm_outbox_state", "org_id", "state"),
)
