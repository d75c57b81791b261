"""The lifecycle: migration, range and re-embed states, the transitions, the named state sets.

The only place states are written. Values equal the strings stored in Postgres and shown in
JSON (``StrEnum``: a member is a ``str`` and compares equal to its value), so rows read back as
plain strings compare with the members unchanged. Kernel: imports neither coordinator nor
workers; ``coordinator.lifecycle.transition`` applies and records a transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum, unique


@unique
class MigrationState(StrEnum):
    PLANNED = "planned"
    BACKFILLING = "backfilling"
    CATCHING_UP = "catching_up"
    VERIFIED = "verified"
    CANARY = "canary"
    LIVE = "live"
    FINALIZED = "finalized"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    #: was live; a later migration of the alias cut over from its generation (terminal,
    #: unless that migration is rolled back: then live again)
    SUPERSEDED = "superseded"


@unique
class RangeState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@unique
class ReembedState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


_M = MigrationState

#: The migration state machine: the states each state may move to.
TRANSITIONS: Mapping[str, frozenset[MigrationState]] = {
    _M.PLANNED: frozenset({_M.BACKFILLING, _M.CANCELLED}),
    _M.BACKFILLING: frozenset({_M.CATCHING_UP, _M.VERIFIED, _M.PAUSED, _M.CANCELLED}),
    _M.CATCHING_UP: frozenset({_M.VERIFIED, _M.BACKFILLING, _M.PAUSED, _M.CANCELLED}),
    _M.VERIFIED: frozenset({_M.CANARY, _M.LIVE, _M.CATCHING_UP, _M.CANCELLED}),
    _M.CANARY: frozenset({_M.CANARY, _M.LIVE, _M.ROLLED_BACK, _M.CATCHING_UP}),
    _M.LIVE: frozenset({_M.FINALIZED, _M.ROLLED_BACK, _M.SUPERSEDED}),
    # the next migration's cutover superseded it; that migration's rollback makes it live again
    _M.SUPERSEDED: frozenset({_M.LIVE}),
    _M.PAUSED: frozenset({_M.BACKFILLING, _M.CATCHING_UP, _M.CANCELLED}),
    _M.ROLLED_BACK: frozenset({_M.CANARY, _M.LIVE, _M.CANCELLED}),
    _M.FINALIZED: frozenset(),
    _M.CANCELLED: frozenset(),
}


def allowed_next(state: str) -> frozenset[MigrationState]:
    """The states a migration in ``state`` may move to (none for an unknown state)."""
    return TRANSITIONS.get(state, frozenset())


# Named sets of migration states. Tuples, so messages that list them keep one order.

#: Owns its alias: at most one such migration per alias (the partial unique index
#: ``ux_bf_migrations_active_alias``; revision 0004 froze this list). ``rolled_back`` may go
#: canary or live again; a ``live`` one waiting out its holdover does not block the next plan.
ALIAS_OWNING: tuple[MigrationState, ...] = (
    _M.PLANNED,
    _M.BACKFILLING,
    _M.CATCHING_UP,
    _M.VERIFIED,
    _M.CANARY,
    _M.PAUSED,
    _M.ROLLED_BACK,
)

#: Workers may claim its ranges, and the reaper re-sends their tasks.
CLAIMABLE: tuple[MigrationState, ...] = (_M.BACKFILLING, _M.CATCHING_UP)

#: ``pause`` applies to it.
PAUSABLE: tuple[MigrationState, ...] = CLAIMABLE

#: A catch-up pass may run on it.
CATCHUP_ALLOWED: tuple[MigrationState, ...] = CLAIMABLE

#: ``start`` applies: creates the shadow and sends a task per open range.
STARTABLE: tuple[MigrationState, ...] = (_M.PLANNED, _M.BACKFILLING)

#: Its shadow generation is being filled: workers may be sent its tasks (paused included: it
#: resumes) and must be able to serve it.
FILLING: tuple[MigrationState, ...] = (_M.BACKFILLING, _M.CATCHING_UP, _M.PAUSED)

#: Its shadow exists and may become (or has become) live: application writes go to it too.
DUAL_WRITING: tuple[MigrationState, ...] = (
    _M.BACKFILLING,
    _M.CATCHING_UP,
    _M.VERIFIED,
    _M.CANARY,
    _M.LIVE,
    _M.PAUSED,
    _M.ROLLED_BACK,
)

#: A canary share or a full cutover may start from it.
SWITCHABLE: tuple[MigrationState, ...] = (
    _M.BACKFILLING,
    _M.CATCHING_UP,
    _M.VERIFIED,
    _M.CANARY,
    _M.ROLLED_BACK,
)

#: A switch from it first moves it to ``verified`` (its gates passed, or were forced).
VERIFY_FIRST: tuple[MigrationState, ...] = (_M.BACKFILLING, _M.CATCHING_UP)

#: ``rollback`` applies: a canary ends, or a cutover is undone (the alias swapped back).
ROLLBACKABLE: tuple[MigrationState, ...] = (_M.CANARY, _M.LIVE)

#: Over for good (no transition out): its ranges are not retried, its re-embeds not re-sent.
TERMINAL: tuple[MigrationState, ...] = (_M.CANCELLED, _M.FINALIZED)

# Named sets of range states.

#: Not finished: waiting for a worker or held by one (``pause`` and ``cancel`` release them).
OPEN_RANGES: tuple[RangeState, ...] = (RangeState.RUNNING, RangeState.PENDING)


def alias_owning_where() -> str:
    """``WHERE`` of the one-migration-per-alias index (same text on Postgres and SQLite)."""
    return "state IN (" + ", ".join(f"'{s}'" for s in ALIAS_OWNING) + ")"
