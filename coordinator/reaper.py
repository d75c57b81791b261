"""The reaper: Postgres is the truth, Celery messages are hints.

``backfleet supervise`` runs :func:`reap_once` every few seconds. For every migration that is
backfilling or catching up it re-sends tasks for ranges whose lease expired (a dead or stuck
worker) and for pending ranges whose last task went out long ago (a lost message, a flushed
broker). It also re-sends re-embed requests not done long after their last task went out.
A duplicate task is harmless: a range that is done or held by a live lease is a no-op for
the worker that receives it, and a re-embed is an upsert.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from backfleet.db import reembeds
from backfleet.db.checkpoint import utcnow
from backfleet.db.models import Migration, Range, RangeState
from backfleet.db.session import Database
from backfleet.errors import ServiceUnavailable
from backfleet.lifecycle import CLAIMABLE
from backfleet.logs import get_logger
from coordinator.dispatcher import dispatch
from workers.tasks import send_documents

log = get_logger("backfleet.reaper")


@dataclass(frozen=True)
class ReaperSettings:
    interval_seconds: float = 10.0
    #: re-send a pending range's task when its last one went out this long ago
    resend_after_seconds: float = 120.0
    #: a re-embed request sent this many times without finishing is failed
    max_attempts: int = 5


def reap_once(db: Database, app: Any, settings: ReaperSettings, queue_depth: int | None) -> int:
    """One pass over the running migrations; returns the tasks sent."""
    cutoff = utcnow() - timedelta(seconds=settings.resend_after_seconds)
    sent = 0
    with db.session() as session:
        migrations = list(
            session.execute(select(Migration.id).where(Migration.state.in_(CLAIMABLE))).scalars()
        )
        pending = (
            dict(
                session.execute(
                    select(Range.migration_id, func.count())
                    .where(Range.migration_id.in_(migrations), Range.state == RangeState.PENDING)
                    .group_by(Range.migration_id)
                ).all()
            )
            if migrations
            else {}
        )
    # re-embed requests not done are messages in the same queue
    total_pending = sum(pending.values()) + reembeds.pending_count(db)
    # when the queue holds at least one message per pending range or request, none is lost
    resend = queue_depth is None or queue_depth < total_pending
    export_gauges(db, migrations)
    for mid in migrations:
        sent += dispatch(db, app, mid, pending_sent_before=cutoff, include_pending=resend)
    if resend:
        sent += resend_reembeds(db, app, cutoff, settings.max_attempts)
    return sent


def resend_reembeds(db: Database, app: Any, cutoff: datetime, max_attempts: int) -> int:
    """Re-send re-embed requests still pending after ``cutoff`` (a killed worker's task
    waits in Redis ``unacked`` for the visibility timeout; a duplicate is harmless)."""
    due = reembeds.take_due(db, cutoff, max_attempts)
    for request_id, migration_id, doc_ids in due:
        send_documents(app, migration_id, doc_ids, request_id)
    if due:
        log.info("reembeds_resent", requests=len(due))
    return len(due)


def queue_depth(app: Any) -> int | None:
    """Messages waiting in the backfleet queue (Redis list length), or None if unknown."""
    try:
        with app.connection_for_read() as conn:
            client = conn.default_channel.client
            return int(client.llen(app.conf.task_default_queue))
    except Exception:  # depth is an optimisation; without it every stale range is re-sent
        return None


def supervise(
    db: Database, app: Any, settings: ReaperSettings, *, stop_after: float | None = None
) -> None:
    """Run the reaper until interrupted (or for ``stop_after`` seconds)."""
    started = time.monotonic()
    log.info(
        "supervise_started",
        interval=settings.interval_seconds,
        resend_after=settings.resend_after_seconds,
    )
    while stop_after is None or time.monotonic() - started < stop_after:
        try:
            sent = reap_once(db, app, settings, queue_depth(app))
            if sent:
                log.info("reaper_resent", tasks=sent)
        except ServiceUnavailable as exc:  # wait the outage out
            log.warning("reaper_waiting", error=str(exc))
        time.sleep(settings.interval_seconds)


def export_gauges(db: Database, migrations: list[int]) -> None:
    """Ranges by state, documents done and dead letters per running migration (Prometheus)."""
    from backfleet import metrics
    from backfleet.db.models import DeadLetter

    if not migrations:
        return
    with db.session() as session:
        for mid, state, n in session.execute(
            select(Range.migration_id, Range.state, func.count())
            .where(Range.migration_id.in_(migrations))
            .group_by(Range.migration_id, Range.state)
        ):
            metrics.RANGES.labels(str(mid), state).set(n)
        for mid, docs in session.execute(
            select(Range.migration_id, func.coalesce(func.sum(Range.docs_done), 0))
            .where(Range.migration_id.in_(migrations))
            .group_by(Range.migration_id)
        ):
            metrics.DOCS_DONE.labels(str(mid)).set(docs)
        for mid, kind, n in session.execute(
            select(DeadLetter.migration_id, DeadLetter.kind, func.count())
            .where(DeadLetter.migration_id.in_(migrations))
            .group_by(DeadLetter.migration_id, DeadLetter.kind)
        ):
            metrics.DEAD_LETTERS.labels(str(mid), kind).set(n)
