"""checkpoint schema: migrations, ranges, events

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bf_migrations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("source_generation", sa.String(255), nullable=True),
        sa.Column("target_generation", sa.String(255), nullable=False),
        sa.Column("target_model", sa.String(64), nullable=False),
        sa.Column("target_identity", sa.Text(), nullable=False),
        sa.Column("id_type", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("total_docs", sa.BigInteger(), nullable=False),
        sa.Column("est_tokens", sa.BigInteger(), nullable=False),
        sa.Column("settings_snapshot", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_bf_migrations_alias", "bf_migrations", ["alias"])
    op.create_table(
        "bf_ranges",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "migration_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("bf_migrations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("lo", sa.Text(), nullable=True),
        sa.Column("hi", sa.Text(), nullable=True),
        sa.Column("planned_docs", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("docs_done", sa.BigInteger(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("read_started_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_bf_ranges_migration_state", "bf_ranges", ["migration_id", "state"])
    op.create_table(
        "bf_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "migration_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("bf_migrations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("range_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_bf_events_migration_id", "bf_events", ["migration_id"])


def downgrade() -> None:
    op.drop_table("bf_events")
    op.drop_index("ix_bf_ranges_migration_state", table_name="bf_ranges")
    op.drop_table("bf_ranges")
    op.drop_index("ix_bf_migrations_alias", table_name="bf_migrations")
    op.drop_table("bf_migrations")
