"""A worker whose source is not the migration's refuses its ranges (issue 13 #2).

Two aliases share the broker queue and the checkpoint database; B's migration is planned on
table ``docs_b``. A worker configured with ``source.table = docs_a`` gets B's tasks: before
the fix it embedded table A into B's shadow and marked the ranges done.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from backfleet.corpus import seed_source
from backfleet.db.models import Event, Migration, Range, RangeState
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.settings import BackfillSettings, SourceSettings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.reaper import ReaperSettings, reap_once
from coordinator.reconciler import reconcile_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def test_worker_with_another_source_table_refuses_and_the_right_one_finishes(
    pg_url: str, milvus_uri: str, tmp_path: Path
) -> None:
    engine = make_engine(pg_url)
    seed_source(engine, 400, table="docs_a", seed=1)
    seed_source(engine, 300, table="docs_b", seed=2)
    backfill = BackfillSettings(
        range_size=100,
        batch_size=50,
        lease_seconds=6,
        heartbeat_seconds=2,
        queue=f"bfsrc_{time.time_ns()}",  # one queue for both aliases' workers
    )
    settings_b = make_settings(
        pg_url=pg_url, redis_url=redis_db_url(7), milvus_uri=milvus_uri, backfill=backfill
    )
    settings_b = settings_b.model_copy(
        update={
            "source": SourceSettings(url=pg_url, table="docs_b", updated_at_column="updated_at")
        }
    )
    settings_a = settings_b.model_copy(
        update={
            "alias": settings_b.alias + "_a",
            "source": SourceSettings(url=pg_url, table="docs_a", updated_at_column="updated_at"),
        }
    )
    db = Database(pg_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    source_b = Source(engine, settings_b.source)
    report = plan_migration(
        settings_b,
        db,
        store,
        source_b,
        embedder_for(settings_b, "local-v2"),
        model_label="local-v2",
        actor="test",
    )
    with db.session() as s:
        m = s.get(Migration, report.migration_id)
        assert m is not None and m.source_identity is not None
        assert m.source_identity["table"] == "docs_b"
        assert "password" not in str(m.source_identity) and m.source_fingerprint

    wrong = WorkerFleet(settings_env(settings_a), tmp_path / "wrong")
    (tmp_path / "wrong").mkdir()
    wrong.start(1, concurrency=1)
    app = create_app(settings_b)
    try:
        start_migration(db, store, app, report.migration_id, actor="t", index_type="HNSW")

        def refused_or_done() -> bool:
            with db.session() as s:
                refused = s.execute(
                    select(Event.range_id).where(
                        Event.migration_id == report.migration_id, Event.kind == "range_refused"
                    )
                ).scalars()
                done = s.execute(
                    select(Range.id).where(
                        Range.migration_id == report.migration_id, Range.state == RangeState.DONE
                    )
                ).first()
                return done is not None or len(set(refused)) == report.ranges

        wait_for(refused_or_done, 120, "B's ranges refused (or done)", on_timeout=wrong.logs)
        logs = wrong.logs()
    finally:
        wrong.stop()
    st = migration_status(db, report.migration_id, settings_b.alias)
    assert st.ranges["done"] == 0, "a worker configured for docs_a filled B's shadow"
    assert st.ranges["pending"] == report.ranges and st.docs_done == 0
    assert "worker_source_mismatch" in logs
    with db.session() as s:
        ranges = list(
            s.execute(select(Range).where(Range.migration_id == report.migration_id)).scalars()
        )
    for r in ranges:
        assert r.attempts == 0 and r.claims == 0
        assert r.last_error and "docs_b" in r.last_error and "docs_a" in r.last_error
    assert st.refused and "planned on table 'docs_b'" in st.refused[0]["reason"]
    assert store.open_generation(report.target_generation).count() == 0
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "backfleet"), "status"],
        env={**os.environ, **settings_env(settings_b)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "refused range" in shown.stdout and "docs_b" in shown.stdout, shown.stdout

    # a correctly configured worker finishes B; reconcile is clean
    right = WorkerFleet(settings_env(settings_b), tmp_path)
    right.start(1, concurrency=1)
    stop = threading.Event()

    def reaper() -> None:
        while not stop.is_set():
            reap_once(db, app, ReaperSettings(1, 1), queue_depth=None)
            time.sleep(1)

    t = threading.Thread(target=reaper, daemon=True)
    t.start()
    try:
        wait_for(
            lambda: (
                migration_status(db, report.migration_id, settings_b.alias).ranges["done"]
                == report.ranges
            ),
            120,
            "B done by the right worker",
            on_timeout=right.logs,
        )
    finally:
        stop.set()
        t.join()
        right.stop()
    with db.session() as s:
        m = s.get(Migration, report.migration_id)
        assert m is not None
        s.expunge(m)
    result = reconcile_migration(
        db, source_b, store.open_generation(report.target_generation), m, None, sample=0
    )
    assert result.clean, result
    assert migration_status(db, report.migration_id, settings_b.alias).refused == []
    db.dispose()


def test_worker_with_another_model_definition_refuses_and_status_says_why(
    pg_url: str, milvus_uri: str
) -> None:
    """The same refusal for a model mismatch: before the claim, visible in `status`."""
    from backfleet.settings import ModelSettings
    from workers.context import WorkerContext
    from workers.pipeline import RangePipeline

    engine = make_engine(pg_url)
    seed_source(engine, 50)
    settings = make_settings(pg_url=pg_url, redis_url=redis_db_url(7), milvus_uri=milvus_uri)
    db = Database(pg_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    report = plan_migration(
        settings,
        db,
        store,
        Source(engine, settings.source),
        embedder_for(settings, "local-v2"),
        model_label="local-v2",
        actor="test",
    )
    start_migration(
        db, store, create_app(settings), report.migration_id, actor="t", index_type="HNSW"
    )
    other = settings.model_copy(
        update={
            "models": {
                **settings.models,
                "local-v2": ModelSettings(name="hash-ngrams", version="3", dimension=384),
            }
        }
    )
    ctx = WorkerContext(other)
    with db.session() as s:
        rid = s.execute(
            select(Range.id).where(Range.migration_id == report.migration_id)
        ).scalar_one()
    assert RangePipeline(ctx).run(report.migration_id, rid) == "refused"
    ctx.close()
    st = migration_status(db, report.migration_id, settings.alias)
    assert st.ranges["pending"] == 1
    assert len(st.refused) == 1 and "hash-ngrams" in st.refused[0]["reason"], st.refused
    with db.session() as s:
        r = s.get(Range, rid)
        assert r is not None and r.attempts == 0 and r.claims == 0
    db.dispose()
