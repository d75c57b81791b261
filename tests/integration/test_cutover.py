"""Prove it, then switch — on real Postgres and Milvus: gates, eval figures, canary, rollback."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from backfleet import Router
from backfleet.corpus import seed_source
from backfleet.db.checkpoint import utcnow
from backfleet.db.models import Evaluation, Event, Migration, MigrationState, Range, RangeState
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.errors import GateClosed, MigrationStateError, NotFound
from backfleet.limits import NullThrottle
from backfleet.router import in_canary
from backfleet.settings import CutoverSettings, ModelSettings, Settings
from backfleet.source import Source
from backfleet.vectorstore import Generation, VectorStore, generation_name
from coordinator.cutover import finalize, full_cutover, rollback, set_canary
from coordinator.dispatcher import load_migration
from coordinator.evaluator import evaluate
from coordinator.golden import GoldenQuery, GoldenSet, check_ids
from coordinator.lifecycle import transition
from coordinator.planner import plan_migration
from coordinator.reconciler import reconcile_migration
from tests.support.fleet import make_settings
from tests.support.services import postgres_database
from workers.pipeline import embed_batch

pytestmark = pytest.mark.integration

DOCS = 400


@dataclass
class Env:
    settings: Settings
    db: Database
    store: VectorStore
    source: Source
    live: Generation
    shadow: Generation
    migration_id: int


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def build(
    pg_url: str,
    milvus_uri: str,
    *,
    live_skip: frozenset[int] | set[int] = frozenset(),
    shadow_skip: frozenset[int] | set[int] = frozenset(),
    cutover: CutoverSettings | None = None,
) -> Env:
    """A v1 generation behind the alias, a planned v2 migration whose ranges are all done, and
    its shadow built directly (minus ``shadow_skip``)."""
    settings = make_settings(
        pg_url=pg_url,
        redis_url="redis://127.0.0.1:6379/1",
        milvus_uri=milvus_uri,
        range_size=100,
        cutover=cutover or CutoverSettings(min_queries=3, holdover_hours=1),
    )
    engine = make_engine(pg_url)
    seed_source(engine, DOCS)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    docs = [d for batch in source.iter_batches(None, None, None, 500) for d in batch]

    v1 = embedder_for(settings, "local-v1")
    live_name = generation_name(settings.alias, v1.identity, 1)
    live = store.create_generation(live_name, settings.alias, v1.identity, "int")
    embed_batch([d for d in docs if d.id not in live_skip], v1, NullThrottle(), live)
    store.point_alias(settings.alias, live_name)

    v2 = embedder_for(settings, "local-v2")
    report = plan_migration(settings, db, store, source, v2, model_label="local-v2", actor="t")
    shadow = store.create_generation(
        report.target_generation, settings.alias, v2.identity, "int", "HNSW"
    )
    embed_batch([d for d in docs if d.id not in shadow_skip], v2, NullThrottle(), shadow)
    with db.session() as session:
        m = session.get(Migration, report.migration_id)
        assert m is not None
        transition(session, m, MigrationState.BACKFILLING, actor="t", reason="test")
        session.execute(
            update(Range)
            .where(Range.migration_id == m.id)
            .values(state=RangeState.DONE, finished_at=utcnow())
        )
    return Env(settings, db, store, source, live, shadow, report.migration_id)


def reconcile(env: Env) -> bool:
    m = load_migration(env.db, env.migration_id)
    return reconcile_migration(env.db, env.source, env.shadow, m, None, sample=0).clean


def add_eval(env: Env, verdict: str) -> None:
    with env.db.session() as session:
        session.add(
            Evaluation(
                migration_id=env.migration_id,
                golden="test",
                queries=3,
                verdict=verdict,
                metrics={"reasons": [] if verdict == "GO" else ["nDCG@10 fell"]},
                created_at=utcnow(),
            )
        )


def state(env: Env) -> tuple[str, float]:
    m = load_migration(env.db, env.migration_id)
    return m.state, m.canary_percent


def events(env: Env) -> list[Event]:
    with env.db.session() as session:
        rows = list(
            session.execute(
                select(Event).where(Event.migration_id == env.migration_id).order_by(Event.id)
            ).scalars()
        )
        session.expunge_all()
    return rows


def reembed(env: Env, ids: list[int]) -> None:
    v2 = embedder_for(env.settings, "local-v2")
    embed_batch(env.source.fetch(ids), v2, NullThrottle(), env.shadow)


def test_cutover_refused_on_incomplete_or_stale_shadow_allowed_once_repaired(
    pg_url: str, milvus_uri: str
) -> None:
    env = build(pg_url, milvus_uri, shadow_skip=set(range(351, 401)))
    add_eval(env, "GO")
    n_events = len(events(env))
    # no reconcile yet
    with pytest.raises(GateClosed, match="no reconcile has run"):
        set_canary(env.db, env.store, env.migration_id, 5, actor="t")
    # incomplete: 50 documents missing
    assert not reconcile(env)
    for attempt in (
        lambda: set_canary(env.db, env.store, env.migration_id, 5, actor="t"),
        lambda: full_cutover(env.db, env.store, env.migration_id, actor="t"),
    ):
        with pytest.raises(GateClosed, match=r"not clean \(missing 50\)"):
            attempt()
    assert state(env) == (MigrationState.BACKFILLING, 0.0)
    assert len(events(env)) == n_events  # nothing changed
    assert env.store.resolve_alias(env.settings.alias) == env.live.name

    # repaired, then stale: a document edited in the source after it was embedded
    reembed(env, list(range(351, 401)))
    assert reconcile(env)
    with make_engine(pg_url).begin() as conn:
        conn.execute(
            text(
                "UPDATE documents SET text = 'edited refund text', updated_at = now() WHERE id = 7"
            )
        )
    assert not reconcile(env)
    with pytest.raises(GateClosed, match=r"not clean \(stale 1\)"):
        set_canary(env.db, env.store, env.migration_id, 5, actor="t")

    # repaired again; but a range finished after that reconcile: it is stale
    reembed(env, [7])
    assert reconcile(env)
    with env.db.session() as session:
        session.execute(
            update(Range)
            .where(Range.migration_id == env.migration_id, Range.seq == 0)
            .values(finished_at=utcnow() + timedelta(seconds=5))
        )
    with pytest.raises(GateClosed, match="predates writes to the shadow"):
        set_canary(env.db, env.store, env.migration_id, 5, actor="t")
    with env.db.session() as session:
        session.execute(
            update(Range)
            .where(Range.migration_id == env.migration_id)
            .values(finished_at=utcnow() - timedelta(minutes=1))
        )

    # a NO-GO evaluation closes the gate too
    add_eval(env, "NO-GO")
    with pytest.raises(GateClosed, match="evaluation #2 is NO-GO"):
        set_canary(env.db, env.store, env.migration_id, 5, actor="t")
    add_eval(env, "GO")
    out = set_canary(env.db, env.store, env.migration_id, 5, actor="alice")
    assert not out.forced
    assert state(env) == (MigrationState.CANARY, 5.0)
    moves = [(e.from_state, e.to_state) for e in events(env) if e.kind == "migration_state"]
    assert moves[-2:] == [("backfilling", "verified"), ("verified", "canary")]

    # forced past a NO-GO, with the reason recorded
    add_eval(env, "NO-GO")
    with pytest.raises(GateClosed):
        set_canary(env.db, env.store, env.migration_id, 25, actor="alice")
    # lowering the share needs no gate
    set_canary(env.db, env.store, env.migration_id, 2, actor="alice")
    out = set_canary(
        env.db, env.store, env.migration_id, 25, actor="alice", force_reason="judged by hand"
    )
    assert out.forced and state(env) == (MigrationState.CANARY, 25.0)
    forced = [e for e in events(env) if e.kind == "gate_forced"]
    assert len(forced) == 1 and forced[0].reason == "judged by hand" and forced[0].actor == "alice"
    assert forced[0].details is not None and "NO-GO" in forced[0].details["problems"][0]
    last = events(env)[-1]
    assert last.to_state == "canary" and last.reason is not None and "forced" in last.reason
    env.store.close()


def test_eval_figures_match_a_hand_computed_case(pg_url: str, milvus_uri: str) -> None:
    # doc 30 is in neither generation; doc 40 is missing from the shadow only
    env = build(pg_url, milvus_uri, live_skip={30}, shadow_skip={30, 40})
    texts = {d.id: d.text or "" for d in env.source.fetch([10, 20, 40])}
    golden = GoldenSet(
        "hand.jsonl",
        [
            GoldenQuery(1, "q1", texts[10], {10: 1.0}),
            GoldenQuery(2, "q2", texts[20], {20: 2.0, 30: 1.0}),
            GoldenQuery(3, "q3", texts[40], {40: 1.0}),
        ],
        pseudo=False,
    )
    check_ids(golden, env.source)
    m = load_migration(env.db, env.migration_id)
    report = evaluate(env.settings, env.db, env.store, env.source, golden, m, actor="t")
    # each query is the exact text of its first relevant document: rank 1 when present.
    # q2: gain 2 at rank 1, doc 30 (gain 1) absent: nDCG = 2 / (2 + 1/log2(3)) = 0.760188
    q2 = 2 / (2 + 1 / math.log2(3))
    assert q2 == pytest.approx(0.760188, abs=1e-6)
    assert report.live is not None
    assert report.live.generation == env.live.name
    assert report.live.means["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert report.live.means["ndcg"] == pytest.approx((1 + q2 + 1) / 3)
    assert report.live.means["mrr"] == pytest.approx(1.0)
    # the shadow misses doc 40: q3 scores 0 everywhere
    assert report.shadow.means["recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert report.shadow.means["ndcg"] == pytest.approx((1 + q2 + 0) / 3)
    assert report.shadow.means["mrr"] == pytest.approx(2 / 3)
    assert (report.wins, report.losses, report.ties) == (0, 1, 2)
    assert report.worst[0]["id"] == "q3"
    assert report.index_recall >= 0.9 and report.index_recall_queries == 3
    assert report.verdict == "NO-GO" and any("nDCG@10" in r for r in report.reasons)
    with env.db.session() as session:
        row = session.execute(select(Evaluation)).scalar_one()
    assert row.verdict == "NO-GO" and row.queries == 3
    assert row.metrics["shadow"]["ndcg"] == pytest.approx(report.shadow.means["ndcg"])
    env.store.close()


def answers(router: Router, queries: list[str]) -> list[tuple[str, list[Any]]]:
    out = []
    for q in queries:
        a = router.search(q, 5, key=q)
        out.append((a.generation, a.ids))
    return out


def test_canary_router_cutover_rollback_finalize(pg_url: str, milvus_uri: str) -> None:
    env = build(pg_url, milvus_uri)
    assert reconcile(env)
    add_eval(env, "GO")
    clock = [0.0]
    router = Router(env.settings, refresh_seconds=5, clock=lambda: clock[0])
    queries = [d.text or "" for d in env.source.fetch(list(range(1, 400, 20)))]
    before = answers(router, queries)
    assert {g for g, _ in before} == {env.live.name}

    set_canary(env.db, env.store, env.migration_id, 25, actor="t")
    assert router.routing().shadow is None  # cached: not re-read before the TTL
    clock[0] += 6
    r = router.routing()
    assert (r.live, r.shadow, r.percent) == (env.live.name, env.shadow.name, 25.0)
    keys = [f"user-{i}" for i in range(10_000)]
    chosen = [router.choose(k) for k in keys]
    share = 100 * sum(shadow for _, shadow in chosen) / len(keys)
    assert abs(share - 25) <= 2
    assert chosen == [router.choose(k) for k in keys]  # sticky
    for i, q in enumerate(queries):
        key = f"user-{i}"
        a = router.search(q, 5, key=key)
        expect_shadow = in_canary(key, 25)
        assert a.shadow == expect_shadow
        gen = env.shadow if expect_shadow else env.live
        assert a.generation == gen.name and a.model == gen.identity.tag
        assert all(h["model"] == gen.identity.tag for h in a.hits)  # never mixed
        assert router.search(q, 5, key=key).generation == a.generation

    full_cutover(env.db, env.store, env.migration_id, actor="t")
    assert env.store.resolve_alias(env.settings.alias) == env.shadow.name
    clock[0] += 6
    after = answers(router, queries)
    assert {g for g, _ in after} == {env.shadow.name}

    rollback(env.db, env.store, env.migration_id, actor="t", reason="users complain")
    assert env.store.resolve_alias(env.settings.alias) == env.live.name
    assert state(env) == (MigrationState.ROLLED_BACK, 0.0)
    clock[0] += 6
    assert answers(router, queries) == before  # the old answers, exactly
    with pytest.raises(MigrationStateError, match="nothing to roll back"):
        rollback(env.db, env.store, env.migration_id, actor="t")

    # cut over again; finalize waits for the holdover, then drops only the old generation
    full_cutover(env.db, env.store, env.migration_id, actor="t")
    n_events = len(events(env))
    with pytest.raises(GateClosed, match="holdover until"):
        finalize(env.db, env.store, env.migration_id, actor="t", holdover_hours=1)
    assert len(events(env)) == n_events and env.store.has(env.live.name)
    m = load_migration(env.db, env.migration_id)
    assert m.cutover_at is not None
    out = finalize(
        env.db,
        env.store,
        env.migration_id,
        actor="t",
        holdover_hours=1,
        now=m.cutover_at + timedelta(hours=1, seconds=1),
    )
    assert out.messages == [f"dropped {env.live.name}"]
    assert not env.store.has(env.live.name) and env.store.has(env.shadow.name)
    assert state(env)[0] == MigrationState.FINALIZED
    with pytest.raises(MigrationStateError, match="finalized: nothing to roll back"):
        rollback(env.db, env.store, env.migration_id, actor="t")
    clock[0] += 6
    assert {g for g, _ in answers(router, queries)} == {env.shadow.name}
    moves = [(e.from_state, e.to_state) for e in events(env) if e.kind == "migration_state"]
    assert moves[-6:] == [
        ("backfilling", "verified"),
        ("verified", "canary"),
        ("canary", "live"),
        ("live", "rolled_back"),
        ("rolled_back", "live"),
        ("live", "finalized"),
    ]
    router.close()
    env.store.close()


def test_rollback_with_no_previous_generation(pg_url: str, milvus_uri: str) -> None:
    env = build(pg_url, milvus_uri)
    with pytest.raises(MigrationStateError, match="backfilling: nothing to roll back"):
        rollback(env.db, env.store, env.migration_id, actor="t")
    assert reconcile(env)
    add_eval(env, "GO")
    full_cutover(env.db, env.store, env.migration_id, actor="t")
    env.store.drop(env.live.name)  # the previous generation is gone
    with pytest.raises(NotFound, match="no previous generation to roll back to"):
        rollback(env.db, env.store, env.migration_id, actor="t")
    assert state(env)[0] == MigrationState.LIVE
    assert env.store.resolve_alias(env.settings.alias) == env.shadow.name
    env.store.close()


def add_eval_for(env: Env, migration_id: int) -> None:
    with env.db.session() as session:
        session.add(
            Evaluation(
                migration_id=migration_id,
                golden="test",
                queries=3,
                verdict="GO",
                metrics={"reasons": []},
                created_at=utcnow(),
            )
        )


def migration_state(env: Env, migration_id: int) -> str:
    return load_migration(env.db, migration_id).state


def test_two_migrations_in_a_row_supersede_rollback_and_finalize(
    pg_url: str, milvus_uri: str
) -> None:
    """Migration 2's cutover supersedes migration 1 (live until then); rolling migration 2
    back makes migration 1 live again; finalizing migration 2 drops both old generations."""
    env = build(pg_url, milvus_uri)
    assert reconcile(env)
    add_eval(env, "GO")
    full_cutover(env.db, env.store, env.migration_id, actor="t")
    first = env.migration_id
    assert migration_state(env, first) == MigrationState.LIVE

    # migration 2: local-v2 → local-v3, planned while migration 1 waits out its holdover
    env.settings.models["local-v3"] = ModelSettings(
        provider="local", name="hash-words", version="3", dimension=128
    )
    v3 = embedder_for(env.settings, "local-v3")
    report = plan_migration(
        env.settings, env.db, env.store, env.source, v3, model_label="local-v3", actor="t"
    )
    assert report.source_generation == env.shadow.name
    g3 = env.store.create_generation(
        report.target_generation, env.settings.alias, v3.identity, "int", "HNSW"
    )
    docs = [d for batch in env.source.iter_batches(None, None, None, 500) for d in batch]
    embed_batch(docs, v3, NullThrottle(), g3)
    second = report.migration_id
    with env.db.session() as session:
        m2 = session.get(Migration, second)
        assert m2 is not None
        transition(session, m2, MigrationState.BACKFILLING, actor="t", reason="test")
        session.execute(
            update(Range)
            .where(Range.migration_id == second)
            .values(state=RangeState.DONE, finished_at=utcnow() - timedelta(minutes=1))
        )
    env2 = Env(env.settings, env.db, env.store, env.source, env.shadow, g3, second)
    assert reconcile(env2)
    add_eval_for(env, second)

    full_cutover(env.db, env.store, second, actor="t")
    assert env.store.resolve_alias(env.settings.alias) == g3.name
    assert migration_state(env, first) == MigrationState.SUPERSEDED
    superseded = [
        e for e in events(env) if e.kind == "migration_state" and e.to_state == "superseded"
    ]
    assert len(superseded) == 1 and superseded[0].from_state == "live"
    assert f"migration {second}" in (superseded[0].reason or "")
    with pytest.raises(MigrationStateError, match="superseded"):
        finalize(env.db, env.store, first, actor="t", holdover_hours=0)

    # rollback of migration 2: the alias and migration 1 are back
    rollback(env.db, env.store, second, actor="t", reason="test")
    assert env.store.resolve_alias(env.settings.alias) == env.shadow.name
    assert migration_state(env, first) == MigrationState.LIVE
    assert migration_state(env, second) == MigrationState.ROLLED_BACK

    # cut over again, then finalize migration 2: its old generation (migration 1's) and
    # the one migration 1 replaced are dropped; only the live one is left
    full_cutover(env.db, env.store, second, actor="t")
    assert migration_state(env, first) == MigrationState.SUPERSEDED
    m = load_migration(env.db, second)
    assert m.cutover_at is not None
    out = finalize(
        env.db,
        env.store,
        second,
        actor="t",
        holdover_hours=1,
        now=m.cutover_at + timedelta(hours=1, seconds=1),
    )
    assert f"dropped {env.shadow.name}" in out.messages[0]
    assert f"dropped {env.live.name}" in out.messages[0]
    assert not env.store.has(env.shadow.name) and not env.store.has(env.live.name)
    assert env.store.has(g3.name)
    assert migration_state(env, second) == MigrationState.FINALIZED
    assert migration_state(env, first) == MigrationState.SUPERSEDED
    env.store.close()
