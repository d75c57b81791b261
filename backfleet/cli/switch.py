"""Prove it, then switch: eval, golden generate, cutover, rollback, finalize."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from backfleet.cli.app import actor, app, console, settings
from backfleet.cli.prove import NOT_CLEAN_EXIT
from backfleet.errors import ConfigError

if TYPE_CHECKING:
    from coordinator.evaluator import EvalReport

golden_app = typer.Typer(help="Golden query sets for `backfleet eval`.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")

MIGRATION_OPT = typer.Option(
    None, "--migration", "-m", help="migration id (default: newest of the alias)"
)


def eval_table(report: EvalReport) -> Table:
    """Live against shadow on the golden set, with the verdict."""
    title = (
        f"eval of migration {report.migration_id}: {report.queries} queries from {report.golden}"
    )
    table = Table(title=title)
    table.add_column("metric", style="bold")
    live = report.live
    table.add_column(f"live {live.generation}" if live else "live (none)", justify="right")
    table.add_column(f"shadow {report.shadow.generation}", justify="right")
    table.add_column("Δ", justify="right")
    for key, name in (("recall", f"recall@{report.k}"), ("ndcg", "nDCG@10"), ("mrr", "MRR@10")):
        s = report.shadow.means[key]
        lv = live.means[key] if live else None
        table.add_row(
            name,
            f"{lv:.4f}" if lv is not None else "–",
            f"{s:.4f}",
            f"{s - lv:+.4f}" if lv is not None else "–",
        )
    table.add_row(
        "per query (nDCG@10)",
        "",
        f"{report.wins} wins, {report.losses} losses",
        f"{report.ties} ties",
    )
    table.add_row(
        f"index recall@{report.k} vs exact",
        "",
        f"{report.index_recall:.4f}",
        f"{report.index_recall_queries} queries, {report.index_recall_scope}",
    )
    colour = "green" if report.verdict == "GO" else "red"
    table.add_row("verdict", "", f"[bold {colour}]{report.verdict}[/]", "")
    return table


@app.command("eval")
def eval_cmd(
    golden: Path = typer.Option(..., "--golden", "-g", help="JSONL golden query set"),
    migration: int | None = MIGRATION_OPT,
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Score live and shadow on a golden query set (recall@k, nDCG@10, MRR@10); GO / NO-GO.

    Exits 0 on GO, 1 on NO-GO (like reconcile when not clean), 2 on an error."""
    from backfleet.cli.render import print_json
    from backfleet.cli.wiring import open_db, open_source, open_store
    from coordinator.dispatcher import load_migration
    from coordinator.evaluator import evaluate
    from coordinator.golden import check_ids, load_golden

    s = settings()
    db = open_db(s)
    m = load_migration(db, migration, s.alias)
    gold = load_golden(golden, m.id_type)
    source = open_source(s)
    check_ids(gold, source)
    report = evaluate(s, db, open_store(s), source, gold, m, actor=actor())
    if json_out:
        print_json(console, report.to_dict())
    else:
        _print_eval(report)
    if report.verdict != "GO":
        raise typer.Exit(NOT_CLEAN_EXIT)


def _print_eval(report: EvalReport) -> None:
    from coordinator.golden import PSEUDO_WARNING

    console.print(eval_table(report))
    for w in report.worst[:5]:
        console.print(
            f"  loss line {w['line']}: {w['query'][:60]!r} nDCG {w['live']:.3f} → {w['shadow']:.3f}"
        )
    for reason in report.reasons:
        console.print(f"  [red]NO-GO[/]: {reason}")
    if report.pseudo:
        console.print(f"[yellow]note:[/] {PSEUDO_WARNING}")
    console.print(f"evaluation #{report.evaluation_id}: {report.verdict}")


@golden_app.command("generate")
def golden_generate(
    out: Path = typer.Option(Path("golden.jsonl"), "--out", "-o", help="file to write"),
    queries: int = typer.Option(200, "--queries", "-n", min=1, max=100_000, help="queries"),
    seed: int = typer.Option(7, help="sampling seed"),
    force: bool = typer.Option(False, help="overwrite an existing file"),
) -> None:
    """Build pseudo-queries from the corpus (weaker than real queries: see the note)."""
    from backfleet.cli.wiring import open_source
    from coordinator.golden import PSEUDO_WARNING, generate_golden, write_golden

    if out.exists() and not force:
        raise ConfigError(f"{out} already exists", hint="pass --force to overwrite it")
    rows = generate_golden(open_source(settings()), queries, seed=seed)
    write_golden(out, rows)
    console.print(f"wrote {len(rows)} pseudo-queries to {out}")
    console.print(f"[yellow]note:[/] {PSEUDO_WARNING}; replace them with real queries when you can")


def _force_reason(force: bool, reason: str | None) -> str | None:
    if not force:
        return None
    if not reason or not reason.strip():
        raise ConfigError("--force needs a reason", hint='add --reason "why the gates are skipped"')
    return reason.strip()


@app.command()
def cutover(
    percent: float | None = typer.Option(
        None, "--percent", "-p", help="canary: share of routed queries (0<P<=100) to the shadow"
    ),
    full: bool = typer.Option(False, "--full", help="swap the alias to the shadow atomically"),
    force: bool = typer.Option(False, "--force", help="skip failed gates (needs --reason)"),
    reason: str | None = typer.Option(None, help="why --force (recorded with the transition)"),
    migration: int | None = MIGRATION_OPT,
) -> None:
    """Canary share or full alias swap; refused unless reconcile is clean and eval is GO."""
    from backfleet.cli.wiring import open_db, open_store
    from coordinator.cutover import full_cutover, set_canary
    from coordinator.dispatcher import load_migration

    if (percent is None) == (not full):
        raise ConfigError(
            "pass exactly one of --percent P and --full", hint="backfleet cutover --percent 5"
        )
    forced = _force_reason(force, reason)
    s = settings()
    db = open_db(s)
    m = load_migration(db, migration, s.alias)
    store = open_store(s)
    if full:
        out = full_cutover(db, store, m.id, actor=actor(), force_reason=forced)
    else:
        assert percent is not None
        out = set_canary(db, store, m.id, percent, actor=actor(), force_reason=forced)
    for line in out.messages:
        console.print(f"migration {m.id}: {line}")
    if out.forced:
        console.print(f"[yellow]gates forced[/]: {forced} (recorded)")


@app.command()
def rollback(
    migration: int | None = MIGRATION_OPT,
    reason: str | None = typer.Option(None, help="recorded with the transition"),
) -> None:
    """Return to the previous generation at once (end the canary or swap the alias back)."""
    from backfleet.cli.wiring import open_db, open_store
    from coordinator.cutover import rollback as do_rollback
    from coordinator.dispatcher import load_migration

    s = settings()
    db = open_db(s)
    m = load_migration(db, migration, s.alias)
    out = do_rollback(db, open_store(s), m.id, actor=actor(), reason=reason)
    for line in out.messages:
        console.print(f"migration {m.id}: {line}")


@app.command()
def finalize(migration: int | None = MIGRATION_OPT) -> None:
    """After the holdover (cutover.holdover_hours), drop the old generation; migration done."""
    from backfleet.cli.wiring import open_db, open_store
    from coordinator.cutover import finalize as do_finalize
    from coordinator.dispatcher import load_migration

    s = settings()
    db = open_db(s)
    m = load_migration(db, migration, s.alias)
    out = do_finalize(
        db, open_store(s), m.id, actor=actor(), holdover_hours=s.cutover.holdover_hours
    )
    for line in out.messages:
        console.print(f"migration {m.id}: finalized, {line}")
