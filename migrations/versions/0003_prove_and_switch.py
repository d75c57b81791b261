"""catch-up passes, reconciles, evaluations; canary share, cutover time, budget

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _migration_fk() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "migration_id", BigId, sa.ForeignKey("bf_migrations.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    with op.batch_alter_table("bf_migrations") as batch:
        batch.add_column(
            sa.Column("canary_percent", sa.Float(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("cutover_at", TS, nullable=True))
        batch.add_column(sa.Column("budget_usd", sa.Float(), nullable=True))
    op.create_table(
        "bf_catchup_passes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        _migration_fk(),
        sa.Column("pass_no", sa.Integer(), nullable=False),
        sa.Column("changed", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_bf_catchup_passes_migration_id", "bf_catchup_passes", ["migration_id"])
    op.create_table(
        "bf_reconciles",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        _migration_fk(),
        sa.Column("generation", sa.String(255), nullable=False),
        sa.Column("clean", sa.Boolean(), nullable=False),
        *[
            sa.Column(c, sa.BigInteger(), nullable=False)
            for c in (
                "source_docs",
                "generation_rows",
                "missing",
                "extra",
                "duplicated",
                "stale",
                "wrong_model",
                "corrupted",
            )
        ],
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
    )
    op.create_index("ix_bf_reconciles_migration_id", "bf_reconciles", ["migration_id"])
    op.create_table(
        "bf_evaluations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        _migration_fk(),
        sa.Column("golden", sa.Text(), nullable=False),
        sa.Column("queries", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_bf_evaluations_migration_id", "bf_evaluations", ["migration_id"])


def downgrade() -> None:
    op.drop_index("ix_bf_evaluations_migration_id", table_name="bf_evaluations")
    op.drop_table("bf_evaluations")
    op.drop_index("ix_bf_reconciles_migration_id", table_name="bf_reconciles")
    op.drop_table("bf_reconciles")
    op.drop_index("ix_bf_catchup_passes_migration_id", table_name="bf_catchup_passes")
    op.drop_table("bf_catchup_passes")
    with op.batch_alter_table("bf_migrations") as batch:
        batch.drop_column("budget_usd")
        batch.drop_column("cutover_at")
        batch.drop_column("canary_percent")
