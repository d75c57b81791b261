"""The named checkpoint queries: claim, heartbeat, advance, complete, release, fail.

Each is one short statement in its own transaction; none is held open across an embedding
call. Writes after the claim are fenced by the lease token: a worker that lost its lease
(expired and taken over) gets :class:`LeaseLost` and must stop.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session

from backfleet.db.models import DeadLetter, Event, Migration, MigrationState, Range, RangeState
from backfleet.db.session import Database
from backfleet.errors import LeaseLost
from backfleet.lifecycle import CLAIMABLE, OPEN_RANGES
from backfleet.logs import get_logger

log = get_logger("backfleet.checkpoint")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """A granted lease on a range."""

    range_id: int
    migration_id: int
    lo: str | None
    hi: str | None
    cursor: str | None
    token: str
    owner: str
    attempts: int
    docs_done: int


def record_event(
    session: Session,
    migration_id: int,
    kind: str,
    *,
    actor: str,
    from_state: str | None = None,
    to_state: str | None = None,
    reason: str | None = None,
    range_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        Event(
            migration_id=migration_id,
            range_id=range_id,
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            actor=actor,
            reason=reason,
            details=details,
            at=utcnow(),
        )
    )


def claim(
    db: Database,
    range_id: int,
    owner: str,
    lease_seconds: float,
    *,
    max_attempts: int | None = None,
) -> Claim | None:
    """Take the lease of a pending range, or of a running one whose lease expired.

    ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE … RETURNING`` in one short
    transaction; ``None`` when the
    range is done, failed, held by a live lease, or its migration is not backfilling.

    Every claim is counted (``claims``). Taking over an expired lease means its holder died
    or stalled past its lease (SIGKILL, the OOM killer, a frozen host): that counts an
    attempt (and ``lost_leases``); once ``max_attempts`` is reached the range becomes
    ``failed`` with "worker died N times on this range" instead of being run again, and
    ``None`` is returned. A range given back (release, pause) is pending, not expired: its
    next claim counts no attempt.
    """
    now = utcnow()
    token = secrets.token_hex(16)
    claimable = (
        Range.id == range_id,
        or_(
            Range.state == RangeState.PENDING,
            and_(Range.state == RangeState.RUNNING, Range.lease_expires_at < now),
        ),
        exists().where(
            Migration.id == Range.migration_id,
            Migration.state.in_(CLAIMABLE),
        ),
    )
    with db.session() as session:
        # lock the row (another claimer skips it), learn whether this is a takeover
        old = session.execute(
            select(Range.state, Range.lease_owner)
            .where(*claimable)
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if old is None:
            return None
        took_over = old.state == RangeState.RUNNING
        row = session.execute(
            update(Range)
            .where(*claimable)  # again: SQLite has no row lock
            .values(
                state=RangeState.RUNNING,
                lease_owner=owner,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                heartbeat_at=now,
                started_at=func.coalesce(Range.started_at, now),
                updated_at=now,
                claims=Range.claims + 1,
                lost_leases=Range.lost_leases + int(took_over),
                attempts=Range.attempts + int(took_over),
            )
            .returning(
                Range.id,
                Range.migration_id,
                Range.lo,
                Range.hi,
                Range.cursor,
                Range.attempts,
                Range.docs_done,
                Range.lost_leases,
                Range.last_error,
            )
        ).one_or_none()
        if row is None:
            return None
        if took_over:
            died = (
                f"worker died {row.lost_leases} times on this range (the lease of "
                f"{old.lease_owner} expired: the process was killed, e.g. out of memory, or "
                "stalled past backfill.lease_seconds)"
            )
            if row.last_error and not row.last_error.startswith("worker died "):
                died += f"; last error: {row.last_error}"
            gave_up = max_attempts is not None and row.attempts >= max_attempts
            session.execute(
                update(Range)
                .where(Range.id == row.id)
                .values(
                    last_error=died[:2000],
                    **(
                        {
                            "state": RangeState.FAILED,
                            "lease_owner": None,
                            "lease_token": None,
                            "lease_expires_at": None,
                            "finished_at": now,
                        }
                        if gave_up
                        else {}
                    ),
                )
            )
            record_event(
                session,
                row.migration_id,
                "range_failed" if gave_up else "range_taken_over",
                actor=owner,
                from_state=RangeState.RUNNING,
                to_state=RangeState.FAILED if gave_up else RangeState.RUNNING,
                range_id=range_id,
                reason=died[:500],
                details={"attempts": row.attempts, "lost_leases": row.lost_leases},
            )
            if gave_up:
                log.error(
                    "range_failed",
                    migration=row.migration_id,
                    range=range_id,
                    attempts=row.attempts,
                    error=died,
                )
                return None
        record_event(
            session,
            row.migration_id,
            "range_claimed",
            actor=owner,
            from_state=None,
            to_state=RangeState.RUNNING,
            range_id=range_id,
        )
    return Claim(
        range_id=row.id,
        migration_id=row.migration_id,
        lo=row.lo,
        hi=row.hi,
        cursor=row.cursor,
        token=token,
        owner=owner,
        attempts=row.attempts,
        docs_done=row.docs_done,
    )


#: For the statements that run on every batch or beat (advance, heartbeat): prebuilt Core
#: statements with bound parameters, run on a plain connection. Per call this skips building
#: the statement and the ORM session's bookkeeping: an advance went from ~3 ms (ORM
#: bulk update) to ~1 ms of worker CPU (docs/benchmarks.md). Same SQL, same fencing.
_FENCED_BY_PARAMS = and_(
    Range.id == bindparam("f_range"),
    Range.lease_token == bindparam("f_token"),
    Range.state == RangeState.RUNNING,
)
_ADVANCE = (
    update(Range)
    .where(_FENCED_BY_PARAMS)
    .values(
        cursor=bindparam("v_cursor"),
        docs_done=Range.docs_done + bindparam("v_docs"),
        tokens_used=Range.tokens_used + bindparam("v_tokens"),
        heartbeat_at=bindparam("v_now"),
        lease_expires_at=bindparam("v_expires"),
        updated_at=bindparam("v_now"),
    )
)
_HEARTBEAT = (
    update(Range)
    .where(_FENCED_BY_PARAMS)
    .values(heartbeat_at=bindparam("v_now"), lease_expires_at=bindparam("v_expires"))
)


def _fence_params(claim_: Claim) -> dict[str, Any]:
    return {"f_range": claim_.range_id, "f_token": claim_.token}


def _fenced(range_id: int, token: str) -> Any:
    return and_(Range.id == range_id, Range.lease_token == token, Range.state == RangeState.RUNNING)


def heartbeat(db: Database, claim_: Claim, lease_seconds: float) -> bool:
    """Renew the lease; ``False`` when it was lost."""
    now = utcnow()
    params = {"v_now": now, "v_expires": now + timedelta(seconds=lease_seconds)}
    with db.transaction() as conn:
        return bool(conn.execute(_HEARTBEAT, {**_fence_params(claim_), **params}).rowcount)


def mark_read_started(db: Database, claim_: Claim, at: datetime) -> None:
    """Remember when this range first read the source (catch-up looks for later edits)."""
    with db.session() as session:
        session.execute(
            update(Range)
            .where(_fenced(claim_.range_id, claim_.token), Range.read_started_at.is_(None))
            .values(read_started_at=at)
        )


def advance(
    db: Database,
    claim_: Claim,
    cursor: str,
    docs: int,
    tokens: int,
    lease_seconds: float,
    dead_letters: list[tuple[str, str, str]] | None = None,
    conn: Connection | None = None,
) -> None:
    """Move the cursor after a batch is durably in Milvus; fenced by the lease token.

    Dead letters of the batch (doc id, kind, reason) are recorded in the same transaction.
    ``conn``: a connection the caller holds for its range (no checkout and ping per batch).
    """
    now = utcnow()
    params = {
        "v_cursor": cursor,
        "v_docs": docs,
        "v_tokens": tokens,
        "v_now": now,
        "v_expires": now + timedelta(seconds=lease_seconds),
    }
    with db.transaction(conn) as tx:
        if not tx.execute(_ADVANCE, {**_fence_params(claim_), **params}).rowcount:
            raise LeaseLost(
                f"range {claim_.range_id}: lease of {claim_.owner} was lost; cursor not advanced"
            )
        if dead_letters:
            save_dead_letters(tx, claim_.migration_id, claim_.range_id, dead_letters)


def save_dead_letters(
    session: Session | Connection,
    migration_id: int,
    range_id: int | None,
    rows: list[tuple[str, str, str]],
) -> None:
    """Insert or refresh dead letters (one row per document and migration)."""
    now = utcnow()
    values = [
        {
            "migration_id": migration_id,
            "range_id": range_id,
            "doc_id": doc_id,
            "kind": kind,
            "reason": reason[:2000],
            "attempts": 1,
            "created_at": now,
            "updated_at": now,
        }
        for doc_id, kind, reason in rows
    ]
    bind = session.get_bind() if isinstance(session, Session) else session
    dialect = bind.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    stmt = dialect_insert(DeadLetter).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["migration_id", "doc_id"],
        set_={
            "kind": stmt.excluded.kind,
            "reason": stmt.excluded.reason,
            "attempts": DeadLetter.attempts + 1,
            "updated_at": now,
        },
    )
    session.execute(stmt)


def complete(db: Database, claim_: Claim) -> None:
    """Mark the range done; fenced by the lease token."""
    now = utcnow()
    with db.session() as session:
        result = session.execute(
            update(Range)
            .where(_fenced(claim_.range_id, claim_.token))
            .values(
                state=RangeState.DONE,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
                last_error=None,
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise LeaseLost(
                f"range {claim_.range_id}: lease of {claim_.owner} was lost; not completed"
            )
        record_event(
            session,
            claim_.migration_id,
            "range_done",
            actor=claim_.owner,
            from_state=RangeState.RUNNING,
            to_state=RangeState.DONE,
            range_id=claim_.range_id,
        )


def release(db: Database, claim_: Claim, reason: str) -> bool:
    """Give the range back (pending) without counting an attempt: a service outage."""
    now = utcnow()
    with db.session() as session:
        result = session.execute(
            update(Range)
            .where(_fenced(claim_.range_id, claim_.token))
            .values(
                state=RangeState.PENDING,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                last_error=reason[:2000],
                updated_at=now,
            )
        )
        ok = bool(result.rowcount)  # type: ignore[attr-defined]
        if ok:
            record_event(
                session,
                claim_.migration_id,
                "range_released",
                actor=claim_.owner,
                from_state=RangeState.RUNNING,
                to_state=RangeState.PENDING,
                range_id=claim_.range_id,
                reason=reason[:500],
            )
        return ok


def fail(db: Database, claim_: Claim, error: str, max_attempts: int) -> str | None:
    """Count a failed attempt: back to pending, or ``failed`` with the error kept.

    Returns the new state, or ``None`` when the lease was already lost.
    """
    now = utcnow()
    with db.session() as session:
        row = session.execute(
            select(Range.attempts).where(_fenced(claim_.range_id, claim_.token))
        ).one_or_none()
        if row is None:
            return None
        attempts = row.attempts + 1
        new_state = RangeState.FAILED if attempts >= max_attempts else RangeState.PENDING
        session.execute(
            update(Range)
            .where(_fenced(claim_.range_id, claim_.token))
            .values(
                state=new_state,
                attempts=attempts,
                last_error=error[:2000],
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                updated_at=now,
                finished_at=now if new_state == RangeState.FAILED else None,
            )
        )
        record_event(
            session,
            claim_.migration_id,
            "range_failed" if new_state == RangeState.FAILED else "range_retry",
            actor=claim_.owner,
            from_state=RangeState.RUNNING,
            to_state=new_state,
            range_id=claim_.range_id,
            reason=error[:500],
            details={"attempts": attempts},
        )
        return new_state


def note_refusal(db: Database, migration_id: int, range_id: int, actor: str, reason: str) -> None:
    """A worker refused a range before claiming it (its configuration cannot serve the
    migration): keep the reason on the pending range and as an event, count no attempt."""
    now = utcnow()
    with db.session() as session:
        session.execute(
            update(Range)
            .where(Range.id == range_id, Range.state == RangeState.PENDING)
            .values(last_error=reason[:2000], updated_at=now)
        )
        record_event(
            session, migration_id, "range_refused", actor=actor, range_id=range_id, reason=reason
        )


def pause_migration(session: Session, migration: Migration, *, actor: str, reason: str) -> None:
    """Pause in the caller's transaction: ranges back to pending, the resume target kept.

    The caller holds the migration row locked and has checked it is backfilling or catching
    up. Workers notice at their next fenced write (their range is no longer running).
    """
    now = utcnow()
    from_state = migration.state
    migration.state = MigrationState.PAUSED
    migration.updated_at = now
    record_event(
        session,
        migration.id,
        "migration_state",
        actor=actor,
        from_state=from_state,
        to_state=MigrationState.PAUSED,
        reason=reason,
    )
    record_event(session, migration.id, "resume_target", actor=actor, to_state=from_state)
    session.execute(
        update(Range)
        .where(
            Range.migration_id == migration.id,
            Range.state.in_(OPEN_RANGES),
        )
        .values(
            state=RangeState.PENDING,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
    )


def budget_and_spend(db: Database, migration_id: int) -> tuple[float | None, int, int]:
    """The migration's budget (USD, or None), the tokens its ranges have used, and how many
    ranges are running (each may spend one more batch before the others see it)."""
    with db.session() as session:
        row = session.execute(
            select(
                Migration.budget_usd,
                select(func.coalesce(func.sum(Range.tokens_used), 0))
                .where(Range.migration_id == migration_id)
                .scalar_subquery(),
                select(func.count())
                .where(Range.migration_id == migration_id, Range.state == RangeState.RUNNING)
                .scalar_subquery(),
            ).where(Migration.id == migration_id)
        ).one_or_none()
    if row is None:
        return None, 0, 0
    return row[0], int(row[1]), int(row[2])


def pause_for_budget(db: Database, migration_id: int, *, actor: str, reason: str) -> bool:
    """Pause a running migration because the next batch would exceed its budget."""
    with db.session() as session:
        migration = session.get(Migration, migration_id, with_for_update=True)
        if migration is None or migration.state not in CLAIMABLE:
            return False
        pause_migration(session, migration, actor=actor, reason=reason)
        return True
