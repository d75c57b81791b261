"""``backfleet``: plan, start, watch and operate embedding-model migrations."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from backfleet.errors import BackfleetError, ConfigError
from backfleet.logs import configure_logging
from backfleet.settings import EXAMPLE_TOML, Settings, load_settings

app = typer.Typer(
    name="backfleet",
    help="Zero-downtime embedding-model migrations for Milvus, run by a Celery backfill fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The checkpoint schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)

_STATE: dict[str, Any] = {"config": None, "settings": None}


def actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def settings() -> Settings:
    if _STATE["settings"] is None:
        _STATE["settings"] = load_settings(_STATE["config"])
        s: Settings = _STATE["settings"]
        configure_logging(s.log_format, s.log_level)
    result: Settings = _STATE["settings"]
    return result


@app.callback()
def _main(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="backfleet.toml to read (default: ./backfleet.toml, env BACKFLEET_CONFIG)"
    ),
) -> None:
    _STATE["config"] = config
    _STATE["settings"] = None


@app.command()
def init(
    path: Path = typer.Option(Path("backfleet.toml"), help="where to write the example"),
    force: bool = typer.Option(False, help="overwrite an existing file"),
) -> None:
    """Write a commented example backfleet.toml."""
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", hint="pass --force to overwrite it")
    path.write_text(EXAMPLE_TOML)
    console.print(f"wrote {path}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or upgrade the checkpoint tables."""
    from backfleet.cli.wiring import open_db
    from backfleet.db.schema import current_revision, upgrade

    db = open_db(settings(), require_schema=False)
    upgrade(db.engine, revision)
    console.print(f"checkpoint schema at revision {current_revision(db.engine)}")


@db_app.command("current")
def db_current() -> None:
    """Show the checkpoint schema revision."""
    from backfleet.cli.wiring import open_db
    from backfleet.db.schema import current_revision, head_revision

    db = open_db(settings(), require_schema=False)
    console.print(f"current {current_revision(db.engine)}, head {head_revision(db.engine)}")


@app.command()
def plan(
    model: str | None = typer.Option(None, help="model label to migrate to (default: target_model)"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Plan a migration of the alias to a model: ranges and estimates (cost, time, size)."""
    from dataclasses import asdict

    from backfleet.cli.render import plan_table, print_json
    from backfleet.cli.wiring import open_db, open_source, open_store
    from backfleet.embedding.factory import embedder_for
    from coordinator.planner import plan_migration

    s = settings()
    label = model or s.target_model
    embedder = embedder_for(s, label)
    db = open_db(s)
    report = plan_migration(
        s, db, open_store(s), open_source(s), embedder, model_label=label, actor=actor()
    )
    if json_out:
        print_json(console, asdict(report))
    else:
        console.print(plan_table(report))
        console.print(f"next: backfleet start --migration {report.migration_id}")


@app.command()
def start(
    migration: int | None = typer.Option(None, help="migration id (default: newest of the alias)"),
) -> None:
    """Create the shadow generation and send one Celery task per range."""
    from backfleet.cli.wiring import celery_app, check_broker, open_db, open_store
    from backfleet.embedding.factory import embedder_for
    from backfleet.embedding.identity import ModelIdentity
    from coordinator.dispatcher import load_migration, start_migration

    s = settings()
    db = open_db(s)
    m = load_migration(db, migration, s.alias)
    # the configuration workers will embed with must be the model the migration was planned for
    ModelIdentity.from_json(m.target_identity).require_same(
        embedder_for(s, m.target_model).identity, f"migration {m.id}"
    )
    capp = celery_app(s)
    check_broker(capp, s)
    sent = start_migration(
        db, open_store(s), capp, m.id, actor=actor(), index_type=s.backfill.index_type
    )
    console.print(f"migration {m.id}: {sent} range tasks sent to queue {s.backfill.queue!r}")


@app.command()
def status(
    migration: int | None = typer.Option(None, help="migration id (default: newest of the alias)"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Ranges by state, documents done of total, docs/s and ETA."""
    from backfleet.cli.render import print_json, status_table
    from backfleet.cli.wiring import open_db
    from coordinator.status import migration_status

    s = settings()
    st = migration_status(open_db(s), migration, s.alias)
    if json_out:
        print_json(console, st.to_dict())
    else:
        console.print(status_table(st))


@app.command()
def worker(
    concurrency: int = typer.Option(2, "--concurrency", "-C", min=1, help="task slots in this worker"),
    pool: str = typer.Option("prefork", help="prefork, threads or solo"),
    name: str | None = typer.Option(None, help="worker node name (default backfleet-<pid>@host)"),
    loglevel: str = typer.Option("INFO", help="Celery log level"),
) -> None:
    """Run a Celery worker that executes backfill tasks."""
    import os

    from backfleet.cli.wiring import celery_app, check_broker

    if pool not in ("prefork", "threads", "solo"):
        raise ConfigError(f"unknown pool {pool!r}", hint="--pool prefork|threads|solo")
    s = settings()
    capp = celery_app(s)
    check_broker(capp, s)
    node = name or f"backfleet-{os.getpid()}@%h"
    capp.worker_main(
        [
            "worker", "-Q", s.backfill.queue, "-c", str(concurrency), "-P", pool, "-n", node,
            "-E", "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        ]
    )


def _migration_id(migration: int | None) -> int:
    from backfleet.cli.wiring import open_db
    from coordinator.dispatcher import load_migration

    s = settings()
    return load_migration(open_db(s), migration, s.alias).id


MIGRATION_OPT = typer.Option(None, "--migration", "-m", help="migration id (default: newest of the alias)")


@app.command()
def supervise(
    once: bool = typer.Option(False, help="one reaper pass, then exit"),
) -> None:
    """Run the coordinator's reaper: re-send tasks for pending ranges and expired leases."""
    from backfleet.cli.wiring import celery_app, check_broker, open_db
    from coordinator.reaper import ReaperSettings, queue_depth, reap_once
    from coordinator.reaper import supervise as run_supervise

    s = settings()
    db = open_db(s)
    capp = celery_app(s)
    check_broker(capp, s)
    cfg = ReaperSettings(s.backfill.reap_interval_seconds, s.backfill.resend_after_seconds)
    if once:
        console.print(f"{reap_once(db, capp, cfg, queue_depth(capp))} tasks re-sent")
        return
    run_supervise(db, capp, cfg)


@app.command()
def pause(migration: int | None = MIGRATION_OPT,
          reason: str | None = typer.Option(None, help="recorded with the transition")) -> None:
    """Pause a migration: no new ranges start; running ones stop after their batch."""
    from backfleet.cli.wiring import open_db
    from coordinator.operations import pause as do_pause

    mid = _migration_id(migration)
    console.print(f"migration {mid}: {do_pause(open_db(settings()), mid, actor=actor(), reason=reason)}")


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
def cancel(migration: int | None = MIGRATION_OPT,
           reason: str | None = typer.Option(None, help="recorded with the transition")) -> None:
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
    dead_letters: bool = typer.Option(False, "--dead-letters", help="also re-embed rejected documents"),
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
                fh.write(json.dumps({"migration": mid, "range": r.range_id, "doc_id": r.doc_id,
                                     "kind": r.kind, "reason": r.reason, "attempts": r.attempts,
                                     "at": r.updated_at.isoformat()}) + "\n")
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
    from backfleet.throttle import FleetThrottle
    from workers.limits import build_throttle

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
        serve(host=host, port=port, rpm=rpm, tpm=tpm, latency_ms=latency_ms, dimension=dimension,
              error_rate=error_rate, poison=list(poison) or None)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          hint="pick another --port") from None
    except ValueError as exc:
        raise ConfigError(f"bad fault setting: {exc}") from None


@app.command()
def demo(
    docs: int = typer.Option(3000, min=100, max=200_000, help="documents to generate"),
    workdir: Path | None = typer.Option(None, "--dir", help="keep the demo's files here"),
) -> None:
    """Run a whole small migration with no servers (SQLite, Milvus Lite, Celery in-process)."""
    from backfleet.cli.demo import run_demo

    run_demo(console, docs=docs, workdir=workdir)


def main() -> None:
    try:
        app()
    except BackfleetError as exc:
        # one line, never wrapped: scripts and operators grep it
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
