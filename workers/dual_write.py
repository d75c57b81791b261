"""Celery tasks for applications' dual write: ``index_documents(ids)``, ``delete_documents(ids)``.

Thin wrappers around :class:`backfleet.dualwrite.DualWriter`, run by the fleet's workers with
their per-process connections and the same fleet-wide limiter as the backfill. A service
outage retries the task with backoff (upserts and deletes are idempotent); a permanent error
(no alias, a foreign live collection, an unknown model) is logged and not retried: catch-up
repairs any document it missed.
"""

from __future__ import annotations

from typing import Any

from backfleet.dualwrite import DualWriter
from backfleet.errors import ServiceUnavailable, VectorStoreUnavailable
from backfleet.logs import get_logger
from workers.context import WorkerContext
from workers.tasks import _send

log = get_logger("backfleet.dual_write")

INDEX_TASK = "backfleet.index_documents"
DELETE_TASK = "backfleet.delete_documents"


def _writer(ctx: WorkerContext, alias: str | None) -> DualWriter:
    return DualWriter(
        ctx.settings,
        db=ctx.db,
        store=ctx.store,
        source=ctx.source,
        alias=alias,
        embedder=ctx.embedder,
        throttle=ctx.throttle,
        generation=ctx.generation,
    )


def register(app: Any, ctx: WorkerContext) -> None:
    """Register the dual-write tasks on ``app``."""
    options: dict[str, Any] = {
        "bind": True,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "ignore_result": True,
        "autoretry_for": (ServiceUnavailable,),
        "retry_backoff": 2,
        "retry_backoff_max": 30,
        "max_retries": None,
    }

    def index_documents(self: Any, ids: list[Any], alias: str | None = None) -> int:
        try:
            res = _writer(ctx, alias).index_documents(ids)
        except VectorStoreUnavailable:
            ctx.reset_store()
            raise
        return sum(g.upserted for g in res.generations.values())

    def delete_documents(self: Any, ids: list[Any], alias: str | None = None) -> int:
        try:
            res = _writer(ctx, alias).delete_documents(ids)
        except VectorStoreUnavailable:
            ctx.reset_store()
            raise
        return sum(g.deleted for g in res.generations.values())

    app.task(name=INDEX_TASK, **options)(index_documents)
    app.task(name=DELETE_TASK, **options)(delete_documents)


def send_index_documents(app: Any, ids: list[Any], alias: str | None = None) -> None:
    """Queue a dual write of ``ids`` (read from the source by the worker)."""
    _dispatch(app, INDEX_TASK, ids, alias)


def send_delete_documents(app: Any, ids: list[Any], alias: str | None = None) -> None:
    """Queue a dual delete of ``ids``."""
    _dispatch(app, DELETE_TASK, ids, alias)


def _dispatch(app: Any, name: str, ids: list[Any], alias: str | None) -> None:
    kwargs: dict[str, Any] = {"ids": list(ids), "alias": alias}
    if app.conf.task_always_eager:
        app.tasks[name].apply(kwargs=kwargs)
        return
    _send(app, name, kwargs)
