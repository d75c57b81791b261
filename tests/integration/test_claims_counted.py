"""Every claim is counted: a range whose worker keeps dying, or that raises something
unexpected, ends ``failed`` after ``backfill.max_attempts`` instead of looping (issue 13 #7).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from backfleet.corpus import seed_source
from backfleet.db.models import Event, Range, RangeState
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.rehearsal.server import RehearsalServer
from backfleet.settings import BackfillSettings, ModelSettings, Settings, load_settings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.reaper import ReaperSettings, reap_once
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers import pipeline as pipeline_module
from workers.app import create_app
from workers.context import WorkerContext
from workers.pipeline import RangePipeline

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 3


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        seed_source(make_engine(url), 200)
        db = Database(url)
        upgrade(db.engine)
        db.dispose()
        yield url


def backfill(queue: str) -> BackfillSettings:
    return BackfillSettings(
        range_size=1000,  # one range holds every document
        batch_size=10,
        lease_seconds=3,
        heartbeat_seconds=1,
        max_attempts=MAX_ATTEMPTS,
        queue=queue,
    )


def plan(settings: Settings, db: Database, store: VectorStore, url: str, label: str) -> int:
    source = Source(make_engine(url), settings.source)
    emb = embedder_for(settings, label)
    report = plan_migration(settings, db, store, source, emb, model_label=label, actor="test")
    assert report.ranges == 1
    return report.migration_id


def the_range(db: Database, mid: int) -> Range:
    with db.session() as s:
        r = s.execute(select(Range).where(Range.migration_id == mid)).scalar_one()
        s.expunge(r)
        return r


def claims(db: Database, mid: int) -> int:
    with db.session() as s:
        return int(
            s.execute(
                select(func.count()).where(Event.migration_id == mid, Event.kind == "range_claimed")
            ).scalar_one()
        )


def test_a_range_whose_worker_dies_every_time_fails_after_max_attempts(
    pg_url: str, milvus_uri: str, tmp_path: Path
) -> None:
    """The OOM killer takes the worker on this range, every time (SIGKILL at each claim)."""
    provider = RehearsalServer(latency_ms=400).start()  # the range takes ~8 s to embed
    try:
        model = ModelSettings(
            provider="openai",
            name="text-embedding-3-small",
            version="1",
            dimension=32,
            send_dimensions=True,
            base_url=provider.url,
            api_key_env="REHEARSAL_API_KEY",
            timeout_seconds=10,
        )
        base = make_settings(
            pg_url=pg_url,
            redis_url=redis_db_url(6),
            milvus_uri=milvus_uri,
            backfill=backfill(f"bfdie_{time.time_ns()}"),
            models={"rehearsal": model},
            target_model="rehearsal",
        )
        env = {**settings_env(base), "REHEARSAL_API_KEY": "sk-rehearsal"}
        settings = load_settings(None, environ=env)  # the API key resolved, as workers do
        db = Database(pg_url)
        store = VectorStore(milvus_uri)
        mid = plan(settings, db, store, pg_url, "rehearsal")
        app = create_app(settings)
        fleet = WorkerFleet(env, tmp_path)
        start_migration(db, store, app, mid, actor="t", index_type="HNSW")
        stop = threading.Event()

        def reaper() -> None:  # what `backfleet supervise` does
            while not stop.is_set():
                reap_once(db, app, ReaperSettings(0.5, 1), queue_depth=None)
                time.sleep(0.5)

        t = threading.Thread(target=reaper, daemon=True)
        t.start()
        try:
            for death in range(1, MAX_ATTEMPTS + 1):
                fleet.start(1, concurrency=1)
                wait_for(
                    lambda death=death: claims(db, mid) >= death,  # type: ignore[misc]
                    90,
                    f"claim {death}",
                    interval=0.1,
                    on_timeout=fleet.logs,
                )
                fleet.kill(fleet.alive()[0])  # SIGKILL the worker holding the range
            fleet.start(1, concurrency=1)  # the next worker takes the expired lease over

            def ended() -> bool:
                r = the_range(db, mid)
                return r.state == RangeState.FAILED or claims(db, mid) > MAX_ATTEMPTS

            wait_for(ended, 90, "the range failed (or claimed again)", on_timeout=fleet.logs)
        finally:
            stop.set()
            t.join()
            fleet.stop()
        r = the_range(db, mid)
        assert r.state == RangeState.FAILED, (r.state, r.attempts, r.last_error)
        assert claims(db, mid) == MAX_ATTEMPTS
        assert r.attempts == MAX_ATTEMPTS and r.lost_leases == MAX_ATTEMPTS
        assert r.last_error is not None
        assert f"worker died {MAX_ATTEMPTS} times on this range" in r.last_error
        st = migration_status(db, mid, settings.alias)
        assert st.ranges["failed"] == 1
        assert f"worker died {MAX_ATTEMPTS} times" in st.failed[0]["error"]
        db.dispose()
    finally:
        provider.stop()


def test_an_unexpected_exception_is_counted_and_fails_the_range(
    pg_url: str, milvus_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a BackfleetError (a bug, a driver error not converted): each run counts one attempt."""
    settings = make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(6),
        milvus_uri=milvus_uri,
        backfill=backfill(f"bfbug_{time.time_ns()}"),
    )
    db = Database(pg_url)
    store = VectorStore(milvus_uri)
    mid = plan(settings, db, store, pg_url, "local-v2")
    app = create_app(settings)
    start_migration(db, store, app, mid, actor="t", index_type="HNSW")

    def broken(*_: Any, **__: Any) -> Any:
        raise KeyError("vectors")

    monkeypatch.setattr(pipeline_module, "embed_batch", broken)
    ctx = WorkerContext(settings)
    rid = the_range(db, mid).id
    outcomes = [RangePipeline(ctx).run(mid, rid) for _ in range(MAX_ATTEMPTS)]
    ctx.close()
    assert outcomes == ["retry"] * (MAX_ATTEMPTS - 1) + ["failed"]
    r = the_range(db, mid)
    assert r.state == RangeState.FAILED and r.attempts == MAX_ATTEMPTS
    assert r.lease_token is None and r.lost_leases == 0
    assert r.last_error == "KeyError: 'vectors'"
    assert r.claims == MAX_ATTEMPTS
    db.dispose()
    assert os.getpid()  # the test process itself survived every run
