"""``backfleet catchup``: catch-up passes until the shadow has settled on the changing source."""

from __future__ import annotations

import typer

from backfleet.cli.app import actor, app, console, settings


@app.command()
def catchup(
    migration: int | None = typer.Option(
        None, "--migration", "-m", help="migration id (default: newest of the alias)"
    ),
    max_passes: int | None = typer.Option(
        None, "--max-passes", min=1, help="stop after this many passes (catchup.max_passes)"
    ),
    threshold: int | None = typer.Option(
        None,
        "--threshold",
        min=1,
        help="settled when a pass finds fewer changes than this (catchup.threshold)",
    ),
    full: bool = typer.Option(
        False, "--full", help="compare every text hash, ignoring updated_at (slow, exhaustive)"
    ),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Re-embed what changed in the source since its range was read; repeat until settled.

    Exits 0 when the last pass settled, 1 when max passes ran without settling.
    """

    from backfleet.cli.render import catchup_table, print_json
    from backfleet.cli.wiring import celery_app, check_broker, open_db, open_source, open_store
    from coordinator.catchup import run_catchup

    s = settings()
    capp = celery_app(s)
    check_broker(capp, s)
    report = run_catchup(
        s,
        open_db(s),
        open_store(s),
        open_source(s),
        capp,
        migration,
        actor=actor(),
        max_passes=max_passes,
        threshold=threshold,
        full=full,
    )
    if json_out:
        print_json(console, report.to_dict())
    else:
        console.print(catchup_table(report))
        console.print(
            "settled" if report.settled else "not settled: changes keep coming; run it again"
        )
    if not report.settled:
        raise typer.Exit(1)
