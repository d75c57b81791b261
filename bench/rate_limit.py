"""Rate-limit benchmark: how much of the provider's limit a fleet uses, and how often it hits 429.

Runs real `backfleet worker` processes (1, 2 and 4 by default) against the rehearsal provider
(OpenAI-compatible, in this process) which enforces RPM and TPM itself over a sliding 60 s
window. Documents are sized so one limit binds (batches of 8 docs, ~500 tokens a request:
600 RPM binds, 600,000 TPM does not). After a warm-up, the provider's counters are sampled at
the start and the end of a steady window; utilization is the accepted requests (and tokens)
in that window over what the limit allows for its length, and the 429 share is the 429s over
all requests in it.

Two modes, each at every worker count:

``throttle``  backfleet's fleet-wide Redis throttle (the product), limits = the provider's.
``celery``    the baseline: the throttle is off (a NullThrottle) and Celery's per-worker task
              ``rate_limit`` is set to limit / workers. Celery can only limit *tasks*, so here a
              range is one batch (one provider call). These workers are started by this file's
              own launcher (``python bench/rate_limit.py worker``), which reads
              ``BENCH_CELERY_RATE_LIMIT``; library code is unchanged.

``--burst S`` (throttle mode) is the "burst then healthy" case instead: after the warm-up the
provider answers every request 429 (Retry-After 1 s) for S seconds, then nothing but successes
for ``--steady`` seconds; the adaptive factor and the accepted requests per second are printed
every second, with how long after the burst the factor and the throughput were back at 95 %.

Usage (from the repository root, Postgres and Redis running; starts its own milvus-server, so
no test session may be running one)::

    .venv/bin/python bench/rate_limit.py                       # everything, ~11 minutes
    .venv/bin/python bench/rate_limit.py --workers 2 --modes throttle --steady 30
    .venv/bin/python bench/rate_limit.py --workers 2 --modes throttle --rpm 120 --burst 10 \
        --warmup 10 --steady 60                                # burst then healthy

Prints one table; ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine, write_json  # noqa: E402

KEY_ENV = "REHEARSAL_KEY"
RATE_LIMIT_ENV = "BENCH_CELERY_RATE_LIMIT"  # read only by this file's worker launcher
MODEL_NAME = "rehearsal-embed"  # not a cl100k name: client and server then count tokens alike
DIMENSION = 64
BATCH = 8
REDIS_DB = 13


@dataclass
class Result:
    mode: str
    workers: int
    seconds: float
    requests: int
    accepted: int
    tokens: int
    r429: int
    req_util: float
    tok_util: float
    share_429: float
    run_429s: int
    run_requests: int
    max_requests_in_window: int


@dataclass
class BurstResult:
    workers: int
    rpm: int
    burst_seconds: float
    factor_after_burst: float
    #: seconds after the burst until the factor / the 5 s mean throughput reached 95 %
    factor_back_after: float | None
    throughput_back_after: float | None
    #: (phase, seconds into the phase, factor, accepted requests in that second)
    series: list[tuple[str, float, float, int]]


def burst_then_healthy(
    server: Any, settings: Any, *, rpm: int, burst: float, healthy: float
) -> BurstResult:
    """Every request 429 for ``burst`` s, then none for ``healthy`` s; sample once a second."""
    import redis

    from backfleet.limits import throttle_key
    from backfleet.throttle import FleetThrottle

    limiter = FleetThrottle(
        redis.Redis.from_url(settings.redis_url), throttle_key(settings, "bench")
    )
    series: list[tuple[str, float, float, int]] = []

    def sample(phase: str, seconds: float) -> None:
        t0 = time.monotonic()
        last = server.stats()["accepted"]
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            now = server.stats()["accepted"]
            factor = limiter.limits().factor
            series.append((phase, round(time.monotonic() - t0, 1), factor, now - last))
            print(f"  {phase:<7} {series[-1][1]:>5.1f}s factor {factor:.3f} {now - last:>3}/s")
            last = now

    server.set_faults(probability={"429": 1.0}, retry_after_seconds=1.0)
    sample("burst", burst)
    factor_after = limiter.limits().factor
    server.set_faults(clear=True)
    sample("healthy", healthy)
    healthy_rows = [r for r in series if r[0] == "healthy"]
    factor_back = next((t for _, t, f, _ in healthy_rows if f >= 0.95), None)
    target = 0.95 * rpm / 60.0
    throughput_back = None
    for i in range(4, len(healthy_rows)):
        if sum(r[3] for r in healthy_rows[i - 4 : i + 1]) / 5.0 >= target:
            throughput_back = healthy_rows[i][1]
            break
    return BurstResult(
        workers=0,
        rpm=rpm,
        burst_seconds=burst,
        factor_after_burst=factor_after,
        factor_back_after=factor_back,
        throughput_back_after=throughput_back,
        series=series,
    )


# --- the baseline's worker launcher --------------------------------------------------------


def run_baseline_worker(name: str) -> None:
    """A Celery worker with the throttle off and Celery's own per-worker ``rate_limit``."""
    from backfleet.logs import configure_logging
    from backfleet.settings import load_settings
    from backfleet.throttle import NullThrottle
    from workers.app import create_app
    from workers.tasks import BACKFILL_TASK

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings, throttle=NullThrottle())
    limit = os.environ.get(RATE_LIMIT_ENV)
    if limit:
        app.tasks[BACKFILL_TASK].rate_limit = limit
    app.worker_main(
        [
            "worker",
            "-Q",
            settings.backfill.queue,
            "-c",
            "1",
            "-P",
            "prefork",
            "-n",
            name,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


# --- one run -------------------------------------------------------------------------------


def one_run(
    mode: str,
    workers: int,
    *,
    milvus_uri: str,
    rpm: int,
    tpm: int,
    docs: int,
    warmup: float,
    steady: float,
    logdir: Path,
    burst: float = 0.0,
) -> Result | BurstResult:
    import redis

    from backfleet.corpus import seed_source
    from backfleet.db.schema import upgrade
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.rehearsal import RehearsalServer
    from backfleet.settings import ModelSettings, ThrottleSettings
    from backfleet.source import Source
    from backfleet.vectorstore import VectorStore
    from coordinator.dispatcher import start_migration
    from coordinator.planner import plan_migration
    from tests.support.fleet import make_settings, settings_env
    from tests.support.services import WorkerFleet, postgres_database, redis_db_url
    from workers.app import create_app

    server = RehearsalServer(rpm=rpm, tpm=tpm, window_seconds=60.0, default_dimension=DIMENSION)
    runlog = logdir / f"{mode}-{workers}"
    runlog.mkdir(parents=True, exist_ok=True)
    with postgres_database("bfbench") as pg_url, server:
        model = ModelSettings(
            provider="openai",
            name=MODEL_NAME,
            version="1",
            dimension=DIMENSION,
            send_dimensions=True,
            base_url=server.url,
            api_key_env=KEY_ENV,
        )
        # celery: one batch per range = one provider call per task, what a task limit can pace
        range_size = BATCH if mode == "celery" else 50 * BATCH
        settings = make_settings(
            pg_url=pg_url,
            redis_url=redis_db_url(REDIS_DB),
            milvus_uri=milvus_uri,
            range_size=range_size,
            batch_size=BATCH,
            models={"bench": model},
            target_model="bench",
            throttle=ThrottleSettings(rpm=rpm, tpm=tpm),
        )
        settings.models["bench"].resolve_api_key({KEY_ENV: "bench-key"})
        engine = make_engine(pg_url)
        seed_source(engine, docs)
        source = Source(engine, settings.source)
        db = Database(settings.database_url)
        upgrade(db.engine)
        store = VectorStore(milvus_uri)
        embedder = embedder_for(settings, "bench")
        report = plan_migration(
            settings, db, store, source, embedder, model_label="bench", actor="bench"
        )
        env = {**settings_env(settings), KEY_ENV: "bench-key", "BACKFLEET_LOG_LEVEL": "WARNING"}
        if mode == "celery":
            per_worker = rpm // workers
            env[RATE_LIMIT_ENV] = f"{per_worker}/m"
            fleet = _BaselineFleet(env, runlog)
        else:
            fleet = WorkerFleet(env, runlog)
        fleet.start(workers, concurrency=1)
        try:
            app = create_app(settings)
            start_migration(db, store, app, report.migration_id, actor="bench", index_type="HNSW")
            deadline = time.monotonic() + 60
            while server.stats()["accepted"] < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(warmup)
            if burst > 0:
                outcome = burst_then_healthy(server, settings, rpm=rpm, burst=burst, healthy=steady)
                outcome.workers = workers
                return outcome
            s0, t0 = server.stats(), time.monotonic()
            time.sleep(steady)
            s1, t1 = server.stats(), time.monotonic()
            alive = len(fleet.alive())
        finally:
            fleet.stop()
            store.close()
            db.dispose()
            engine.dispose()
        if alive != workers:
            raise RuntimeError(f"{workers - alive} worker(s) died; logs in {runlog}")
        if s1["accepted"] - s0["accepted"] == 0:
            raise RuntimeError(f"no progress in the steady window; logs in {runlog}")
        redis.Redis.from_url(settings.redis_url).flushdb()
    seconds = t1 - t0
    requests = s1["requests"] - s0["requests"]
    accepted = s1["accepted"] - s0["accepted"]
    tokens = s1["tokens_accepted"] - s0["tokens_accepted"]
    r429 = s1["429s"] - s0["429s"]
    return Result(
        mode=mode,
        workers=workers,
        seconds=round(seconds, 2),
        requests=requests,
        accepted=accepted,
        tokens=tokens,
        r429=r429,
        req_util=accepted / (rpm * seconds / 60.0),
        tok_util=tokens / (tpm * seconds / 60.0),
        share_429=r429 / requests if requests else 0.0,
        run_429s=s1["429s"],
        run_requests=s1["requests"],
        max_requests_in_window=s1["max_requests_in_window"],
    )


class _BaselineFleet:
    """Worker processes started through :func:`run_baseline_worker` (the Celery baseline)."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        from tests.support.services import WorkerFleet

        self._fleet = WorkerFleet(env, logdir)  # reuse its stop/alive/logs

    def start(self, n: int, *, concurrency: int = 1) -> None:
        fleet = self._fleet
        for _ in range(n):
            idx = len(fleet.procs)
            log = open(fleet.logdir / f"worker-{idx}.log", "ab")  # noqa: SIM115
            fleet.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "worker",
                        "--name",
                        f"bfbench-{idx}-{uuid.uuid4().hex[:6]}@%h",
                    ],
                    env={**fleet.env, "PYTHONPATH": str(ROOT)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def alive(self) -> list[Any]:
        return self._fleet.alive()

    def stop(self) -> None:
        self._fleet.stop()


# --- main ----------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = (
        f"{'mode':<9} {'workers':>7} {'steady s':>8} {'accepted':>8} {'req util':>8} "
        f"{'tok util':>8} {'429s':>5} {'429 share':>9} {'run 429s':>13} {'max/win':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.mode:<9} {r.workers:>7} {r.seconds:>8.1f} {r.accepted:>8} {r.req_util:>8.1%} "
            f"{r.tok_util:>8.1%} {r.r429:>5} {r.share_429:>9.2%} "
            f"{f'{r.run_429s}/{r.run_requests}':>13} {r.max_requests_in_window:>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="internal: the Celery-baseline worker launcher")
    w.add_argument("--name", required=True)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--modes", default="throttle,celery", help="throttle, celery or both")
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--tpm", type=int, default=600_000)
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--docs", type=int, default=0, help="corpus size (default: enough)")
    parser.add_argument(
        "--burst", type=float, default=0.0, help="seconds of 429s, then --steady healthy seconds"
    )
    parser.add_argument("--milvus-uri", default=None, help="an already running Milvus")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.command == "worker":
        run_baseline_worker(args.name)
        return 0

    from backfleet.logs import configure_logging
    from tests.support.services import MilvusServer

    configure_logging("console", "WARNING")
    counts = [int(x) for x in args.workers.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    # enough documents that no run finishes before its steady window ends (+25%)
    seconds = args.warmup + args.steady + args.burst + 20
    docs = args.docs or int(args.rpm / 60 * seconds * BATCH * 1.25)
    print(
        f"machine: {machine()}; provider {args.rpm} RPM / {args.tpm} TPM over 60 s; "
        f"batch {BATCH} docs; {docs} docs a run; warm-up {args.warmup:.0f}s, "
        f"steady {args.steady:.0f}s",
        flush=True,
    )
    milvus = None
    uri = args.milvus_uri
    if uri is None:
        milvus = MilvusServer("server")
        milvus.start()
        uri = milvus.uri
    results: list[Result] = []
    bursts: list[BurstResult] = []
    logdir = Path(tempfile.mkdtemp(prefix="bf-bench-rate-"))
    started = time.monotonic()
    try:
        for mode in modes:
            for n in counts:
                r = one_run(
                    mode,
                    n,
                    milvus_uri=uri,
                    rpm=args.rpm,
                    tpm=args.tpm,
                    docs=docs,
                    warmup=args.warmup,
                    steady=args.steady,
                    logdir=logdir,
                    burst=args.burst,
                )
                if isinstance(r, BurstResult):
                    bursts.append(r)
                    print(
                        f"  burst {r.burst_seconds:.0f}s x{n}: factor {r.factor_after_burst:.3f} "
                        f"after it; factor >= 0.95 after {r.factor_back_after}s, throughput "
                        f">= 95% of {r.rpm} RPM (5 s mean) after {r.throughput_back_after}s",
                        flush=True,
                    )
                    continue
                results.append(r)
                print(
                    f"  {mode} x{n}: req util {r.req_util:.1%}, tok util {r.tok_util:.1%}, "
                    f"429 share {r.share_429:.2%} ({r.r429}/{r.requests})",
                    flush=True,
                )
    finally:
        if milvus is not None:
            getattr(milvus, "close", milvus.stop)()
    if results:
        print()
        print(table(results))
    print(f"\ntotal {time.monotonic() - started:.0f}s; worker logs in {logdir}")
    if args.json:
        write_json(args.json, [*results, *bursts])
    return 0


if __name__ == "__main__":
    sys.exit(main())
