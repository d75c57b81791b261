"""Per-batch CPU of the worker's own steps, each against the plain alternative (Postgres only).

What a worker spends per batch of 256 besides the provider call and the Milvus upsert, in CPU
milliseconds of this process (``time.process_time``; wall milliseconds beside it):

* keyset read: ``Source.iter_batches`` (one held connection, precompiled statement) against
  ``Source.batch`` per batch (build, compile, check out) and raw psycopg (the bare loop's read);
* checkpoint advance: ``checkpoint.advance`` on the range's held connection with asynchronous
  commit (the worker's), on a held connection with synchronous commit, on a pool connection,
  and the ORM-session form it replaced (Postgres alone here: the fsync a commit waits for
  costs more when Milvus writes to the same disk, see docs/benchmarks.md §4);
* ``embed_batch`` bookkeeping (empty-text filter, text hashes, validation, retries wrapper,
  metrics) against the bare ``embed`` + text hashes, with the ``zero-cost`` model;
* the upsert request (client side only, nothing sent): built from the columns
  (``backfleet/vectorstore/request.py``, what ``Generation.upsert`` sends) against pymilvus's
  packing of one dict per row (``MilvusClient.upsert``), at 384 and 1,536 dimensions.

Usage (repository root; Postgres on 127.0.0.1:5432)::

    .venv/bin/python bench/hot_path.py              # 100k-row table, 300 repetitions each
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine, seed_sql  # noqa: E402


def measure(label: str, fn: Callable[[], Any], n: int) -> tuple[str, float, float]:
    fn()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    cpu = (time.process_time() - c0) / n * 1000
    wall = (time.perf_counter() - w0) / n * 1000
    print(f"  {label:<52} {cpu:7.3f} ms CPU {wall:7.3f} ms wall", flush=True)
    return label, cpu, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)

    import psycopg
    from sqlalchemy import update

    from backfleet.db import checkpoint
    from backfleet.db.models import Migration, MigrationState, Range, RangeState
    from backfleet.db.schema import upgrade
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import build_embedder
    from backfleet.logs import configure_logging
    from backfleet.settings import ModelSettings, SourceSettings
    from backfleet.source import Doc, Source, text_hash
    from backfleet.throttle import NullThrottle
    from tests.support.services import postgres_database
    from workers.pipeline import embed_batch

    configure_logging("console", "WARNING")
    print(f"machine: {machine()}", flush=True)
    n, size = args.repeat, args.batch
    with postgres_database("bfhot") as pg_url:
        seed_sql(pg_url, args.docs)
        source = Source(make_engine(pg_url), SourceSettings(url=pg_url, table="documents"))
        dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
        raw = psycopg.connect(dsn, autocommit=True)

        print(f"keyset read, {size} rows a batch:")
        walk = iter(())

        def walked() -> list[Doc]:
            nonlocal walk
            batch = next(walk, None)
            if batch is None:  # start the walk again (one connection per walk)
                walk = iter(source.iter_batches(None, None, None, size))
                batch = next(walk)
            return batch

        measure("Source.iter_batches (held connection, precompiled)", walked, n)
        measure(
            "Source.batch (per batch: build, compile, checkout)",
            lambda: source.batch(None, None, "1000", size),
            n,
        )
        measure(
            "raw psycopg (the bare loop's read)",
            lambda: raw.execute(
                "SELECT id, text FROM documents WHERE id > %s ORDER BY id LIMIT %s", (1000, size)
            ).fetchall(),
            n,
        )

        print("checkpoint advance (fenced UPDATE + COMMIT):")
        db = Database(pg_url)
        upgrade(db.engine)
        now = checkpoint.utcnow()
        with db.session() as s:
            m = Migration(
                alias="hot",
                target_generation="hot__g1",
                target_model="m",
                target_identity="{}",
                id_type="int",
                state=MigrationState.BACKFILLING,
                settings_snapshot={},
                created_at=now,
                updated_at=now,
            )
            s.add(m)
            s.flush()
            r = Range(
                migration_id=m.id,
                seq=0,
                state=RangeState.PENDING,
                created_at=now,
                updated_at=now,
            )
            s.add(r)
            s.flush()
            range_id = r.id
        claim = checkpoint.claim(db, range_id, "bench", 600)
        assert claim is not None
        with db.connection(async_commit=True) as pinned:
            measure(
                "advance on the range's held connection, async commit",
                lambda: checkpoint.advance(db, claim, "5", 1, 1, 600, conn=pinned),
                n,
            )
        with db.engine.connect() as pinned:
            measure(
                "advance on a held connection, synchronous commit",
                lambda: checkpoint.advance(db, claim, "5", 1, 1, 600, conn=pinned),
                n,
            )
        measure(
            "advance on a pool connection (pre-ping)",
            lambda: checkpoint.advance(db, claim, "5", 1, 1, 600),
            n,
        )

        def orm_advance() -> None:  # the form before this change: ORM bulk update
            t = checkpoint.utcnow()
            with db.session() as session:
                session.execute(
                    update(Range)
                    .where(
                        Range.id == claim.range_id,
                        Range.lease_token == claim.token,
                        Range.state == RangeState.RUNNING,
                    )
                    .values(
                        cursor="5",
                        docs_done=Range.docs_done + 1,
                        tokens_used=Range.tokens_used + 1,
                        heartbeat_at=t,
                        lease_expires_at=t + timedelta(seconds=600),
                        updated_at=t,
                    ),
                    execution_options={"synchronize_session": False},
                )

        measure("ORM session bulk update, no session sync (before)", orm_advance, n)

        print(f"embedding bookkeeping, zero-cost model, dim 384, {size} docs:")
        emb = build_embedder(
            ModelSettings(provider="local", name="zero-cost", version="1", dimension=384)
        )
        docs = source.batch(None, None, None, size)
        texts = [d.text or "" for d in docs]
        measure(
            "embed + text hashes (the bare loop's work)",
            lambda: (emb.embed(texts), [text_hash(t) for t in texts]),
            n,
        )
        measure(
            "embed_batch without upsert (the worker's)",
            lambda: embed_batch(docs, emb, NullThrottle(), None),
            n,
        )
        print(f"upsert request for {size} rows (client side, nothing sent):")
        request_steps(size, n)
        raw.close()
        db.dispose()
    return 0


def request_steps(size: int, n: int) -> None:
    for dim in (384, 1536):
        request_step(dim, size, n)


def request_step(dim: int, size: int, n: int) -> None:
    import numpy as np
    from pymilvus.client.prepare import Prepare

    from backfleet.vectorstore.request import build_upsert
    from backfleet.vectorstore.store import generation_schema

    fields = [dict(f) for f in generation_schema("int", dim).to_dict()["fields"]]
    matrix = np.random.default_rng(dim).standard_normal((size, dim)).astype(np.float32)
    ids = list(range(size))
    hashes = [f"{i:064x}" for i in ids]

    def rows() -> Any:
        return Prepare.row_upsert_param(
            "gen",
            [
                {"id": i, "vector": v, "model": "t", "text_hash": h, "embedded_at": 1}
                for i, v, h in zip(ids, matrix, hashes, strict=True)
            ],
            "",
            fields,
            [],
            enable_dynamic=False,
        )

    measure(f"dim {dim}: rows, MilvusClient.upsert's packing (before)", rows, max(20, n // 10))
    measure(
        f"dim {dim}: columns, float32 buffer (Generation.upsert)",
        lambda: build_upsert("gen", ids, matrix, "t", hashes, 1),
        n,
    )


if __name__ == "__main__":
    sys.exit(main())
