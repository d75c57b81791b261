"""Operator commands on a running migration: pause, resume, cancel, retry failed ranges.

Each is idempotent and safe while workers run: Postgres decides, in one short transaction;
workers notice at their next fenced write and stop (their last batch is repeated later,
which the upsert makes harmless).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from backfleet.db.checkpoint import pause_migration, record_event, utcnow
from backfleet.db.models import DeadLetter, Event, Migration, MigrationState, Range, RangeState
from backfleet.db.session import Database
from backfleet.errors import MigrationStateError, NotFound
from backfleet.lifecycle import CLAIMABLE, OPEN_RANGES, PAUSABLE, TERMINAL
from backfleet.logs import get_logger
from coordinator.dispatcher import dispatch
from coordinator.lifecycle import transition
from workers.tasks import enqueue_documents

log = get_logger("backfleet.operations")


def _locked(session: Any, migration_id: int) -> Migration:
    migration = session.get(Migration, migration_id, with_for_update=True)
    if migration is None:
        raise NotFound(
            f"migration {migration_id} does not exist",
            hint="`backfleet status` lists the migrations",
        )
    return migration  # type: ignore[no-any-return]


def _release_running(session: Any, migration_id: int, to_state: str) -> int:
    result = session.execute(
        update(Range)
        .where(
            Range.migration_id == migration_id,
            Range.state.in_(OPEN_RANGES),
        )
        .values(
            state=to_state,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            updated_at=utcnow(),
        )
    )
    return int(result.rowcount)


def pause(db: Database, migration_id: int, *, actor: str, reason: str | None = None) -> str:
    """Stop handing out ranges; running ranges go back to pending (no work lost)."""
    with db.session() as session:
        m = _locked(session, migration_id)
        if m.state == MigrationState.PAUSED:
            return "already paused"
        if m.state not in PAUSABLE:
            raise MigrationStateError(
                f"migration {migration_id} is {m.state}; only a "
                "backfilling or catching-up migration can be paused"
            )
        pause_migration(session, m, actor=actor, reason=reason or "pause")
    return "paused"


def resume(db: Database, app: Any, migration_id: int, *, actor: str) -> int:
    """Continue a paused migration where it stopped; returns the tasks sent."""
    with db.session() as session:
        m = _locked(session, migration_id)
        if m.state in CLAIMABLE:
            pass
        elif m.state != MigrationState.PAUSED:
            raise MigrationStateError(
                f"migration {migration_id} is {m.state}; only a paused migration can be resumed"
            )
        else:
            target = (
                session.execute(
                    select(Event.to_state)
                    .where(Event.migration_id == migration_id, Event.kind == "resume_target")
                    .order_by(Event.id.desc())
                    .limit(1)
                ).scalar()
                or MigrationState.BACKFILLING
            )
            transition(session, m, target, actor=actor, reason="resume")
    return dispatch(db, app, migration_id)


def cancel(db: Database, migration_id: int, *, actor: str, reason: str | None = None) -> int:
    """Give up a migration: open ranges are cancelled; the shadow generation is kept."""
    with db.session() as session:
        m = _locked(session, migration_id)
        if m.state == MigrationState.CANCELLED:
            return 0
        transition(session, m, MigrationState.CANCELLED, actor=actor, reason=reason or "cancel")
        return _release_running(session, migration_id, RangeState.CANCELLED)


def retry_failed(
    db: Database, app: Any, migration_id: int, *, actor: str, range_ids: list[int] | None = None
) -> list[int]:
    """Failed ranges back to pending with fresh attempts, and their tasks sent.

    Named ranges must exist in this migration; two operators at once retry each range once
    (the state change is conditional on ``failed``).
    """
    with db.session() as session:
        m = _locked(session, migration_id)
        if m.state in TERMINAL:
            raise MigrationStateError(
                f"migration {migration_id} is {m.state}; its ranges cannot be retried",
                hint="plan a new migration",
            )
        if range_ids:
            known = set(
                session.execute(
                    select(Range.id, Range.state).where(
                        Range.migration_id == migration_id, Range.id.in_(range_ids)
                    )
                ).all()
            )
            known_ids = {r for r, _ in known}
            missing = sorted(set(range_ids) - known_ids)
            if missing:
                raise NotFound(
                    f"range {', '.join(map(str, missing))} does not exist in "
                    f"migration {migration_id}",
                    hint="`backfleet status` lists ranges",
                )
        cond = [Range.migration_id == migration_id, Range.state == RangeState.FAILED]
        if range_ids:
            cond.append(Range.id.in_(range_ids))
        retried = list(
            session.execute(
                update(Range)
                .where(*cond)
                .values(state=RangeState.PENDING, attempts=0, finished_at=None, updated_at=utcnow())
                .returning(Range.id)
            ).scalars()
        )
        for rid in retried:
            record_event(
                session,
                migration_id,
                "range_retry_requested",
                actor=actor,
                from_state=RangeState.FAILED,
                to_state=RangeState.PENDING,
                range_id=rid,
            )
    if retried and m.state in CLAIMABLE:
        dispatch(db, app, migration_id)
    log.info("ranges_retried", migration=migration_id, ranges=retried, actor=actor)
    return retried


def dead_letters(db: Database, migration_id: int, limit: int | None = None) -> list[DeadLetter]:
    with db.session() as session:
        stmt = (
            select(DeadLetter)
            .where(DeadLetter.migration_id == migration_id)
            .order_by(DeadLetter.id)
        )
        if limit:
            stmt = stmt.limit(limit)
        rows = list(session.execute(stmt).scalars())
        for row in rows:
            session.expunge(row)
        return rows


def retry_dead_letters(
    db: Database, app: Any, migration_id: int, *, actor: str, chunk: int = 256
) -> int:
    """Send re-embed tasks for the migration's rejected documents (skipped ones stay)."""
    with db.session() as session:
        m = _locked(session, migration_id)
        if m.state in TERMINAL:
            raise MigrationStateError(f"migration {migration_id} is {m.state}; nothing to retry")
        ids = list(
            session.execute(
                select(DeadLetter.doc_id).where(
                    DeadLetter.migration_id == migration_id, DeadLetter.kind == "rejected"
                )
            ).scalars()
        )
        record_event(
            session,
            migration_id,
            "dead_letters_retry",
            actor=actor,
            details={"documents": len(ids)},
        )
    for i in range(0, len(ids), chunk):
        enqueue_documents(app, migration_id, ids[i : i + chunk])
    return len(ids)


def set_budget(
    db: Database,
    migration_id: int,
    budget_usd: float | None,
    price_per_million: float,
    *,
    actor: str,
) -> None:
    """Change the spending cap; a cap below what is already spent is refused."""
    from sqlalchemy import func

    with db.session() as session:
        m = _locked(session, migration_id)
        tokens = session.execute(
            select(func.coalesce(func.sum(Range.tokens_used), 0)).where(
                Range.migration_id == migration_id
            )
        ).scalar_one()
        spent = int(tokens) / 1_000_000 * price_per_million
        if budget_usd is not None and budget_usd < spent:
            raise MigrationStateError(
                f"budget ${budget_usd:,.2f} is below what migration {migration_id} has already "
                f"spent (${spent:,.4f})",
                hint="set a budget above the spend so far",
            )
        old = m.budget_usd
        m.budget_usd = budget_usd
        m.updated_at = utcnow()
        record_event(
            session,
            migration_id,
            "budget",
            actor=actor,
            reason=f"budget {old} -> {budget_usd}",
            details={"spent_usd": spent},
        )
