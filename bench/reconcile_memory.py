"""Reconcile throughput and peak memory at growing corpus sizes (the memory must stay flat).

For each size: a fresh Postgres database with a synthetic corpus, a planned migration and its
shadow generation filled directly (no workers: embed_batch with the local model), then
``reconcile_migration`` runs in a fresh child process, twice: once plain (ids/s, peak RSS
from ``ru_maxrss``) and once under ``tracemalloc`` (peak Python heap; slower).

    .venv/bin/python bench/reconcile_memory.py --sizes 20000 100000 [--milvus server|lite]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> None:
    """Run one reconcile and print its figures as JSON (a fresh process: a clean peak RSS)."""
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.logs import configure_logging
    from backfleet.settings import Settings, SourceSettings
    from backfleet.source import Source
    from backfleet.vectorstore import VectorStore
    from coordinator.dispatcher import load_migration
    from coordinator.reconciler import reconcile_migration

    configure_logging("console", "WARNING")
    settings = Settings(
        database_url=args.pg_url,
        milvus_uri=args.milvus_uri,
        source=SourceSettings(url=args.pg_url, table="documents"),
    )
    db = Database(settings.database_url)
    source = Source(make_engine(args.pg_url), settings.source)
    store = VectorStore(args.milvus_uri)
    migration = load_migration(db, args.migration_id)
    generation = store.open_generation(migration.target_generation)
    embedder = embedder_for(settings, migration.target_model)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    report = reconcile_migration(
        db, source, generation, migration, embedder, chunk=args.chunk, sample=args.sample
    )
    seconds = time.perf_counter() - t0
    peak_heap = tracemalloc.get_traced_memory()[1] if args.trace else None
    out = {
        "clean": report.clean,
        "ids": report.source_docs,
        "ranges": report.ranges,
        "seconds": seconds,
        "ids_per_second": report.source_docs / seconds,
        "rss_before_kib": rss_before,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_tracemalloc_bytes": peak_heap,
    }
    print(json.dumps(out))


def build(size: int, pg_url: str, milvus_uri: str, range_size: int) -> int:
    """Seed the corpus, plan a migration and fill its shadow; the migration id."""
    from backfleet.db.schema import upgrade
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.limits import NullThrottle
    from backfleet.settings import BackfillSettings, Settings, SourceSettings
    from backfleet.source import Source
    from backfleet.vectorstore import VectorStore
    from coordinator.planner import plan_migration
    from workers.pipeline import embed_batch

    settings = Settings(
        database_url=pg_url,
        milvus_uri=milvus_uri,
        alias=f"bench_rc_{size}_{os.getpid()}",
        source=SourceSettings(url=pg_url, table="documents"),
        backfill=BackfillSettings(range_size=range_size),
    )
    from bench._common import seed_sql

    # the corpus in SQL (generate_series): a million rows in seconds, not minutes of Python
    print(f"  seeded {size:,} rows in {seed_sql(pg_url, size):.1f}s", file=sys.stderr)
    engine = make_engine(pg_url)
    source = Source(engine, settings.source)
    db = Database(pg_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    embedder = embedder_for(settings, "local-v2")
    plan = plan_migration(
        settings, db, store, source, embedder, model_label="local-v2", actor="bench"
    )
    gen = store.create_generation(
        plan.target_generation, settings.alias, embedder.identity, "int", "FLAT"
    )
    t0 = time.perf_counter()
    for docs in source.iter_batches(None, None, None, 2000):
        embed_batch(docs, embedder, NullThrottle(), gen)
    print(f"  filled {size:,} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return plan.migration_id


def run_child(base: list[str], trace: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *base] + (["--trace"] if trace else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument("--milvus", choices=("server", "lite"), default="server")
    p.add_argument("--milvus-uri", default=None, help="a Milvus already running")
    p.add_argument("--chunk", type=int, default=5000)
    p.add_argument("--sample", type=int, default=16)
    p.add_argument("--range-size", type=int, default=5000)
    # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pg-url", help=argparse.SUPPRESS)
    p.add_argument("--migration-id", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    from tests.support.services import MilvusServer, postgres_database

    server = None
    uri = args.milvus_uri
    if uri is None:
        server = MilvusServer(args.milvus)
        server.start()
        uri = server.uri
    print(
        f"machine: {platform.node()} {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, milvus {args.milvus if server else uri}"
    )
    rows = []
    try:
        for size in args.sizes:
            with postgres_database("bfbench") as pg_url:
                mid = build(size, pg_url, uri, args.range_size)
                base = [
                    "--pg-url", pg_url, "--milvus-uri", uri, "--migration-id", str(mid),
                    "--chunk", str(args.chunk), "--sample", str(args.sample),
                ]  # fmt: skip
                plain = run_child(base, trace=False)
                traced = run_child(base, trace=True)
                assert plain["clean"] and traced["clean"], (plain, traced)
                rows.append((size, plain, traced))
                print(
                    f"{size:>8,} ids  {plain['ranges']:>3} ranges  "
                    f"{plain['ids_per_second']:>8,.0f} ids/s  "
                    f"peak RSS {plain['peak_rss_kib'] / 1024:>6.1f} MiB "
                    f"({plain['rss_before_kib'] / 1024:.1f} before reconcile)  "
                    f"tracemalloc peak {traced['peak_tracemalloc_bytes'] / 2**20:>5.2f} MiB",
                    flush=True,
                )
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
