"""Profile the worker hot path in one process (pyinstrument), with the zero-cost embedder.

The migration runs through the real task code with Celery in eager mode (``create_app(eager=
True)``: the same pipeline a worker runs, in this process), so the profile holds claim,
keyset reads, embedding, validation, upsert, advance and complete, and nothing else. Prints
docs/s and pyinstrument's call tree; ``--html PATH`` also writes the interactive report.

pyinstrument comes with the dev extras (``make install``).

Usage (repository root; Postgres running; starts milvus-server unless told otherwise)::

    .venv/bin/python bench/profile_pipeline.py                       # 50k docs, dim 384
    .venv/bin/python bench/profile_pipeline.py --docs 20000 --dim 1536 --milvus lite
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine, seed_sql  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--range-size", type=int, default=5000)
    parser.add_argument("--milvus", default="server", choices=["server", "lite"])
    parser.add_argument("--milvus-uri", default=None)
    parser.add_argument("--no-profile", action="store_true", help="time only")
    parser.add_argument("--html", type=Path, default=None)
    parser.add_argument("--show-all", action="store_true", help="the full tree, not the top")
    parser.add_argument(
        "--no-overlap", action="store_true", help="backfill.overlap = false (one step at a time)"
    )
    args = parser.parse_args(argv)

    from backfleet.db.schema import upgrade
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.logs import configure_logging
    from backfleet.settings import BackfillSettings, ModelSettings
    from backfleet.source import Source
    from backfleet.vectorstore import VectorStore
    from coordinator.dispatcher import start_migration
    from coordinator.planner import plan_migration
    from tests.support.fleet import make_settings
    from tests.support.services import MilvusServer, postgres_database
    from workers.app import create_app

    configure_logging("console", "WARNING")
    print(f"machine: {machine()}", flush=True)
    with postgres_database("bfprof") as pg_url:
        seed_sql(pg_url, args.docs)
        milvus = None
        uri = args.milvus_uri
        if uri is None:
            milvus = MilvusServer(args.milvus)
            milvus.start()
            uri = milvus.uri
        try:
            model = ModelSettings(
                provider="local", name="zero-cost", version="1", dimension=args.dim
            )
            settings = make_settings(
                pg_url=pg_url,
                redis_url="redis://127.0.0.1:6379/15",
                milvus_uri=uri,
                models={"bench": model},
                target_model="bench",
                backfill=BackfillSettings(
                    range_size=args.range_size,
                    batch_size=args.batch,
                    lease_seconds=60,
                    heartbeat_seconds=10,
                    queue="bfprof",
                    index_type="HNSW",
                    overlap=not args.no_overlap,
                ),
            )
            engine = make_engine(pg_url)
            db = Database(settings.database_url)
            upgrade(db.engine)
            store = VectorStore(uri)
            source = Source(engine, settings.source)
            embedder = embedder_for(settings, "bench")
            report = plan_migration(
                settings, db, store, source, embedder, model_label="bench", actor="bench"
            )
            store.create_generation(
                report.target_generation, settings.alias, embedder.identity, "int", "HNSW"
            )
            app = create_app(settings, eager=True)
            # warm the worker context (connections, identity) outside the measured window
            ctx = app.backfleet_context
            _ = ctx.db, ctx.source, ctx.embedder("bench").identity
            ctx.generation(report.target_generation)
            profiler = None
            if not args.no_profile:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.001)
                profiler.start()
            t0, c0 = time.monotonic(), time.process_time()
            start_migration(db, store, app, report.migration_id, actor="bench", index_type="HNSW")
            seconds, cpu = time.monotonic() - t0, time.process_time() - c0
            if profiler is not None:
                profiler.stop()
            count = store.open_generation(report.target_generation).count()
            assert count == report.docs, (count, report.docs)
            print(
                f"{report.docs} docs, dim {args.dim}, batch {args.batch}, "
                f"overlap {not args.no_overlap}: {seconds:.2f}s = "
                f"{report.docs / seconds:.0f} docs/s (in-process, eager); "
                f"process CPU {cpu:.2f}s = {cpu / seconds:.0%} of one core",
                flush=True,
            )
            if profiler is not None:
                print(profiler.output_text(unicode=True, color=False, show_all=args.show_all))
                if args.html:
                    args.html.write_text(profiler.output_html())
            store.client.drop_collection(report.target_generation)
            store.close()
            db.dispose()
            engine.dispose()
        finally:
            if milvus is not None:
                milvus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
