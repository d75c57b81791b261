"""Latency hiding: docs/s against a provider that answers after 200 ms, by worker concurrency.

One ``backfleet worker --pool threads --concurrency N`` against the rehearsal provider
(OpenAI-compatible, in this process) with ``latency_ms`` per request and RPM/TPM limits far
above what the fleet can reach, so neither the provider's limit nor the fleet throttle binds.
A batch is one request, so with no overhead one slot does ``batch / latency`` docs/s and N
slots N times that, until Milvus, Postgres or the machine's two cores bind.

docs/s is measured over a steady window (after a warm-up) from the ranges' ``docs_done``
in Postgres; the corpus is large enough that no run ends inside its window.

Usage (repository root; Postgres and Redis running; starts its own milvus-server unless
``--milvus-uri``)::

    .venv/bin/python bench/latency.py                          # c = 1, 4, 16; ~3 min
    .venv/bin/python bench/latency.py --concurrency 1,4 --steady 20 --latency-ms 500
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import loadavg, machine, seed_sql, wait_for_log, write_json  # noqa: E402

KEY_ENV = "REHEARSAL_KEY"
MODEL_NAME = "rehearsal-embed"
REDIS_DB = 13


@dataclass
class Result:
    concurrency: int
    seconds: float
    docs: int
    docs_per_s: float
    ideal_docs_per_s: float
    requests: int
    loadavg: str


def one_run(
    pg_url: str,
    milvus_uri: str,
    concurrency: int,
    *,
    latency_ms: float,
    dim: int,
    batch: int,
    range_size: int,
    warmup: float,
    steady: float,
    logdir: Path,
) -> Result:
    import redis
    from sqlalchemy import func, select

    from backfleet.db.models import Range
    from backfleet.db.schema import upgrade
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.rehearsal import RehearsalServer
    from backfleet.settings import BackfillSettings, ModelSettings, ThrottleSettings
    from backfleet.source import Source
    from backfleet.vectorstore import VectorStore
    from coordinator.dispatcher import start_migration
    from coordinator.planner import plan_migration
    from tests.support.fleet import make_settings, settings_env
    from tests.support.services import WorkerFleet, redis_db_url
    from workers.app import create_app

    server = RehearsalServer(
        rpm=10_000_000, tpm=10_000_000_000, latency_ms=latency_ms, default_dimension=dim
    )
    runlog = logdir / f"c{concurrency}"
    runlog.mkdir(parents=True, exist_ok=True)
    with server:
        model = ModelSettings(
            provider="openai",
            name=MODEL_NAME,
            version="1",
            dimension=dim,
            send_dimensions=True,
            base_url=server.url,
            api_key_env=KEY_ENV,
        )
        settings = make_settings(
            pg_url=pg_url,
            redis_url=redis_db_url(REDIS_DB),
            milvus_uri=milvus_uri,
            models={"bench": model},
            target_model="bench",
            throttle=ThrottleSettings(rpm=10_000_000, tpm=10_000_000_000),
            backfill=BackfillSettings(
                range_size=range_size,
                batch_size=batch,
                queue=f"bflat_{concurrency}_{int(time.time())}",
                index_type="HNSW",
            ),
        )
        settings.models["bench"].resolve_api_key({KEY_ENV: "bench-key"})
        engine = make_engine(pg_url)
        db = Database(settings.database_url)
        upgrade(db.engine)
        store = VectorStore(milvus_uri)
        embedder = embedder_for(settings, "bench")
        report = plan_migration(
            settings,
            db,
            store,
            Source(engine, settings.source),
            embedder,
            model_label="bench",
            actor="bench",
        )
        env = {**settings_env(settings), KEY_ENV: "bench-key", "BACKFLEET_LOG_LEVEL": "WARNING"}
        fleet = WorkerFleet(env, runlog)
        fleet.start(1, concurrency=concurrency, pool="threads")

        def done() -> int:
            with db.session() as session:
                return int(
                    session.execute(
                        select(func.coalesce(func.sum(Range.docs_done), 0)).where(
                            Range.migration_id == report.migration_id
                        )
                    ).scalar_one()
                )

        try:
            if not wait_for_log(runlog, " ready.", 1, 90):
                time.sleep(10)
            start_migration(
                db,
                store,
                create_app(settings),
                report.migration_id,
                actor="bench",
                index_type="HNSW",
            )
            time.sleep(warmup)
            d0, r0, t0 = done(), server.stats()["accepted"], time.monotonic()
            time.sleep(steady)
            d1, r1, t1 = done(), server.stats()["accepted"], time.monotonic()
            alive = len(fleet.alive())
        finally:
            fleet.stop()
        store.client.drop_collection(report.target_generation)
        store.close()
        db.dispose()
        engine.dispose()
        redis.Redis.from_url(settings.redis_url).flushdb()
    if not alive:
        raise RuntimeError(f"the worker died; logs in {runlog}")
    if d1 >= report.docs:
        raise RuntimeError("the corpus ran out inside the window: raise --docs")
    seconds = t1 - t0
    return Result(
        concurrency,
        round(seconds, 1),
        d1 - d0,
        round((d1 - d0) / seconds, 1),
        round(concurrency * batch / (latency_ms / 1000), 1),
        r1 - r0,
        loadavg(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--range-size", type=int, default=1024)
    parser.add_argument("--docs", type=int, default=150_000)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--steady", type=float, default=30.0)
    parser.add_argument("--milvus-uri", default=None)
    parser.add_argument(
        "--milvus",
        default="server",
        choices=["server", "lite"],
        help="which Milvus to start (lite: for trying the script only)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from backfleet.logs import configure_logging
    from tests.support.services import MilvusServer, postgres_database

    configure_logging("console", "WARNING")
    print(
        f"machine: {machine()}; provider latency {args.latency_ms:.0f} ms a request, "
        f"batch {args.batch} docs (one request), dim {args.dim}",
        flush=True,
    )
    results: list[Result] = []
    logdir = Path(tempfile.mkdtemp(prefix="bf-bench-latency-"))
    with postgres_database("bflat") as pg_url:
        seed_sql(pg_url, args.docs)
        milvus = None
        uri = args.milvus_uri
        if uri is None:
            milvus = MilvusServer(args.milvus)
            milvus.start()
            uri = milvus.uri
        try:
            for c in (int(x) for x in args.concurrency.split(",")):
                r = one_run(
                    pg_url,
                    uri,
                    c,
                    latency_ms=args.latency_ms,
                    dim=args.dim,
                    batch=args.batch,
                    range_size=args.range_size,
                    warmup=args.warmup,
                    steady=args.steady,
                    logdir=logdir,
                )
                results.append(r)
                print(
                    f"  concurrency {c}: {r.docs_per_s:.0f} docs/s "
                    f"(no-overhead ceiling {r.ideal_docs_per_s:.0f}; load {r.loadavg})",
                    flush=True,
                )
        finally:
            if milvus is not None:
                milvus.close()
    print()
    head = f"{'concurrency':>11} {'docs/s':>8} {'ceiling':>8} {'of ceiling':>10} {'vs c=1':>7}"
    print(head + "\n" + "-" * len(head))
    base = results[0].docs_per_s if results else 1.0
    for r in results:
        print(
            f"{r.concurrency:>11} {r.docs_per_s:>8.0f} {r.ideal_docs_per_s:>8.0f} "
            f"{r.docs_per_s / r.ideal_docs_per_s:>10.0%} {r.docs_per_s / base:>6.1f}x"
        )
    print(f"\nworker logs in {logdir}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
