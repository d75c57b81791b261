"""SQLAlchemy 2 models of the checkpoint schema (kept equal to the Alembic head by a test)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# the states live in the kernel's lifecycle; re-exported for ``from backfleet.db.models import``
from backfleet.lifecycle import MigrationState, RangeState, ReembedState, alias_owning_where

__all__ = ["MigrationState", "RangeState", "ReembedState"]


class Base(DeclarativeBase):
    pass


BigId = BigInteger().with_variant(Integer(), "sqlite")


#: ``WHERE`` of the one-active-migration-per-alias index (same text on Postgres and SQLite)
ACTIVE_ALIAS_WHERE = alias_owning_where()


class Migration(Base):
    __tablename__ = "bf_migrations"
    __table_args__ = (
        Index(
            "ux_bf_migrations_active_alias",
            "alias",
            unique=True,
            postgresql_where=text(ACTIVE_ALIAS_WHERE),
            sqlite_where=text(ACTIVE_ALIAS_WHERE),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    source_generation: Mapped[str | None] = mapped_column(String(255))
    target_generation: Mapped[str] = mapped_column(String(255))
    target_model: Mapped[str] = mapped_column(String(64))
    target_identity: Mapped[str] = mapped_column(Text)
    id_type: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    total_docs: Mapped[int] = mapped_column(BigInteger, default=0)
    est_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    settings_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: share of routed queries (0–100) the shadow answers while in canary
    canary_percent: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: when the alias was swapped to the target (holdover counts from here)
    cutover_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: spending cap in USD for this migration (None: no cap)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    #: the source it was planned on (no secrets): workers with another source refuse its
    #: ranges; None for migrations planned before revision 0004 (accepted as before)
    source_identity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source_fingerprint: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Range(Base):
    __tablename__ = "bf_ranges"
    __table_args__ = (Index("ix_bf_ranges_migration_state", "migration_id", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("bf_migrations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    lo: Mapped[str | None] = mapped_column(Text)
    hi: Mapped[str | None] = mapped_column(Text)
    planned_docs: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))
    cursor: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: every lease granted on this range, and those taken over from an expired lease (the
    #: holder died or stalled): a takeover counts an attempt too
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lost_leases: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    docs_done: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    read_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeadLetter(Base):
    """A document that could not be embedded (isolated from its batch), or was skipped."""

    __tablename__ = "bf_dead_letters"
    __table_args__ = (Index("ux_bf_dead_letters_doc", "migration_id", "doc_id", unique=True),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("bf_migrations.id", ondelete="CASCADE"))
    range_id: Mapped[int | None] = mapped_column(BigInteger)
    doc_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # "rejected" | "skipped" | "truncated"
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatchupPass(Base):
    """One catch-up pass: the changes it found and applied."""

    __tablename__ = "bf_catchup_passes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(
        ForeignKey("bf_migrations.id", ondelete="CASCADE"), index=True
    )
    pass_no: Mapped[int] = mapped_column(Integer)
    changed: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[int] = mapped_column(BigInteger, default=0)
    deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    applied: Mapped[int] = mapped_column(BigInteger, default=0)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Reconcile(Base):
    """One reconcile run of a generation against the source: the cutover gate reads it."""

    __tablename__ = "bf_reconciles"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(
        ForeignKey("bf_migrations.id", ondelete="CASCADE"), index=True
    )
    generation: Mapped[str] = mapped_column(String(255))
    clean: Mapped[bool] = mapped_column(Boolean)
    source_docs: Mapped[int] = mapped_column(BigInteger, default=0)
    generation_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    missing: Mapped[int] = mapped_column(BigInteger, default=0)
    extra: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicated: Mapped[int] = mapped_column(BigInteger, default=0)
    stale: Mapped[int] = mapped_column(BigInteger, default=0)
    wrong_model: Mapped[int] = mapped_column(BigInteger, default=0)
    corrupted: Mapped[int] = mapped_column(BigInteger, default=0)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Evaluation(Base):
    """One golden-set evaluation of live against shadow: the cutover gate reads its verdict."""

    __tablename__ = "bf_evaluations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(
        ForeignKey("bf_migrations.id", ondelete="CASCADE"), index=True
    )
    golden: Mapped[str] = mapped_column(Text)
    queries: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(8))  # "GO" | "NO-GO"
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Event(Base):
    """Audit of every state transition: who, when, why."""

    __tablename__ = "bf_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(
        ForeignKey("bf_migrations.id", ondelete="CASCADE"), index=True
    )
    range_id: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReembedRequest(Base):
    """One request to re-embed named documents (dead-letter retry, repair): Postgres work,
    re-sent by the reaper until a worker marks it done."""

    __tablename__ = "bf_reembed_requests"
    __table_args__ = (Index("ix_bf_reembed_requests_state", "state", "dispatched_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(
        ForeignKey("bf_migrations.id", ondelete="CASCADE"), index=True
    )
    doc_ids: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    #: tasks sent for it (the first one included)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
