"""Celery tasks: thin wrappers around the range pipeline.

Messages are hints; Postgres is the truth. A task for a range that is done or held by a
live lease does nothing. A range handed back (service outage) or retried after an error is
re-sent with a short countdown; the reaper re-sends anything else that goes missing.
"""

from __future__ import annotations

from typing import Any

from backfleet.db import reembeds
from backfleet.errors import (
    BrokerUnavailable,
    ModelMismatch,
    Permanent,
    ServiceUnavailable,
    SourceMismatch,
)
from backfleet.logs import get_logger
from workers.context import WorkerContext
from workers.pipeline import RangePipeline, reembed_documents

log = get_logger("backfleet.tasks")

BACKFILL_TASK = "backfleet.backfill_range"
REEMBED_TASK = "backfleet.reembed_documents"
RETRY_COUNTDOWN_SECONDS = (2, 5, 10, 20, 30)


def register_tasks(app: Any, ctx: WorkerContext) -> None:
    pipeline = RangePipeline(ctx)

    @app.task(
        name=BACKFILL_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def backfill_range(self: Any, migration_id: int, range_id: int) -> str:
        outcome = pipeline.run(migration_id, range_id)
        if outcome in ("released", "retry") and not app.conf.task_always_eager:
            redeliveries = int(self.request.retries or 0)
            countdown = RETRY_COUNTDOWN_SECONDS[min(redeliveries, len(RETRY_COUNTDOWN_SECONDS) - 1)]
            self.retry(
                countdown=countdown,
                max_retries=None,
                throw=False,
                kwargs={"migration_id": migration_id, "range_id": range_id},
            )
            log.info("range_requeued", migration=migration_id, range=range_id, countdown=countdown)
        return outcome

    @app.task(
        name=REEMBED_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        autoretry_for=(ServiceUnavailable,),
        retry_backoff=2,
        retry_backoff_max=30,
        max_retries=None,
    )
    def reembed_documents_task(
        self: Any, migration_id: int, doc_ids: list[str], request_id: int | None = None
    ) -> int:
        if request_id is not None:
            reembeds.started(ctx.db, request_id)
        try:
            embedded = reembed_documents(ctx, migration_id, doc_ids).embedded
        except (SourceMismatch, ModelMismatch) as exc:
            # this worker cannot serve it; another may: stays pending, the reaper re-sends
            if request_id is not None:
                reembeds.note_error(ctx.db, request_id, str(exc), final=False)
            raise
        except Permanent as exc:
            if request_id is not None:
                reembeds.note_error(ctx.db, request_id, f"{type(exc).__name__}: {exc}", final=True)
            raise
        if request_id is not None:
            reembeds.finish(ctx.db, request_id)
        return embedded


def enqueue_documents(app: Any, migration_id: int, doc_ids: list[str]) -> None:
    """Record a re-embed request for named documents of a migration, and send its task.

    The request is a row in the checkpoint database (``bf_reembed_requests``): the reaper
    re-sends it until a worker marks it done, as it does for ranges.
    """
    request_id = reembeds.record(app.backfleet_context.db, migration_id, doc_ids)
    send_documents(app, migration_id, doc_ids, request_id)


def send_documents(app: Any, migration_id: int, doc_ids: list[str], request_id: int) -> None:
    """Send the task of a recorded re-embed request (first time, or again by the reaper)."""
    kwargs = {"migration_id": migration_id, "doc_ids": doc_ids, "request_id": request_id}
    if app.conf.task_always_eager:
        app.tasks[REEMBED_TASK].apply(kwargs=kwargs)
        return
    _send(app, REEMBED_TASK, kwargs)


def enqueue_range(app: Any, migration_id: int, range_id: int) -> None:
    """Send one backfill task (kwargs keep Flower readable: migration_id=…, range_id=…)."""
    if app.conf.task_always_eager:  # the demo: run it here, through the same task code
        app.tasks[BACKFILL_TASK].apply(kwargs={"migration_id": migration_id, "range_id": range_id})
        return
    _send(app, BACKFILL_TASK, {"migration_id": migration_id, "range_id": range_id})


def _send(app: Any, name: str, kwargs: dict[str, Any]) -> None:
    """Publish one task; a broker outage becomes :class:`BrokerUnavailable` (retryable)."""
    try:
        app.send_task(
            name,
            kwargs=kwargs,
            queue=app.conf.task_default_queue,
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.5,
                "interval_step": 1,
                "interval_max": 2,
            },
        )
    except Exception as exc:  # kombu/redis raise many types for one meaning: broker down
        raise BrokerUnavailable(
            f"cannot publish {name} to the broker: {exc}", hint="check Redis (broker_url)"
        ) from exc
