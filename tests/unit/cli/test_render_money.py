"""One precision for money in plan, status and budget output."""

from __future__ import annotations

import io

from rich.console import Console

from backfleet.cli.render import money, plan_table, status_table
from coordinator.planner import PlanReport
from coordinator.status import MigrationStatus


def test_money_has_one_precision() -> None:
    assert money(0.0) == "$0.00"
    assert money(0.0034) == "$0.0034"
    assert money(0.00001) == "$0.00001"  # never a nonzero amount shown as $0.0000
    assert money(0.5) == "$0.5000"
    assert money(1.0) == "$1.00"
    assert money(1234.567) == "$1,234.57"


def text_of(table: object) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200).print(table)
    return buf.getvalue()


def test_plan_and_status_print_the_same_amount_the_same_way() -> None:
    report = PlanReport(
        migration_id=1,
        alias="docs",
        source_generation=None,
        target_generation="docs__m_v1__g1",
        model_tag="openai:m@1/8#x",
        docs=10,
        ranges=1,
        est_tokens=170_000,
        est_cost=0.0034,
        est_minutes=0.1,
        shadow_bytes=1000,
    )
    st = MigrationStatus(
        migration_id=1,
        alias="docs",
        state="backfilling",
        source_generation=None,
        target_generation="docs__m_v1__g1",
        target_model="m",
        total_docs=10,
        docs_done=10,
        tokens_used=170_000,
        price_per_million_tokens=0.02,
        spent_usd=0.0034,
    )
    assert "$0.0034" in text_of(plan_table(report))
    assert "$0.0034" in text_of(status_table(st))


def test_plan_table_says_what_binds_the_time() -> None:
    report = PlanReport(
        migration_id=2,
        alias="docs",
        source_generation="docs__a_v1__g1",
        target_generation="docs__all_mpnet_base_v2__g2",
        model_tag="openai:all-mpnet-base-v2@1/768#x",
        docs=2000,
        ranges=1,
        est_tokens=400_000,
        est_cost=0.0,
        est_minutes=2000 / 6 / 60,
        shadow_bytes=1000,
        est_minutes_rate_limit=11 / 60,
        est_minutes_throughput=2000 / 6 / 60,
        est_binding="measured throughput",
        est_concurrency=1,
        probe_requests=3,
        probe_docs_per_request=32,
        probe_docs_per_second=6.0,
    )
    out = text_of(plan_table(report))
    assert "time at the rate limit │ 11s" in out
    assert "6.0 docs/s per request slot × 1 slots" in out
    assert "5m 33s (bound by the measured throughput)" in out
