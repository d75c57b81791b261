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
