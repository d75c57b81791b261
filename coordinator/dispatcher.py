"""Start a migration and send tasks for its ranges (Postgres decides what needs a task)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update

from backfleet.db.checkpoint import utcnow
from backfleet.db.models import Migration, MigrationState, Range, RangeState
from backfleet.db.session import Database
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import MigrationStateError, NotFound
from backfleet.lifecycle import STARTABLE
from backfleet.logs import get_logger
from backfleet.vectorstore import VectorStore
from coordinator.lifecycle import transition
from workers.tasks import enqueue_range

log = get_logger("backfleet.dispatcher")


def load_migration(db: Database, migration_id: int | None, alias: str | None = None) -> Migration:
    """A migration by id, or the newest one of ``alias``."""
    with db.session() as session:
        if migration_id is not None:
            migration = session.get(Migration, migration_id)
            if migration is None:
                raise NotFound(
                    f"migration {migration_id} does not exist",
                    hint="`backfleet status` lists the migrations",
                )
        else:
            migration = (
                session.execute(
                    select(Migration).where(Migration.alias == alias).order_by(Migration.id.desc())
                )
                .scalars()
                .first()
            )
            if migration is None:
                raise NotFound(
                    f"no migration for alias {alias!r}", hint="create one with `backfleet plan`"
                )
        session.expunge(migration)
        return migration


def start_migration(
    db: Database, store: VectorStore, app: Any, migration_id: int, *, actor: str, index_type: str
) -> int:
    """Create the shadow generation, go ``backfilling`` and send a task per open range.

    Idempotent: starting a running migration re-sends tasks for its pending ranges.
    """
    migration = load_migration(db, migration_id)
    if migration.state not in STARTABLE:
        raise MigrationStateError(
            f"migration {migration_id} is {migration.state}; only a planned or backfilling "
            "migration can be started",
            hint="`backfleet resume` continues a paused one",
        )
    identity = ModelIdentity.from_json(migration.target_identity)
    store.create_generation(
        migration.target_generation, migration.alias, identity, migration.id_type, index_type
    )
    if migration.state == MigrationState.PLANNED:
        with db.session() as session:
            row = session.get(Migration, migration_id, with_for_update=True)
            assert row is not None
            if row.state == MigrationState.PLANNED:
                transition(session, row, MigrationState.BACKFILLING, actor=actor, reason="start")
    return dispatch(db, app, migration_id)


def dispatch(
    db: Database,
    app: Any,
    migration_id: int,
    *,
    pending_sent_before: datetime | None = None,
    include_pending: bool = True,
) -> int:
    """Send a task for every pending range and every running range whose lease expired.

    With ``pending_sent_before`` (the reaper), a pending range is re-sent only if its last
    task went out before then: a message may be lost, but a queued one is not duplicated.
    """
    now = utcnow()
    with db.session() as session:
        expired = (Range.state == RangeState.RUNNING) & (Range.lease_expires_at < now)
        pending = (Range.state == RangeState.PENDING) & include_pending
        if pending_sent_before is not None:
            pending = pending & (
                Range.dispatched_at.is_(None) | (Range.dispatched_at < pending_sent_before)
            )
        ids = list(
            session.execute(
                select(Range.id)
                .where(Range.migration_id == migration_id, or_(pending, expired))
                .order_by(Range.seq)
            ).scalars()
        )
        if ids:
            session.execute(update(Range).where(Range.id.in_(ids)).values(dispatched_at=now))
    for range_id in ids:
        enqueue_range(app, migration_id, range_id)
    if ids:
        log.info("ranges_dispatched", migration=migration_id, count=len(ids))
    return len(ids)
