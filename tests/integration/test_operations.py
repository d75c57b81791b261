"""Operator commands and the reaper against real Postgres, Redis, Milvus and workers."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import update

from backfleet.corpus import seed_source
from backfleet.db.models import Range, RangeState
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.errors import MigrationStateError, NotFound
from backfleet.settings import BackfillSettings, Settings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator import operations
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.reaper import ReaperSettings, reap_once
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration


class Env:
    def __init__(
        self, settings: Settings, db: Database, store: VectorStore, source: Source, tmp: Path
    ) -> None:
        self.settings, self.db, self.store, self.source, self.tmp = settings, db, store, source, tmp
        self.app = create_app(settings)
        self.fleet = WorkerFleet(settings_env(settings), tmp)

    def plan(self) -> int:
        emb = embedder_for(self.settings, "local-v2")
        return plan_migration(
            self.settings,
            self.db,
            self.store,
            self.source,
            emb,
            model_label="local-v2",
            actor="test",
        ).migration_id

    def status(self, mid: int) -> Any:
        return migration_status(self.db, mid, self.settings.alias)

    def wait_done(self, mid: int, timeout: float = 180) -> None:
        def done() -> bool:
            st = self.status(mid)
            return bool(st.ranges["done"] == sum(st.ranges.values()))

        wait_for(done, timeout, f"migration {mid} done", on_timeout=self.fleet.logs)

    def assert_exactly_once(self, mid: int) -> None:
        st = self.status(mid)
        gen = self.store.open_generation(st.target_generation)
        ids: list[Any] = []
        for rows in gen.scan(None, None, fields=("id",)):
            ids.extend(r["id"] for r in rows)
        assert len(ids) == len(set(ids)) == gen.count() == st.total_docs


@pytest.fixture
def env(milvus_uri: str, tmp_path: Path) -> Iterator[Env]:
    with postgres_database() as pg:
        settings = make_settings(
            pg_url=pg,
            redis_url=redis_db_url(9),
            milvus_uri=milvus_uri,
            backfill=BackfillSettings(
                range_size=500,
                batch_size=50,
                lease_seconds=6,
                heartbeat_seconds=2,
                queue=f"bfops_{time.time_ns()}",
            ),
        )
        engine = make_engine(pg)
        seed_source(engine, 6000)
        db = Database(pg)
        upgrade(db.engine)
        e = Env(settings, db, VectorStore(milvus_uri), Source(engine, settings.source), tmp_path)
        try:
            yield e
        finally:
            e.fleet.stop()
            db.dispose()


def test_pause_holds_and_resume_finishes_exactly_once(env: Env) -> None:
    mid = env.plan()
    env.fleet.start(1, concurrency=2)
    start_migration(env.db, env.store, env.app, mid, actor="t", index_type="HNSW")
    wait_for(
        lambda: env.status(mid).docs_done >= 500, 60, "some progress", on_timeout=env.fleet.logs
    )
    assert operations.pause(env.db, mid, actor="t") == "paused"
    assert operations.pause(env.db, mid, actor="t") == "already paused"  # idempotent
    time.sleep(3)  # in-flight batches hit the fence and stop
    frozen = env.status(mid)
    assert frozen.state == "paused" and frozen.ranges["running"] == 0
    time.sleep(4)
    assert env.status(mid).docs_done == frozen.docs_done
    assert frozen.docs_done < 6000
    sent = operations.resume(env.db, env.app, mid, actor="t")
    assert sent == frozen.ranges["pending"]
    env.wait_done(mid)
    env.assert_exactly_once(mid)


def test_reaper_resends_lost_messages_and_dead_workers_ranges(env: Env) -> None:
    mid = env.plan()
    start_migration(env.db, env.store, env.app, mid, actor="t", index_type="HNSW")
    redis.Redis.from_url(env.settings.broker_url).flushdb()  # the broker lost every message
    env.fleet.start(2, concurrency=1)
    time.sleep(4)
    assert env.status(mid).docs_done == 0  # nothing to do without messages
    cfg = ReaperSettings(interval_seconds=1, resend_after_seconds=0)
    assert reap_once(env.db, env.app, cfg, queue_depth=0) == 12
    # kill a worker in the middle of a range; its lease expires and the reaper re-sends it
    wait_for(lambda: env.status(mid).ranges["running"] > 0, 30, "a running range")
    victim = env.fleet.alive()[0]
    env.fleet.kill(victim, signal.SIGKILL)
    stop = threading.Event()

    def reaper() -> None:
        while not stop.is_set():
            reap_once(env.db, env.app, ReaperSettings(1, 5), queue_depth=None)
            time.sleep(1)

    t = threading.Thread(target=reaper, daemon=True)
    t.start()
    try:
        env.wait_done(mid)
    finally:
        stop.set()
        t.join()
    env.assert_exactly_once(mid)


def test_retry_failed_and_cancel_refusals(env: Env) -> None:
    mid = env.plan()
    start_migration(env.db, env.store, env.app, mid, actor="t", index_type="HNSW")
    st = env.status(mid)
    with env.db.session() as s:
        s.execute(
            update(Range)
            .where(Range.migration_id == mid)
            .values(state=RangeState.FAILED, attempts=5, last_error="ProviderRejected: simulated")
        )
    assert env.status(mid).ranges["failed"] == 12
    with pytest.raises(NotFound, match="range 999999 does not exist"):
        operations.retry_failed(env.db, env.app, mid, actor="t", range_ids=[999999])
    # two operators at once: every range is retried exactly once
    results: list[list[int]] = []
    barrier = threading.Barrier(2)

    def op() -> None:
        barrier.wait()
        results.append(operations.retry_failed(env.db, env.app, mid, actor="t"))

    threads = [threading.Thread(target=op) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results[0] + results[1]) == sorted(set(results[0] + results[1]))
    assert len(results[0]) + len(results[1]) == 12
    env.fleet.start(1, concurrency=2)
    env.wait_done(mid)
    env.assert_exactly_once(mid)
    assert st.total_docs == 6000
    # cancel, then retrying is refused with a clear reason
    mid2_err = None
    operations.cancel(env.db, mid, actor="t")
    with pytest.raises(MigrationStateError, match="cancelled; its ranges cannot be retried"):
        operations.retry_failed(env.db, env.app, mid, actor="t")
    assert mid2_err is None
