"""One connection per (organisation, provider, account): two simultaneous first
connects of the same mailbox must end as one connection, not two syncing twice.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("uq_connections_org_id_provider_account_ref", "connections",
                    ["org_id", "provider", "account_ref"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_connections_org_id_provider_account_ref", table_name="connections")
