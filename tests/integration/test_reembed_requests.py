"""Re-embed requests are Postgres work the reaper sees (issue 13 #10b).

A re-embed task (dead-letter retry, ``reconcile --repair``) held by a worker that is
SIGKILLed waits in Redis ``unacked`` for the 6 h visibility timeout; recorded in
``bf_reembed_requests``, the reaper re-sends it and another worker does it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from backfleet.corpus import seed_source
from backfleet.db.models import ReembedRequest
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.rehearsal.server import RehearsalServer
from backfleet.settings import BackfillSettings, ModelSettings, load_settings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.reaper import ReaperSettings, reap_once
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app
from workers.tasks import enqueue_documents

pytestmark = pytest.mark.integration
DOCS = 120


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        seed_source(make_engine(url), DOCS)
        yield url


def pending_requests(db: Database, mid: int) -> list[tuple[int, list[str]]] | None:
    try:
        with db.session() as s:
            return [
                (r.migration_id, r.doc_ids)
                for r in s.execute(
                    select(ReembedRequest).where(
                        ReembedRequest.migration_id == mid, ReembedRequest.state == "pending"
                    )
                ).scalars()
            ]
    except Exception:
        return None


def test_reembed_held_by_a_killed_worker_is_resent_by_the_reaper(
    pg_url: str, milvus_uri: str, tmp_path: Path
) -> None:
    provider = RehearsalServer().start()
    try:
        model = ModelSettings(
            provider="openai",
            name="text-embedding-3-small",
            version="1",
            dimension=32,
            send_dimensions=True,
            base_url=provider.url,
            api_key_env="REHEARSAL_API_KEY",
            timeout_seconds=30,
        )
        broker = redis_db_url(5)
        base = make_settings(
            pg_url=pg_url,
            redis_url=broker,
            milvus_uri=milvus_uri,
            backfill=BackfillSettings(
                range_size=1000,
                batch_size=50,
                lease_seconds=6,
                heartbeat_seconds=2,
                queue=f"bfre_{time.time_ns()}",
            ),
            models={"rehearsal": model},
            target_model="rehearsal",
        )
        env = {**settings_env(base), "REHEARSAL_API_KEY": "sk-rehearsal"}
        settings = load_settings(None, environ=env)
        db = Database(pg_url)
        upgrade(db.engine)
        store = VectorStore(milvus_uri)
        source = Source(make_engine(pg_url), settings.source)
        report = plan_migration(
            settings,
            db,
            store,
            source,
            embedder_for(settings, "rehearsal"),
            model_label="rehearsal",
            actor="t",
        )
        mid = report.migration_id
        app = create_app(settings)
        fleet = WorkerFleet(env, tmp_path)
        fleet.start(1, concurrency=1)
        start_migration(db, store, app, mid, actor="t", index_type="HNSW")
        wait_for(
            lambda: migration_status(db, mid, settings.alias).ranges["done"] == report.ranges,
            120,
            "backfill done",
            on_timeout=fleet.logs,
        )
        shadow = store.open_generation(report.target_generation)
        lost = list(range(1, 41))
        shadow.delete(lost)  # rows reconcile would report missing
        assert shadow.count() == DOCS - len(lost)

        # the re-embed is in flight on the worker (slow provider) when the worker is killed
        provider.set_faults(latency_ms=20_000)
        enqueue_documents(app, mid, [str(i) for i in lost])
        unacked = redis.Redis.from_url(broker)
        wait_for(lambda: unacked.hlen("unacked") >= 1, 30, "the worker holds the task")
        time.sleep(1)
        fleet.kill(fleet.alive()[0])
        provider.set_faults(latency_ms=0)
        assert unacked.hlen("unacked") >= 1  # stuck there for the visibility timeout (6 h)
        pending_before = pending_requests(db, mid)  # None before the fix: nothing recorded

        fleet.start(1, concurrency=1)
        stop = threading.Event()

        def reaper() -> None:  # `backfleet supervise`
            while not stop.is_set():
                reap_once(db, app, ReaperSettings(1, 3), queue_depth=None)
                time.sleep(1)

        t = threading.Thread(target=reaper, daemon=True)
        t.start()
        try:
            wait_for(
                lambda: shadow.count() == DOCS, 90, "the lost rows back", on_timeout=fleet.logs
            )
            wait_for(lambda: not pending_requests(db, mid), 30, "the request marked done")
        finally:
            stop.set()
            t.join()
            fleet.stop()
        assert pending_before == [(mid, [str(i) for i in lost])]
        with db.session() as s:
            req = s.execute(
                select(ReembedRequest).where(ReembedRequest.migration_id == mid)
            ).scalar_one()
            assert req.state == "done" and req.attempts >= 2 and req.finished_at is not None
        db.dispose()
    finally:
        provider.stop()
