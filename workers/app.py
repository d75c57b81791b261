"""The Celery app factory (Redis broker)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from backfleet.errors import ConfigError
from backfleet.limits import Throttle
from backfleet.settings import Settings
from workers.context import WorkerContext
from workers.dual_write import register as register_dual_write
from workers.tasks import register_tasks


def create_app(settings: Settings, *, eager: bool = False, throttle: Throttle | None = None) -> Any:
    """A Celery app whose tasks run the range pipeline with ``settings``.

    ``eager`` runs tasks in the calling process (the demo: no broker, same pipeline code).
    """
    cfg = settings.backfill
    if cfg.visibility_timeout_seconds <= cfg.lease_seconds:
        raise ConfigError(
            "backfill.visibility_timeout_seconds must be longer than backfill.lease_seconds",
            hint="raise backfill.visibility_timeout_seconds (default 21600)",
        )
    app = Celery(
        "backfleet", broker="memory://" if eager else settings.broker_url, set_as_current=False
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=cfg.queue,
        broker_transport_options={"visibility_timeout": cfg.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_always_eager=eager,
        task_eager_propagates=True,
    )
    ctx = WorkerContext(settings, throttle=throttle)
    register_tasks(app, ctx)
    register_dual_write(app, ctx)
    app.backfleet_context = ctx
    return app
