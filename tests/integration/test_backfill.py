"""The spine end to end: real Postgres, Redis, Milvus server and two Celery worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from backfleet.corpus import seed_source
from backfleet.db.models import Range, RangeState
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.limits import NullThrottle
from backfleet.source import Source, text_hash
from backfleet.vectorstore import VectorStore, generation_name
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app
from workers.pipeline import embed_batch

pytestmark = pytest.mark.integration

DOCS = 20_000


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def test_backfill_20k_with_two_workers(
    pg_url: str, milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(pg_url=pg_url, redis_url=redis_db_url(12), milvus_uri=milvus_uri)
    engine = make_engine(pg_url)
    seed_source(engine, DOCS)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)

    # production today: the alias serves a v1 generation (a slice of the corpus is enough)
    v1 = embedder_for(settings, "local-v1")
    live_name = generation_name(
        settings.alias, v1.identity, store.next_generation_number(settings.alias)
    )
    live = store.create_generation(live_name, settings.alias, v1.identity, "int")
    embed_batch(source.batch(None, None, None, 500), v1, NullThrottle(), live)
    store.point_alias(settings.alias, live_name)

    v2 = embedder_for(settings, "local-v2")
    report = plan_migration(settings, db, store, source, v2, model_label="local-v2", actor="test")
    assert report.docs == DOCS
    assert report.ranges == DOCS // settings.backfill.range_size
    assert report.source_generation == live_name

    fleet = WorkerFleet(settings_env(settings), tmp_path)
    fleet.start(2, concurrency=1)
    try:
        app = create_app(settings)
        sent = start_migration(db, store, app, report.migration_id, actor="test", index_type="HNSW")
        assert sent == report.ranges

        def finished() -> bool:
            st = migration_status(db, report.migration_id, settings.alias)
            assert st.ranges["failed"] == 0, st.failed
            return st.ranges["done"] == report.ranges

        wait_for(finished, 300, "every range done", on_timeout=fleet.logs)
        assert len(fleet.alive()) == 2, fleet.logs()
        worker_logs = fleet.logs()
    finally:
        fleet.stop()

    # both worker processes took part
    assert worker_logs.count("range_done") >= report.ranges
    shadow = store.open_generation(report.target_generation)
    assert shadow.count() == DOCS

    texts = {d.id: d.text for batch in source.iter_batches(None, None, None, 5000) for d in batch}
    seen: set[int] = set()
    for rows in shadow.scan(None, None, fields=("id", "model", "text_hash")):
        for row in rows:
            assert row["id"] not in seen, f"id {row['id']} twice"
            seen.add(row["id"])
            assert row["model"] == v2.identity.tag
            assert row["text_hash"] == text_hash(texts[row["id"]])
    assert seen == set(texts)

    # the live alias is untouched
    assert store.resolve_alias(settings.alias) == live_name
    assert store.open_generation(live_name).count() == 500

    with db.session() as session:
        ranges = list(
            session.execute(
                select(Range).where(Range.migration_id == report.migration_id)
            ).scalars()
        )
    for r in ranges:
        assert r.state == RangeState.DONE
        last = max(
            i for i in texts if (r.lo is None or i >= int(r.lo)) and (r.hi is None or i < int(r.hi))
        )
        assert r.cursor == str(last)
        assert r.docs_done == source.count(r.lo, r.hi)
    st = migration_status(db, report.migration_id, settings.alias)
    assert st.docs_done == DOCS
    assert st.eta_seconds == 0.0


def test_thread_pool_worker_runs_many_ranges_at_once(
    pg_url: str, milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 ranges in one process at once: each holds a source and a checkpoint connection for
    its walk, so the process's pools must be sized by its slots, not the default 4 + 4."""
    monkeypatch.chdir(tmp_path)
    docs = 6_000
    settings = make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(12),
        milvus_uri=milvus_uri,
        range_size=500,
        batch_size=50,
    )
    engine = make_engine(pg_url)
    seed_source(engine, docs)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    v2 = embedder_for(settings, "local-v2")
    report = plan_migration(settings, db, store, source, v2, model_label="local-v2", actor="test")
    assert report.ranges == 12

    fleet = WorkerFleet(settings_env(settings), tmp_path)
    fleet.start(1, concurrency=12, pool="threads")
    try:
        app = create_app(settings)
        start_migration(db, store, app, report.migration_id, actor="test", index_type="HNSW")

        def finished() -> bool:
            st = migration_status(db, report.migration_id, settings.alias)
            assert st.ranges["failed"] == 0, st.failed
            return st.ranges["done"] == report.ranges

        wait_for(finished, 300, "every range done", on_timeout=fleet.logs)
        logs = fleet.logs()
    finally:
        fleet.stop()
    assert "TimeoutError" not in logs and "QueuePool limit" not in logs, logs[-3000:]
    assert "range_released" not in logs and "range_error" not in logs, logs[-3000:]
    with db.session() as session:
        attempts = session.execute(
            select(Range.attempts).where(Range.migration_id == report.migration_id)
        ).scalars()
        assert set(attempts) == {0}  # no range failed once
    assert store.open_generation(report.target_generation).count() == docs
