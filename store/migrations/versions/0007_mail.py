"""The mail kind: a message claimed once per organisation, and each mailbox's copy.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_claims",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("message_key", sa.String(), nullable=False),
        sa.Column("thread_key", sa.String(), nullable=False),
        sa.Column("weak_thread", sa.Boolean(), nullable=False),
        sa.Column("weak_key", sa.String(), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=False),
        sa.Column("activity_id", sa.String(), nullable=True),
        sa.Column("visibility", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "message_key", name="pk_mail_claims"),
    )
    op.create_index("ix_mail_claims_org_id_thread_key", "mail_claims", ["org_id", "thread_key"])
    op.create_index("ix_mail_claims_org_id_weak_key", "mail_claims", ["org_id", "weak_key"])
    op.create_table(
        "mail_sightings",
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("mailbox_id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("message_key", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("connection_id", "mailbox_id", name="pk_mail_sightings"),
    )
    op.create_index("ix_mail_sightings_org_id_message_key", "mail_sightings", ["org_id", "message_key"])


def downgrade() -> None:
    op.drop_index("ix_mail_sightings_org_id_message_key", table_name="mail_sightings")
    op.drop_table("mail_sightings")
    op.drop_index("ix_mail_claims_org_id_weak_key", table_name="mail_claims")
    op.drop_index("ix_mail_claims_org_id_thread_key", table_name="mail_claims")
    op.drop_table("mail_claims")
