"""The Celery app factory (Redis broker)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from backfleet.errors import ConfigError
from backfleet.limits import Throttle
from backfleet.logs import get_logger
from backfleet.settings import Settings
from workers.context import WorkerContext
from workers.dual_write import register as register_dual_write
from workers.tasks import register_tasks

log = get_logger("backfleet.worker")


def create_app(settings: Settings, *, eager: bool = False, throttle: Throttle | None = None) -> Any:
    """A Celery app whose tasks run the range pipeline with ``settings``.

    ``eager`` runs tasks in the calling process (the demo: no broker, same pipeline code).
    """
    cfg = settings.backfill
    if not eager:
        patch_kombu_restore_unacked()
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


def patch_kombu_restore_unacked() -> None:
    """Survive a broker restart: kombu's Redis ``QoS.restore_unacked`` on a dead connection.

    When Redis goes away, Celery collects the consumer's connection, which detaches the
    transport from it (``transport.client = None``); a channel that still holds unacked
    messages and is closed after that tries to push them back through a new pool built from
    ``transport.client.hostname`` and raises ``AttributeError: 'NoneType' object has no
    attribute 'hostname'`` (kombu 5.7.0). In the consumer that is an "Unrecoverable error":
    the worker stops. Nothing can be restored through a connection that is gone, and nothing
    is lost by not trying: the messages stay in Redis's unacked index if Redis kept them
    (restored after the visibility timeout), and Postgres is the truth — the reaper re-sends
    every pending range and every range whose lease expired. So the channel forgets them.
    """
    from kombu.transport import redis as kombu_redis

    qos_cls: Any = kombu_redis.QoS
    if getattr(qos_cls, "_backfleet_patched", False):
        return
    original = qos_cls.restore_unacked

    def restore_unacked(self: Any, client: Any = None) -> Any:
        transport = getattr(self.channel, "connection", None)
        if client is None and (transport is None or getattr(transport, "client", None) is None):
            log.warning("broker_unacked_not_restored", messages=len(self._delivered))
            self._delivered.clear()
            return None
        return original(self, client)

    qos_cls.restore_unacked = restore_unacked
    qos_cls._backfleet_patched = True
