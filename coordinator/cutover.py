"""Switch an alias to its shadow: canary share, atomic alias swap, rollback, finalize.

Gates: a canary share or a full cutover needs the latest reconcile of the shadow to be clean
(and newer than the last write to the shadow) and the latest evaluation to be GO — or
``force_reason``, which is recorded. A backfilling or catching-up migration whose ranges are
all done goes to ``verified`` when its gates pass (one audited transition), then on. Lowering
a canary share needs no gate. Rollback needs none: it is the way out. Finalize drops the old
generation only after the holdover, only if backfleet owns it and no alias serves it.

Every step is one short transaction on the locked migration row; the Milvus alias is swapped
inside it, and swapped back if the commit fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import CatchupPass, Migration, Range, RangeState
from backfleet.db.models import MigrationState as S
from backfleet.db.session import Database
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import ConfigError, GateClosed, MigrationStateError, NotFound
from backfleet.lifecycle import ALIAS_OWNING, ROLLBACKABLE, SWITCHABLE, VERIFY_FIRST
from backfleet.logs import get_logger
from backfleet.vectorstore import VectorStore
from coordinator.evaluator import latest_evaluation
from coordinator.lifecycle import transition
from coordinator.reconciler import latest_reconcile

log = get_logger("backfleet.cutover")


def _last_shadow_write(db: Database, migration_id: int) -> datetime | None:
    """When the backfill or a catch-up pass last wrote into the shadow."""
    with db.session() as session:
        ranges = session.execute(
            select(func.max(Range.finished_at)).where(Range.migration_id == migration_id)
        ).scalar()
        passes = session.execute(
            select(func.max(CatchupPass.finished_at)).where(
                CatchupPass.migration_id == migration_id
            )
        ).scalar()
    stamps = [t for t in (ranges, passes) if t is not None]
    return max(stamps) if stamps else None


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=utcnow().tzinfo)


def gate_problems(db: Database, migration: Migration) -> list[str]:
    """Why the migration may not switch now; empty when both gates are open."""
    problems: list[str] = []
    rec = latest_reconcile(db, migration.id)
    if rec is None:
        problems.append("no reconcile has run (`backfleet reconcile`)")
    elif rec.generation != migration.target_generation:
        problems.append(
            f"the latest reconcile #{rec.id} checked {rec.generation}, "
            f"not the shadow {migration.target_generation}"
        )
    elif not rec.clean:
        counts = ", ".join(
            f"{name} {n}"
            for name in ("missing", "extra", "duplicated", "stale", "wrong_model", "corrupted")
            if (n := getattr(rec, name))
        )
        problems.append(f"the latest reconcile #{rec.id} is not clean ({counts or 'see details'})")
    else:
        last_write = _last_shadow_write(db, migration.id)
        if last_write is not None and _aware(rec.finished_at) < _aware(last_write):
            problems.append(
                f"the latest reconcile #{rec.id} predates writes to the shadow at "
                f"{_aware(last_write):%Y-%m-%d %H:%M:%S} UTC (reconcile again)"
            )
    ev = latest_evaluation(db, migration.id)
    if ev is None:
        problems.append("no evaluation has run (`backfleet eval --golden FILE`)")
    elif ev.verdict != "GO":
        why = "; ".join((ev.metrics or {}).get("reasons") or []) or "see `backfleet eval`"
        problems.append(f"the latest evaluation #{ev.id} is {ev.verdict} ({why})")
    return problems


@dataclass
class Outcome:
    migration_id: int
    state: str
    messages: list[str] = field(default_factory=list)
    forced: bool = False


def _locked(session: Session, migration_id: int) -> Migration:
    m = session.get(Migration, migration_id, with_for_update=True)
    if m is None:
        raise NotFound(
            f"migration {migration_id} does not exist", hint="`backfleet status` lists them"
        )
    return m


def _refuse_if_alias_taken(session: Session, m: Migration) -> None:
    """Rolled back, a live migration owns its alias again: not while a newer one is active
    (one active migration per alias, ux_bf_migrations_active_alias)."""
    newer = session.execute(
        select(Migration.id, Migration.state).where(
            Migration.alias == m.alias, Migration.id != m.id, Migration.state.in_(ALIAS_OWNING)
        )
    ).first()
    if newer is not None:
        raise MigrationStateError(
            f"migration {m.id} cannot be rolled back: alias {m.alias!r} has migration "
            f"{newer.id} in state {newer.state} (one active migration per alias)",
            hint=f"`backfleet cancel --migration {newer.id}` first",
        )


def _open_ranges(session: Session, migration_id: int) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(Range)
            .where(Range.migration_id == migration_id, Range.state != RangeState.DONE)
        ).scalar_one()
    )


def _check_shadow(store: VectorStore, m: Migration) -> None:
    if not store.has(m.target_generation):
        raise NotFound(
            f"shadow generation {m.target_generation} of migration {m.id} does not exist in Milvus",
            hint="`backfleet start` creates it",
        )
    store.open_for_model(m.target_generation, ModelIdentity.from_json(m.target_identity))


def _predecessors(
    session: Session, m: Migration, generation: str | None, state: str
) -> list[Migration]:
    """The other migrations of ``m``'s alias in ``state`` that built ``generation`` (locked)."""
    if generation is None:
        return []
    return list(
        session.execute(
            select(Migration)
            .where(
                Migration.alias == m.alias,
                Migration.id != m.id,
                Migration.state == state,
                Migration.target_generation == generation,
            )
            .order_by(Migration.id)
            .with_for_update()
        ).scalars()
    )


def _enter(
    session: Session,
    db: Database,
    m: Migration,
    action: str,
    *,
    actor: str,
    force_reason: str | None,
    gated: bool = True,
) -> tuple[str, bool]:
    """Refuse unless switchable and gated (or forced); move to ``verified`` when needed.

    Returns the reason to record with the transition and whether gates were forced.
    """
    if m.state not in SWITCHABLE:
        hint = "`backfleet rollback` first" if m.state == S.LIVE else None
        raise MigrationStateError(
            f"migration {m.id} is {m.state}; {action} needs one of {', '.join(SWITCHABLE)}",
            hint=hint,
        )
    if m.state == S.BACKFILLING and (n := _open_ranges(session, m.id)):
        raise MigrationStateError(
            f"migration {m.id} is backfilling with {n} ranges not done; {action} refused",
            hint="wait for the backfill (`backfleet status`), or `backfleet retry-failed`",
        )
    if force_reason is not None and not force_reason.strip():
        raise ConfigError(
            "--force needs a reason", hint='pass --reason "why the gates are skipped"'
        )
    problems = gate_problems(db, m) if gated else []
    forced = False
    if problems:
        if force_reason is None:
            raise GateClosed(
                f"{action} of migration {m.id} refused: " + "; ".join(problems),
                hint='repair the shadow and run reconcile and eval again, or --force --reason "…"',
            )
        forced = True
        record_event(
            session,
            m.id,
            "gate_forced",
            actor=actor,
            reason=force_reason,
            details={"action": action, "problems": problems},
        )
        log.warning("gate_forced", migration=m.id, action=action, problems=problems, actor=actor)
    why = f"forced: {force_reason} (gates: {'; '.join(problems)})" if forced else "gates passed"
    if m.state in VERIFY_FIRST:
        transition(session, m, S.VERIFIED, actor=actor, reason=f"{action}: {why}")
    return why, forced


def set_canary(
    db: Database,
    store: VectorStore,
    migration_id: int,
    percent: float,
    *,
    actor: str,
    force_reason: str | None = None,
) -> Outcome:
    """Send ``percent`` % of routed queries (sticky by key) to the shadow."""
    if not 0 < percent <= 100:
        raise ConfigError(f"canary percentage {percent} is out of range", hint="--percent 0<P<=100")
    with db.session() as session:
        m = _locked(session, migration_id)
        lowering = m.state == S.CANARY and percent <= m.canary_percent
        why, forced = _enter(
            session,
            db,
            m,
            f"canary {percent:g}%",
            actor=actor,
            force_reason=force_reason,
            gated=not lowering,
        )
        live = store.resolve_alias(m.alias)
        if live is None or live == m.target_generation:
            raise MigrationStateError(
                f"alias {m.alias!r} points at {live or 'nothing'}; a canary needs it on the live "
                f"generation, the shadow is {m.target_generation}",
            )
        _check_shadow(store, m)
        before = m.canary_percent
        transition(
            session,
            m,
            S.CANARY,
            actor=actor,
            reason=f"canary {before:g}% → {percent:g}%: "
            + ("lowering needs no gate" if lowering else why),
        )
        m.canary_percent = percent
    log.info("canary_set", migration=migration_id, percent=percent, forced=forced, actor=actor)
    return Outcome(
        migration_id,
        S.CANARY,
        [f"{percent:g}% of routed queries (sticky by key) now go to {m.target_generation}"],
        forced,
    )


def full_cutover(
    db: Database,
    store: VectorStore,
    migration_id: int,
    *,
    actor: str,
    force_reason: str | None = None,
) -> Outcome:
    """Swap the alias to the shadow atomically; the old generation is kept for the holdover."""
    with db.session() as session:
        m = _locked(session, migration_id)
        why, forced = _enter(session, db, m, "cutover", actor=actor, force_reason=force_reason)
        before = store.resolve_alias(m.alias)
        if before is not None and before not in (m.source_generation, m.target_generation):
            raise MigrationStateError(
                f"alias {m.alias!r} points at {before}, which is neither migration {m.id}'s "
                f"live generation ({m.source_generation}) nor its shadow",
                hint="someone moved the alias by hand; check it before cutting over",
            )
        _check_shadow(store, m)
        transition(session, m, S.LIVE, actor=actor, reason=f"alias swap: {why}")
        m.canary_percent = 0.0
        m.cutover_at = utcnow()
        superseded = _predecessors(session, m, before, S.LIVE)
        for prev in superseded:
            transition(
                session,
                prev,
                S.SUPERSEDED,
                actor=actor,
                reason=f"alias {m.alias} moved on to {m.target_generation} (migration {m.id}); "
                f"finalize of migration {m.id} drops {prev.target_generation}",
            )
        record_event(
            session,
            m.id,
            "alias_swap",
            actor=actor,
            details={"alias": m.alias, "from": before, "to": m.target_generation},
        )
        session.flush()
        store.point_alias(m.alias, m.target_generation)
        try:
            session.commit()
        except BaseException:
            if before is not None:
                store.point_alias(m.alias, before)
            raise
    log.info("alias_swapped", migration=migration_id, alias=m.alias, to=m.target_generation)
    messages = [f"alias {m.alias} → {m.target_generation} (was {before or 'nothing'})"]
    messages += [f"migration {prev.id} is superseded" for prev in superseded]
    return Outcome(migration_id, S.LIVE, messages, forced)


def rollback(
    db: Database,
    store: VectorStore,
    migration_id: int,
    *,
    actor: str,
    reason: str | None = None,
) -> Outcome:
    """Back to the previous generation at once: end the canary, or swap the alias back."""
    with db.session() as session:
        m = _locked(session, migration_id)
        if m.state not in ROLLBACKABLE:
            raise MigrationStateError(
                f"migration {m.id} is {m.state}: nothing to roll back "
                "(rollback undoes a canary or a cutover)"
            )
        if m.state == S.LIVE:
            _refuse_if_alias_taken(session, m)
        if m.state == S.LIVE and (
            m.source_generation is None or not store.has(m.source_generation)
        ):
            raise NotFound(
                f"migration {m.id} has no previous generation to roll back to "
                f"({m.source_generation or 'it was the first build of the alias'}"
                f"{' was dropped' if m.source_generation else ''})",
            )
        was = m.state
        transition(session, m, S.ROLLED_BACK, actor=actor, reason=reason or f"rollback from {was}")
        m.canary_percent = 0.0
        if was == S.CANARY:
            return Outcome(
                m.id, S.ROLLED_BACK, [f"canary ended: every query goes to {m.source_generation}"]
            )
        assert m.source_generation is not None
        m.cutover_at = None
        revived = _predecessors(session, m, m.source_generation, S.SUPERSEDED)
        for prev in revived:
            transition(
                session,
                prev,
                S.LIVE,
                actor=actor,
                reason=f"migration {m.id} rolled back: alias {m.alias} is back on "
                f"{prev.target_generation}",
            )
        record_event(
            session,
            m.id,
            "alias_swap",
            actor=actor,
            reason="rollback",
            details={"alias": m.alias, "from": m.target_generation, "to": m.source_generation},
        )
        session.flush()
        store.point_alias(m.alias, m.source_generation)
        try:
            session.commit()
        except BaseException:
            store.point_alias(m.alias, m.target_generation)
            raise
    log.info("rolled_back", migration=migration_id, alias=m.alias, to=m.source_generation)
    messages = [f"alias {m.alias} → {m.source_generation} again"]
    messages += [f"migration {prev.id} is live again" for prev in revived]
    return Outcome(m.id, S.ROLLED_BACK, messages)


def finalize(
    db: Database,
    store: VectorStore,
    migration_id: int,
    *,
    actor: str,
    holdover_hours: float,
    now: datetime | None = None,
) -> Outcome:
    """After the holdover, drop the old generation (if backfleet owns it and no alias uses it)."""
    now = now or utcnow()
    with db.session() as session:
        m = _locked(session, migration_id)
        if m.state == S.SUPERSEDED:
            raise MigrationStateError(
                f"migration {m.id} is superseded: the alias moved on to a later migration",
                hint="finalize that migration (`backfleet status` names it); it drops "
                f"{m.target_generation} and {m.source_generation or 'nothing else'}",
            )
        if m.state != S.LIVE or m.cutover_at is None:
            raise MigrationStateError(
                f"migration {m.id} is {m.state}; only a live migration (alias swapped) can be "
                "finalized"
            )
        ends = _aware(m.cutover_at) + timedelta(hours=holdover_hours)
        if now < ends:
            left = ends - now
            hours, rem = divmod(int(left.total_seconds()), 3600)
            raise GateClosed(
                f"migration {m.id} is in its holdover until {ends:%Y-%m-%d %H:%M} UTC "
                f"({hours}h {rem // 60}m left); the old generation {m.source_generation} is kept",
                hint="wait, or lower cutover.holdover_hours",
            )
        live = store.resolve_alias(m.alias)
        if live != m.target_generation:
            raise MigrationStateError(
                f"alias {m.alias!r} points at {live}, not migration {m.id}'s generation "
                f"{m.target_generation}; finalize refused",
            )
        notes = [_drop_old(store, m.source_generation, live)]
        # migrations superseded on the way left their own old generations: drop them too
        seen = {m.id}
        chain = _predecessors(session, m, m.source_generation, S.SUPERSEDED)
        while chain:
            prev = chain.pop(0)
            if prev.id in seen:
                continue
            seen.add(prev.id)
            if prev.source_generation is not None:
                notes.append(_drop_old(store, prev.source_generation, live))
                chain += _predecessors(session, prev, prev.source_generation, S.SUPERSEDED)
        note = "; ".join(notes)
        transition(session, m, S.FINALIZED, actor=actor, reason=note)
    log.info("migration_finalized", migration=migration_id, note=note)
    return Outcome(migration_id, S.FINALIZED, [note])


def _drop_old(store: VectorStore, old: str | None, live: str | None) -> str:
    """Drop an old generation if it exists, backfleet owns it and the alias is elsewhere."""
    if old is None or not store.has(old):
        return "no old generation to drop" if old is None else f"{old} already gone"
    if old == live:
        return f"kept {old}: the alias serves it"
    if not store.is_generation(old):
        return f"kept {old}: not a backfleet generation"
    store.drop(old)
    return f"dropped {old}"
