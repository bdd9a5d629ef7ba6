"""Push subscriptions the webhook server authenticates notifications against.

Written out by hand and frozen, like 0001: later edits to `store.schema` must not
change what this revision did to an existing database.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("resource", sa.String(), nullable=False),
        sa.Column("client_state_hash", sa.String(), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subscriptions"),
        sa.UniqueConstraint("provider", "external_id", name="uq_subscriptions_provider_external_id"),
    )
    op.create_index("ix_subscriptions_connection_id", "subscriptions", ["connection_id"])
    op.create_index("ix_subscriptions_status_expires_at", "subscriptions", ["status", "expires_at"])


def downgrade() -> None:
    op.drop_table("subscriptions")
