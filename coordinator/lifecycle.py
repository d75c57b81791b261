"""Applies the migration state machine (``backfleet.lifecycle``); every transition is an
audited event (who, when, why)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import Migration
from backfleet.errors import MigrationStateError
from backfleet.lifecycle import ALIAS_OWNING, TRANSITIONS, allowed_next

__all__ = ["ACTIVE_STATES", "TRANSITIONS", "transition"]

#: States in which a migration still owns its alias (kept name; the kernel's ``ALIAS_OWNING``)
ACTIVE_STATES = ALIAS_OWNING


def transition(
    session: Session, migration: Migration, to_state: str, *, actor: str, reason: str | None = None
) -> None:
    """Move ``migration`` to ``to_state`` or refuse with the allowed next states."""
    current = migration.state
    allowed_states = allowed_next(current)
    if to_state not in allowed_states:
        allowed = ", ".join(sorted(allowed_states)) or "none"
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
