"""Reconciliation reports: what an independent comparison of both ends found.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_reports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reconcile_reports"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_reconcile_reports_org_id_finished_at", "reconcile_reports", ["org_id", "finished_at"])
    op.create_index("ix_reconcile_reports_connection_id_finished_at", "reconcile_reports",
                    ["connection_id", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_reconcile_reports_connection_id_finished_at", table_name="reconcile_reports")
    op.drop_index("ix_reconcile_reports_org_id_finished_at", table_name="reconcile_reports")
    op.drop_table("reconcile_reports")
