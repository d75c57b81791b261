"""Proving a shadow: ``backfleet reconcile`` (against the source) and ``backfleet audit``
(any collection, for mixed models, dimensions or norms). Both exit 1 when not clean."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from backfleet.cli.app import app, console, settings

NOT_CLEAN_EXIT = 1
_KINDS = ("missing", "extra", "duplicated", "stale", "wrong_model", "corrupted")


@app.command()
def reconcile(
    migration: int | None = typer.Option(
        None, "--migration", "-m", help="migration id (default: newest of the alias)"
    ),
    sample: int = typer.Option(
        16, min=0, help="documents per range re-embedded to check stored vectors (0: none)"
    ),
    chunk: int = typer.Option(
        5000, min=1, help="source ids diffed at once (bounds memory, not the corpus)"
    ),
    min_cosine: float = typer.Option(
        0.999, help="a sampled vector below this cosine to a fresh embedding is corrupted"
    ),
    repair: bool = typer.Option(
        False, "--repair", help="re-embed missing/stale/wrong ids via workers; delete extras"
    ),
    seed: int | None = typer.Option(None, help="seed of the vector sample (reproducible runs)"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Prove the shadow generation holds every source id once, current, of one model."""
    from backfleet.cli.render import print_json
    from backfleet.cli.wiring import celery_app, check_broker, open_db, open_source, open_store
    from backfleet.embedding.factory import embedder_for
    from coordinator.dispatcher import load_migration
    from coordinator.reconciler import Repairer, reconcile_migration
    from workers.tasks import enqueue_documents

    s = settings()
    db = open_db(s)
    m = load_migration(db, migration, s.alias)
    generation = open_store(s).open_generation(m.target_generation)
    embedder = embedder_for(s, m.target_model) if sample else None
    repairer = None
    if repair:
        capp = celery_app(s)
        check_broker(capp, s)

        def enqueue(ids: list[str]) -> None:
            enqueue_documents(capp, m.id, ids)

        repairer = Repairer(generation, enqueue, batch_size=s.backfill.batch_size)
    report = reconcile_migration(
        db,
        open_source(s),
        generation,
        m,
        embedder,
        chunk=chunk,
        sample=sample,
        min_cosine=min_cosine,
        max_input_tokens=s.model(m.target_model).max_input_tokens,
        repairer=repairer,
        seed=seed,
    )
    if json_out:
        print_json(console, report.to_dict())
    else:
        console.print(reconcile_table(report))
        if report.dirty_ranges:
            console.print(dirty_ranges_table(report))
        if report.repair is not None:
            console.print(
                f"repair: {report.repair['deleted']} rows deleted, "
                f"{report.repair['enqueued']} documents sent for re-embedding; "
                "run `backfleet reconcile` again once the workers are done"
            )
    if not report.clean:
        raise typer.Exit(NOT_CLEAN_EXIT)


def reconcile_table(report: Any) -> Table:
    verdict = "CLEAN" if report.clean else "NOT CLEAN"
    table = Table(
        title=f"reconcile {report.reconcile_id} of migration {report.migration_id}: {verdict}",
        show_header=False,
    )
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("generation", report.generation)
    table.add_row("model", report.model)
    table.add_row("ranges", f"{report.ranges:,} ({len(report.dirty_ranges):,} not clean)")
    table.add_row("source documents", f"{report.source_docs:,} ({report.empty_docs:,} empty)")
    if report.rejected_docs:  # id too long or not UTF-8: dead letters, not expected rows
        table.add_row(
            "rejected from the source",
            f"{report.rejected_docs:,} (`backfleet dead-letters`; e.g. "
            f"{', '.join(report.rejected_examples[:3])})",
        )
    table.add_row("generation rows", f"{report.generation_rows:,}")
    for kind in _KINDS:
        table.add_row(kind.replace("_", " "), f"{getattr(report, kind):,}")
    table.add_row("vectors sampled", f"{report.sampled:,}")
    table.add_row("time", f"{report.seconds:,.1f} s ({report.ids_per_second:,.0f} ids/s)")
    return table


def dirty_ranges_table(report: Any, limit: int = 20) -> Table:
    table = Table(title="ranges not clean")
    for col in ("range", "ids", "source", "rows", *(k.replace("_", " ") for k in _KINDS), "e.g."):
        table.add_column(col)
    for r in report.dirty_ranges[:limit]:
        examples = next(iter(r.examples.items()), None)
        table.add_row(
            str(r.seq),
            f"[{r.lo or '-∞'}, {r.hi or '+∞'})",
            f"{r.expected_rows:,}",
            f"{r.generation_rows:,}",
            *(f"{getattr(r, k):,}" for k in _KINDS),
            f"{examples[0]}: {', '.join(examples[1][:3])}" if examples else "",
        )
    return table


@app.command()
def audit(
    collection: str = typer.Argument(..., help="any Milvus collection (or alias)"),
    sample: int | None = typer.Option(
        None, min=1, help="examine the vectors of N random rows (model counts stay exact)"
    ),
    field: str | None = typer.Option(None, help="float vector field (default: the first)"),
    seed: int | None = typer.Option(None, help="seed of the sample"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Find mixed models, dimensions or vector norms in any collection; exit 1 if mixed."""
    from backfleet.cli.render import print_json
    from backfleet.cli.wiring import open_store
    from backfleet.vectorstore.audit import audit_collection

    report = audit_collection(
        open_store(settings()), collection, sample=sample, vector_field=field, seed=seed
    )
    if json_out:
        print_json(console, report.to_dict())
    else:
        verdict = "MIXED" if report.mixed else "one cohort"
        scope = (
            f"{report.vectors_examined:,} sampled of {report.rows:,} rows"
            if report.sampled
            else f"{report.scanned:,} of {report.rows:,} rows"
        )
        table = Table(title=f"audit of {collection} ({scope}): {verdict}")
        for col in ("model", "dimension", "norm", "rows", "norm range", "e.g. ids"):
            table.add_column(col)
        for c in report.cohorts:
            table.add_row(
                c.model,
                str(c.dimension),
                c.norm,
                f"{c.count:,}",
                f"{c.norm_min:.4f}–{c.norm_max:.4f}",
                ", ".join(c.example_ids[:3]),
            )
        console.print(table)
        console.print(
            f"vector field {report.vector_field} (dim {report.schema_dimension}), model field "
            f"{report.model_field or '(none: unknown)'}, declared model "
            f"{report.declared_model or '(none: not a backfleet generation)'}"
        )
        for reason in report.reasons:
            console.print(f"mixed: {reason}")
    if report.mixed:
        raise typer.Exit(NOT_CLEAN_EXIT)
