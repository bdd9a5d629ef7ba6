"""GDPR erase: erased addresses remembered as keyed hashes, so a kept mailbox contact
does not bring the person back to the platform.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_addresses",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("address_hash", sa.String(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "address_hash", name="pk_erased_addresses"),
    )


def downgrade() -> None:
    op.drop_table("erased_addresses")
