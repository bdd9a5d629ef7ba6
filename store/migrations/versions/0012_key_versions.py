"""Blocking keys' version per organisation and kind: stored keys are re-keyed when the
code's key formats or the organisation's phone region change.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No row yet for any organisation: the keys' version is unknown, so the first read
    # of each organisation and kind re-keys what an earlier release stored.
    op.create_table(
        "key_versions",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("stamp", sa.String(), nullable=True),
        sa.Column("target", sa.String(), nullable=True),
        sa.Column("links_after", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("mirror_after", sa.String(), nullable=False, server_default=""),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "kind", name="pk_key_versions"),
    )


def downgrade() -> None:
    op.drop_table("key_versions")
