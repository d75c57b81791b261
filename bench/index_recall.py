"""eval's index recall against HNSW search breadth (``ef``) on a sealed, indexed generation.

Builds a 10,000-document generation of the synthetic corpus with the local ``local-v2`` model
(HNSW, M=16, efConstruction=128: what ``backfleet start`` creates), flushes it, waits for the
index and reloads it, then measures, for pseudo-query sets of three lengths, the share of the
exact (numpy brute-force) top 10 that the index search finds: by id, and counting hits tied
with the exact 10th (what eval reports). "server default" sends no search parameters.

Usage (Postgres running; a Milvus server at --milvus-uri)::

    .venv/bin/python bench/index_recall.py --milvus-uri http://127.0.0.1:19530
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402

EFS: tuple[int | None, ...] = (None, 16, 32, 64, 128, 256)
QUERY_WORDS = ((5, 9), (2, 4), (1, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--milvus-uri", required=True)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)

    import numpy as np

    from backfleet.corpus import seed_source
    from backfleet.db.session import make_engine
    from backfleet.embedding.factory import embedder_for
    from backfleet.limits import NullThrottle
    from backfleet.logs import configure_logging
    from backfleet.source import Source
    from backfleet.vectorstore import VectorStore, generation_name
    from coordinator.evaluator import (
        _vector_batches,
        exact_top_k_scored,
        hit_score,
        index_overlap,
        overlap,
    )
    from coordinator.golden import generate_golden
    from tests.integration.test_eval_index_recall import seal_and_index
    from tests.support.fleet import make_settings
    from tests.support.services import postgres_database
    from workers.pipeline import embed_batch

    configure_logging("console", "WARNING")
    print(f"machine: {machine()}; {args.docs} docs, local-v2 (384-d COSINE), HNSW M=16 efC=128")
    with postgres_database("bfbench") as pg_url:
        settings = make_settings(pg_url=pg_url, redis_url="redis://unused", milvus_uri="")
        engine = make_engine(pg_url)
        seed_source(engine, args.docs)
        source = Source(engine, settings.source)
        embedder = embedder_for(settings, "local-v2")
        store = VectorStore(args.milvus_uri)
        name = generation_name(settings.alias, embedder.identity, 1)
        gen = store.create_generation(name, settings.alias, embedder.identity, "int", "HNSW")
        try:
            for batch in source.iter_batches(None, None, None, 1000):
                embed_batch(batch, embedder, NullThrottle(), gen)
            seal_and_index(store, name, args.docs)
            print(f"{'query words':<12} {'ef':>14} {'by id':>7} {'with ties':>9} {'ms/query':>8}")
            for lo, hi in QUERY_WORDS:
                rows = generate_golden(source, args.queries, min_words=lo, max_words=hi)
                q = np.asarray(embedder.embed([r["query"] for r in rows]).vectors)
                exact = exact_top_k_scored(q, _vector_batches(gen, None), "COSINE", args.k)
                for ef in EFS:
                    started = time.perf_counter()
                    found = gen.search(q, args.k, fields=(), ef=ef)
                    ms = (time.perf_counter() - started) * 1000 / len(rows)
                    pairs = list(zip(found, exact, strict=True))
                    by_id = [overlap([h["id"] for h in f], e[0]) for f, e in pairs]
                    tied = [
                        index_overlap([(h["id"], hit_score(h, "COSINE")) for h in f], ids, s[-1])
                        for f, (ids, s) in pairs
                    ]
                    label = "server default" if ef is None else str(ef)
                    print(
                        f"{f'{lo}-{hi}':<12} {label:>14} {sum(by_id) / len(by_id):>7.3f} "
                        f"{sum(tied) / len(tied):>9.3f} {ms:>8.2f}",
                        flush=True,
                    )
        finally:
            store.drop(name)
            store.close()
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
