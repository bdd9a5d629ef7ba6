"""The cycle that made each write, so a cycle's counts survive retried attempts.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("cycle_id", sa.String, nullable=True))
    op.create_index("ix_audit_log_connection_id_cycle_id", "audit_log", ["connection_id", "cycle_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_connection_id_cycle_id", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("cycle_id")
