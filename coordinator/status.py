"""Progress of a migration: ranges by state, docs done of total, docs/s and ETA."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from backfleet.db import reembeds
from backfleet.db.checkpoint import utcnow
from backfleet.db.models import DeadLetter, Event, Migration, Range, RangeState
from backfleet.db.session import Database
from backfleet.lifecycle import MigrationState
from coordinator.dispatcher import load_migration


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=utcnow().tzinfo)


@dataclass
class MigrationStatus:
    migration_id: int
    alias: str
    state: str
    source_generation: str | None
    target_generation: str
    target_model: str
    total_docs: int
    docs_done: int
    tokens_used: int
    ranges: dict[str, int] = field(default_factory=dict)
    docs_per_second: float = 0.0
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    failed: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    price_per_million_tokens: float = 0.0
    spent_usd: float = 0.0
    projected_usd: float | None = None
    budget_usd: float | None = None
    paused_reason: str | None = None
    #: catch-up passes (oldest first): changes found and applied; settled = the last one's
    catchup_passes: list[dict[str, Any]] = field(default_factory=list)
    settled: bool = False
    #: pending ranges a worker refused before claiming (its source or model is not the
    #: migration's): the latest refusal per range
    refused: list[dict[str, Any]] = field(default_factory=list)
    #: re-embed requests (dead-letter retry, repair) by state: pending, done, failed
    reembeds: dict[str, int] = field(default_factory=dict)
    #: workers that could not serve this migration's tasks lately (they got no claim):
    #: worker process, kind, error, range, when (newest report per worker and kind)
    worker_errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def migration_status(
    db: Database, migration_id: int | None, alias: str, *, price_per_million: float = 0.0
) -> MigrationStatus:
    """Progress, rate, ETA, spend against the budget, failures and dead letters."""
    migration: Migration = load_migration(db, migration_id, alias)
    with db.session() as session:
        by_state = dict(
            session.execute(
                select(Range.state, func.count())
                .where(Range.migration_id == migration.id)
                .group_by(Range.state)
            ).all()
        )
        agg = session.execute(
            select(
                func.coalesce(func.sum(Range.docs_done), 0),
                func.coalesce(func.sum(Range.tokens_used), 0),
                func.min(Range.started_at),
                func.max(Range.finished_at),
            ).where(Range.migration_id == migration.id)
        ).one()
        failed = [
            {"range": r.id, "lo": r.lo, "hi": r.hi, "attempts": r.attempts, "error": r.last_error}
            for r in session.execute(
                select(Range).where(
                    Range.migration_id == migration.id, Range.state == RangeState.FAILED
                )
            ).scalars()
        ]
        dead = dict(
            session.execute(
                select(DeadLetter.kind, func.count())
                .where(DeadLetter.migration_id == migration.id)
                .group_by(DeadLetter.kind)
            ).all()
        )
        paused_reason = (
            session.execute(
                select(Event.reason)
                .where(Event.migration_id == migration.id, Event.to_state == MigrationState.PAUSED)
                .order_by(Event.id.desc())
                .limit(1)
            ).scalar()
            if migration.state == MigrationState.PAUSED
            else None
        )
        refused = _refusals(session, migration.id)
        worker_errors = _worker_errors(session, migration.id)
    from coordinator.catchup import latest_passes

    passes = latest_passes(db, migration.id)
    ranges = {str(state): int(by_state.get(state, 0)) for state in RangeState}
    docs_done, tokens = int(agg[0]), int(agg[1])
    started, finished = _aware(agg[2]), _aware(agg[3])
    open_ranges = ranges[RangeState.PENDING] + ranges[RangeState.RUNNING]
    end = finished if (open_ranges == 0 and finished) else utcnow()
    elapsed = (end - started).total_seconds() if started else 0.0
    rate = docs_done / elapsed if elapsed > 0 else 0.0
    remaining = max(0, migration.total_docs - docs_done)
    eta = (remaining / rate if rate > 0 else None) if open_ranges else 0.0
    return MigrationStatus(
        migration_id=migration.id,
        alias=migration.alias,
        state=migration.state,
        source_generation=migration.source_generation,
        target_generation=migration.target_generation,
        target_model=migration.target_model,
        total_docs=migration.total_docs,
        docs_done=docs_done,
        tokens_used=tokens,
        ranges=ranges,
        docs_per_second=rate,
        eta_seconds=eta,
        elapsed_seconds=elapsed,
        failed=failed,
        dead_letters={str(k): int(v) for k, v in dead.items()},
        price_per_million_tokens=price_per_million,
        spent_usd=tokens / 1_000_000 * price_per_million,
        projected_usd=(
            tokens / docs_done * migration.total_docs / 1_000_000 * price_per_million
            if docs_done
            else None
        ),
        budget_usd=migration.budget_usd,
        paused_reason=paused_reason,
        catchup_passes=passes,
        settled=bool(passes and passes[-1]["settled"]),
        refused=refused,
        reembeds=reembeds.counts(db, migration.id),
        worker_errors=worker_errors,
    )


def _refusals(session: Any, migration_id: int) -> list[dict[str, Any]]:
    """The latest ``range_refused`` event of each range still pending."""
    pending = select(Range.id).where(
        Range.migration_id == migration_id, Range.state == RangeState.PENDING
    )
    latest: dict[int, dict[str, Any]] = {}
    for ev in session.execute(
        select(Event)
        .where(
            Event.migration_id == migration_id,
            Event.kind == "range_refused",
            Event.range_id.in_(pending),
        )
        .order_by(Event.id.desc())
        .limit(200)
    ).scalars():
        if ev.range_id not in latest:
            latest[ev.range_id] = {
                "range": ev.range_id,
                "worker": ev.actor,
                "reason": ev.reason,
                "at": ev.at.isoformat(),
            }
    return sorted(latest.values(), key=lambda r: r["range"])


#: the event kinds a worker records when a task cannot get to its claim (workers/readiness.py)
WORKER_ERROR_KINDS = ("worker_model_unavailable", "worker_cannot_serve")
#: a worker's report is shown this long, unless that worker claimed a range of it since
WORKER_ERROR_SECONDS = 600.0


def _worker_errors(session: Any, migration_id: int) -> list[dict[str, Any]]:
    """The newest report per worker process and kind, recent and not followed by a claim."""
    since = utcnow() - timedelta(seconds=WORKER_ERROR_SECONDS)
    rows = session.execute(
        select(Event)
        .where(
            Event.migration_id == migration_id,
            Event.kind.in_((*WORKER_ERROR_KINDS, "range_claimed")),
            Event.at >= since,
        )
        .order_by(Event.id)
    ).scalars()
    latest: dict[tuple[str, str], Event] = {}
    for event in rows:
        if event.kind == "range_claimed":  # actor host:pid:thread; reports are by host:pid
            process = event.actor.rsplit(":", 1)[0]
            for key in [k for k in latest if k[0] == process]:
                del latest[key]
            continue
        latest[(event.actor, event.kind)] = event
    out = []
    for e in sorted(latest.values(), key=lambda e: e.id, reverse=True):
        at = _aware(e.at)
        out.append(
            {
                "worker": e.actor,
                "kind": e.kind,
                "error": e.reason,
                "range": e.range_id,
                "at": at.isoformat() if at else None,
                "repeats": int((e.details or {}).get("repeats", 1)),
            }
        )
    return out
