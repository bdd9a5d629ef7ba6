"""Two-way send: each outbox item Concord sends, and the Message-ID it chose.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_sends",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("item_id", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=True),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("send_at", sa.Double(), nullable=True),
        sa.Column("record_type", sa.String(), nullable=True),
        sa.Column("record_id", sa.String(), nullable=True),
        sa.Column("provider_message_id", sa.String(), nullable=True),
        sa.Column("provider_thread_id", sa.String(), nullable=True),
        sa.Column("queued_at", sa.Double(), nullable=False),
        sa.Column("sent_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "item_id", name="pk_outbox_sends"),
        sa.UniqueConstraint("message_id", name="uq_outbox_sends_message_id"),
    )
    op.create_index("ix_outbox_sends_connection_id_state", "outbox_sends", ["connection_id", "state"])
    op.create_index("ix_outbox_sends_org_id_user_id_state", "outbox_sends", ["org_id", "user_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_outbox_sends_org_id_user_id_state", table_name="outbox_sends")
    op.drop_index("ix_outbox_sends_connection_id_state", table_name="outbox_sends")
    op.drop_table("outbox_sends")
