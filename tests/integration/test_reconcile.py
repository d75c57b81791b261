"""Reconcile on real services: clean after a backfill; every kind of damage found with its
count; ``--repair`` through real workers; clean again; the CLI's exit codes and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from backfleet.corpus import seed_source
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.settings import BackfillSettings, Settings
from backfleet.source import Source, text_hash
from backfleet.vectorstore import Generation, VectorStore
from coordinator.dispatcher import load_migration, start_migration
from coordinator.planner import plan_migration
from coordinator.reconciler import ReconcileReport, latest_reconcile, reconcile_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration

DOCS = 6000
BIN = Path(sys.executable).parent / "backfleet"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        env={**os.environ, **env},
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=300,
    )


def run_reconcile(
    settings: Settings, db: Database, source: Source, shadow: Generation, **kw: Any
) -> ReconcileReport:
    m = load_migration(db, None, settings.alias)
    embedder = embedder_for(settings, m.target_model)
    kw.setdefault("sample", DOCS)  # every vector: the corrupted one cannot hide
    return reconcile_migration(db, source, shadow, m, embedder, **kw)


def test_reconcile_finds_damage_and_repair_makes_it_clean(
    pg_url: str, milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(3),
        milvus_uri=milvus_uri,
        backfill=BackfillSettings(
            range_size=2000,
            batch_size=256,
            lease_seconds=20,
            heartbeat_seconds=3,
            queue=f"bftest_rc_{os.getpid()}",
        ),
    )
    env = settings_env(settings)
    engine = make_engine(pg_url)
    seed_source(engine, DOCS)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    v2 = embedder_for(settings, "local-v2")
    report = plan_migration(settings, db, store, source, v2, model_label="local-v2", actor="test")
    assert latest_reconcile(db, report.migration_id) is None

    fleet = WorkerFleet(env, tmp_path)
    fleet.start(1, concurrency=2)
    try:
        app = create_app(settings)
        start_migration(db, store, app, report.migration_id, actor="test", index_type="HNSW")

        def backfilled() -> bool:
            st = migration_status(db, report.migration_id, settings.alias)
            return st.ranges["done"] == report.ranges

        wait_for(backfilled, 300, "backfill done", on_timeout=fleet.logs)
        shadow = store.open_generation(report.target_generation)

        # 1. a complete shadow is clean, and the row says so for the cutover gate
        clean = run_reconcile(settings, db, source, shadow)
        assert clean.clean, clean.to_dict()
        assert clean.source_docs == clean.generation_rows == DOCS
        assert clean.sampled == DOCS
        row = latest_reconcile(db, report.migration_id)
        assert row is not None and row.clean and row.id == clean.reconcile_id
        assert row.generation == report.target_generation

        # 2. damage of every kind
        shadow.delete(list(range(10, 17)))  # missing: 7
        with engine.begin() as conn:  # stale: 5 (the source moved on)
            conn.execute(
                text(
                    "UPDATE documents SET text = text || ' edited', updated_at = now() "
                    "WHERE id BETWEEN 200 AND 204"
                )
            )
        rng = np.random.default_rng(1)
        wrong_vec = rng.normal(size=(1, v2.identity.dimension)).astype(np.float32)
        wrong_vec /= np.linalg.norm(wrong_vec)
        doc100 = source.fetch([100])[0]
        assert doc100.text is not None
        # corrupted: 1 (right tag and hash, wrong vector)
        shadow.upsert([100], wrong_vec, [text_hash(doc100.text)], v2.identity)
        # extra: 1 (an id the source does not have), in the last, open-ended range
        extra_vec = v2.embed(["not in the source"]).vectors
        shadow.upsert([999_999], extra_vec, [text_hash("not in the source")], v2.identity)
        # wrong model: 1 (another model's tag on a current row, written behind backfleet's back)
        doc300 = source.fetch([300])[0]
        assert doc300.text is not None
        vec300 = v2.embed([doc300.text]).vectors[0].tolist()
        row300 = {
            "id": 300,
            "vector": vec300,
            "text_hash": text_hash(doc300.text),
            "model": "openai:text-embedding-3-small@1/384#000000000000",
            "embedded_at": 0,
        }
        store.client.upsert(shadow.name, [row300])
        # duplicated: a plain insert of an existing key (milvus-server stores it twice;
        # milvus-lite overwrites, so there the damage does not exist)
        doc400 = source.fetch([400])[0]
        assert doc400.text is not None
        row400 = {
            "id": 400,
            "vector": v2.embed([doc400.text]).vectors[0].tolist(),
            "text_hash": text_hash(doc400.text),
            "model": v2.identity.tag,
            "embedded_at": 0,
        }
        store.client.insert(shadow.name, [row400])
        dup = 1 if shadow.count(400, 401) == 2 else 0

        found = run_reconcile(settings, db, source, shadow, chunk=700)
        assert not found.clean
        got = {
            k: getattr(found, k)
            for k in ("missing", "extra", "duplicated", "stale", "wrong_model", "corrupted")
        }
        assert got == {
            "missing": 7,
            "extra": 1,
            "duplicated": dup,
            "stale": 5,
            "wrong_model": 1,
            "corrupted": 1,
        }, found.to_dict()
        assert found.source_docs == DOCS
        assert found.generation_rows == DOCS - 7 + 1 + dup
        examples = {k: v for r in found.dirty_ranges for k, v in r.examples.items()}
        assert examples["missing"] == [str(i) for i in range(10, 17)]
        assert examples["corrupted"] == ["100"]
        assert examples["extra"] == ["999999"]
        assert examples["wrong_model"] == ["300"]
        if dup:
            assert examples["duplicated"] == ["400"]
        row = latest_reconcile(db, report.migration_id)
        assert row is not None and not row.clean and row.missing == 7 and row.stale == 5
        # the same answer whatever the chunk (chunk boundaries lose nothing)
        again = run_reconcile(settings, db, source, shadow, chunk=50_000)
        assert {k: getattr(again, k) for k in got} == got

        # 3. the CLI: JSON and a non-zero exit when not clean
        proc = cli(["reconcile", "--json", "--sample", "0"], env, tmp_path)
        assert proc.returncode == 1, proc.stderr
        data = json.loads(proc.stdout)
        assert data["clean"] is False and data["missing"] == 7 and data["stale"] == 5
        assert data["corrupted"] == 0 and data["sampled"] == 0  # no sample asked

        # 4. --repair: delete extras and duplicates, re-embed the rest through the workers
        proc = cli(["reconcile", "--repair", "--sample", "10000"], env, tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "NOT CLEAN" in proc.stdout and "repair:" in proc.stdout, proc.stdout

        def repaired() -> bool:
            return run_reconcile(settings, db, source, shadow, sample=0).clean

        wait_for(repaired, 120, "reconcile clean after repair", interval=2, on_timeout=fleet.logs)
    finally:
        fleet.stop()

    proc = cli(["reconcile"], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CLEAN" in proc.stdout and "NOT CLEAN" not in proc.stdout
    final = run_reconcile(settings, db, source, shadow)
    assert final.clean and final.generation_rows == DOCS, final.to_dict()
    row = latest_reconcile(db, report.migration_id)
    assert row is not None and row.clean and row.generation == report.target_generation
    # the repaired rows hold the current text and the generation's model
    rows = {r["id"]: r for r in shadow.get([200, 300, 999_999], ["id", "text_hash", "model"])}
    assert set(rows) == {200, 300}
    doc200 = source.fetch([200])[0]
    assert doc200.text is not None and rows[200]["text_hash"] == text_hash(doc200.text)
    assert rows[300]["model"] == v2.identity.tag


def test_reconcile_refuses_an_embedder_of_another_model(pg_url: str, milvus_uri: str) -> None:
    from backfleet.errors import ModelMismatch
    from coordinator.reconciler import Reconciler

    settings = make_settings(pg_url=pg_url, redis_url=redis_db_url(3), milvus_uri=milvus_uri)
    engine = make_engine(pg_url)
    seed_source(engine, 10)
    source = Source(engine, settings.source)
    store = VectorStore(milvus_uri)
    v2 = embedder_for(settings, "local-v2")
    name = f"{settings.alias}__probe__g1"
    gen = store.create_generation(name, settings.alias, v2.identity, "int", "FLAT")
    try:
        with pytest.raises(ModelMismatch):
            Reconciler(source, gen, embedder_for(settings, "local-v1"))
    finally:
        store.drop(name)
