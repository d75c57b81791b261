"""`plan`'s estimates against what the migration really costs: tokens counted on a sample of
real documents with the model's own counter (within ±5 % of the exact sum), and the time from
whichever binds — the rate limit or the provider's throughput measured by a few real requests
(real HTTP to the rehearsal provider), on real Postgres and Milvus."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import insert

from backfleet.corpus import seed_source, source_table
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.embedding.tokens import Cl100kCounter
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import BackfillSettings, ModelSettings, Settings, ThrottleSettings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore
from coordinator.planner import PlanReport, plan_migration
from tests.support.fleet import make_settings
from tests.support.realtext import stdlib_paragraphs
from tests.support.services import postgres_database, redis_db_url

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def settings_for(pg_url: str, milvus_uri: str, range_size: int = 1000, **extra: object) -> Settings:
    return make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(15),
        milvus_uri=milvus_uri,
        backfill=BackfillSettings(range_size=range_size, batch_size=64, queue="bf_estimate"),
        **extra,
    )


def plan(settings: Settings, label: str, **kwargs: object) -> tuple[PlanReport, Source]:
    engine = make_engine(settings.source.url)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(settings.milvus_uri)
    embedder = embedder_for(settings, label)
    report = plan_migration(
        settings, db, store, source, embedder, model_label=label, actor="t", **kwargs
    )
    store.close()
    return report, source


def exact_tokens(source: Source, count: Callable[[str], int]) -> int:
    return sum(
        count(d.text or "") for batch in source.iter_batches(None, None, None, 2000) for d in batch
    )


@pytest.mark.parametrize("range_size", [1000, 10])  # 10: 300 ranges give the sample slices
def test_token_estimate_of_the_demo_corpus_is_within_5_percent(
    pg_url: str, milvus_uri: str, range_size: int
) -> None:
    settings = settings_for(pg_url, milvus_uri, range_size)
    seed_source(make_engine(pg_url), 3000)  # the demo's corpus and model
    report, source = plan(settings, "local-v2", probe=False)
    exact = exact_tokens(source, embedder_for(settings, "local-v2").count_tokens)
    assert abs(report.est_tokens - exact) <= 0.05 * exact, (report.est_tokens, exact)
    assert report.est_sample_docs == 1000


def test_token_estimate_of_real_text_with_the_exact_counter_is_within_5_percent(
    pg_url: str, milvus_uri: str
) -> None:
    paragraphs = stdlib_paragraphs()
    assert len(paragraphs) > 2000
    engine = make_engine(pg_url)
    table = source_table()
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i + 1, "text": t} for i, t in enumerate(paragraphs)])
    with RehearsalServer() as provider:
        settings = settings_for(
            pg_url,
            milvus_uri,
            target_model="small",
            models={
                "small": ModelSettings(
                    provider="openai",
                    name="text-embedding-3-small",
                    version="1",
                    dimension=1536,
                    base_url=provider.url,
                    price_per_million_tokens=0.02,
                )
            },
        )
        settings.models["small"].resolve_api_key({"OPENAI_API_KEY": "sk-test"})
        report, source = plan(settings, "small", probe=False)
    exact = exact_tokens(source, Cl100kCounter().count)
    assert abs(report.est_tokens - exact) <= 0.05 * exact, (report.est_tokens, exact)
    assert report.est_tokens_method.startswith("exact")


def test_plan_probes_a_slow_provider_and_the_measured_throughput_binds(
    pg_url: str, milvus_uri: str
) -> None:
    seed_source(make_engine(pg_url), 2000)
    # 10 ms per input: ~100 docs/s per request, far below what 3,000 RPM would allow
    with RehearsalServer(require_key=False, faults={"latency_per_input_ms": 10}) as provider:
        settings = settings_for(
            pg_url,
            milvus_uri,
            target_model="slow",
            throttle=ThrottleSettings(rpm=3000, tpm=1_000_000),
            models={
                "slow": ModelSettings(
                    provider="openai",
                    name="all-mpnet-base-v2",
                    version="1",
                    dimension=32,
                    send_dimensions=True,
                    base_url=provider.url,
                    requires_api_key=False,
                )
            },
        )
        settings.backfill.expected_concurrency = 2
        before = provider.stats()["accepted"]
        report, _ = plan(settings, "slow")
        probes = provider.stats()["accepted"] - before
    assert report.est_binding == "measured throughput"
    assert 1 <= probes <= 4  # the identity probe and a few sample requests, no more
    assert report.probe_docs_per_second is not None
    # 10 ms per input: at most 100 docs/s per request, 2 slots
    assert report.probe_docs_per_second <= 100
    fleet = report.probe_docs_per_second * 2
    assert report.est_minutes == pytest.approx(2000 / fleet / 60, rel=0.01)
    rate_limit = max(math.ceil(2000 / 64) / 3000, report.est_tokens / 1_000_000)
    assert report.est_minutes_rate_limit == pytest.approx(rate_limit, rel=0.01)
    assert report.est_minutes > report.est_minutes_rate_limit
