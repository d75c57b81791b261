"""What undecodable rows cost the source walk: ``Source.iter_batches`` over a ``SQL_ASCII``
Postgres table, clean and with one text that is not UTF-8 in every batch (the worst case:
every batch is refused by the server, read again as bytes and decoded row by row in Python).

Usage (repository root; Postgres running)::

    .venv/bin/python bench/source_decode.py                  # 50,000 rows, batches of 256
    .venv/bin/python bench/source_decode.py --rows 200000 --batch 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import loadavg, machine  # noqa: E402

PG_ADMIN = os.environ.get("BACKFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    import psycopg

    from backfleet.db.session import make_engine
    from backfleet.settings import SourceSettings
    from backfleet.source import Source

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    name = f"bench_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE clean (id text PRIMARY KEY, text text)")
            conn.execute(
                "INSERT INTO clean SELECT 'doc-' || lpad(i::text, 9, '0'), "
                "repeat('about couriers and parcels ', 20) || i FROM generate_series(1, %s) i",
                [args.rows],
            )
            conn.execute("CREATE TABLE bad (LIKE clean INCLUDING ALL)")
            conn.execute(
                "INSERT INTO bad SELECT id, CASE WHEN i %% %s = 1 THEN E'bad \\377' ELSE text END "
                'FROM (SELECT *, row_number() OVER (ORDER BY id COLLATE "C") i FROM clean) t',
                [args.batch],
            )
        engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        print(f"machine: {machine()}; load {loadavg()}")
        for table in ("clean", "bad"):
            source = Source(engine, SourceSettings(url=str(engine.url), table=table))
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                docs = [d for b in source.iter_batches(None, None, None, args.batch) for d in b]
                best = min(best, time.perf_counter() - t0)
            bad = sum(1 for d in docs if d.error)
            print(
                f"{table:6} {len(docs):,} rows, {bad:,} undecodable, batches of {args.batch}: "
                f"{best:.2f} s ({len(docs) / best:,.0f} rows/s, best of {args.repeat})"
            )
        engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
