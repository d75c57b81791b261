"""The migration state machine; every transition is an audited event (who, when, why)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import Migration
from backfleet.db.models import MigrationState as S
from backfleet.errors import MigrationStateError

TRANSITIONS: dict[str, set[str]] = {
    S.PLANNED: {S.BACKFILLING, S.CANCELLED},
    S.BACKFILLING: {S.CATCHING_UP, S.VERIFIED, S.PAUSED, S.CANCELLED},
    S.CATCHING_UP: {S.VERIFIED, S.BACKFILLING, S.PAUSED, S.CANCELLED},
    S.VERIFIED: {S.CANARY, S.LIVE, S.CATCHING_UP, S.CANCELLED},
    S.CANARY: {S.CANARY, S.LIVE, S.ROLLED_BACK, S.CATCHING_UP},
    S.LIVE: {S.FINALIZED, S.ROLLED_BACK, S.SUPERSEDED},
    # the next migration's cutover superseded it; that migration's rollback makes it live again
    S.SUPERSEDED: {S.LIVE},
    S.PAUSED: {S.BACKFILLING, S.CATCHING_UP, S.CANCELLED},
    S.ROLLED_BACK: {S.CANARY, S.LIVE, S.CANCELLED},
    S.FINALIZED: set(),
    S.CANCELLED: set(),
}

#: States in which a migration still owns its alias (another cannot be planned): a partial
#: unique index on bf_migrations(alias) holds it (``MigrationState.ACTIVE``, revision 0004).
#: ``rolled_back`` keeps the alias (it may go canary or live again); a ``live`` migration
#: waiting out its holdover does not block the next one.
ACTIVE_STATES = S.ACTIVE


def transition(
    session: Session, migration: Migration, to_state: str, *, actor: str, reason: str | None = None
) -> None:
    """Move ``migration`` to ``to_state`` or refuse with the allowed next states."""
    current = migration.state
    if to_state not in TRANSITIONS.get(current, set()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, set()))) or "none"
        raise MigrationStateError(
            f"migration {migration.id} is {current}; it cannot go to {to_state} "
            f"(allowed from {current}: {allowed})"
        )
    migration.state = to_state
    migration.updated_at = utcnow()
    record_event(
        session,
        migration.id,
        "migration_state",
        actor=actor,
        from_state=current,
        to_state=to_state,
        reason=reason,
    )
