"""Plan a migration: ranges split at id quantiles, and the estimates an operator decides on."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import Migration, MigrationState, Range, RangeState
from backfleet.db.session import Database
from backfleet.embedding.base import Embedder
from backfleet.errors import MigrationStateError, PlanError
from backfleet.logs import get_logger
from backfleet.settings import Settings
from backfleet.source import Source
from backfleet.source_identity import source_fingerprint, source_identity
from backfleet.vectorstore import VectorStore, generation_name, parse_generation_name
from coordinator.lifecycle import ACTIVE_STATES

log = get_logger("backfleet.planner")

#: Bytes per row beside the vector: id, model tag, text hash, timestamp, HNSW links (M=16).
ROW_OVERHEAD_BYTES = 8 + 96 + 64 + 8 + 16 * 2 * 4


@dataclass(frozen=True)
class PlanReport:
    migration_id: int
    alias: str
    source_generation: str | None
    target_generation: str
    model_tag: str
    docs: int
    ranges: int
    est_tokens: int
    est_cost: float
    est_minutes: float
    shadow_bytes: int


def build_ranges(points: list[str | None]) -> list[tuple[str | None, str | None]]:
    """Half-open ranges covering every id: ``[None, p1), [p1, p2), …, [pk, None)``."""
    bounds: list[str | None] = [None, *points, None]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _alias_taken(alias: str, migration_id: int, state: str) -> MigrationStateError:
    return MigrationStateError(
        f"alias {alias!r} already has migration {migration_id} in state {state}; "
        "cancel it or finish it",
        hint=f"`backfleet cancel --migration {migration_id}`, or take it to live",
    )


def _concurrent_plan(db: Database, alias: str) -> MigrationStateError:
    """The error for a plan the index refused, naming the migration that won (read on
    another connection: this one's transaction is aborted)."""
    with db.session() as session:
        winner = session.execute(
            select(Migration.id, Migration.state).where(
                Migration.alias == alias, Migration.state.in_(ACTIVE_STATES)
            )
        ).first()
    if winner is None:  # cancelled since
        return MigrationStateError(
            f"alias {alias!r}: a concurrent plan held the alias", hint="run `backfleet plan` again"
        )
    return _alias_taken(alias, winner.id, winner.state)


def plan_migration(
    settings: Settings,
    db: Database,
    store: VectorStore,
    source: Source,
    embedder: Embedder,
    *,
    model_label: str,
    actor: str,
) -> PlanReport:
    """Create a ``planned`` migration with its ranges; Milvus is not touched yet."""
    alias = settings.alias
    identity = embedder.identity
    cfg = settings.backfill
    model = settings.model(model_label)
    with db.session() as session:
        active = session.execute(
            select(Migration.id, Migration.state).where(
                Migration.alias == alias, Migration.state.in_(ACTIVE_STATES)
            )
        ).first()
        taken = {
            parsed[2]
            for (name,) in session.execute(
                select(Migration.target_generation).where(Migration.alias == alias)
            )
            if (parsed := parse_generation_name(name))
        }
    if active is not None:
        raise _alias_taken(alias, active.id, active.state)
    live = store.resolve_alias(alias)
    if live is not None and store.is_generation(live):
        live_gen = store.open_generation(live)
        if live_gen.identity == identity:
            raise PlanError(
                f"alias {alias!r} already serves {live} built with {identity.tag}",
                hint="set target_model to the model you are migrating to",
            )
    docs, chars = source.stats()
    if docs == 0:
        raise PlanError(
            f"source table {settings.source.table!r} is empty",
            hint="check source.url and source.table",
        )
    points = [Source.encode_id(p) for p in source.split_points(cfg.range_size)]
    ranges = build_ranges(list(points))
    number = store.next_generation_number(alias, taken)
    target = generation_name(alias, identity, number)
    est_tokens = math.ceil(chars / cfg.avg_chars_per_token)
    requests = math.ceil(docs / cfg.batch_size)
    est_minutes = max(est_tokens / settings.throttle.tpm, requests / settings.throttle.rpm)
    if model.provider == "local":
        est_minutes = 0.0
    est_cost = est_tokens / 1_000_000 * model.price_per_million_tokens
    shadow_bytes = docs * (identity.dimension * 4 + ROW_OVERHEAD_BYTES)
    source_id = source_identity(settings.source, source.id_type)
    now = utcnow()
    with db.session() as session:
        migration = Migration(
            alias=alias,
            source_generation=live,
            target_generation=target,
            target_model=model_label,
            target_identity=identity.to_json(),
            id_type=source.id_type,
            state=MigrationState.PLANNED,
            total_docs=docs,
            est_tokens=est_tokens,
            settings_snapshot=settings.public_snapshot(),
            budget_usd=cfg.budget_usd,
            source_identity=source_id,
            source_fingerprint=source_fingerprint(source_id),
            created_at=now,
            updated_at=now,
        )
        session.add(migration)
        try:
            session.flush()
        except IntegrityError:
            # another plan of the alias committed after our check: the partial unique index
            # ux_bf_migrations_active_alias (one active migration per alias) refused this one
            raise _concurrent_plan(db, alias) from None
        last = len(ranges) - 1
        for seq, (lo, hi) in enumerate(ranges):
            session.add(
                Range(
                    migration_id=migration.id,
                    seq=seq,
                    lo=lo,
                    hi=hi,
                    planned_docs=cfg.range_size if seq < last else docs - cfg.range_size * last,
                    state=RangeState.PENDING,
                    cursor=None,
                    attempts=0,
                    docs_done=0,
                    tokens_used=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        record_event(
            session,
            migration.id,
            "migration_state",
            actor=actor,
            from_state=None,
            to_state=MigrationState.PLANNED,
            reason=f"plan {model_label} ({identity.tag})",
            details={"docs": docs, "ranges": len(ranges), "est_tokens": est_tokens},
        )
        migration_id = migration.id
    log.info(
        "migration_planned",
        migration=migration_id,
        alias=alias,
        target=target,
        docs=docs,
        ranges=len(ranges),
    )
    return PlanReport(
        migration_id=migration_id,
        alias=alias,
        source_generation=live,
        target_generation=target,
        model_tag=identity.tag,
        docs=docs,
        ranges=len(ranges),
        est_tokens=est_tokens,
        est_cost=est_cost,
        est_minutes=est_minutes,
        shadow_bytes=shadow_bytes,
    )
