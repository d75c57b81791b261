"""What a worker process needs, built lazily once per process (after a prefork fork)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from backfleet.db.models import Migration
from backfleet.db.session import Database, check_reachable, make_engine
from backfleet.embedding.base import Embedder
from backfleet.embedding.factory import embedder_for
from backfleet.embedding.probe import establish_identity
from backfleet.errors import BackfleetError, NotFound
from backfleet.lifecycle import FILLING
from backfleet.limits import Throttle, build_throttle
from backfleet.logs import get_logger
from backfleet.settings import Settings
from backfleet.source import Source
from backfleet.vectorstore import Generation, VectorStore

log = get_logger("backfleet.worker")


class WorkerContext:
    """Per-process resources: checkpoint DB, source, Milvus, embedders, throttle."""

    def __init__(
        self, settings: Settings, *, throttle: Throttle | None = None, slots: int = 1
    ) -> None:
        self.settings = settings
        #: ranges this process runs at once (the thread pool's concurrency; 1 for prefork)
        self.slots = slots
        self._pid = -1
        self._lock = threading.Lock()
        self._throttle_override = throttle
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        #: one identity probe per process and model at a time (the warm-up and a first task)
        self._probe_lock = threading.Lock()
        self._db: Database | None = None
        self._source: Source | None = None
        self._store: VectorStore | None = None
        self._embedders: dict[str, Embedder] = {}
        self._generations: dict[str, Generation] = {}
        self._throttles: dict[str, Throttle] = {}

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            with self._lock:  # the warm-up thread and the first task may both get here
                if os.getpid() != self._pid:
                    self._reset()

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"

    @property
    def db(self) -> Database:
        self._check_pid()
        with self._lock:
            if self._db is None:
                # per running range: its pinned checkpoint connection, heartbeats, claims
                self._db = Database(self.settings.database_url, pool_size=2 * self.slots + 2)
            return self._db

    @property
    def source(self) -> Source:
        self._check_pid()
        with self._lock:
            if self._source is None:
                # per running range: the connection its keyset walk holds
                engine = make_engine(
                    self.settings.source.url, what="source.url", pool_size=self.slots + 2
                )
                self._source = Source(engine, self.settings.source)
            return self._source

    @property
    def store(self) -> VectorStore:
        self._check_pid()
        with self._lock:
            if self._store is None:
                token = self.settings.milvus_token
                self._store = VectorStore(
                    self.settings.milvus_uri, token.get_secret_value() if token else None
                )
            return self._store

    @property
    def process_owner(self) -> str:
        """This worker process (``host:pid``): who reports that it cannot serve a migration."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def embedder(self, label: str) -> Embedder:
        """The embedder of ``label`` with its model identity established (cached).

        The identity probe goes through the fleet throttle and the retry layer, once per
        process and model. A probe that fails raises its error and caches nothing: the next
        task probes again.
        """
        self._check_pid()
        with self._lock:
            ready = self._embedders.get(label)
        if ready is not None:
            return ready
        with self._probe_lock:
            with self._lock:
                ready = self._embedders.get(label)
            if ready is not None:
                return ready
            embedder = embedder_for(self.settings, label)
            establish_identity(embedder, self.throttle(label))
            with self._lock:
                self._embedders[label] = embedder
            return embedder

    def throttle(self, label: str) -> Throttle:
        self._check_pid()
        if self._throttle_override is not None:
            return self._throttle_override
        with self._lock:
            if label not in self._throttles:
                self._throttles[label] = build_throttle(self.settings, label)
            return self._throttles[label]

    def reset_store(self) -> None:
        """Drop the Milvus client after an outage; the next use reconnects."""
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._store = None
            self._generations = {}

    def generation(self, name: str) -> Generation:
        self._check_pid()
        gen = self._generations.get(name)
        if gen is None:
            gen = self.store.open_generation(name)
            self._generations[name] = gen
        return gen

    def warm(self) -> None:
        """Open every connection a task needs now, not on the first task (worker start).

        The checkpoint database, the source (its table is reflected), Milvus, the target
        model's embedder and the generations of running migrations. Nothing here is
        required: a part that fails is logged and retried by the first task that needs it,
        which reports the error the usual way.
        """
        started = time.monotonic()
        steps: list[tuple[str, Callable[[], object]]] = [
            ("database", lambda: check_reachable(self.db.engine)),
            ("source", lambda: self.source),
            ("milvus", lambda: self.store),
            ("embedder", lambda: self.embedder(self.settings.target_model)),
            ("generations", self._open_filling_generations),
        ]
        failed = []
        for part, step in steps:
            try:
                step()
            except BackfleetError as exc:
                failed.append(part)
                log.warning("worker_warm_failed", part=part, error=str(exc))
        log.info(
            "worker_warmed",
            pid=os.getpid(),
            seconds=round(time.monotonic() - started, 3),
            failed=failed or None,
        )

    def _open_filling_generations(self) -> None:
        with self.db.session() as session:
            names = session.scalars(
                select(Migration.target_generation).where(Migration.state.in_(FILLING))
            ).all()
        for name in names:
            try:
                self.generation(name)
            except BackfleetError as exc:  # a dropped or foreign collection: its task will say
                log.warning("worker_warm_failed", part=f"generation {name}", error=str(exc))

    def migration(self, migration_id: int) -> Migration:
        with self.db.session() as session:
            migration = session.get(Migration, migration_id)
            if migration is None:
                raise NotFound(f"migration {migration_id} does not exist")
            session.expunge(migration)
            return migration

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._db is not None:
            self._db.dispose()
        self._reset()

    def __getstate__(self) -> dict[str, Any]:  # never pickled with live connections
        raise TypeError("WorkerContext is per process")
