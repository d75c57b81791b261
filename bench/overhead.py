"""Overhead benchmark: the full fleet against a bare loop, with an embedder that costs nothing.

Both sides read the same Postgres table in keyset batches, embed with the ``zero-cost`` local
model (a table lookup: deterministic unit vectors, microseconds a batch) and upsert the same rows
(id, vector, model tag, text hash, timestamp) into a generation of the same schema and index in
the same Milvus server. What differs is everything backfleet adds:

``bare``   one process, one loop: ``SELECT id, text … WHERE id > :last ORDER BY id LIMIT :n``
           (psycopg) → embed → ``MilvusClient.upsert``. No checkpoints, no Celery, no validation.
``bare-np`` (optional) the same with float32 numpy rows instead of lists.
``bare-columns`` (optional) the same loop, but each batch sent as the request the fleet sends:
           built column by column from the float32 matrix (``backfleet/vectorstore/request.py``)
           instead of ``MilvusClient.upsert``'s row packing. What the fleet costs beyond
           its request building.
``fleet-serial`` (optional) the fleet with ``backfill.overlap = false``: read, embed, upsert
           and checkpoint one after the other in the task's thread.
``fleet``  the product: ``plan_migration`` + ``start_migration`` with real ``backfleet worker``
           processes (Celery on Redis, prefork), each range claimed, heartbeated and advanced
           in Postgres per batch, vectors validated, model identity checked.

Fleet docs/s is measured from just before ``start_migration`` (the workers are already up,
connected and idle; the collection is created beforehand, as for the bare loop) to the last range's
``finished_at``. Worker RSS is sampled all along (``--rss-interval``), which also makes this
the long-run memory benchmark (``--docs 1000000 --dims 384 --sides fleet``).

Usage (repository root; Postgres and Redis running; starts its own milvus-server unless
``--milvus-uri``, so no test session may hold one)::

    .venv/bin/python bench/overhead.py                     # 100k docs, 384 and 1536, ~10 min
    .venv/bin/python bench/overhead.py --docs 20000 --dims 384
    .venv/bin/python bench/overhead.py --docs 1000000 --dims 384 --sides fleet --repeat 1

Each side runs ``--repeat`` times (default 2) in alternating order, each run only after Milvus
has gone quiet (index builds and compactions of the previous run finished), so neither side
pays for the other's background work; the table shows every run and the best of each side.
"vs bare" compares with the best bare run. Prints a table; ``--json PATH`` also writes them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    RssSampler,
    loadavg,
    machine,
    seed_sql,
    wait_for_log,
    wait_milvus_quiet,
    write_json,
)

REDIS_DB = 14


@dataclass
class Result:
    side: str
    dimension: int
    docs: int
    seconds: float
    docs_per_s: float
    workers: int = 0
    concurrency: int = 0
    loadavg: str = ""
    first_claim_s: float = 0.0
    in_ranges_s: float = 0.0
    rss: dict[str, Any] = field(default_factory=dict)
    rss_series: list[Any] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)  # epoch seconds of the measured run


def model_settings(dimension: int) -> Any:
    from backfleet.settings import ModelSettings

    return ModelSettings(provider="local", name="zero-cost", version="1", dimension=dimension)


def bare_loop(
    pg_url: str,
    milvus_uri: str,
    dimension: int,
    batch: int,
    index_type: str,
    ndarray_rows: bool = False,
    columns: bool = False,
) -> Result:
    """Keyset read → embed → upsert, one process, nothing else.

    ``ndarray_rows`` hands pymilvus float32 rows instead of lists; ``columns`` sends the
    column-built request the fleet sends (``Generation.upsert``) instead of rows.
    """
    import psycopg
    from pymilvus import MilvusClient

    from backfleet.embedding.factory import build_embedder
    from backfleet.source import text_hash
    from backfleet.vectorstore import VectorStore
    from backfleet.vectorstore.request import ColumnSender, build_upsert

    embedder = build_embedder(model_settings(dimension))
    tag = embedder.identity.tag
    name = f"bare_{dimension}_{int(time.time())}"
    store = VectorStore(milvus_uri)
    store.create_generation(name, "bare_alias", embedder.identity, "int", index_type)
    client = MilvusClient(uri=milvus_uri)
    sender = ColumnSender(client)
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    docs = 0
    started, wall0 = time.monotonic(), time.time()
    with psycopg.connect(dsn, autocommit=True) as conn:
        last = -1
        while True:
            rows = conn.execute(
                "SELECT id, text FROM documents WHERE id > %s ORDER BY id LIMIT %s", (last, batch)
            ).fetchall()
            if not rows:
                break
            vectors = embedder.embed([r[1] for r in rows]).vectors
            now_ms = int(time.time() * 1000)
            if columns:
                hashes = [text_hash(r[1]) for r in rows]
                request = build_upsert(name, [r[0] for r in rows], vectors, tag, hashes, now_ms)
                sender.send(request, 60.0)
            else:
                client.upsert(
                    name,
                    [
                        {
                            "id": r[0],
                            "vector": v,
                            "model": tag,
                            "text_hash": text_hash(r[1]),
                            "embedded_at": now_ms,
                        }
                        for r, v in zip(
                            rows, vectors if ndarray_rows else vectors.tolist(), strict=True
                        )
                    ],
                )
            docs += len(rows)
            last = rows[-1][0]
    seconds = time.monotonic() - started
    window = (wall0, time.time())
    stored = store.open_generation(name).count()
    client.drop_collection(name)
    client.close()
    store.close()
    if stored != docs:
        raise RuntimeError(f"bare loop: {stored} rows in Milvus for {docs} docs")
    side = "bare-columns" if columns else "bare-np" if ndarray_rows else "bare"
    return Result(
        side,
        dimension,
        docs,
        round(seconds, 2),
        round(docs / seconds, 1),
        loadavg=loadavg(),
        window=window,
    )


def fleet_run(
    pg_url: str,
    milvus_uri: str,
    dimension: int,
    *,
    batch: int,
    range_size: int,
    workers: int,
    concurrency: int,
    pool: str,
    index_type: str,
    rss_interval: float,
    logdir: Path,
    log_level: str = "INFO",
    overlap: bool = True,
) -> Result:
    """The product: plan, start, real workers, until every range is done."""
    import redis
    from sqlalchemy import func, select

    from backfleet.db.checkpoint import utcnow
    from backfleet.db.models import Range, RangeState
    from backfleet.db.schema import upgrade
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.settings import BackfillSettings
    from backfleet.source import Source
    from backfleet.vectorstore import VectorStore
    from coordinator.dispatcher import dispatch, start_migration
    from coordinator.planner import plan_migration
    from tests.support.fleet import make_settings, settings_env
    from tests.support.services import WorkerFleet, redis_db_url
    from workers.app import create_app

    redis_url = redis_db_url(REDIS_DB)
    suffix = f"{dimension}_{int(time.time())}"
    settings = make_settings(
        pg_url=pg_url,
        redis_url=redis_url,
        milvus_uri=milvus_uri,
        models={"bench": model_settings(dimension)},
        target_model="bench",
        backfill=BackfillSettings(
            range_size=range_size,
            batch_size=batch,
            lease_seconds=60,
            heartbeat_seconds=10,
            queue=f"bfbench_{suffix}",
            index_type=index_type,
            overlap=overlap,
        ),
    )
    engine = make_engine(pg_url)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    embedder = embedder_for(settings, "bench")
    report = plan_migration(
        settings, db, store, source, embedder, model_label="bench", actor="bench"
    )
    store.create_generation(
        report.target_generation, settings.alias, embedder.identity, "int", index_type
    )
    runlog = logdir / f"fleet-{suffix}"  # one per run: the log lines counted are its own
    runlog.mkdir(parents=True, exist_ok=True)
    env = {**settings_env(settings), "BACKFLEET_LOG_LEVEL": log_level}
    fleet = WorkerFleet(env, runlog)
    fleet.start(workers, concurrency=concurrency, pool=pool)
    try:
        if not wait_for_log(runlog, " ready.", workers, 90):
            time.sleep(10)
        # each task process connects at start (worker_process_init); a fleet that has been up
        # for a while has done so, which is what this benchmark compares
        if not wait_for_log(runlog, "worker_warmed", workers * concurrency, 60):
            print("    (no worker_warmed line: is the log level above INFO?)", flush=True)
        app = create_app(settings)
        with RssSampler([p.pid for p in fleet.procs], rss_interval) as sampler:
            t0 = time.time()
            start_migration(
                db, store, app, report.migration_id, actor="bench", index_type=index_type
            )
            reaped = time.monotonic()
            while True:
                if time.monotonic() - reaped > 15:
                    # what the coordinator's reaper does: re-send tasks lost with the broker
                    # (other test sessions on this machine restart Redis in their chaos tests)
                    dispatch(
                        db,
                        app,
                        report.migration_id,
                        pending_sent_before=utcnow() - timedelta(seconds=15),
                    )
                    reaped = time.monotonic()
                with db.session() as session:
                    states = dict(
                        session.execute(
                            select(Range.state, func.count())
                            .where(Range.migration_id == report.migration_id)
                            .group_by(Range.state)
                        ).all()
                    )
                if states.get(RangeState.FAILED):
                    raise RuntimeError(f"failed ranges; logs in {runlog}")
                if states.get(RangeState.DONE, 0) == report.ranges:
                    break
                if not fleet.alive():
                    raise RuntimeError(f"workers died; logs in {runlog}")
                time.sleep(0.25)
            with db.session() as session:
                spans = session.execute(
                    select(Range.started_at, Range.finished_at).where(
                        Range.migration_id == report.migration_id
                    )
                ).all()
            t1 = max(f for _, f in spans).timestamp()
            first_claim = min(s for s, _ in spans).timestamp() - t0
            in_ranges = sum((f - s).total_seconds() for s, f in spans)
    finally:
        fleet.stop()
    seconds = t1 - t0
    shadow = store.open_generation(report.target_generation)
    stored = shadow.count()
    store.client.drop_collection(report.target_generation)
    store.close()
    db.dispose()
    engine.dispose()
    redis.Redis.from_url(redis_url).flushdb()
    if stored != report.docs:
        raise RuntimeError(f"fleet: {stored} rows in Milvus for {report.docs} docs")
    summary = sampler.summary()
    # the process that did the work: the one whose RSS grew most (the prefork child)
    busiest = max(summary, key=lambda p: summary[p]["peak_mib"]) if summary else None
    return Result(
        "fleet" if overlap else "fleet-serial",
        dimension,
        report.docs,
        round(seconds, 2),
        round(report.docs / seconds, 1),
        workers,
        concurrency,
        loadavg(),
        round(first_claim, 2),
        round(in_ranges, 2),
        summary,
        sampler.series(int(busiest)) if busiest else [],
        (t0, t1),
    )


def table(results: list[Result]) -> str:
    head = (
        f"{'dim':>5} {'side':<12} {'workers':>7} {'docs':>9} {'seconds':>8} {'docs/s':>8} "
        f"{'vs bare':>7}"
    )
    lines = [head, "-" * len(head)]
    bare: dict[int, float] = {}
    for r in results:
        if r.side == "bare":
            bare[r.dimension] = max(bare.get(r.dimension, 0.0), r.docs_per_s)
    for r in results:
        ratio = f"{r.docs_per_s / bare[r.dimension]:.2f}x" if r.dimension in bare else "-"
        w = f"{r.workers}x{r.concurrency}" if r.side.startswith("fleet") else "1"
        lines.append(
            f"{r.dimension:>5} {r.side:<12} {w:>7} {r.docs:>9} {r.seconds:>8.1f} "
            f"{r.docs_per_s:>8.0f} {ratio:>7}"
        )
    runs: dict[tuple[int, str], list[float]] = {}
    for r in results:
        runs.setdefault((r.dimension, r.side), []).append(r.docs_per_s)
    lines.append("")
    lines.append("per side: best and mean of the runs; fleet against each bare side")
    for (dim, side), values in sorted(runs.items()):
        best, mean = max(values), sum(values) / len(values)
        line = f"{dim:>5} {side:<12} best {best:>8.0f}  mean {mean:>8.0f} docs/s"
        if side.startswith("fleet"):
            for ref in ("bare", "bare-columns", "bare-np"):
                other = runs.get((dim, ref))
                if other:
                    line += (
                        f"  | vs {ref}: mean {mean / (sum(other) / len(other)):.2f}x, "
                        f"best {best / max(other):.2f}x"
                    )
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", default="384,1536", help="dimensions, comma-separated")
    parser.add_argument(
        "--sides",
        default="bare,fleet",
        help="bare, fleet, fleet-serial (backfill.overlap off), bare-columns (the bare loop "
        "sending the fleet's column-built request), bare-np (the bare loop with float32 rows)",
    )
    parser.add_argument("--batch", type=int, default=256, help="documents per batch (both)")
    parser.add_argument("--range-size", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="fleet worker processes")
    parser.add_argument("--concurrency", type=int, default=1, help="task slots per worker")
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--index-type", default="HNSW")
    parser.add_argument("--rss-interval", type=float, default=2.0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each side; the order alternates (bare, fleet, fleet, bare)",
    )
    parser.add_argument(
        "--milvus-uri", default=None, help="use this Milvus instead of starting one"
    )
    parser.add_argument(
        "--milvus",
        default="server",
        choices=["server", "lite"],
        help="which Milvus to start (lite: for trying the script only)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--log-level", default="INFO", help="the workers' log level (INFO: two lines a range)"
    )
    args = parser.parse_args(argv)

    from backfleet.logs import configure_logging
    from tests.support.services import MilvusServer, postgres_database

    configure_logging("console", "WARNING")
    dims = [int(d) for d in args.dims.split(",")]
    sides = [s.strip() for s in args.sides.split(",")]
    print(f"machine: {machine()}", flush=True)
    results: list[Result] = []
    logdir = Path(tempfile.mkdtemp(prefix="bf-bench-overhead-"))
    with postgres_database("bfbench") as pg_url:
        took = seed_sql(pg_url, args.docs)
        print(f"seeded {args.docs} docs in {took:.1f}s", flush=True)
        milvus = None
        uri = args.milvus_uri
        if uri is None:
            milvus = MilvusServer(args.milvus)
            milvus.start()
            uri = milvus.uri
        try:
            for dim in dims:
                order = [
                    s for r in range(args.repeat) for s in (sides if r % 2 == 0 else sides[::-1])
                ]
                for side in order:
                    waited = wait_milvus_quiet()
                    print(f"  (Milvus quiet after {waited:.0f}s; load {loadavg()})", flush=True)
                    if side in ("bare", "bare-np", "bare-columns"):
                        r = bare_loop(
                            pg_url,
                            uri,
                            dim,
                            args.batch,
                            args.index_type,
                            ndarray_rows=side == "bare-np",
                            columns=side == "bare-columns",
                        )
                    else:
                        r = fleet_run(
                            pg_url,
                            uri,
                            dim,
                            batch=args.batch,
                            range_size=args.range_size,
                            workers=args.workers,
                            concurrency=args.concurrency,
                            pool=args.pool,
                            index_type=args.index_type,
                            rss_interval=args.rss_interval,
                            logdir=logdir,
                            log_level=args.log_level,
                            overlap=side != "fleet-serial",
                        )
                    results.append(r)
                    print(
                        f"  {side} dim {dim}: {r.docs} docs in {r.seconds:.1f}s = "
                        f"{r.docs_per_s:.0f} docs/s (load {r.loadavg})",
                        flush=True,
                    )
                    if r.side.startswith("fleet"):
                        print(
                            f"    first claim {r.first_claim_s:.1f}s after start; "
                            f"{r.in_ranges_s:.1f} s inside ranges (summed)",
                            flush=True,
                        )
                    if r.rss_series:
                        print(f"    worker RSS (s, MiB): {r.rss_series}", flush=True)
        finally:
            if milvus is not None:
                milvus.close()
    print()
    print(table(results))
    print(f"\nworker logs in {logdir}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
