"""Data errors are dead letters, not outages (issue 13, items 4 and 5), on real services.

* A text id longer than the generation's primary key (512 UTF-8 bytes, what milvus-server
  enforces) is reported by ``plan`` and becomes a ``rejected`` dead letter; the rest of its
  range is written and reconcile lists it instead of calling it missing.
* A ``SQL_ASCII`` Postgres source holding bytes that are not UTF-8: ``plan`` works (with a
  note), every undecodable text or id is a ``rejected`` dead letter with the byte offset, the
  range finishes, and reconcile and catch-up read the source without crashing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text

from backfleet.db.models import DeadLetter, Range
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.settings import BackfillSettings, Settings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator import changes
from coordinator.changes import fetch_hashes, source_hashes
from coordinator.dispatcher import load_migration, start_migration
from coordinator.planner import plan_migration
from coordinator.reconciler import reconcile_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import PG_ADMIN, WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "backfleet"
#: 200 characters, 600 bytes in UTF-8: under 512 characters, over the 512 bytes Milvus holds
LONG_ID = "€" * 200


@contextmanager
def sql_ascii_database() -> Iterator[str]:
    """A fresh Postgres database with ``ENCODING 'SQL_ASCII'`` (any bytes are stored as is)."""
    name = f"bftest_ascii_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw_exec(url: str, *statements: str) -> None:
    """Statements sent by psycopg itself (the bytes of E'' literals reach the table as is)."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        for sql in statements:
            conn.execute(sql)


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        env={**os.environ, **env},
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=300,
    )


def settings_for(source_url: str, checkpoint_url: str, milvus_uri: str, **kw: Any) -> Settings:
    backfill = BackfillSettings(
        range_size=kw.pop("range_size", 1000),
        batch_size=kw.pop("batch_size", 256),
        lease_seconds=20,
        heartbeat_seconds=3,
        max_attempts=2,
        queue=f"bftest_de_{uuid.uuid4().hex[:8]}",
        index_type="HNSW",
    )
    s = make_settings(
        pg_url=checkpoint_url, redis_url=redis_db_url(5), milvus_uri=milvus_uri, backfill=backfill
    )
    return s.model_copy(update={"source": s.source.model_copy(update={"url": source_url})})


def run_backfill(settings: Settings, tmp: Path, db: Database, store: VectorStore, mid: int) -> Any:
    fleet = WorkerFleet(settings_env(settings), tmp)
    fleet.start(1, concurrency=1)
    try:
        start_migration(db, store, create_app(settings), mid, actor="test", index_type="HNSW")

        def settled() -> bool:
            st = migration_status(db, mid, settings.alias)
            return bool(st.ranges["done"] + st.ranges["failed"] == sum(st.ranges.values()))

        wait_for(settled, 180, "every range done or failed", on_timeout=fleet.logs)
        logs = fleet.logs()
    finally:
        fleet.stop()
    return migration_status(db, mid, settings.alias), logs


def dead_letters(db: Database, mid: int) -> dict[str, tuple[str, str]]:
    with db.session() as session:
        rows = session.execute(
            select(DeadLetter.doc_id, DeadLetter.kind, DeadLetter.reason).where(
                DeadLetter.migration_id == mid
            )
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_an_id_over_the_primary_key_limit_is_a_dead_letter_and_the_range_is_written(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with postgres_database() as pg:
        settings = settings_for(pg, pg, milvus_uri)
        raw_exec(
            pg,
            "CREATE TABLE documents (id text PRIMARY KEY, text text, updated_at timestamptz)",
            "INSERT INTO documents SELECT 'doc-' || lpad(i::text, 3, '0'), "
            "'about parcels and couriers number ' || i, now() FROM generate_series(1, 41) i",
            f"INSERT INTO documents VALUES ('doc-020-{LONG_ID}', 'a document with a long id', "
            "now())",
        )
        engine = make_engine(pg)
        source = Source(engine, settings.source)
        db = Database(settings.database_url)
        upgrade(db.engine)
        store = VectorStore(milvus_uri)
        emb = embedder_for(settings, "local-v2")

        report = plan_migration(settings, db, store, source, emb, model_label="local-v2", actor="t")
        assert report.docs == 42 and report.ranges == 1

        st, logs = run_backfill(settings, tmp_path, db, store, report.migration_id)
        assert st.ranges["done"] == 1, (st.ranges, st.failed, logs[-3000:])
        shadow = store.open_generation(report.target_generation)
        assert shadow.count() == 41
        dead = dead_letters(db, report.migration_id)
        long_id = f"doc-020-{LONG_ID}"
        assert set(dead) == {long_id}
        kind, reason = dead[long_id]
        assert kind == "rejected"
        assert reason == (
            "id is 608 bytes in UTF-8 (208 characters); "
            "the generation's primary key holds at most 512"
        )
        with db.session() as session:
            (done,) = session.execute(
                select(Range.docs_done).where(Range.migration_id == report.migration_id)
            ).one()
        assert done == 42

        # plan reported the id the generation cannot hold (a warning: the rest can migrate)
        assert report.long_ids == 1, report
        assert report.long_id_examples == [long_id[:60] + "…"]
        assert any("512" in w for w in report.warnings), report.warnings

        # reconcile: the id is not "missing" for ever: it is listed as rejected by the source
        m = load_migration(db, report.migration_id, settings.alias)
        rec = reconcile_migration(db, source, shadow, m, emb, sample=0)
        assert rec.missing == 0, rec.to_dict()
        assert rec.rejected_docs == 1
        assert rec.clean, rec.to_dict()
        assert rec.generation_rows == 41
        assert rec.rejected_examples == [long_id[:60] + "…"], rec.to_dict()

        # catch-up does not see the dead-lettered document as "created" at every pass (it
        # would never settle): by hash and by fetch
        src = changes.source_hashes(source, None, None, 10)
        assert (
            changes.diff_hashes(src, changes.shadow_hashes(shadow, source, None, None, 10)).found
            == 0
        )
        assert changes.fetch_hashes(source, [long_id], 10) == {long_id: None}


def test_plan_refuses_when_every_id_is_too_long(milvus_uri: str, tmp_path: Path) -> None:
    with postgres_database() as pg:
        settings = settings_for(pg, pg, milvus_uri)
        raw_exec(
            pg,
            "CREATE TABLE documents (id text PRIMARY KEY, text text, updated_at timestamptz)",
            f"INSERT INTO documents SELECT '{LONG_ID}' || i, 'text ' || i, now() "
            "FROM generate_series(1, 3) i",
        )
        source = Source(make_engine(pg), settings.source)
        db = Database(settings.database_url)
        upgrade(db.engine)
        from backfleet.errors import PlanError

        with pytest.raises(PlanError, match="every id"):
            plan_migration(
                settings,
                db,
                VectorStore(milvus_uri),
                source,
                embedder_for(settings, "local-v2"),
                model_label="local-v2",
                actor="t",
            )


#: in id order (bytewise): d00 … d06, the undecodable id d06\xfe, d07 … d19
BAD_TEXT_IDS = {"d03": 4, "d12": 10}


def seed_sql_ascii(url: str) -> None:
    rows = []
    for i in range(20):
        ident = f"d{i:02d}"
        body = f"caf\\303\\251 number {i} about couriers"  # valid UTF-8 (é)
        if ident == "d03":
            body = "bad \\377 byte"  # \xff at byte 4
        if ident == "d12":
            body = "truncated \\303"  # a lead byte with nothing after, at byte 10
        rows.append(f"('{ident}', E'{body}', now())")
    rows.append("(E'd06\\376', 'an id that is not UTF-8', now())")
    raw_exec(
        url,
        "CREATE TABLE documents (id text PRIMARY KEY, text text, updated_at timestamptz)",
        "INSERT INTO documents VALUES " + ", ".join(rows),
    )


def test_sql_ascii_source_reads_undecodable_rows_as_documents(milvus_uri: str) -> None:
    """The source's own reads (bounds, stats, batches, fetch) on undecodable bytes."""
    with sql_ascii_database() as src, postgres_database() as pg:
        seed_sql_ascii(src)
        settings = settings_for(src, pg, milvus_uri)
        source = Source(make_engine(src, what="source.url"), settings.source)
        assert source.server_encoding == "SQL_ASCII"
        docs, chars = source.stats()
        assert docs == 21 and chars > 0
        assert source.split_points(8) == ["d07", "d15"]
        # at every 7th row the 8th id is not UTF-8: it cannot bound a range, the ranges join
        assert source.split_points(7) == ["d13"]
        seen = [d for batch in source.iter_batches(None, None, None, 4) for d in batch]
        assert len(seen) == 21
        by_id = {d.id: d for d in seen}
        assert by_id["d05"].text == "café number 5 about couriers" and by_id["d05"].error is None
        assert by_id["d03"].text is None
        assert by_id["d03"].error == "text is not valid UTF-8 at byte 4"
        assert by_id["d12"].error == "text is not valid UTF-8 at byte 10"
        assert by_id["d06\\xfe"].error == "id is not valid UTF-8 at byte 3"
        assert [d.id for d in seen][6:9] == ["d06", "d06\\xfe", "d07"]
        fetched = {d.id: d for d in source.fetch(["d03", "d04"])}
        assert fetched["d03"].error and fetched["d04"].error is None
        one = source.batch(None, None, None, 30)
        assert len(one) == 21
        # catch-up reads the same way: an undecodable text is a document not to be indexed
        hashes = source_hashes(source, None, None, 4)
        assert hashes["d03"] is None and hashes["d04"] is not None
        assert fetch_hashes(source, ["d12", "d13"], 10)["d12"] is None
        # and its id-only scans: every id once, the undecodable one as its dead letter's id
        ids = {f"d{i:02d}" for i in range(20)} | {"d06\\xfe"}
        for page in (3, 4, 7, 100):  # with pages of 4 the undecodable id ends one
            assert changes.source_ids(source, None, None, page) == ids
        assert changes.source_ids(source, "d06", "d08", 1) == {"d06", "d06\\xfe", "d07"}
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        assert changes.updated_since(source, None, "d07", long_ago) == {
            f"d{i:02d}" for i in range(7)
        } | {"d06\\xfe"}
        # a new range after the cursor "d06" starts at the undecodable id's text, which sorts
        # between "d06" and its bytes: the two ranges still meet without a gap
        assert changes.ids_after(source, "d06") == (14, "d06\\xfe")
        assert source.count("d06", "d06\\xfe") == 1 and source.count("d06\\xfe", None) == 14


def test_sql_ascii_source_plan_and_backfill_dead_letter_the_undecodable(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with sql_ascii_database() as src, postgres_database() as pg:
        seed_sql_ascii(src)
        settings = settings_for(src, pg, milvus_uri, range_size=8, batch_size=4)
        env = settings_env(settings)
        db = Database(settings.database_url)
        upgrade(db.engine)

        # plan through the CLI: no traceback, a note on the encoding
        out = cli(["plan", "--model", "local-v2", "--json"], env, tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        report = json.loads(out.stdout)
        assert report["docs"] == 21
        assert any("SQL_ASCII" in w for w in report["warnings"]), report

        store = VectorStore(milvus_uri)
        mid = int(report["migration_id"])
        st, logs = run_backfill(settings, tmp_path, db, store, mid)
        assert st.ranges["failed"] == 0 and st.ranges["done"] == report["ranges"], (
            st.ranges,
            st.failed,
            logs[-3000:],
        )
        assert "range_released" not in logs, logs[-3000:]
        with db.session() as session:
            attempts = session.execute(
                select(Range.attempts).where(Range.migration_id == mid)
            ).scalars()
            assert max(attempts) <= 1  # no range failed (a claim may count as one attempt)
        shadow = store.open_generation(report["target_generation"])
        assert shadow.count() == 18
        dead = dead_letters(db, mid)
        assert dead == {
            "d03": ("rejected", "text is not valid UTF-8 at byte 4"),
            "d12": ("rejected", "text is not valid UTF-8 at byte 10"),
            "d06\\xfe": ("rejected", "id is not valid UTF-8 at byte 3"),
        }

        source = Source(make_engine(src, what="source.url"), settings.source)
        m = load_migration(db, mid, settings.alias)
        rec = reconcile_migration(db, source, shadow, m, embedder_for(settings, "local-v2"))
        assert rec.missing == 0 and rec.extra == 0, rec.to_dict()
        assert rec.rejected_docs == 3
        assert rec.clean, rec.to_dict()
        with source.engine.connect() as conn:  # the bytes are still there, untouched
            assert conn.execute(text("SELECT count(*) FROM documents")).scalar() == 21


def test_sqlite_source_with_bytes_that_are_not_utf8_is_not_an_outage(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite stores any bytes as TEXT; its driver's decode error was an OperationalError,
    taken for an outage (the range "released" and re-sent for ever, never failed)."""
    monkeypatch.chdir(tmp_path)
    src = f"sqlite:///{tmp_path / 'source.db'}"
    engine = make_engine(src, what="source.url")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE documents (id INTEGER PRIMARY KEY, text TEXT, updated_at TIMESTAMP)"
        )
        for i in range(1, 31):
            body = "x'626164ff'" if i == 7 else f"'about couriers and parcels {i}'"
            conn.exec_driver_sql(
                f"INSERT INTO documents VALUES ({i}, CAST({body} AS TEXT), '2026-01-01 00:00:00')"
            )
    with postgres_database() as pg:
        settings = settings_for(src, pg, milvus_uri, range_size=10, batch_size=4)
        source = Source(engine, settings.source)
        docs = [d for batch in source.iter_batches(None, None, None, 4) for d in batch]
        assert len(docs) == 30
        assert docs[6].id == 7 and docs[6].error == "text is not valid UTF-8 at byte 3"
        db = Database(settings.database_url)
        upgrade(db.engine)
        store = VectorStore(milvus_uri)
        emb = embedder_for(settings, "local-v2")
        report = plan_migration(settings, db, store, source, emb, model_label="local-v2", actor="t")
        st, logs = run_backfill(settings, tmp_path, db, store, report.migration_id)
        assert st.ranges["done"] == 3 and st.ranges["failed"] == 0, (st.ranges, logs[-3000:])
        assert "range_released" not in logs, logs[-3000:]
        assert store.open_generation(report.target_generation).count() == 29
        assert dead_letters(db, report.migration_id) == {
            "7": ("rejected", "text is not valid UTF-8 at byte 3")
        }
