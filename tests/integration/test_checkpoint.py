"""Checkpoint queries against real Postgres: schema = Alembic head, claim, fencing, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, update
from sqlalchemy.exc import DatabaseError

from backfleet.db import checkpoint
from backfleet.db.models import Base, Event, Migration, MigrationState, Range, RangeState
from backfleet.db.schema import current_revision, head_revision, upgrade
from backfleet.db.session import Database
from backfleet.errors import LeaseLost, MigrationStateError
from coordinator.lifecycle import transition
from tests.support.services import postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture
def db() -> Iterator[Database]:
    with postgres_database() as url:
        database = Database(url)
        upgrade(database.engine)
        yield database
        database.dispose()


def test_models_agree_with_alembic_head(db: Database) -> None:
    assert current_revision(db.engine) == head_revision(db.engine)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def make_migration(db: Database, ranges: int = 3, state: str = MigrationState.BACKFILLING) -> int:
    now = checkpoint.utcnow()
    with db.session() as s:
        m = Migration(
            alias="a",
            source_generation=None,
            target_generation="a__m_v1__g1",
            target_model="m",
            target_identity="{}",
            id_type="int",
            state=state,
            total_docs=0,
            est_tokens=0,
            settings_snapshot={},
            created_at=now,
            updated_at=now,
        )
        s.add(m)
        s.flush()
        for i in range(ranges):
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
        return m.id


def range_ids(db: Database, mid: int) -> list[int]:
    with db.session() as s:
        return list(
            s.execute(
                select(Range.id).where(Range.migration_id == mid).order_by(Range.seq)
            ).scalars()
        )


def test_claim_is_exclusive_under_concurrency(db: Database) -> None:
    mid = make_migration(db, 1)
    rid = range_ids(db, mid)[0]
    results: list[object] = []
    barrier = threading.Barrier(8)

    def grab(i: int) -> None:
        barrier.wait()
        results.append(checkpoint.claim(db, rid, f"w{i}", 30))

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_live_lease_blocks_expired_lease_is_taken_over_and_fenced(db: Database) -> None:
    mid = make_migration(db, 1)
    rid = range_ids(db, mid)[0]
    first = checkpoint.claim(db, rid, "w1", 30)
    assert first is not None
    assert checkpoint.claim(db, rid, "w2", 30) is None  # held by a live lease: no-op
    checkpoint.advance(db, first, "3", docs=4, tokens=40, lease_seconds=30)
    with db.session() as s:  # the lease expires (worker stalled)
        s.execute(
            update(Range)
            .where(Range.id == rid)
            .values(lease_expires_at=checkpoint.utcnow() - timedelta(seconds=1))
        )
    second = checkpoint.claim(db, rid, "w2", 30)
    assert second is not None and second.cursor == "3"  # resumes after the cursor
    with pytest.raises(LeaseLost):
        checkpoint.advance(db, first, "9", docs=6, tokens=60, lease_seconds=30)
    with pytest.raises(LeaseLost):
        checkpoint.complete(db, first)
    assert checkpoint.heartbeat(db, first, 30) is False
    checkpoint.advance(db, second, "9", docs=6, tokens=60, lease_seconds=30)
    checkpoint.complete(db, second)
    with db.session() as s:
        r = s.get(Range, rid)
        assert r is not None
        assert (r.state, r.cursor, r.docs_done, r.tokens_used) == (RangeState.DONE, "9", 10, 100)
    assert checkpoint.claim(db, rid, "w3", 30) is None  # done: no-op


def test_failures_are_bounded_and_kept(db: Database) -> None:
    mid = make_migration(db, 1)
    rid = range_ids(db, mid)[0]
    states = []
    for _ in range(3):
        claim = checkpoint.claim(db, rid, "w", 30)
        assert claim is not None
        states.append(checkpoint.fail(db, claim, "ProviderRejected: bad input", max_attempts=3))
    assert states == [RangeState.PENDING, RangeState.PENDING, RangeState.FAILED]
    with db.session() as s:
        r = s.get(Range, rid)
        assert r is not None and r.last_error == "ProviderRejected: bad input" and r.attempts == 3
        kinds = [e.kind for e in s.execute(select(Event).where(Event.range_id == rid)).scalars()]
    assert kinds.count("range_failed") == 1 and kinds.count("range_retry") == 2


def test_release_does_not_count_an_attempt(db: Database) -> None:
    mid = make_migration(db, 1)
    rid = range_ids(db, mid)[0]
    claim = checkpoint.claim(db, rid, "w", 30)
    assert claim is not None
    assert checkpoint.release(db, claim, "Milvus unavailable")
    with db.session() as s:
        r = s.get(Range, rid)
        assert r is not None and r.state == RangeState.PENDING and r.attempts == 0


def test_no_claim_unless_backfilling(db: Database) -> None:
    mid = make_migration(db, 1, state=MigrationState.PLANNED)
    assert checkpoint.claim(db, range_ids(db, mid)[0], "w", 30) is None


def test_transitions_are_audited_and_checked(db: Database) -> None:
    mid = make_migration(db, 1, state=MigrationState.PLANNED)
    with db.session() as s:
        m = s.get(Migration, mid)
        assert m is not None
        transition(s, m, MigrationState.BACKFILLING, actor="alice", reason="go")
    with db.session() as s:
        m = s.get(Migration, mid)
        assert m is not None
        with pytest.raises(MigrationStateError, match="cannot go to finalized"):
            transition(s, m, MigrationState.FINALIZED, actor="bob")
    with db.session() as s:
        ev = (
            s.execute(
                select(Event).where(Event.migration_id == mid, Event.kind == "migration_state")
            )
            .scalars()
            .all()
        )
        assert [(e.from_state, e.to_state, e.actor, e.reason) for e in ev] == [
            ("planned", "backfilling", "alice", "go")
        ]


def test_heartbeat_extends_lease(db: Database) -> None:
    mid = make_migration(db, 1)
    rid = range_ids(db, mid)[0]
    claim = checkpoint.claim(db, rid, "w", 2)
    assert claim is not None
    time.sleep(1.2)
    assert checkpoint.heartbeat(db, claim, 2)
    time.sleep(1.2)
    assert checkpoint.claim(db, rid, "other", 2) is None


def test_advances_on_an_async_commit_connection_are_fenced_and_the_mode_does_not_leak() -> None:
    """The range's held connection commits its advances without waiting for the disk; the
    fencing is the same, and the pool never hands that mode to anyone else (claims, completes)."""
    with postgres_database() as url:
        db = Database(url, pool_size=1)  # one pooled connection: the same one comes back
        upgrade(db.engine)
        mid = make_migration(db, 1)
        rid = range_ids(db, mid)[0]
        claim = checkpoint.claim(db, rid, "w1", 30)
        assert claim is not None
        with db.connection(async_commit=True) as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            conn.rollback()
            checkpoint.advance(db, claim, "7", docs=7, tokens=70, lease_seconds=30, conn=conn)
            other = Database(url)  # another process: sees the advance at once
            with other.session() as s:
                r = s.get(Range, rid)
                assert r is not None and r.cursor == "7"
                s.execute(update(Range).where(Range.id == rid).values(lease_token="stolen"))
            other.dispose()
            with pytest.raises(LeaseLost):
                checkpoint.advance(db, claim, "9", docs=2, tokens=20, lease_seconds=30, conn=conn)
        with db.engine.connect() as again:
            assert again.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
            assert again.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        with (
            pytest.raises(DatabaseError),
            db.connection(async_commit=True) as conn,  # a failure inside still resets it
        ):
            conn.exec_driver_sql("SELECT 1/0")
        with db.engine.connect() as again:
            assert again.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        with db.session() as s:
            r = s.get(Range, rid)
            assert r is not None and (r.cursor, r.docs_done) == ("7", 7)
        db.dispose()
