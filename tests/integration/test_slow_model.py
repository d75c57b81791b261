"""A slow model (time grows with the batch) whose full batch cannot finish within the request
timeout: the request is split instead of failing the range. Real worker process, real HTTP to
the rehearsal provider configured slow per input, real Postgres, Redis and Milvus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backfleet.corpus import seed_source
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import BackfillSettings, ModelSettings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration

DOCS = 300
#: 256 inputs take 5.1 s, 128 take 2.6 s: over the 2 s timeout; 64 take 1.3 s, 32 0.6 s
PER_INPUT_MS = 20.0
TIMEOUT_S = 2.0


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def test_a_batch_too_slow_for_the_timeout_is_split_and_the_range_completes(
    pg_url: str, milvus_uri: str, tmp_path: Path
) -> None:
    provider = RehearsalServer(require_key=False, faults={"latency_per_input_ms": PER_INPUT_MS})
    provider.start()
    settings = make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(14),
        milvus_uri=milvus_uri,
        backfill=BackfillSettings(
            range_size=1000,
            batch_size=256,
            lease_seconds=30,
            heartbeat_seconds=3,
            max_attempts=1,  # one attempt: today the range fails after its retries
            queue="bf_slow",
        ),
        target_model="slow",
        models={
            "slow": ModelSettings(
                provider="openai",
                name="all-mpnet-base-v2",
                version="1",
                dimension=32,
                send_dimensions=True,
                base_url=provider.url,
                requires_api_key=False,
                timeout_seconds=TIMEOUT_S,
            )
        },
    )
    engine = make_engine(pg_url)
    seed_source(engine, DOCS)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    embedder = embedder_for(settings, "slow")
    report = plan_migration(settings, db, store, source, embedder, model_label="slow", actor="test")
    assert report.ranges == 1
    fleet = WorkerFleet(settings_env(settings), tmp_path)
    fleet.start(1, concurrency=1)
    try:
        sent = start_migration(
            db, store, create_app(settings), report.migration_id, actor="t", index_type="HNSW"
        )
        assert sent == 1

        def finished() -> bool:
            st = migration_status(db, report.migration_id, settings.alias)
            assert st.ranges["failed"] == 0, st.failed
            return st.ranges["done"] == 1

        wait_for(finished, 240, "the slow model's range to finish", on_timeout=fleet.logs)
    finally:
        fleet.stop()
        provider.stop()
    st = migration_status(db, report.migration_id, settings.alias)
    assert st.docs_done == DOCS
    assert store.open_generation(report.target_generation).count() == DOCS
    store.close()
