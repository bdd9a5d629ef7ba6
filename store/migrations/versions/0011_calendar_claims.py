"""Calendar: a meeting is claimed once per organisation by (UID, RECURRENCE-ID), so
two mailboxes holding the same meeting never create it twice on the platform.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calendar_claims",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("uid", sa.String(), nullable=False),
        sa.Column("recurrence_id", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=False),
        sa.Column("claim_key", sa.String(), nullable=False),
        sa.Column("platform_id", sa.String(), nullable=True),
        sa.Column("claimed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "uid", "recurrence_id", name="pk_calendar_claims"),
    )


def downgrade() -> None:
    op.drop_table("calendar_claims")
