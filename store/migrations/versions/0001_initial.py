"""Initial store.

Organisations, connections, cursors, items, links, reviews, actions, audit log,
pending OAuth flows and the token vault. Written out in full rather than built
from `store.schema` so that later edits to the schema module can never change
what this revision did to an existing database.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_organisations"),
    )
    op.create_table(
        "connections",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("account_ref", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organisations.id"], name="fk_connections_org_id_organisations"),
        sa.PrimaryKeyConstraint("id", name="pk_connections"),
    )
    op.create_index("ix_connections_org_id", "connections", ["org_id"])
    op.create_index("ix_connections_provider_account_ref", "connections", ["provider", "account_ref"])

    op.create_table(
        "cursors",
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("stream", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("full_sync_count", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("connection_id", "stream", name="pk_cursors"),
    )

    op.create_table(
        "items",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("side", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=True),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("batch_id", sa.String(), nullable=True),
        sa.Column("review_id", sa.BigInteger(), nullable=True),
        sa.Column("seq", sa.Integer(), server_default="1", nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.UniqueConstraint("connection_id", "side", "external_id", name="uq_items_connection_id_side_external_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_items_connection_id_status", "items", ["connection_id", "status"])
    op.create_index("ix_items_connection_id_batch_id", "items", ["connection_id", "batch_id"])

    op.create_table(
        "links",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("mailbox_id", sa.String(), nullable=False),
        sa.Column("platform_id", sa.String(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("mailbox_hash", sa.String(), nullable=False),
        sa.Column("platform_hash", sa.String(), nullable=False),
        sa.Column("mailbox_etag", sa.String(), nullable=True),
        sa.Column("platform_etag", sa.String(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_links"),
        sa.UniqueConstraint("connection_id", "mailbox_id", name="uq_links_connection_id_mailbox_id"),
        sa.UniqueConstraint("connection_id", "platform_id", name="uq_links_connection_id_platform_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_links_org_id", "links", ["org_id"])

    op.create_table(
        "link_keys",
        sa.Column("link_id", BigId, nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["link_id"], ["links.id"], name="fk_link_keys_link_id_links", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("link_id", "key", name="pk_link_keys"),
    )
    op.create_index("ix_link_keys_key", "link_keys", ["key"])

    op.create_table(
        "reviews",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("link_id", sa.BigInteger(), nullable=True),
        sa.Column("mailbox_id", sa.String(), nullable=True),
        sa.Column("platform_id", sa.String(), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("resolution", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("resolved_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_reviews_connection_id_status", "reviews", ["connection_id", "status"])

    op.create_table(
        "actions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("cycle_id", sa.String(), nullable=False),
        sa.Column("item_mailbox_id", sa.String(), nullable=True),
        sa.Column("item_platform_id", sa.String(), nullable=True),
        sa.Column("link_id", sa.BigInteger(), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_actions"),
        sa.UniqueConstraint("idempotency_key", name="uq_actions_idempotency_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_actions_connection_id_status", "actions", ["connection_id", "status"])
    op.create_index("ix_actions_connection_id_cycle_id", "actions", ["connection_id", "cycle_id"])

    op.create_table(
        "audit_log",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=True),
        sa.Column("side", sa.String(), nullable=True),
        sa.Column("op", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=True),
        sa.Column("action_id", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_org_id_at", "audit_log", ["org_id", "at"])
    op.create_index("ix_audit_log_connection_id_at", "audit_log", ["connection_id", "at"])

    op.create_table(
        "pending_oauth",
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("code_verifier", sa.String(), nullable=False),
        sa.Column("redirect_uri", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("state", name="pk_pending_oauth"),
    )
    op.create_index("ix_pending_oauth_expires_at", "pending_oauth", ["expires_at"])

    # Owned by store/vault.py (its own MetaData, no naming convention): mirrored
    # column for column, so one upgrade makes the whole store.
    op.create_table(
        "vault_tokens",
        sa.Column("connection_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('access', 'refresh')", name="ck_vault_tokens_kind"),
        sa.PrimaryKeyConstraint("connection_id", "kind"),
    )
    op.create_index("ix_vault_tokens_key_id", "vault_tokens", ["key_id"])


def downgrade() -> None:
    for table in (
        "vault_tokens",
        "pending_oauth",
        "audit_log",
        "actions",
        "reviews",
        "link_keys",
        "links",
        "items",
        "cursors",
        "connections",
        "organisations",
    ):
        op.drop_table(table)
