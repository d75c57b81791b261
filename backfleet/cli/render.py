"""Human output: tables and figures for operators."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

from backfleet.lifecycle import ReembedState
from coordinator.planner import PlanReport
from coordinator.status import MigrationStatus


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


def money(usd: float) -> str:
    """USD with one precision everywhere: 2 decimals from $1, 4 below (more for a nonzero
    amount that 4 decimals would show as zero)."""
    if usd == 0:
        return "$0.00"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    decimals = max(4, -math.floor(math.log10(abs(usd))))
    return f"${usd:,.{decimals}f}"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def plan_table(report: PlanReport) -> Table:
    table = Table(
        title=f"plan: migration {report.migration_id} of alias {report.alias}", show_header=False
    )
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("live generation", report.source_generation or "(none: first build)")
    table.add_row("shadow generation", report.target_generation)
    table.add_row("model", report.model_tag)
    table.add_row("documents", f"{report.docs:,}")
    table.add_row("ranges", f"{report.ranges:,}")
    how = f" ({report.est_tokens_method})" if report.est_tokens_method else ""
    table.add_row("estimated tokens", f"{report.est_tokens:,}{how}")
    table.add_row("estimated cost", money(report.est_cost))
    at_limit = human_duration(report.est_minutes_rate_limit * 60)
    if report.model_tag.startswith("local:"):
        at_limit += " (local models are not rate limited)"
    table.add_row("time at the rate limit", at_limit)
    if report.probe_docs_per_second is not None:
        per = report.probe_docs_per_second
        slots = report.est_concurrency
        assert report.est_minutes_throughput is not None
        table.add_row(
            "measured throughput",
            f"{per:,.1f} docs/s per request slot × {slots} slots = {per * slots:,.1f} docs/s "
            f"({report.probe_requests} probe requests of up to "
            f"{report.probe_docs_per_request} docs) → "
            f"{human_duration(report.est_minutes_throughput * 60)}",
        )
    else:
        table.add_row("measured throughput", "not probed")
    bound = f" (bound by the {report.est_binding})" if report.est_binding else " (not measured)"
    table.add_row("estimated time", human_duration(report.est_minutes * 60) + bound)
    table.add_row("shadow collection size", human_bytes(report.shadow_bytes))
    if report.long_ids:
        table.add_row("ids too long for the generation", f"{report.long_ids:,} (dead letters)")
    for note in report.est_notes:
        table.add_row("note", note)
    return table


def status_table(st: MigrationStatus) -> Table:
    table = Table(title=f"migration {st.migration_id} ({st.alias}): {st.state}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    pct = 100.0 * st.docs_done / st.total_docs if st.total_docs else 100.0
    table.add_row("generations", f"{st.source_generation or '(none)'} → {st.target_generation}")
    table.add_row("model", st.target_model)
    table.add_row("documents", f"{st.docs_done:,} of {st.total_docs:,} ({pct:.1f}%)")
    table.add_row("ranges", "  ".join(f"{k} {v}" for k, v in st.ranges.items()))
    table.add_row("throughput", f"{st.docs_per_second:,.1f} docs/s")
    table.add_row("tokens used", f"{st.tokens_used:,}")
    table.add_row("elapsed", human_duration(st.elapsed_seconds))
    table.add_row("ETA", human_duration(st.eta_seconds))
    if st.price_per_million_tokens or st.budget_usd:
        spend = money(st.spent_usd)
        if st.projected_usd is not None:
            spend += f", projected {money(st.projected_usd)} at completion"
        if st.budget_usd is not None:
            spend += f" (budget {money(st.budget_usd)})"
        table.add_row("spend", spend)
    if st.dead_letters:
        table.add_row(
            "dead letters",
            "  ".join(f"{k} {v}" for k, v in sorted(st.dead_letters.items()))
            + "  (`backfleet dead-letters`)",
        )
    if st.paused_reason:
        table.add_row("paused", st.paused_reason)
    for p in st.catchup_passes[-5:]:
        table.add_row(
            f"catch-up pass {p['pass']}",
            f"found {p['found']:,} (updated {p['changed']:,}, created {p['created']:,}, "
            f"deleted {p['deleted']:,}), applied {p['applied']:,}",
        )
    if st.catchup_passes:
        table.add_row("settled", "yes" if st.settled else "no — run `backfleet catchup` again")
    for f in st.failed[:10]:
        table.add_row(f"failed range {f['range']}", f"attempts {f['attempts']}: {f['error']}")
    pending = st.reembeds.get(ReembedState.PENDING, 0)
    failed = st.reembeds.get(ReembedState.FAILED, 0)
    if pending or failed:
        table.add_row(
            "re-embed requests",
            f"pending {pending}  failed {failed}  (re-sent by `backfleet supervise`)",
        )
    for r in st.refused[:5]:
        table.add_row(f"refused range {r['range']}", f"by {r['worker']}: {r['reason']}")
    return table


def throttle_table(st: Any) -> Table:
    table = Table(title=f"rate limits in force ({st.key})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("configured", f"{st.rpm} RPM, {st.tpm} TPM")
    if st.provider_rpm or st.provider_tpm:
        table.add_row("provider says", f"{st.provider_rpm} RPM, {st.provider_tpm} TPM")
    eff_rpm = f"{st.effective_rpm:,.0f}" if st.effective_rpm is not None else "?"
    eff_tpm = f"{st.effective_tpm:,.0f}" if st.effective_tpm is not None else "?"
    table.add_row("effective", f"{eff_rpm} RPM, {eff_tpm} TPM (adaptive factor {st.factor:.2f})")
    table.add_row(
        "paused", "yes — `backfleet throttle --resume` releases it" if st.paused else "no"
    )
    if st.cooldown_remaining > 0:
        table.add_row("429 cool-down", f"{st.cooldown_remaining:.1f} s left")
    return table


def print_json(console: Console, data: Any) -> None:
    import json

    console.print_json(json.dumps(data, default=str))


def catchup_table(report: Any) -> Table:
    """The passes of one ``backfleet catchup`` run."""
    table = Table(title=f"catch-up of migration {report.migration_id} ({report.state})")
    for col in ("pass", "mode", "updated", "created", "deleted", "applied", "new ranges", "s"):
        table.add_column(col)
    for p in report.passes:
        table.add_row(
            str(p.pass_no),
            p.mode,
            f"{p.changed:,}",
            f"{p.created:,}",
            f"{p.deleted:,}",
            f"{p.applied:,}",
            ", ".join(map(str, p.new_ranges)) or "-",
            f"{p.seconds:.1f}",
        )
    return table
