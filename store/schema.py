"""Concord's own tables: the durable side of the sync (the claim checks workflows point at).

Times are float epoch seconds everywhere so that both backends, the workflows and the
pure core compare them without timezone handling. JSON is plain `sa.JSON` (PostgreSQL
`json`, not `jsonb`): `jsonb` refuses a `\\u0000` escape, and a contact note that a
provider hands us with a NUL in it must still be stored rather than lost.

Ids that grow with traffic are BIGINT on PostgreSQL; on SQLite they must stay
`INTEGER PRIMARY KEY` to be rowid aliases, and AUTOINCREMENT keeps a deleted link's
id from being reused by the next link (a stale action must never point at a new link).

The migration in `store/migrations/versions` is written out by hand and frozen; a
test compares it with this module, so change both together.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)

# Row ids: BIGINT where it matters, rowid alias on SQLite.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Epoch = sa.Double

ITEM_STATUSES = ("pending", "applied", "skipped", "conflict", "duplicate", "quarantined", "deferred")
CONNECTION_STATUSES = ("active", "paused", "needs_reauth", "disconnected")
PROVIDERS = ("google", "microsoft")
REVIEW_KINDS = ("conflict", "duplicate", "association")
REVIEW_STATUSES = ("open", "resolved", "applied", "superseded")
ACTION_STATUSES = ("planned", "platform_done", "mailbox_started", "done", "rejected", "failed", "deferred")
AUDIT_OPS = ("create", "update", "delete", "link", "unlink")

organisations = sa.Table(
    "organisations",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
)

connections = sa.Table(
    "connections",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("org_id", sa.String, sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("provider", sa.String, nullable=False),
    sa.Column("account_ref", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Index("ix_connections_org_id", "org_id"),
    sa.Index("ix_connections_provider_account_ref", "provider", "account_ref"),
    sa.Index("uq_connections_org_id_provider_account_ref", "org_id", "provider", "account_ref", unique=True),
)

cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("connection_id", sa.String, primary_key=True),
    sa.Column("stream", sa.String, primary_key=True),
    sa.Column("value", sa.String, nullable=True),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Column("full_sync_count", sa.Integer, nullable=False, server_default="0"),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("connection_id", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False, server_default="contacts"),
    sa.Column("side", sa.String, nullable=False),
    sa.Column("external_id", sa.String, nullable=False),
    sa.Column("record", sa.JSON, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("rule", sa.String, nullable=True),
    sa.Column("error_code", sa.String, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("batch_id", sa.String, nullable=True),
    sa.Column("review_id", sa.BigInteger, nullable=True),
    sa.Column("seq", sa.Integer, nullable=False, server_default="1"),
    sa.Column("received_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.UniqueConstraint("connection_id", "kind", "side", "external_id",
                        name="uq_items_connection_id_kind_side_external_id"),
    sa.Index("ix_items_connection_id_kind_status", "connection_id", "kind", "status"),
    sa.Index("ix_items_connection_id_batch_id", "connection_id", "batch_id"),
    sqlite_autoincrement=True,
)

links = sa.Table(
    "links",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String, nullable=False),
    sa.Column("connection_id", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False, server_default="contacts"),
    sa.Column("mailbox_id", sa.String, nullable=False),
    sa.Column("platform_id", sa.String, nullable=False),
    sa.Column("snapshot", sa.JSON, nullable=False),
    sa.Column("mailbox_hash", sa.String, nullable=False),
    sa.Column("platform_hash", sa.String, nullable=False),
    sa.Column("mailbox_etag", sa.String, nullable=True),
    sa.Column("platform_etag", sa.String, nullable=True),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.UniqueConstraint("connection_id", "kind", "mailbox_id", name="uq_links_connection_id_kind_mailbox_id"),
    sa.UniqueConstraint("connection_id", "kind", "platform_id", name="uq_links_connection_id_kind_platform_id"),
    sa.Index("ix_links_org_id", "org_id"),
    sqlite_autoincrement=True,
)

link_keys = sa.Table(
    "link_keys",
    metadata,
    sa.Column(
        "link_id",
        BigId,
        sa.ForeignKey("links.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", sa.String, primary_key=True),
    sa.Index("ix_link_keys_key", "key"),
)

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("connection_id", sa.String, nullable=False),
    # `kind` is the question (conflict | duplicate); `item_kind` the kind of data asked about
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("item_kind", sa.String, nullable=False, server_default="contacts"),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("link_id", sa.BigInteger, nullable=True),
    sa.Column("mailbox_id", sa.String, nullable=True),
    sa.Column("platform_id", sa.String, nullable=True),
    sa.Column("fields", sa.JSON, nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("resolution", sa.JSON, nullable=True),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("resolved_at", Epoch, nullable=True),
    sa.Index("ix_reviews_connection_id_status", "connection_id", "status"),
    sqlite_autoincrement=True,
)

actions = sa.Table(
    "actions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("connection_id", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False, server_default="contacts"),
    sa.Column("cycle_id", sa.String, nullable=False),
    sa.Column("item_mailbox_id", sa.String, nullable=True),
    sa.Column("item_platform_id", sa.String, nullable=True),
    sa.Column("link_id", sa.BigInteger, nullable=True),
    sa.Column("decision", sa.JSON, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error_code", sa.String, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("idempotency_key", sa.String, nullable=False),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.UniqueConstraint("idempotency_key", name="uq_actions_idempotency_key"),
    sa.Index("ix_actions_connection_id_kind_status", "connection_id", "kind", "status"),
    sa.Index("ix_actions_connection_id_cycle_id", "connection_id", "cycle_id"),
    sqlite_autoincrement=True,
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String, nullable=False),
    sa.Column("connection_id", sa.String, nullable=True),
    sa.Column("side", sa.String, nullable=True),
    sa.Column("op", sa.String, nullable=False),
    sa.Column("external_id", sa.String, nullable=True),
    sa.Column("action_id", sa.BigInteger, nullable=True),
    sa.Column("at", Epoch, nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    # The cycle whose write activity made this write (not the one that planned it): a
    # cycle's counts are summed from here, so every attempt's work counts exactly once.
    sa.Column("cycle_id", sa.String, nullable=True),
    sa.Column("kind", sa.String, nullable=True),
    sa.Index("ix_audit_log_org_id_at", "org_id", "at"),
    sa.Index("ix_audit_log_connection_id_at", "connection_id", "at"),
    sa.Index("ix_audit_log_connection_id_cycle_id", "connection_id", "cycle_id"),
    sqlite_autoincrement=True,
)

pending_oauth = sa.Table(
    "pending_oauth",
    metadata,
    sa.Column("state", sa.String, primary_key=True),
    sa.Column("provider", sa.String, nullable=False),
    sa.Column("org_id", sa.String, nullable=False),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("code_verifier", sa.String, nullable=False),
    sa.Column("redirect_uri", sa.String, nullable=False),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("expires_at", Epoch, nullable=False),
    sa.Index("ix_pending_oauth_expires_at", "expires_at"),
)

# Push subscriptions (Graph subscriptions, Calendar channels, Gmail watches, platform
# hooks): what the webhook server authenticates a notification against. Owned by
# store/subscriptions.py. The per-subscription secret is kept only as a sha256.
SUBSCRIPTION_PROVIDERS = ("microsoft", "google_gmail", "google_calendar", "platform")
SUBSCRIPTION_STATUSES = ("active", "removed", "needs_renewal")

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("connection_id", sa.String, nullable=False),
    sa.Column("provider", sa.String, nullable=False),
    sa.Column("external_id", sa.String, nullable=False),
    sa.Column("resource", sa.String, nullable=False),
    sa.Column("client_state_hash", sa.String, nullable=True),
    sa.Column("expires_at", Epoch, nullable=True),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.UniqueConstraint("provider", "external_id", name="uq_subscriptions_provider_external_id"),
    sa.Index("ix_subscriptions_connection_id", "connection_id"),
    sa.Index("ix_subscriptions_status_expires_at", "status", "expires_at"),
)

# --- the organisation level: the platform read once per organisation and kind -------
#
# `org_cursors` holds where the organisation's reader is in the platform's change feed
# and the last change number it handed out (`seq_head`). `platform_mirror` keeps, per
# platform record, what matching and echo detection need: its hash, etag, owner and
# whether it is deleted (not the record). `mirror_keys` are its blocking keys, for
# candidate search. `platform_changes` is the delivery buffer: each change read, with
# its content, numbered; every mailbox pulls what concerns it past its own number and
# rows every mailbox has passed are pruned.

org_cursors = sa.Table(
    "org_cursors",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("stream", sa.String, primary_key=True),
    sa.Column("value", sa.String, nullable=True),
    sa.Column("seq_head", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", Epoch, nullable=False),
)

platform_mirror = sa.Table(
    "platform_mirror",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, primary_key=True),
    sa.Column("external_id", sa.String, primary_key=True),
    sa.Column("hash", sa.String, nullable=True),
    sa.Column("etag", sa.String, nullable=True),
    sa.Column("owner", sa.String, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Index("ix_platform_mirror_org_id_kind_owner", "org_id", "kind", "owner"),
)

mirror_keys = sa.Table(
    "mirror_keys",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, primary_key=True),
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("external_id", sa.String, primary_key=True),
    sa.Index("ix_mirror_keys_org_id_kind_external_id", "org_id", "kind", "external_id"),
)

platform_changes = sa.Table(
    "platform_changes",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("external_id", sa.String, nullable=False),
    sa.Column("record", sa.JSON, nullable=False),
    sa.Column("owner", sa.String, nullable=True),
    sa.Column("at", Epoch, nullable=False),
)

# --- the mail kind: a message logged once per organisation --------------------------
#
# `mail_claims` holds one row per message the organisation logs, keyed by its
# cross-mailbox identity (the normalised Message-ID). The first mailbox to insert the
# row logs the message; the primary key, not a read-then-write, decides the race when
# several mailboxes see one message at once. `mail_sightings` says, per mailbox copy,
# what became of it (logged, skipped by a named rule, removed), so a relisting after a
# provider forgot the cursor changes nothing twice and a relabel is seen as such.

mail_claims = sa.Table(
    "mail_claims",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("message_key", sa.String, primary_key=True),
    sa.Column("thread_key", sa.String, nullable=False),
    sa.Column("weak_thread", sa.Boolean, nullable=False),
    #: subject, participants and time bucket: how a reply without references finds this thread
    sa.Column("weak_key", sa.String, nullable=True),
    sa.Column("claimed_by", sa.String, nullable=False),
    sa.Column("activity_id", sa.String, nullable=True),
    sa.Column("visibility", sa.String, nullable=True),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Index("ix_mail_claims_org_id_thread_key", "org_id", "thread_key"),
    sa.Index("ix_mail_claims_org_id_weak_key", "org_id", "weak_key"),
)

mail_sightings = sa.Table(
    "mail_sightings",
    metadata,
    sa.Column("connection_id", sa.String, primary_key=True),
    sa.Column("mailbox_id", sa.String, primary_key=True),
    sa.Column("org_id", sa.String, nullable=False),
    sa.Column("message_key", sa.String, nullable=False),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("rule", sa.String, nullable=True),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Index("ix_mail_sightings_org_id_message_key", "org_id", "message_key"),
)

# --- two-way send: each outbox item Concord sends, and the Message-ID it chose ---------
#
# The Message-ID is written here before the first attempt; `attempts` is raised before
# each call to the provider, so an attempt that finds it above zero looks in the
# mailbox's Sent items for that Message-ID before sending (exactly once across crashes).
# `lease_until` keeps a second attempt from starting while one may still be sending.
# The message itself (recipients, subject, body) stays on the platform: read at send time.

outbox_sends = sa.Table(
    "outbox_sends",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("item_id", sa.String, primary_key=True),
    sa.Column("connection_id", sa.String, nullable=True),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("message_id", sa.String, nullable=True),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("reason", sa.String, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_until", Epoch, nullable=True),
    sa.Column("send_at", Epoch, nullable=True),
    sa.Column("record_type", sa.String, nullable=True),
    sa.Column("record_id", sa.String, nullable=True),
    sa.Column("provider_message_id", sa.String, nullable=True),
    sa.Column("provider_thread_id", sa.String, nullable=True),
    sa.Column("queued_at", Epoch, nullable=False),
    sa.Column("sent_at", Epoch, nullable=True),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.UniqueConstraint("message_id", name="uq_outbox_sends_message_id"),
    sa.Index("ix_outbox_sends_connection_id_state", "connection_id", "state"),
    sa.Index("ix_outbox_sends_org_id_user_id_state", "org_id", "user_id", "state"),
)

# --- reconciliation: what an independent comparison of both ends found ------------------
#
# One row per (connection, kind) reconciliation run. `counts` is what the workflow sees
# (numbers only); `findings` holds the details a person acts on, values included (field
# values of differing pairs), which never cross workflow history.

reconcile_reports = sa.Table(
    "reconcile_reports",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String, nullable=False),
    sa.Column("connection_id", sa.String, nullable=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("started_at", Epoch, nullable=False),
    sa.Column("finished_at", Epoch, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Column("findings", sa.JSON, nullable=False),
    sa.Index("ix_reconcile_reports_org_id_finished_at", "org_id", "finished_at"),
    sa.Index("ix_reconcile_reports_connection_id_finished_at", "connection_id", "finished_at"),
    sqlite_autoincrement=True,
)

# --- GDPR erase: who was erased, as a keyed hash of the address -----------------------
#
# A mailbox contact left in place (erase keeps the user's mailbox unless asked) must not
# bring the person back to the platform on a later cycle; planning skips records holding
# an erased address. Only the HMAC (keyed by the organisation) is kept.

erased_addresses = sa.Table(
    "erased_addresses",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("address_hash", sa.String, primary_key=True),
    sa.Column("at", Epoch, nullable=False),
)


# -- calendar -----------------------------------------------------------------
# One row per meeting instance of an organisation (UID, RECURRENCE-ID; "" for a master
# or single event): whoever inserts it first creates the platform record, the others
# link to it (store/calendar.py).

calendar_claims = sa.Table(
    "calendar_claims",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("uid", sa.String, primary_key=True),
    sa.Column("recurrence_id", sa.String, primary_key=True),
    sa.Column("connection_id", sa.String, nullable=False),
    #: the idempotency key of the write that claimed it (its retries are the claimer)
    sa.Column("claim_key", sa.String, nullable=False),
    sa.Column("platform_id", sa.String, nullable=True),
    sa.Column("claimed_at", Epoch, nullable=False),
)


# -- blocking keys' version ------------------------------------------------------
# Link keys and mirror keys are computed by the code that wrote them; candidate search
# probes them with keys computed by today's code. `stamp` says which key formats (the
# kind's `keys_version`) and key-affecting settings (the phone region) the stored keys
# of an organisation's kind follow; while a re-key to `target` is under way, `links_after`
# and `mirror_after` say how far it got, so a killed worker resumes (store/rekey.py).

key_versions = sa.Table(
    "key_versions",
    metadata,
    sa.Column("org_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, primary_key=True),
    #: what every stored key of this organisation and kind follows (None: not known)
    sa.Column("stamp", sa.String, nullable=True),
    #: the stamp a re-key in progress brings the keys to (None: none under way)
    sa.Column("target", sa.String, nullable=True),
    #: the last link id re-keyed to `target`
    sa.Column("links_after", sa.BigInteger, nullable=False, server_default="0"),
    #: the last mirrored external id re-keyed to `target` ("": none yet)
    sa.Column("mirror_after", sa.String, nullable=False, server_default=""),
    sa.Column("updated_at", Epoch, nullable=False),
)
