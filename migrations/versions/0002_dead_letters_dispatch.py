"""dead letters; when each range's task was last sent

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("bf_ranges") as batch:
        batch.add_column(sa.Column("dispatched_at", TS, nullable=True))
    op.create_table(
        "bf_dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "migration_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("bf_migrations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("range_id", sa.BigInteger(), nullable=True),
        sa.Column("doc_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index(
        "ux_bf_dead_letters_doc", "bf_dead_letters", ["migration_id", "doc_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_bf_dead_letters_doc", table_name="bf_dead_letters")
    op.drop_table("bf_dead_letters")
    with op.batch_alter_table("bf_ranges") as batch:
        batch.drop_column("dispatched_at")
