"""Text ids that look like expression syntax, on real services (issue 13, item 1).

A source of ids ``' a1'…' a5'``, ``'" or id != "'``, ``'b001'…'b100'`` split into ranges of 6,
backfilled by real `backfleet worker` processes into the real milvus-server: ``reconcile``
must be clean (no false extras, no false duplicates), ``reconcile --repair`` must delete
nothing, and an id with backslashes (``back\\slash\\end``) must not make ``reconcile`` or
``catchup --full`` exit 2 — it is found missing and repaired like any other id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from backfleet.corpus import make_text
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "backfleet"
INJECTION = '" or id != "'
BACKSLASH = "back\\slash\\end"
IDS = [f" a{i}" for i in range(1, 6)] + [INJECTION] + [f"b{i:03d}" for i in range(1, 101)]


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


def seed_text_ids(engine: Engine, ids: list[str]) -> None:
    import random

    rng = random.Random(3)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS documents (id text PRIMARY KEY, text text NOT NULL, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        for ident in ids:
            conn.execute(
                text("INSERT INTO documents (id, text) VALUES (:id, :t)"),
                {"id": ident, "t": make_text(rng, "billing")},
            )


def test_text_ids_that_look_like_expressions_reconcile_clean_and_repair_deletes_nothing(
    pg_url: str, milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(
        pg_url=pg_url, redis_url=redis_db_url(4), milvus_uri=milvus_uri, range_size=6
    )
    env = settings_env(settings)
    engine = make_engine(pg_url)
    seed_text_ids(engine, IDS)
    source = Source(engine, settings.source)
    assert source.id_type == "str"
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    v2 = embedder_for(settings, "local-v2")
    report = plan_migration(settings, db, store, source, v2, model_label="local-v2", actor="test")
    assert report.ranges == 18

    fleet = WorkerFleet(env, tmp_path)
    fleet.start(1, concurrency=2)
    try:
        start_migration(
            db, store, create_app(settings), report.migration_id, actor="test", index_type="HNSW"
        )

        def backfilled() -> bool:
            st = migration_status(db, report.migration_id, settings.alias)
            return bool(st.ranges["done"] == report.ranges)

        wait_for(backfilled, 300, "backfill done", on_timeout=fleet.logs)
        shadow = store.open_generation(report.target_generation)
        assert shadow.count() == len(IDS)

        # reconcile: clean, no false extras or duplicates (today: extra 100, duplicated 6)
        proc = cli(["reconcile", "--json", "--sample", "0"], env, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        assert (data["extra"], data["duplicated"], data["missing"]) == (0, 0, 0), data
        assert data["clean"] and data["generation_rows"] == len(IDS)

        # --repair deletes nothing (today: 106 valid rows deleted)
        proc = cli(["reconcile", "--repair", "--json", "--sample", "0"], env, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["repair"] == {"deleted": 0, "enqueued": 0, "refused": 0}
        assert shadow.count() == len(IDS)
        got = {r["id"] for r in shadow.get(IDS, ["id"])}
        assert got == set(IDS)

        # an id with backslashes (today: reconcile and catchup --full exit 2)
        seed_text_ids(engine, [BACKSLASH])
        proc = cli(["reconcile", "--json", "--sample", "0"], env, tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        assert (data["missing"], data["extra"], data["duplicated"]) == (1, 0, 0), data
        examples = [i for r in data["dirty_ranges"] for i in r["examples"].get("missing", [])]
        assert examples == [BACKSLASH]

        proc = cli(["catchup", "--full", "--json", "--max-passes", "3"], env, tmp_path)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        assert shadow.get([BACKSLASH], ["id"]) == [{"id": BACKSLASH}]

        shadow.delete([BACKSLASH])
        assert shadow.count() == len(IDS)
        proc = cli(["reconcile", "--repair", "--json", "--sample", "0"], env, tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["repair"] == {"deleted": 0, "enqueued": 1, "refused": 0}

        def repaired() -> bool:
            return cli(["reconcile", "--sample", "0"], env, tmp_path).returncode == 0

        wait_for(repaired, 120, "reconcile clean after repair", interval=2, on_timeout=fleet.logs)
    finally:
        fleet.stop()
    assert {r["id"] for r in shadow.get([*IDS, BACKSLASH], ["id"])} == {*IDS, BACKSLASH}
    assert shadow.count() == len(IDS) + 1
    store.drop(shadow.name)
