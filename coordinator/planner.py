"""Plan a migration: ranges split at id quantiles, and the estimates an operator decides on."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import Migration, MigrationState, Range, RangeState
from backfleet.db.session import Database
from backfleet.embedding.base import Embedder
from backfleet.errors import MigrationStateError, PlanError
from backfleet.lifecycle import ALIAS_OWNING
from backfleet.limits import Throttle, build_throttle
from backfleet.logs import get_logger
from backfleet.settings import Settings
from backfleet.source import Source
from backfleet.source_identity import source_fingerprint, source_identity
from backfleet.vectorstore import VectorStore, generation_name, parse_generation_name
from backfleet.vectorstore.generation import STR_ID_MAX
from coordinator.estimate import estimate

log = get_logger("backfleet.planner")

#: Bytes per row beside the vector: id, model tag, text hash, timestamp, HNSW links (M=16).
ROW_OVERHEAD_BYTES = 8 + 96 + 64 + 8 + 16 * 2 * 4
#: ids of the long-id report; each cut to this many characters
LONG_ID_EXAMPLES = 3
EXAMPLE_CHARS = 60


def _example(doc_id: str) -> str:
    return doc_id if len(doc_id) <= EXAMPLE_CHARS else doc_id[:EXAMPLE_CHARS] + "…"


def source_warnings(
    settings: Settings, source: Source, docs: int
) -> tuple[int, list[str], list[str]]:
    """``(long ids, examples, warnings)``: ids a generation cannot hold (refused when every id
    is one of them) and a source encoding that does not guarantee UTF-8."""
    warnings: list[str] = []
    long_ids, found = source.long_ids(STR_ID_MAX, LONG_ID_EXAMPLES)
    examples = [_example(i) for i in found]
    if long_ids and long_ids >= docs:
        raise PlanError(
            f"every id of source table {settings.source.table!r} is longer than the "
            f"{STR_ID_MAX} bytes (UTF-8) a generation's primary key holds, e.g. {examples[0]!r}",
            hint="point source.id_column at a shorter unique key",
        )
    if long_ids:
        warnings.append(
            f"{long_ids:,} of {docs:,} ids are longer than the {STR_ID_MAX} bytes (UTF-8) a "
            "generation's primary key holds: those documents will be rejected dead letters "
            f"(e.g. {', '.join(repr(e) for e in examples)}); `backfleet dead-letters` lists them"
        )
        log.warning("plan_long_ids", count=long_ids, max_bytes=STR_ID_MAX, first=examples[0])
    encoding = source.server_encoding
    if encoding == "SQL_ASCII":
        warnings.append(
            "source.url is a SQL_ASCII database: its texts and ids must be UTF-8; a document "
            "that is not becomes a rejected dead letter"
        )
        log.warning("plan_source_sql_ascii", table=settings.source.table)
    return long_ids, examples, warnings


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
    #: text ids longer than a generation's primary key holds (their documents are dead letters)
    long_ids: int = 0
    long_id_examples: list[str] = field(default_factory=list)
    #: what the operator should know before starting (long ids, the source's encoding)
    warnings: list[str] = field(default_factory=list)
    #: how the estimate was made (coordinator/estimate.py)
    est_tokens_method: str = ""
    est_sample_docs: int = 0
    est_minutes_rate_limit: float = 0.0
    est_minutes_throughput: float | None = None
    est_binding: str = ""
    est_concurrency: int = 1
    probe_requests: int = 0
    probe_docs_per_request: int = 0
    probe_docs_per_second: float | None = None
    est_notes: tuple[str, ...] = ()


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
                Migration.alias == alias, Migration.state.in_(ALIAS_OWNING)
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
    probe: bool = True,
    throttle: Throttle | None = None,
) -> PlanReport:
    """Create a ``planned`` migration with its ranges; Milvus is not touched yet."""
    alias = settings.alias
    identity = embedder.identity
    cfg = settings.backfill
    model = settings.model(model_label)
    with db.session() as session:
        active = session.execute(
            select(Migration.id, Migration.state).where(
                Migration.alias == alias, Migration.state.in_(ALIAS_OWNING)
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
    long_ids, long_examples, warnings = source_warnings(settings, source, docs)
    points = [Source.encode_id(p) for p in source.split_points(cfg.range_size)]
    ranges = build_ranges(list(points))
    number = store.next_generation_number(alias, taken)
    target = generation_name(alias, identity, number)
    est = estimate(
        settings,
        source,
        embedder,
        label=model_label,
        docs=docs,
        chars=chars,
        ranges=len(ranges),
        split=points,
        with_probe=probe,
        # the probe's requests count against the fleet's limit like the workers' own
        throttle=throttle or (build_throttle(settings, model_label) if probe else None),
    )
    est_tokens = est.tokens
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
        est_minutes=est.minutes,
        shadow_bytes=shadow_bytes,
        long_ids=long_ids,
        long_id_examples=long_examples,
        warnings=warnings,
        est_tokens_method=est.tokens_method,
        est_sample_docs=est.sample_docs,
        est_minutes_rate_limit=est.minutes_rate_limit,
        est_minutes_throughput=est.minutes_throughput,
        est_binding=est.binding,
        est_concurrency=est.concurrency,
        probe_requests=est.probe.requests if est.probe else 0,
        probe_docs_per_request=est.probe.docs_per_request if est.probe else 0,
        probe_docs_per_second=est.probe.docs_per_second if est.probe else None,
        est_notes=est.notes,
    )
