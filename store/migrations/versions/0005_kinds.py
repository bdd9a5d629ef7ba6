"""Every kind of data (contacts, later mail and calendar) in the same tables.

Items, links, actions and reviews carry the kind they belong to; every row that
exists already is a contact. The uniqueness of an item and of a link is per kind:
a Graph message and a Graph contact may share an id.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_KIND = dict(nullable=False, server_default="contacts")


def upgrade() -> None:
    with op.batch_alter_table("items") as b:
        b.add_column(sa.Column("kind", sa.String(), **_KIND))
        b.drop_constraint("uq_items_connection_id_side_external_id", type_="unique")
        b.create_unique_constraint("uq_items_connection_id_kind_side_external_id",
                                   ["connection_id", "kind", "side", "external_id"])
        b.drop_index("ix_items_connection_id_status")
        b.create_index("ix_items_connection_id_kind_status", ["connection_id", "kind", "status"])
    with op.batch_alter_table("links") as b:
        b.add_column(sa.Column("kind", sa.String(), **_KIND))
        b.drop_constraint("uq_links_connection_id_mailbox_id", type_="unique")
        b.drop_constraint("uq_links_connection_id_platform_id", type_="unique")
        b.create_unique_constraint("uq_links_connection_id_kind_mailbox_id", ["connection_id", "kind", "mailbox_id"])
        b.create_unique_constraint("uq_links_connection_id_kind_platform_id", ["connection_id", "kind", "platform_id"])
    with op.batch_alter_table("actions") as b:
        b.add_column(sa.Column("kind", sa.String(), **_KIND))
        b.drop_index("ix_actions_connection_id_status")
        b.create_index("ix_actions_connection_id_kind_status", ["connection_id", "kind", "status"])
    with op.batch_alter_table("reviews") as b:
        b.add_column(sa.Column("item_kind", sa.String(), **_KIND))
    with op.batch_alter_table("audit_log") as b:
        b.add_column(sa.Column("kind", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as b:
        b.drop_column("kind")
    with op.batch_alter_table("reviews") as b:
        b.drop_column("item_kind")
    with op.batch_alter_table("actions") as b:
        b.drop_index("ix_actions_connection_id_kind_status")
        b.create_index("ix_actions_connection_id_status", ["connection_id", "status"])
        b.drop_column("kind")
    with op.batch_alter_table("links") as b:
        b.drop_constraint("uq_links_connection_id_kind_mailbox_id", type_="unique")
        b.drop_constraint("uq_links_connection_id_kind_platform_id", type_="unique")
        b.create_unique_constraint("uq_links_connection_id_mailbox_id", ["connection_id", "mailbox_id"])
        b.create_unique_constraint("uq_links_connection_id_platform_id", ["connection_id", "platform_id"])
        b.drop_column("kind")
    with op.batch_alter_table("items") as b:
        b.drop_index("ix_items_connection_id_kind_status")
        b.create_index("ix_items_connection_id_status", ["connection_id", "status"])
        b.drop_constraint("uq_items_connection_id_kind_side_external_id", type_="unique")
        b.create_unique_constraint("uq_items_connection_id_side_external_id", ["connection_id", "side", "external_id"])
        b.drop_column("kind")
