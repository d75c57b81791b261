"""eval's index recall on 10,000 documents in a sealed, HNSW-indexed shadow (real milvus-server).

Growing segments are searched through Milvus's interim index, which found every neighbour here;
the figure that matters is the built HNSW index's, so the shadow is flushed, its index built and
the collection reloaded before eval runs — the state a real shadow reaches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from backfleet.corpus import seed_source
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.limits import NullThrottle
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import load_migration
from coordinator.evaluator import evaluate
from coordinator.golden import generate_golden, parse_golden
from coordinator.planner import plan_migration
from tests.support.fleet import make_settings
from tests.support.services import postgres_database
from workers.pipeline import embed_batch

pytestmark = pytest.mark.integration

DOCS = 10_000


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def seal_and_index(store: VectorStore, name: str, rows: int, timeout: float = 120.0) -> None:
    """Flush, wait until the index covers every row, reload: searches now use the index."""
    client = store.client
    client.flush(name)
    deadline = time.monotonic() + timeout
    while client.describe_index(name, "vector").get("indexed_rows") != rows:
        assert time.monotonic() < deadline, client.describe_index(name, "vector")
        time.sleep(0.5)
    client.release_collection(name)
    client.load_collection(name)


def test_eval_index_recall_reaches_the_gate_on_10k_docs_with_hnsw(
    pg_url: str, milvus_uri: str
) -> None:
    settings = make_settings(pg_url=pg_url, redis_url="redis://unused", milvus_uri=milvus_uri)
    engine = make_engine(pg_url)
    seed_source(engine, DOCS)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(milvus_uri)
    embedder = embedder_for(settings, "local-v2")
    report = plan_migration(
        settings, db, store, source, embedder, model_label="local-v2", actor="t"
    )
    name = report.target_generation
    shadow = store.create_generation(name, settings.alias, embedder.identity, "int", "HNSW")
    try:
        for batch in source.iter_batches(None, None, None, 1000):
            embed_batch(batch, embedder, NullThrottle(), shadow)
        seal_and_index(store, name, DOCS)

        # short pseudo-queries (2-4 words) are the hard case: many near neighbours
        rows = generate_golden(source, 50, min_words=2, max_words=4)
        golden = parse_golden((json.dumps(r) for r in rows), name="pseudo.jsonl", id_type="int")
        m = load_migration(db, report.migration_id)
        result = evaluate(settings, db, store, source, golden, m, actor="t")
        print(f"\nindex recall@{result.k} on {DOCS} docs: {result.index_recall:.4f}")
        assert result.index_recall_queries == 50
        assert result.index_recall >= settings.cutover.min_index_recall, result.reasons
        assert not [r for r in result.reasons if "index recall" in r]
    finally:
        store.drop(name)
        store.close()
        db.dispose()
        engine.dispose()
