"""Celery tasks: thin wrappers around the range pipeline.

Messages are hints; Postgres is the truth. A task for a range that is done or held by a
live lease does nothing. A range handed back (service outage) or retried after an error is
re-sent with a short countdown; the reaper re-sends anything else that goes missing.
"""

from __future__ import annotations

from typing import Any

from backfleet.logs import get_logger
from workers.context import WorkerContext
from workers.pipeline import RangePipeline

log = get_logger("backfleet.tasks")

BACKFILL_TASK = "backfleet.backfill_range"
RETRY_COUNTDOWN_SECONDS = (2, 5, 10, 20, 30)


def register_tasks(app: Any, ctx: WorkerContext) -> None:
    pipeline = RangePipeline(ctx)

    @app.task(name=BACKFILL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True)
    def backfill_range(self: Any, migration_id: int, range_id: int) -> str:
        outcome = pipeline.run(migration_id, range_id)
        if outcome in ("released", "retry") and not app.conf.task_always_eager:
            redeliveries = int(self.request.retries or 0)
            countdown = RETRY_COUNTDOWN_SECONDS[min(redeliveries, len(RETRY_COUNTDOWN_SECONDS) - 1)]
            self.retry(countdown=countdown, max_retries=None, throw=False,
                       kwargs={"migration_id": migration_id, "range_id": range_id})
            log.info("range_requeued", migration=migration_id, range=range_id, countdown=countdown)
        return outcome


def enqueue_range(app: Any, migration_id: int, range_id: int) -> None:
    """Send one backfill task (kwargs keep Flower readable: migration_id=…, range_id=…)."""
    if app.conf.task_always_eager:  # the demo: run it here, through the same task code
        app.tasks[BACKFILL_TASK].apply(kwargs={"migration_id": migration_id, "range_id": range_id})
        return
    app.send_task(
        BACKFILL_TASK,
        kwargs={"migration_id": migration_id, "range_id": range_id},
        queue=app.conf.task_default_queue,
    )
