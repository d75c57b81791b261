"""How ``plan`` grows with the corpus: time and Python memory at 1M and 10M source rows.

For each size, a fresh Postgres database gets ``documents`` filled by one ``INSERT … SELECT
generate_series`` (short texts), then ``plan_migration`` runs as the CLI runs it: counts and
characters (``Source.stats``), quantile split points (``row_number()`` in the database; only
the split points come back) and one ``Range`` row per range. Milvus is not needed to plan
(only the alias lookup, answered here by a stub: no alias yet); the figures are Postgres and
Python. Reported: seconds of stats, of split_points, of the whole plan, and the peak Python
heap during the plan (tracemalloc) — flat means no id list was pulled into Python.

Usage (repository root; Postgres running)::

    .venv/bin/python bench/plan_growth.py                     # 1M and 10M rows, ~4 min
    .venv/bin/python bench/plan_growth.py --sizes 1000000 --range-size 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import loadavg, machine, seed_sql  # noqa: E402


class NoAliasStore:
    """What plan asks Milvus: the alias (none yet) and the next generation number."""

    def resolve_alias(self, alias: str) -> None:
        return None

    def is_generation(self, name: str) -> bool:
        return False

    def next_generation_number(self, alias: str, taken: Any = ()) -> int:
        return 1 + max(taken, default=0)


@dataclass
class Result:
    rows: int
    range_size: int
    ranges: int
    seed_s: float
    stats_s: float
    split_points_s: float
    plan_s: float
    plan_peak_heap_mib: float
    loadavg: str


def one_size(n: int, range_size: int) -> Result:
    from backfleet.db.schema import upgrade
    from backfleet.db.session import Database, make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.settings import BackfillSettings, Settings, SourceSettings
    from backfleet.source import Source
    from coordinator.planner import plan_migration
    from tests.support.services import postgres_database

    with postgres_database("bfplan") as pg_url:
        seed_s = seed_sql(pg_url, n, short=True)
        settings = Settings(
            database_url=pg_url,
            milvus_uri="http://unused:19530",
            alias=f"plan_{n}",
            source=SourceSettings(url=pg_url, table="documents"),
            backfill=BackfillSettings(range_size=range_size),
        )
        engine = make_engine(pg_url)
        db = Database(pg_url)
        upgrade(db.engine)
        source = Source(engine, settings.source)
        embedder = embedder_for(settings, settings.target_model)
        _ = embedder.identity
        t = time.monotonic()
        source.stats()
        stats_s = time.monotonic() - t
        t = time.monotonic()
        points = source.split_points(range_size)
        split_s = time.monotonic() - t
        tracemalloc.start()
        t = time.monotonic()
        report = plan_migration(
            settings,
            db,
            NoAliasStore(),
            source,
            embedder,  # type: ignore[arg-type]
            model_label=settings.target_model,
            actor="bench",
        )
        plan_s = time.monotonic() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert report.docs == n and report.ranges == len(points) + 1, (report, len(points))
        db.dispose()
        engine.dispose()
    return Result(
        n,
        range_size,
        report.ranges,
        round(seed_s, 1),
        round(stats_s, 2),
        round(split_s, 2),
        round(plan_s, 2),
        round(peak / 2**20, 2),
        loadavg(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--range-size", type=int, default=5000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from backfleet.logs import configure_logging

    configure_logging("console", "WARNING")
    print(f"machine: {machine()}", flush=True)
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        r = one_size(n, args.range_size)
        results.append(r)
        print(
            f"  {n:>10} rows: seed {r.seed_s:.0f}s; plan {r.plan_s:.2f}s (stats "
            f"{r.stats_s:.2f}s, split points {r.split_points_s:.2f}s), {r.ranges} ranges, "
            f"peak Python heap {r.plan_peak_heap_mib:.1f} MiB",
            flush=True,
        )
    print()
    head = (
        f"{'rows':>10} {'ranges':>7} {'stats s':>8} {'split s':>8} {'plan s':>7} "
        f"{'rows/s (plan)':>13} {'peak heap MiB':>13}"
    )
    print(head + "\n" + "-" * len(head))
    for r in results:
        print(
            f"{r.rows:>10} {r.ranges:>7} {r.stats_s:>8.2f} {r.split_points_s:>8.2f} "
            f"{r.plan_s:>7.2f} {r.rows / r.plan_s:>13,.0f} {r.plan_peak_heap_mib:>13.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "argv": sys.argv, "results": [asdict(r) for r in results]},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
