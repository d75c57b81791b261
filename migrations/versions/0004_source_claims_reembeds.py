"""source identity of a migration, one active migration per alias, claims counted,
re-embed requests

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: frozen here: the states of revision 0004 in which a migration owns its alias
ACTIVE = ("planned", "backfilling", "catching_up", "verified", "canary", "paused", "rolled_back")
ACTIVE_WHERE = "state IN (" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"


def _refuse_duplicate_active() -> None:
    """The index cannot be built while an alias has two active migrations (the race this
    revision closes): name them instead of failing with a bare IntegrityError."""
    rows = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT alias, id, state FROM bf_migrations WHERE {ACTIVE_WHERE} "
                "AND alias IN (SELECT alias FROM bf_migrations WHERE "
                f"{ACTIVE_WHERE} GROUP BY alias HAVING count(*) > 1) ORDER BY alias, id"
            )
        )
        .all()
    )
    if not rows:
        return
    found = "; ".join(f"alias {a!r}: migration {i} ({s})" for a, i, s in rows)
    raise RuntimeError(
        f"cannot add the one-active-migration-per-alias index: {found}. Keep one per alias "
        "and cancel the others with the previous backfleet version (`backfleet cancel "
        "--migration N`) or `UPDATE bf_migrations SET state = 'cancelled' WHERE id = N`, "
        "then run `backfleet db upgrade` again"
    )


def upgrade() -> None:
    _refuse_duplicate_active()
    with op.batch_alter_table("bf_migrations") as batch:
        batch.add_column(sa.Column("source_identity", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("source_fingerprint", sa.String(16), nullable=True))
    op.create_index(
        "ux_bf_migrations_active_alias",
        "bf_migrations",
        ["alias"],
        unique=True,
        postgresql_where=sa.text(ACTIVE_WHERE),
        sqlite_where=sa.text(ACTIVE_WHERE),
    )
    with op.batch_alter_table("bf_ranges") as batch:
        batch.add_column(sa.Column("claims", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("lost_leases", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "bf_reembed_requests",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "migration_id",
            BigId,
            sa.ForeignKey("bf_migrations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("doc_ids", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("dispatched_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_bf_reembed_requests_migration_id", "bf_reembed_requests", ["migration_id"])
    op.create_index(
        "ix_bf_reembed_requests_state", "bf_reembed_requests", ["state", "dispatched_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_bf_reembed_requests_state", table_name="bf_reembed_requests")
    op.drop_index("ix_bf_reembed_requests_migration_id", table_name="bf_reembed_requests")
    op.drop_table("bf_reembed_requests")
    with op.batch_alter_table("bf_ranges") as batch:
        batch.drop_column("lost_leases")
        batch.drop_column("claims")
    op.drop_index("ux_bf_migrations_active_alias", table_name="bf_migrations")
    with op.batch_alter_table("bf_migrations") as batch:
        batch.drop_column("source_fingerprint")
        batch.drop_column("source_identity")
