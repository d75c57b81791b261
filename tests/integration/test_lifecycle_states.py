"""The named state sets of backfleet/lifecycle.py in the real queries (issue 14): a migration
walked through pause, resume, retry, a budget pause, catch-up refusal and cancel on real
Postgres, with tasks sent to a real Redis broker; no Milvus (nothing here touches a vector).

The enum members bind as the same strings as before: rows written through them read back
with SQL as plain text, and rows read back compare with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import text

from backfleet.db import checkpoint, reembeds
from backfleet.db.models import Migration, Range
from backfleet.db.schema import upgrade
from backfleet.db.session import Database
from backfleet.errors import MigrationStateError
from backfleet.lifecycle import MigrationState, RangeState
from backfleet.settings import Settings
from coordinator import catchup, operations
from coordinator.lifecycle import transition
from coordinator.reaper import ReaperSettings, reap_once
from coordinator.status import migration_status
from tests.support.fleet import make_settings
from tests.support.services import postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration

RANGES = 3


class Env:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.app = create_app(settings)
        self.broker = redis.Redis.from_url(settings.broker_url)

    def sent(self) -> int:
        """Tasks waiting in the migration's queue (what dispatch sent)."""
        return int(self.broker.llen(self.settings.backfill.queue))

    def status(self, mid: int) -> Any:
        return migration_status(self.db, mid, self.settings.alias)

    def raw(self, sql: str, **params: Any) -> list[Any]:
        with self.db.engine.connect() as conn:
            return list(conn.execute(text(sql), params).scalars())


@pytest.fixture
def env() -> Iterator[Env]:
    with postgres_database() as pg:
        settings = make_settings(
            pg_url=pg, redis_url=redis_db_url(11), milvus_uri="http://127.0.0.1:1"
        )
        db = Database(pg)
        upgrade(db.engine)
        try:
            yield Env(settings, db)
        finally:
            db.dispose()


def make_migration(env: Env) -> int:
    now = checkpoint.utcnow()
    with env.db.session() as s:
        m = Migration(
            alias=env.settings.alias,
            source_generation=None,
            target_generation=f"{env.settings.alias}__m_v1__g1",
            target_model="m",
            target_identity="{}",
            id_type="int",
            state=MigrationState.PLANNED,
            total_docs=30,
            est_tokens=0,
            settings_snapshot={},
            created_at=now,
            updated_at=now,
        )
        s.add(m)
        s.flush()
        for i in range(RANGES):
            s.add(
                Range(
                    migration_id=m.id,
                    seq=i,
                    lo=str(i * 10),
                    hi=str(i * 10 + 10),
                    planned_docs=10,
                    state=RangeState.PENDING,
                    attempts=0,
                    docs_done=0,
                    tokens_used=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        s.flush()
        transition(s, m, MigrationState.BACKFILLING, actor="t", reason="start")
        return m.id


def test_a_migration_walks_the_lifecycle_through_the_named_sets(env: Env) -> None:
    mid = make_migration(env)
    assert env.raw("SELECT state FROM bf_migrations") == ["backfilling"]
    st = env.status(mid)
    assert st.ranges == {"pending": 3, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    assert all(type(k) is str for k in st.ranges)

    # a claimed range is open: pause releases it, and nothing more can be claimed
    with env.db.session() as s:
        range_ids = [r.id for r in s.query(Range).order_by(Range.seq)]
    claim = checkpoint.claim(env.db, range_ids[0], "w1", 60, max_attempts=5)
    assert claim is not None and env.status(mid).ranges["running"] == 1
    assert operations.pause(env.db, mid, actor="t", reason="lunch") == "paused"
    assert operations.pause(env.db, mid, actor="t") == "already paused"
    st = env.status(mid)
    assert (st.state, st.paused_reason, st.ranges["pending"]) == ("paused", "lunch", 3)
    assert checkpoint.claim(env.db, range_ids[1], "w1", 60, max_attempts=5) is None
    with pytest.raises(MigrationStateError, match="paused; catch-up runs on") as err:
        catchup.begin(env.db, mid, actor="t")
    assert err.value.hint == "`backfleet resume` a paused one first"

    # resume goes back to where it was and sends a task per pending range
    assert operations.resume(env.db, env.app, mid, actor="t") == RANGES
    assert env.sent() == RANGES
    assert env.raw("SELECT state FROM bf_migrations") == ["backfilling"]
    # a running migration: resume just re-sends, the reaper sees it as claimable
    assert operations.resume(env.db, env.app, mid, actor="t") == RANGES
    assert reap_once(env.db, env.app, ReaperSettings(resend_after_seconds=0), queue_depth=0) == 3

    # a range that failed for good: retried with fresh attempts, and the pending ranges sent
    claim = checkpoint.claim(env.db, range_ids[2], "w1", 60, max_attempts=1)
    assert claim is not None
    assert checkpoint.fail(env.db, claim, "ProviderRejected: simulated", 1) == RangeState.FAILED
    assert env.raw("SELECT state FROM bf_ranges WHERE id = :i", i=range_ids[2]) == ["failed"]
    assert env.status(mid).ranges["failed"] == 1
    before = env.sent()
    assert operations.retry_failed(env.db, env.app, mid, actor="t") == [range_ids[2]]
    assert env.sent() == before + RANGES

    # over budget: a claimable migration pauses itself; a paused one is left alone
    assert checkpoint.pause_for_budget(env.db, mid, actor="w1", reason="budget") is True
    assert checkpoint.pause_for_budget(env.db, mid, actor="w1", reason="budget") is False
    assert operations.resume(env.db, env.app, mid, actor="t") == RANGES

    # a running migration's re-embed request is re-sent; a terminal one's is not (below)
    req = reembeds.record(env.db, mid, ["1", "2"])
    later = checkpoint.utcnow() + timedelta(seconds=1)
    assert [r[0] for r in reembeds.take_due(env.db, later, max_attempts=5)] == [req]

    # cancel: open ranges cancelled, then nothing is retried
    assert operations.cancel(env.db, mid, actor="t") == RANGES
    assert operations.cancel(env.db, mid, actor="t") == 0
    assert env.raw("SELECT DISTINCT state FROM bf_ranges") == ["cancelled"]
    assert env.raw("SELECT state FROM bf_migrations") == ["cancelled"]
    with pytest.raises(MigrationStateError, match="cancelled; its ranges cannot be retried"):
        operations.retry_failed(env.db, env.app, mid, actor="t")
    with pytest.raises(MigrationStateError, match="cancelled; nothing to retry"):
        operations.retry_dead_letters(env.db, env.app, mid, actor="t")
    assert reembeds.take_due(env.db, later + timedelta(seconds=1), max_attempts=5) == []
    assert env.raw("SELECT state FROM bf_reembed_requests") == ["pending"]
    # every transition was recorded with the plain strings
    kinds = env.raw("SELECT to_state FROM bf_events WHERE kind = 'migration_state' ORDER BY id")
    assert kinds == [
        "backfilling",
        "paused",
        "backfilling",
        "paused",
        "backfilling",
        "cancelled",
    ]
