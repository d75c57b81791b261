"""One active migration per alias is a database constraint, not a check-then-insert (issue 13 #3).

Real Postgres, the real Milvus server, and `backfleet plan` processes started at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from backfleet.corpus import seed_source
from backfleet.db.models import Migration
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.errors import MigrationStateError
from backfleet.settings import Settings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.planner import PlanReport, plan_migration
from tests.support.fleet import make_settings, settings_env
from tests.support.services import postgres_database, redis_db_url

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent / "backfleet"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        seed_source(make_engine(url), 300)
        db = Database(url)
        upgrade(db.engine)
        db.dispose()
        yield url


def migrations_of(url: str, alias: str) -> list[tuple[int, str, str]]:
    db = Database(url)
    try:
        with db.session() as s:
            return [
                (r.id, r.state, r.target_generation)
                for r in s.execute(
                    select(Migration).where(Migration.alias == alias).order_by(Migration.id)
                ).scalars()
            ]
    finally:
        db.dispose()


def plan_in_thread(
    settings: Settings, url: str, milvus_uri: str, barrier: threading.Barrier
) -> PlanReport | BaseException:
    """One coordinator: its own connections; it waits for the others after its check."""
    engine = make_engine(url)
    source = Source(engine, settings.source)
    stats = source.stats

    def stats_after_everyone_checked() -> tuple[int, int]:
        barrier.wait(timeout=30)  # every plan has passed its "no active migration" check
        return stats()

    source.stats = stats_after_everyone_checked  # type: ignore[method-assign]
    db = Database(url)
    try:
        return plan_migration(
            settings,
            db,
            VectorStore(milvus_uri),
            source,
            embedder_for(settings, "local-v2"),
            model_label="local-v2",
            actor="test",
        )
    except BaseException as exc:
        return exc
    finally:
        db.dispose()
        engine.dispose()


def test_three_plans_that_all_passed_the_check_make_one_migration(
    pg_url: str, milvus_uri: str
) -> None:
    settings = make_settings(pg_url=pg_url, redis_url=redis_db_url(10), milvus_uri=milvus_uri)
    barrier = threading.Barrier(3)
    results: list[PlanReport | BaseException] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(plan_in_thread(settings, pg_url, milvus_uri, barrier))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    rows = migrations_of(pg_url, settings.alias)
    assert len(rows) == 1, rows
    ((mid, state, _),) = rows
    assert state == "planned"
    reports = [r for r in results if isinstance(r, PlanReport)]
    errors = [r for r in results if not isinstance(r, PlanReport)]
    assert [r.migration_id for r in reports] == [mid]
    assert len(errors) == 2
    for exc in errors:
        assert isinstance(exc, MigrationStateError), repr(exc)
        assert str(exc).startswith(
            f"alias {settings.alias!r} already has migration {mid} in state planned"
        ), str(exc)
        assert f"backfleet cancel --migration {mid}" in str(exc)

    # another alias plans beside it; its generation name cannot collide (it holds the alias)
    other = make_settings(pg_url=pg_url, redis_url=redis_db_url(10), milvus_uri=milvus_uri)
    report = plan_in_thread(other, pg_url, milvus_uri, threading.Barrier(1))
    assert isinstance(report, PlanReport), report
    assert report.target_generation != rows[0][2]
    assert report.target_generation.startswith(f"{other.alias}__")


def test_three_plan_commands_at_once(pg_url: str, milvus_uri: str, tmp_path: Path) -> None:
    """What the operator saw: `backfleet plan &` three times. One row; two one-line errors."""
    settings = make_settings(pg_url=pg_url, redis_url=redis_db_url(10), milvus_uri=milvus_uri)
    env = {**os.environ, **settings_env(settings)}
    procs = [
        subprocess.Popen(
            [str(BIN), "plan"],
            env=env,
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outs = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    rows = migrations_of(pg_url, settings.alias)
    assert len(rows) == 1, (rows, outs)
    mid = rows[0][0]
    assert sorted(code for code, _, _ in outs) == [0, 2, 2], outs
    for code, _, err in outs:
        if code == 2:
            line = err.strip().splitlines()[-1]
            assert line.startswith(
                f"error: alias {settings.alias!r} already has migration {mid} in state planned"
            ), err


def test_rollback_of_a_live_migration_while_a_newer_one_is_active_is_refused_clearly(
    pg_url: str, milvus_uri: str
) -> None:
    """Migration 1 is live (holdover), migration 2 is planned from it: rolling 1 back would
    make two active migrations of the alias. Refused with the reason, the alias untouched."""
    from backfleet.db.checkpoint import utcnow
    from coordinator.cutover import rollback

    settings = make_settings(pg_url=pg_url, redis_url=redis_db_url(10), milvus_uri=milvus_uri)
    alias = settings.alias
    identity = embedder_for(settings, "local-v1").identity
    store = VectorStore(milvus_uri)
    old, new = f"{alias}__hash_words_v1__g1", f"{alias}__hash_ngrams_v2__g2"
    store.create_generation(old, alias, identity, "int")
    store.create_generation(new, alias, identity, "int")
    store.point_alias(alias, new)
    db = Database(pg_url)
    now = utcnow()
    try:
        with db.session() as s:
            for state, source, target in (("live", old, new), ("planned", new, old + "x")):
                s.add(
                    Migration(
                        alias=alias,
                        source_generation=source,
                        target_generation=target,
                        target_model="local-v2",
                        target_identity=identity.to_json(),
                        id_type="int",
                        state=state,
                        total_docs=0,
                        est_tokens=0,
                        settings_snapshot={},
                        cutover_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )
        first, second = (r[0] for r in migrations_of(pg_url, alias))
        with pytest.raises(MigrationStateError) as err:
            rollback(db, store, first, actor="t")
        assert f"alias {alias!r} has migration {second} in state planned" in str(err.value)
        assert f"backfleet cancel --migration {second}" in str(err.value)
        assert store.resolve_alias(alias) == new
        assert [r[1] for r in migrations_of(pg_url, alias)] == ["live", "planned"]
    finally:
        db.dispose()
        store.drop(old)
        store.drop(new)


def test_upgrade_to_0004_names_the_duplicate_active_migrations_and_changes_nothing() -> None:
    """A database that already holds the race's result: the index cannot be built; the
    upgrade says which migrations to cancel instead of failing with a bare IntegrityError."""
    from sqlalchemy import text

    from backfleet.db.schema import current_revision

    with postgres_database() as url:
        db = Database(url)
        upgrade(db.engine, "0003")
        with db.engine.begin() as conn:
            for _ in range(2):
                conn.execute(
                    text(
                        "INSERT INTO bf_migrations (alias, target_generation, target_model, "
                        "target_identity, id_type, state, total_docs, est_tokens, "
                        "settings_snapshot, canary_percent, created_at, updated_at) VALUES "
                        "('docs', 'docs__m__g1', 'm', '{}', 'int', 'planned', 0, 0, '{}', 0, "
                        "now(), now())"
                    )
                )
        with pytest.raises(RuntimeError) as err:
            upgrade(db.engine)
        message = str(err.value)
        assert "alias 'docs': migration 1 (planned); alias 'docs': migration 2 (planned)" in message
        assert "backfleet cancel --migration N" in message
        assert current_revision(db.engine) == "0003"
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE bf_migrations SET state = 'cancelled' WHERE id = 2"))
        upgrade(db.engine)
        assert current_revision(db.engine) == "0004"
        db.dispose()
