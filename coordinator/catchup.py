"""Catch-up: bring the shadow level with a source that kept changing during the backfill.

Dual write keeps the shadow fresh for applications that use it; catch-up repairs everything
that bypassed it (a batch job, a manual SQL fix, a race with a range in flight). A pass, over
every completed range:

* **updated** — with ``source.updated_at_column``, documents updated after the range read them
  (``read_started_at``, or the previous pass's start if later) minus the clock margin
  ``catchup.skew_seconds`` are candidates; a candidate whose text hash already equals the
  shadow's is not a change (dual write got there), so a generous margin costs reads, not
  embeddings. Without the column (or with ``--full``) every document's text hash is compared;
  a corpus larger than ``catchup.hash_scan_max_docs`` is swept over several passes.
* **created** — ids in the source but not in the shadow. New ids past the end of the last
  range (the corpus grew at the tail), when at least ``catchup.new_range_min_docs``, become a
  new range the fleet runs like any other (the last range is split at the first new id).
* **deleted** — ids in the shadow that are gone from the source, or whose text is now blank
  (a document deleted while its batch was in flight lands here).

Changes are applied in this process through the workers' own re-embed code (the shadow's
model, the fleet-wide limiter, dead letters for poison documents). Passes repeat until one
finds fewer than ``catchup.threshold`` changes — the migration has *settled* — or
``catchup.max_passes`` ran. The first pass moves the migration ``backfilling → catching_up``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import CatchupPass, Migration, MigrationState, Range, RangeState
from backfleet.db.queries import latest_of_migration
from backfleet.db.session import Database
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import MigrationStateError, NotFound, Retryable
from backfleet.lifecycle import CATCHUP_ALLOWED
from backfleet.logs import get_logger
from backfleet.settings import Settings
from backfleet.source import Source, SourceId
from backfleet.vectorstore import Generation, VectorStore
from coordinator import changes
from coordinator.changes import RangeChanges
from coordinator.dispatcher import dispatch, load_migration
from coordinator.lifecycle import transition

log = get_logger("backfleet.catchup")

#: Applies changes: ``(migration_id, ids to re-embed, ids to delete) -> applied count``.
Applier = Callable[[int, list[SourceId], list[SourceId]], int]


@dataclass
class PassReport:
    pass_no: int
    mode: str  # "updated_at" | "hash"
    changed: int
    created: int
    deleted: int
    applied: int
    settled: bool
    new_ranges: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def found(self) -> int:
        return self.changed + self.created + self.deleted


@dataclass
class CatchupReport:
    migration_id: int
    state: str
    settled: bool
    passes: list[PassReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def begin(db: Database, migration_id: int, *, actor: str) -> Migration:
    """Check the migration can catch up; move ``backfilling → catching_up``."""
    with db.session() as session:
        m = session.get(Migration, migration_id, with_for_update=True)
        if m is None:
            raise NotFound(f"migration {migration_id} does not exist")
        if m.state not in CATCHUP_ALLOWED:
            raise MigrationStateError(
                f"migration {migration_id} is {m.state}; catch-up runs on a backfilling or "
                "catching-up migration",
                hint="`backfleet resume` a paused one first"
                if m.state == MigrationState.PAUSED
                else None,
            )
        by_state = dict(
            session.execute(
                select(Range.state, func.count())
                .where(Range.migration_id == migration_id)
                .group_by(Range.state)
            ).all()
        )
        if by_state.get(RangeState.FAILED):
            raise MigrationStateError(
                f"migration {migration_id} has {by_state[RangeState.FAILED]} failed ranges; "
                "catch-up compares completed ranges only",
                hint=f"`backfleet retry-failed --migration {migration_id}`",
            )
        open_ranges = by_state.get(RangeState.PENDING, 0) + by_state.get(RangeState.RUNNING, 0)
        if m.state == MigrationState.BACKFILLING:
            if open_ranges:
                raise MigrationStateError(
                    f"migration {migration_id} is still backfilling: {open_ranges} ranges open",
                    hint="wait until `backfleet status` shows every range done",
                )
            transition(session, m, MigrationState.CATCHING_UP, actor=actor, reason="catch-up")
        session.flush()
        session.expunge(m)
        return m


def wait_for_ranges(db: Database, migration_id: int, timeout: float, poll: float = 1.0) -> None:
    """Wait until the migration has no pending or running range (new ranges of a pass)."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            by_state = dict(
                session.execute(
                    select(Range.state, func.count())
                    .where(Range.migration_id == migration_id)
                    .group_by(Range.state)
                ).all()
            )
        if by_state.get(RangeState.FAILED):
            raise MigrationStateError(
                f"migration {migration_id}: a catch-up range failed",
                hint=f"`backfleet retry-failed --migration {migration_id}`, then catch up again",
            )
        if not by_state.get(RangeState.PENDING) and not by_state.get(RangeState.RUNNING):
            return
        if time.monotonic() > deadline:
            raise Retryable(
                f"migration {migration_id}: new ranges not done after {timeout:.0f} s",
                hint="start workers (`backfleet worker`) or raise catchup.wait_timeout_seconds",
            )
        time.sleep(poll)


def split_tail(
    db: Database, app: Any, source: Source, migration_id: int, min_docs: int, *, actor: str
) -> tuple[int | None, int]:
    """New ids past the last range's cursor become a new range; ``(range id, docs)``."""
    with db.session() as session:
        last = session.execute(
            select(Range)
            .where(Range.migration_id == migration_id)
            .order_by(Range.seq.desc())
            .limit(1)
            .with_for_update()
        ).scalar_one()
        if last.state != RangeState.DONE or last.hi is not None or last.cursor is None:
            return None, 0
        count, first = changes.ids_after(source, last.cursor)
        if count < min_docs or first is None:
            return None, 0
        now = utcnow()
        new_lo = Source.encode_id(first)
        last.hi = new_lo
        last.updated_at = now
        tail = Range(
            migration_id=migration_id,
            seq=last.seq + 1,
            lo=new_lo,
            hi=None,
            planned_docs=count,
            state=RangeState.PENDING,
            cursor=None,
            attempts=0,
            docs_done=0,
            tokens_used=0,
            created_at=now,
            updated_at=now,
        )
        session.add(tail)
        session.flush()
        record_event(
            session,
            migration_id,
            "catchup_new_range",
            actor=actor,
            to_state=RangeState.PENDING,
            range_id=tail.id,
            details={"lo": new_lo, "docs": count, "split_range": last.id},
        )
        tail_id = tail.id
    dispatch(db, app, migration_id)
    log.info("catchup_new_range", migration=migration_id, range=tail_id, lo=new_lo, docs=count)
    return tail_id, count


def _previous(db: Database, migration_id: int) -> CatchupPass | None:
    return latest_of_migration(db, CatchupPass, migration_id, CatchupPass.pass_no)


def _done_ranges(db: Database, migration_id: int) -> list[Range]:
    with db.session() as session:
        rows = list(
            session.execute(
                select(Range)
                .where(Range.migration_id == migration_id, Range.state == RangeState.DONE)
                .order_by(Range.seq)
            ).scalars()
        )
        for r in rows:
            session.expunge(r)
        return rows


def run_pass(
    settings: Settings,
    db: Database,
    source: Source,
    gen: Generation,
    app: Any,
    migration_id: int,
    apply: Applier,
    *,
    threshold: int,
    full: bool = False,
    actor: str,
) -> PassReport:
    """One catch-up pass: find the changes, apply them, record the pass."""
    cfg = settings.catchup
    started_clock = time.monotonic()
    prev = _previous(db, migration_id)
    pass_no = (prev.pass_no if prev else 0) + 1
    mode = "updated_at" if source.updated_col is not None and not full else "hash"
    skew = changes.measure_skew(source)
    margin = changes.effective_margin(cfg.skew_seconds, skew)
    if margin != cfg.skew_seconds:
        log.warning(
            "clock_skew_detected",
            migration=migration_id,
            skew_seconds=round(skew or 0.0, 3),
            margin=margin,
        )
    started = utcnow()
    with db.session() as session:
        row = CatchupPass(migration_id=migration_id, pass_no=pass_no, started_at=started)
        session.add(row)
        session.flush()
        pass_id = row.id
    details: dict[str, Any] = {
        "mode": mode,
        "margin_seconds": margin,
        "source_clock_skew_seconds": None if skew is None else round(skew, 3),
    }
    found = RangeChanges()
    new_ranges: list[int] = []
    tail_docs = 0
    tail_id, tail_docs = split_tail(
        db, app, source, migration_id, cfg.new_range_min_docs, actor=actor
    )
    if tail_id is not None:
        new_ranges.append(tail_id)
        wait_for_ranges(db, migration_id, cfg.wait_timeout_seconds)
    ranges = _done_ranges(db, migration_id)
    batch = cfg.hash_scan_batch
    sweep_complete = True
    carried = 0
    if mode == "hash":
        prev_details = (prev.details or {}) if prev else {}
        start_seq = (
            int(prev_details.get("next_seq", 0)) if prev_details.get("mode") == "hash" else 0
        )
        sizes = [(r.seq, max(r.docs_done, 1)) for r in ranges]
        chosen, next_seq, sweep_complete = changes.sweep_window(
            sizes, start_seq, cfg.hash_scan_max_docs
        )
        continuing = prev_details.get("mode") == "hash" and start_seq != 0
        sweep_no = int(prev_details.get("sweep", 0)) + (0 if continuing else 1)
        carried = int(prev_details.get("sweep_found", 0)) if continuing else 0
        details.update(
            ranges=[r.id for r in ranges if r.seq in chosen],
            next_seq=next_seq,
            sweep=sweep_no,
            sweep_complete=sweep_complete,
        )
        scanned = 0
        for r in ranges:
            if r.seq not in chosen or r.id in new_ranges:
                continue
            hashes = changes.source_hashes(source, r.lo, r.hi, batch)
            scanned += len(hashes)
            found.extend(
                changes.diff_hashes(hashes, changes.shadow_hashes(gen, source, r.lo, r.hi, batch))
            )
        details["scanned"] = scanned
    else:
        candidates = 0
        prev_started = prev.started_at if prev else None
        for r in ranges:
            if r.id in new_ranges:
                continue  # read just now, by the fleet
            since = changes.compare_from(r.read_started_at, prev_started, margin)
            shadow = changes.shadow_hashes(gen, source, r.lo, r.hi, batch)
            ids = changes.source_ids(source, r.lo, r.hi, batch)
            recent = changes.updated_since(source, r.lo, r.hi, since)
            look = (set(ids) if recent is None else recent & set(shadow)) | (ids - set(shadow))
            candidates += len(look)
            fetched = changes.fetch_hashes(source, look, batch)
            # ids not looked at are in the shadow and unchanged since it was compared
            src: dict[SourceId, str | None] = {i: shadow[i] for i in ids if i not in look}
            src.update(fetched)  # looked-at ids that still exist (deleted meanwhile: absent)
            found.extend(changes.diff_hashes(src, shadow))
        details["candidates"] = candidates
    # a delete only for an id confirmed gone by exact-id lookups (source and shadow)
    found.deleted = changes.confirm_gone(source, gen, found.deleted, batch)
    applied = apply(migration_id, [*found.changed, *found.created], list(found.deleted))
    tail_applied = 0
    if new_ranges:
        with db.session() as session:
            tail_applied = int(
                session.execute(
                    select(func.coalesce(func.sum(Range.docs_done), 0)).where(
                        Range.id.in_(new_ranges)
                    )
                ).scalar_one()
            )
    created = len(found.created) + tail_docs
    this_found = found.found + tail_docs
    if mode == "hash":
        sweep_found = carried + this_found
        details["sweep_found"] = sweep_found
        settled = sweep_complete and sweep_found < threshold
    else:
        settled = this_found < threshold
    details["new_ranges"] = new_ranges
    details["threshold"] = threshold
    report = PassReport(
        pass_no=pass_no,
        mode=mode,
        changed=len(found.changed),
        created=created,
        deleted=len(found.deleted),
        applied=applied + tail_applied,
        settled=settled,
        new_ranges=new_ranges,
        details=details,
        seconds=round(time.monotonic() - started_clock, 3),
    )
    with db.session() as session:
        session.execute(
            update(CatchupPass)
            .where(CatchupPass.id == pass_id)
            .values(
                changed=report.changed,
                created=report.created,
                deleted=report.deleted,
                applied=report.applied,
                settled=settled,
                details=details,
                finished_at=utcnow(),
            )
        )
        record_event(
            session,
            migration_id,
            "catchup_pass",
            actor=actor,
            details={
                "pass": pass_no,
                "found": report.found,
                "applied": report.applied,
                "settled": settled,
            },
        )
    log.info(
        "catchup_pass",
        migration=migration_id,
        pass_no=pass_no,
        mode=mode,
        changed=report.changed,
        created=report.created,
        deleted=report.deleted,
        applied=report.applied,
        settled=settled,
    )
    return report


def worker_applier(settings: Settings, gen: Generation, batch: int) -> tuple[Applier, Any]:
    """Apply changes with the workers' re-embed code, in this process; ``(apply, ctx)``."""
    from workers.context import WorkerContext
    from workers.pipeline import reembed_documents

    ctx = WorkerContext(settings)

    def apply(migration_id: int, embed: list[SourceId], delete: list[SourceId]) -> int:
        applied = 0
        for part in changes.chunks(delete, batch):
            gen.delete(part)
            applied += len(part)
        for part in changes.chunks(embed, batch):
            res = reembed_documents(ctx, migration_id, [str(i) for i in part])
            applied += res.embedded
        return applied

    return apply, ctx


def run_catchup(
    settings: Settings,
    db: Database,
    store: VectorStore,
    source: Source,
    app: Any,
    migration_id: int | None,
    *,
    actor: str,
    max_passes: int | None = None,
    threshold: int | None = None,
    full: bool = False,
    apply: Applier | None = None,
) -> CatchupReport:
    """Run passes until one settles or ``max_passes`` ran (settings by default)."""
    cfg = settings.catchup
    passes_limit = max_passes if max_passes is not None else cfg.max_passes
    limit = threshold if threshold is not None else cfg.threshold
    if passes_limit < 1:
        raise MigrationStateError("max passes must be at least 1", hint="--max-passes")
    if limit < 1:
        raise MigrationStateError("threshold must be at least 1", hint="--threshold")
    migration = load_migration(db, migration_id, settings.alias)
    migration = begin(db, migration.id, actor=actor)
    gen = store.open_for_model(
        migration.target_generation, ModelIdentity.from_json(migration.target_identity)
    )
    ctx = None
    if apply is None:
        apply, ctx = worker_applier(settings, gen, settings.backfill.batch_size)
    report = CatchupReport(migration_id=migration.id, state=migration.state, settled=False)
    try:
        wait_for_ranges(db, migration.id, cfg.wait_timeout_seconds)
        for _ in range(passes_limit):
            rep = run_pass(
                settings,
                db,
                source,
                gen,
                app,
                migration.id,
                apply,
                threshold=limit,
                full=full,
                actor=actor,
            )
            report.passes.append(rep)
            if rep.settled:
                report.settled = True
                break
    finally:
        if ctx is not None:
            ctx.close()
    report.state = load_migration(db, migration.id).state
    log.info(
        "catchup_finished",
        migration=migration.id,
        passes=len(report.passes),
        settled=report.settled,
    )
    return report


def latest_passes(db: Database, migration_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The migration's newest catch-up passes, oldest first (for status)."""
    with db.session() as session:
        rows = list(
            session.execute(
                select(CatchupPass)
                .where(CatchupPass.migration_id == migration_id)
                .order_by(CatchupPass.pass_no.desc())
                .limit(limit)
            ).scalars()
        )
    return [
        {
            "pass": r.pass_no,
            "changed": r.changed,
            "created": r.created,
            "deleted": r.deleted,
            "found": r.changed + r.created + r.deleted,
            "applied": r.applied,
            "settled": r.settled,
            "mode": (r.details or {}).get("mode"),
            "started_at": _iso(r.started_at),
            "finished_at": _iso(r.finished_at),
        }
        for r in reversed(rows)
    ]


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None
