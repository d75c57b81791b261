"""WorkerContext.warm: connects what it can at worker start; a failing part is logged, not fatal."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from backfleet.corpus import seed_source
from backfleet.db.checkpoint import utcnow
from backfleet.db.models import Migration, MigrationState
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.errors import VectorStoreUnavailable
from backfleet.settings import Settings, SourceSettings
from workers.context import WorkerContext


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'bf.db'}"
    engine = make_engine(url)
    seed_source(engine, 20)
    upgrade(engine)
    engine.dispose()
    return Settings(
        database_url=url,
        milvus_uri="http://127.0.0.1:9",  # nothing listens here
        source=SourceSettings(url=url, table="documents"),
    )


def test_warm_connects_database_and_source_and_reports_an_unreachable_milvus(
    settings: Settings,
) -> None:
    ctx = WorkerContext(settings)
    with capture_logs() as logs:
        ctx.warm()  # does not raise
    failed = [e for e in logs if e["event"] == "worker_warm_failed"]
    assert [e["part"] for e in failed] == ["milvus"]
    assert "127.0.0.1:9" in failed[0]["error"]
    done = [e for e in logs if e["event"] == "worker_warmed"]
    assert done and "milvus" in done[0]["failed"]
    # what did connect is kept for the first task: no second reflection of the source
    assert ctx._source is not None and ctx._db is not None
    assert ctx.source is ctx._source
    with pytest.raises(VectorStoreUnavailable):  # the first task reports it the usual way
        _ = ctx.store
    ctx.close()


def test_a_running_migration_whose_generation_is_gone_does_not_stop_the_warm_up(
    settings: Settings,
) -> None:
    db = Database(settings.database_url)
    now = utcnow()
    with db.session() as s:
        s.add(
            Migration(
                alias="a",
                target_generation="a__gone__g1",
                target_model="local-v2",
                target_identity="{}",
                id_type="int",
                state=MigrationState.BACKFILLING,
                settings_snapshot={},
                created_at=now,
                updated_at=now,
            )
        )
    db.dispose()
    ctx = WorkerContext(settings)
    with capture_logs() as logs:
        ctx.warm()
    parts = [e["part"] for e in logs if e["event"] == "worker_warm_failed"]
    # Milvus is unreachable here, so opening the generation fails too: each is named
    assert "milvus" in parts
    assert any(p == "generation a__gone__g1" for p in parts)
    ctx.close()
