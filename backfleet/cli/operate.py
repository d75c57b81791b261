"""Operating a running migration: supervise, pause, resume, cancel, retries, dead letters,
rate limits, and the rehearsal provider."""

from __future__ import annotations

from pathlib import Path

import typer

from backfleet.cli.app import actor, app, console, settings
from backfleet.errors import ConfigError


def _migration_id(migration: int | None) -> int:
    from backfleet.cli.wiring import open_db
    from coordinator.dispatcher import load_migration

    s = settings()
    return load_migration(open_db(s), migration, s.alias).id


MIGRATION_OPT = typer.Option(
    None, "--migration", "-m", help="migration id (default: newest of the alias)"
)


@app.command()
def supervise(
    once: bool = typer.Option(False, help="one reaper pass, then exit"),
    metrics_port: int | None = typer.Option(None, help="serve Prometheus /metrics on this port"),
) -> None:
    """Run the coordinator's reaper: re-send tasks for pending ranges and expired leases."""
    from backfleet.cli.wiring import celery_app, check_broker, open_db
    from coordinator.reaper import ReaperSettings, queue_depth, reap_once
    from coordinator.reaper import supervise as run_supervise

    s = settings()
    s.model()  # the deployment's config must define its target model: refuse at start
    db = open_db(s)
    capp = celery_app(s)
    check_broker(capp, s)
    cfg = ReaperSettings(
        s.backfill.reap_interval_seconds, s.backfill.resend_after_seconds, s.backfill.max_attempts
    )
    if metrics_port is not None:
        from backfleet.metrics import serve_metrics

        serve_metrics(metrics_port, multiprocess=False)
    if once:
        console.print(f"{reap_once(db, capp, cfg, queue_depth(capp))} tasks re-sent")
        return
    run_supervise(db, capp, cfg)


@app.command()
def pause(
    migration: int | None = MIGRATION_OPT,
    reason: str | None = typer.Option(None, help="recorded with the transition"),
) -> None:
    """Pause a migration: no new ranges start; running ones stop after their batch."""
    from backfleet.cli.wiring import open_db
    from coordinator.operations import pause as do_pause

    mid = _migration_id(migration)
    console.print(
        f"migration {mid}: {do_pause(open_db(settings()), mid, actor=actor(), reason=reason)}"
    )


@app.command()
def resume(migration: int | None = MIGRATION_OPT) -> None:
    """Resume a paused migration where it stopped."""
    from backfleet.cli.wiring import celery_app, check_broker, open_db
    from coordinator.operations import resume as do_resume

    s = settings()
    mid = _migration_id(migration)
    capp = celery_app(s)
    check_broker(capp, s)
    sent = do_resume(open_db(s), capp, mid, actor=actor())
    console.print(f"migration {mid}: resumed, {sent} range tasks sent")


@app.command()
def cancel(
    migration: int | None = MIGRATION_OPT,
    reason: str | None = typer.Option(None, help="recorded with the transition"),
) -> None:
    """Cancel a migration (its shadow generation is kept; drop it by hand if unwanted)."""
    from backfleet.cli.wiring import open_db
    from coordinator.operations import cancel as do_cancel

    mid = _migration_id(migration)
    n = do_cancel(open_db(settings()), mid, actor=actor(), reason=reason)
    console.print(f"migration {mid}: cancelled ({n} open ranges cancelled)")


@app.command("retry-failed")
def retry_failed(
    migration: int | None = MIGRATION_OPT,
    range_ids: list[int] = typer.Option([], "--range", help="only these range ids (repeatable)"),
    dead_letters: bool = typer.Option(
        False, "--dead-letters", help="also re-embed rejected documents"
    ),
) -> None:
    """Retry failed ranges (fresh attempts) and, optionally, dead-lettered documents."""
    from backfleet.cli.wiring import celery_app, check_broker, open_db
    from coordinator.operations import retry_dead_letters
    from coordinator.operations import retry_failed as do_retry

    s = settings()
    db = open_db(s)
    mid = _migration_id(migration)
    capp = celery_app(s)
    check_broker(capp, s)
    retried = do_retry(db, capp, mid, actor=actor(), range_ids=list(range_ids) or None)
    console.print(f"migration {mid}: {len(retried)} failed ranges back to pending {retried or ''}")
    if dead_letters:
        n = retry_dead_letters(db, capp, mid, actor=actor())
        console.print(f"migration {mid}: {n} dead-lettered documents sent for re-embedding")


@app.command("dead-letters")
def dead_letters_cmd(
    migration: int | None = MIGRATION_OPT,
    export: Path | None = typer.Option(None, help="write every dead letter to this JSONL file"),
    limit: int = typer.Option(50, help="rows to show"),
) -> None:
    """List dead-lettered (rejected or skipped) documents, or export them as JSON lines."""
    import json

    from rich.table import Table

    from backfleet.cli.wiring import open_db
    from coordinator.operations import dead_letters

    mid = _migration_id(migration)
    rows = dead_letters(open_db(settings()), mid, None if export else limit)
    if export:
        with export.open("w") as fh:
            for r in rows:
                fh.write(
                    json.dumps(
                        {
                            "migration": mid,
                            "range": r.range_id,
                            "doc_id": r.doc_id,
                            "kind": r.kind,
                            "reason": r.reason,
                            "attempts": r.attempts,
                            "at": r.updated_at.isoformat(),
                        }
                    )
                    + "\n"
                )
        console.print(f"wrote {len(rows)} dead letters to {export}")
        return
    table = Table(title=f"dead letters of migration {mid}")
    for col in ("doc id", "kind", "attempts", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.doc_id, r.kind, str(r.attempts), r.reason[:120])
    console.print(table)


@app.command()
def throttle(
    model: str | None = typer.Option(None, help="model label (default: target_model)"),
    rpm: int | None = typer.Option(None, help="new fleet-wide requests per minute"),
    tpm: int | None = typer.Option(None, help="new fleet-wide tokens per minute"),
    pause: bool = typer.Option(False, "--pause", help="hold every provider call of the fleet"),
    resume: bool = typer.Option(False, "--resume", help="release a paused fleet"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show or change the running fleet's rate limits (applies to every worker at once)."""
    from dataclasses import asdict

    from backfleet.cli.render import print_json, throttle_table
    from backfleet.limits import build_throttle
    from backfleet.throttle import FleetThrottle

    s = settings()
    label = model or s.target_model
    if s.model(label).provider == "local":
        raise ConfigError(
            f"model {label!r} is local: it has no provider rate limit",
            hint="pass --model with the label of a provider model",
        )
    if pause and resume:
        raise ConfigError("--pause and --resume together", hint="pass one of them")
    if (rpm is not None and rpm <= 0) or (tpm is not None and tpm <= 0):
        raise ConfigError("limits must be positive", hint="--rpm and --tpm take numbers above 0")
    limiter = build_throttle(s, label)
    assert isinstance(limiter, FleetThrottle)
    if rpm is not None or tpm is not None:
        limiter.set_limits(rpm=rpm, tpm=tpm)
    if pause:
        limiter.pause()
    if resume:
        limiter.resume()
    state = limiter.limits()
    if json_out:
        print_json(console, asdict(state))
    else:
        console.print(throttle_table(state))


@app.command("fake-provider")
def fake_provider(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8099, help="port to listen on"),
    rpm: int = typer.Option(3000, min=1, help="requests per minute enforced (429 above)"),
    tpm: int = typer.Option(1_000_000, min=1, help="tokens per minute enforced (429 above)"),
    latency_ms: float = typer.Option(0.0, min=0, help="added latency per request"),
    latency_per_input_ms: float = typer.Option(
        0.0, min=0, help="added latency per input (a slow model: time grows with the batch)"
    ),
    no_key: bool = typer.Option(
        False, "--no-key", help="serve requests without an API key (like TEI, vLLM, Ollama)"
    ),
    dimension: int = typer.Option(1536, min=2, help="vector size when a request names none"),
    error_rate: float = typer.Option(0.0, min=0, max=1, help="share of requests answered 503"),
    poison: list[str] = typer.Option([], help="inputs containing this text get a 400"),
) -> None:
    """Serve the rehearsal provider: an OpenAI-compatible /v1/embeddings with limits and faults."""
    from backfleet.rehearsal import serve

    console.print(
        f"rehearsal provider on http://{host}:{port}/v1 (rpm {rpm}, tpm {tpm}); "
        "faults: POST /admin/faults, counters: GET /admin/stats"
    )
    try:
        serve(
            host=host,
            port=port,
            rpm=rpm,
            tpm=tpm,
            latency_ms=latency_ms,
            dimension=dimension,
            error_rate=error_rate,
            poison=list(poison) or None,
            latency_per_input_ms=latency_per_input_ms,
            require_key=not no_key,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --port"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"bad fault setting: {exc}") from None


@app.command()
def budget(
    migration: int | None = MIGRATION_OPT,
    set_usd: float | None = typer.Option(None, "--set", help="new cap in USD"),
    clear: bool = typer.Option(False, "--clear", help="remove the cap"),
) -> None:
    """Show or change a migration's spending cap (a paused migration then needs `resume`)."""
    from backfleet.cli.wiring import open_db
    from coordinator.operations import set_budget

    s = settings()
    mid = _migration_id(migration)
    model = s.models.get(_target_label(mid))
    price = model.price_per_million_tokens if model else 0.0
    if set_usd is not None or clear:
        if set_usd is not None and set_usd <= 0:
            raise ConfigError("a budget must be above 0", hint="--set USD, or --clear")
        set_budget(open_db(s), mid, None if clear else set_usd, price, actor=actor())
    from coordinator.status import migration_status

    st = migration_status(open_db(s), mid, s.alias, price_per_million=price)
    from backfleet.cli.render import money

    cap = money(st.budget_usd) if st.budget_usd is not None else "none"
    console.print(f"migration {mid}: spent {money(st.spent_usd)}, budget {cap}, state {st.state}")


def _target_label(mid: int) -> str:
    from backfleet.cli.wiring import open_db
    from coordinator.dispatcher import load_migration

    return load_migration(open_db(settings()), mid).target_model
