"""The organisation level: the platform's change feed read once per organisation
and kind, a mirror of what matching needs, and a buffer mailboxes pull from.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "org_cursors",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("stream", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=True),
        sa.Column("seq_head", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "stream", name="pk_org_cursors"),
    )
    op.create_table(
        "platform_mirror",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=True),
        sa.Column("etag", sa.String(), nullable=True),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "kind", "external_id", name="pk_platform_mirror"),
    )
    op.create_index("ix_platform_mirror_org_id_kind_owner", "platform_mirror", ["org_id", "kind", "owner"])
    op.create_table(
        "mirror_keys",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "kind", "key", "external_id", name="pk_mirror_keys"),
    )
    op.create_index("ix_mirror_keys_org_id_kind_external_id", "mirror_keys", ["org_id", "kind", "external_id"])
    op.create_table(
        "platform_changes",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "kind", "seq", name="pk_platform_changes"),
    )


def downgrade() -> None:
    op.drop_table("platform_changes")
    op.drop_index("ix_mirror_keys_org_id_kind_external_id", table_name="mirror_keys")
    op.drop_table("mirror_keys")
    op.drop_index("ix_platform_mirror_org_id_kind_owner", table_name="platform_mirror")
    op.drop_table("platform_mirror")
    op.drop_table("org_cursors")
