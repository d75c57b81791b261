"""Catch-up against real Postgres, Redis, Milvus and `backfleet worker` processes, while a
concurrent writer inserts, updates and deletes source rows (some through dual write, some
behind its back)."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update

from backfleet.corpus import make_text, seed_source, source_table
from backfleet.db.models import CatchupPass, Range
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.dualwrite import DualWriter
from backfleet.embedding.factory import embedder_for
from backfleet.errors import MigrationStateError
from backfleet.limits import NullThrottle
from backfleet.settings import BackfillSettings, CatchupSettings, Settings, SourceSettings
from backfleet.source import Doc, Source, text_hash
from backfleet.vectorstore import VectorStore, generation_name
from coordinator.catchup import run_catchup
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import VENV_BIN, WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app
from workers.pipeline import embed_batch

pytestmark = pytest.mark.integration

DOCS = 4000


class Env:
    def __init__(self, settings: Settings, engine: Engine, milvus_uri: str, tmp: Path) -> None:
        self.settings = settings
        self.engine = engine
        self.db = Database(settings.database_url)
        upgrade(self.db.engine)
        self.store = VectorStore(milvus_uri)
        self.source = Source(engine, settings.source)
        self.app = create_app(settings)
        self.fleet = WorkerFleet(settings_env(settings), tmp)
        self.table = source_table()

    def live_v1(self, n: int) -> str:
        v1 = embedder_for(self.settings, "local-v1")
        alias = self.settings.alias
        name = generation_name(alias, v1.identity, self.store.next_generation_number(alias))
        gen = self.store.create_generation(name, alias, v1.identity, "int")
        for docs in self.source.iter_batches(None, None, None, 500):
            if docs[0].id > n:
                break
            embed_batch(docs, v1, NullThrottle(), gen)
        self.store.point_alias(alias, name)
        return name

    def plan_and_start(self) -> int:
        v2 = embedder_for(self.settings, "local-v2")
        mid = plan_migration(
            self.settings, self.db, self.store, self.source, v2, model_label="local-v2", actor="t"
        ).migration_id
        start_migration(self.db, self.store, self.app, mid, actor="t", index_type="HNSW")
        return mid

    def status(self, mid: int) -> Any:
        return migration_status(self.db, mid, self.settings.alias)

    def wait_backfilled(self, mid: int, timeout: float = 240) -> None:
        def done() -> bool:
            st = self.status(mid)
            assert st.ranges["failed"] == 0, st.failed
            return bool(st.ranges["done"] == sum(st.ranges.values()))

        wait_for(done, timeout, "backfill done", on_timeout=self.fleet.logs)

    def source_state(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for docs in self.source.iter_batches(None, None, None, 5000):
            out.update({d.id: text_hash(d.text) for d in docs if d.text and d.text.strip()})
        return out

    def shadow_state(self, name: str) -> tuple[dict[int, str], set[str], int]:
        gen = self.store.open_generation(name)
        rows: dict[int, str] = {}
        models: set[str] = set()
        seen = 0
        for batch in gen.scan(None, None, fields=("id", "text_hash", "model")):
            for r in batch:
                rows[r["id"]] = r["text_hash"]
                models.add(r["model"])
                seen += 1
        return rows, models, seen

    def assert_shadow_equals_source(self, mid: int) -> None:
        st = self.status(mid)
        rows, models, seen = self.shadow_state(st.target_generation)
        want = self.source_state()
        assert seen == len(rows), "an id is stored twice"
        missing = sorted(set(want) - set(rows))[:10]
        extra = sorted(set(rows) - set(want))[:10]
        stale = sorted(i for i in want if i in rows and rows[i] != want[i])[:10]
        assert not (missing or extra or stale), f"missing {missing} extra {extra} stale {stale}"
        assert models == {embedder_for(self.settings, "local-v2").identity.tag}

    # --- source edits (what users do) -------------------------------------------------

    def update_doc(self, ident: int, body: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                update(self.table)
                .where(self.table.c.id == ident)
                .values(text=body, updated_at=text("now()"))
            )

    def insert_doc(self, ident: int, body: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                insert(self.table).values(id=ident, topic="t", text=body, updated_at=text("now()"))
            )

    def delete_doc(self, ident: int) -> None:
        with self.engine.begin() as c:
            c.execute(delete(self.table).where(self.table.c.id == ident))


def _env(milvus_uri: str, tmp: Path, pg: str, redis_db: int, **catchup: Any) -> Env:
    source = SourceSettings(url=pg, table="documents", updated_at_column="updated_at")
    if catchup.pop("no_updated_at", False):
        source = SourceSettings(url=pg, table="documents")
    settings = make_settings(
        pg_url=pg,
        redis_url=redis_db_url(redis_db),
        milvus_uri=milvus_uri,
        backfill=BackfillSettings(
            range_size=500,
            batch_size=50,
            lease_seconds=10,
            heartbeat_seconds=2,
            queue=f"bfcatch_{time.time_ns()}",
        ),
        catchup=CatchupSettings(**catchup),
    )
    settings.source = source
    engine = make_engine(pg)
    seed_source(engine, DOCS)
    return Env(settings, engine, milvus_uri, tmp)


@pytest.fixture
def pg() -> Iterator[str]:
    with postgres_database() as url:
        yield url


class Writer(threading.Thread):
    """Users editing the corpus during the backfill: half through dual write, half around it."""

    def __init__(self, env: Env, writer: DualWriter, seed: int = 3) -> None:
        super().__init__(daemon=True)
        self.env, self.writer = env, writer
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.next_id = DOCS + 1
        self.deleted: list[int] = []
        self.ops: dict[str, int] = {}
        self.dual_written: dict[int, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                time.sleep(0.01)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def step(self) -> None:
        env, rng = self.env, self.rng
        op = rng.choice(["update", "update", "insert", "delete", "reinsert"])
        dual = rng.random() < 0.5
        ident: int
        if op == "update":
            ident = rng.randint(1, DOCS)
            if ident in self.deleted:
                return
            body = make_text(rng, "billing") + f" edit {time.time_ns()}"
            env.update_doc(ident, body)
        elif op == "insert":
            ident = self.next_id
            self.next_id += 1
            body = make_text(rng, "travel")
            env.insert_doc(ident, body)
        elif op == "delete":
            ident = rng.randint(1, DOCS)
            if ident in self.deleted:
                return
            env.delete_doc(ident)
            self.deleted.append(ident)
        else:  # an id created inside an already planned range
            if not self.deleted:
                return
            ident = self.deleted.pop(0)
            body = make_text(rng, "cooking") + " back again"
            env.insert_doc(ident, body)
        key = f"{op}{'_dual' if dual else '_bypass'}"
        self.ops[key] = self.ops.get(key, 0) + 1
        if dual:
            if op == "delete":
                self.writer.delete_documents([ident])
                self.dual_written.pop(ident, None)
            else:
                self.writer.index_documents([ident])
                self.dual_written[ident] = text_hash(body)


def test_catchup_makes_the_shadow_equal_the_changing_source(
    pg: str, milvus_uri: str, tmp_path: Path
) -> None:
    env = _env(milvus_uri, tmp_path, pg, 5, threshold=1, max_passes=4, new_range_min_docs=200)
    live = env.live_v1(DOCS)
    mid = env.plan_and_start()
    writer = DualWriter.from_settings(env.settings)
    users = Writer(env, writer)
    with pytest.raises(MigrationStateError, match="still backfilling"):
        run_catchup(env.settings, env.db, env.store, env.source, env.app, mid, actor="t")
    users.start()
    env.fleet.start(2, concurrency=1)
    try:
        env.wait_backfilled(mid)
        users.stop.set()
        users.join(30)
        assert users.error is None, users.error
        assert sum(users.ops.values()) > 50, users.ops
        # after the last range is done: the corpus grows at the tail (bypassing dual write)
        last = users.next_id
        for i in range(last, last + 300):
            env.insert_doc(i, make_text(random.Random(i), "health"))
        # a document deleted while its batch was in flight: the stale vector lands afterwards
        victim = env.source.fetch([7])[0]
        env.delete_doc(7)
        embed_batch(
            [Doc(victim.id, victim.text)],
            embedder_for(env.settings, "local-v2"),
            NullThrottle(),
            env.store.open_generation(env.status(mid).target_generation),
        )
        env.update_doc(8, "   ")  # edited to blank: must leave the shadow
        report = run_catchup(env.settings, env.db, env.store, env.source, env.app, mid, actor="t")
    finally:
        env.fleet.stop()
        writer.close()
    first = report.passes[0]
    assert first.found > 0 and first.applied > 0
    assert first.new_ranges and first.created >= 300
    assert report.settled and report.passes[-1].found == 0
    assert report.state == "catching_up"
    env.assert_shadow_equals_source(mid)

    # dual-written documents are in both generations, each with its own model
    v1_tag = embedder_for(env.settings, "local-v1").identity.tag
    live_gen = env.store.open_generation(live)
    sample = list(users.dual_written)[:50]
    want = env.source_state()
    got = {r["id"]: r for r in live_gen.get(sample, ["id", "model", "text_hash"])}
    for ident in sample:
        if ident in want and want[ident] == users.dual_written[ident]:  # not re-edited since
            assert got[ident]["model"] == v1_tag
            assert got[ident]["text_hash"] == want[ident]

    st = env.status(mid)
    assert st.settled and [p["pass"] for p in st.catchup_passes] == [
        p.pass_no for p in report.passes
    ]
    assert st.catchup_passes[0]["applied"] == first.applied
    with env.db.session() as s:
        tail = s.execute(select(Range).where(Range.id == first.new_ranges[0])).scalar_one()
        assert tail.state == "done" and tail.hi is None
        assert s.execute(select(CatchupPass.pass_no)).scalars().all()

    # the command line: one more run is settled at once, JSON on stdout, exit 0
    out = subprocess.run(
        [str(VENV_BIN / "backfleet"), "catchup", "--migration", str(mid), "--json"],
        env={**env.fleet.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["settled"] is True and data["passes"][0]["pass_no"] == len(report.passes) + 1


def test_hash_sweep_without_updated_at_settles_only_after_a_clean_sweep(
    pg: str, milvus_uri: str, tmp_path: Path
) -> None:
    # 8 ranges of 500, at most 1500 documents hashed per pass: a sweep takes three passes
    env = _env(
        milvus_uri, tmp_path, pg, 6, no_updated_at=True, threshold=1, hash_scan_max_docs=1500
    )
    mid = env.plan_and_start()
    env.fleet.start(1, concurrency=2)
    try:
        env.wait_backfilled(mid)
    finally:
        env.fleet.stop()
    env.update_doc(600, "changed in range 1 behind everyone's back")
    env.update_doc(3600, "changed in range 7 behind everyone's back")
    env.delete_doc(3601)
    report = run_catchup(
        env.settings, env.db, env.store, env.source, env.app, mid, actor="t", max_passes=6
    )
    assert [p.mode for p in report.passes] == ["hash"] * 6
    assert [p.found for p in report.passes] == [1, 0, 2, 0, 0, 0]
    assert [p.settled for p in report.passes] == [False] * 5 + [True]
    assert [p.details["sweep"] for p in report.passes] == [1, 1, 1, 2, 2, 2]
    assert report.settled
    env.assert_shadow_equals_source(mid)


def test_worker_clock_skew_is_covered_by_the_margin_or_a_full_pass(
    pg: str, milvus_uri: str, tmp_path: Path
) -> None:
    env = _env(milvus_uri, tmp_path, pg, 5, threshold=1, skew_seconds=0)
    mid = env.plan_and_start()
    env.fleet.start(1, concurrency=2)
    try:
        env.wait_backfilled(mid)
    finally:
        env.fleet.stop()
    # the workers' clocks ran 200 s fast: they say they read every range "in the future"
    with env.db.session() as s:
        s.execute(
            update(Range)
            .where(Range.migration_id == mid)
            .values(read_started_at=Range.read_started_at + timedelta(seconds=200))
        )
    env.update_doc(10, "edited after the read, stamped before the skewed read time")
    env.update_doc(2500, "another edit")
    # no margin: updated_at looks older than the read, so the edits are not candidates
    missed = run_catchup(env.settings, env.db, env.store, env.source, env.app, mid, actor="t")
    assert missed.passes[0].found == 0
    # a margin larger than the skew finds them
    env.settings.catchup = CatchupSettings(threshold=1, skew_seconds=300)
    found = run_catchup(env.settings, env.db, env.store, env.source, env.app, mid, actor="t")
    assert found.passes[0].changed == 2 and found.settled
    env.assert_shadow_equals_source(mid)
    # and without a margin, --full compares every hash whatever the clocks say
    env.update_doc(11, "edited again")
    env.settings.catchup = CatchupSettings(threshold=1, skew_seconds=0)
    with env.db.session() as s:
        s.execute(update(Range).values(read_started_at=Range.read_started_at + timedelta(hours=1)))
        s.execute(
            update(CatchupPass).values(started_at=CatchupPass.started_at + timedelta(hours=1))
        )
    full = run_catchup(
        env.settings, env.db, env.store, env.source, env.app, mid, actor="t", full=True
    )
    assert full.passes[0].mode == "hash" and full.passes[0].changed == 1
    env.assert_shadow_equals_source(mid)
