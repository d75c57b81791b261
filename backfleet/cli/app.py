"""``backfleet``: plan, start, watch and operate embedding-model migrations."""

from __future__ import annotations

import logging
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

_STATE: dict[str, Any] = {"config": None, "settings": None, "verbose": False, "daemon": False}
#: long-running services: they log at their configured level (``log_level``), not quietly
DAEMONS = frozenset({"worker", "supervise", "fake-provider"})


def actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def settings() -> Settings:
    """The settings of this invocation, loaded once (``--config``, env, backfleet.toml)."""
    loaded = _STATE["settings"]
    if loaded is None:
        loaded = load_settings(_STATE["config"])
        configure_logging(loaded.log_format, console_log_level(loaded.log_level))
        _STATE["settings"] = loaded
    assert isinstance(loaded, Settings)
    return loaded


def console_log_level(configured: str) -> str:
    """A command prints only its output: its events show from WARNING up, unless
    ``--verbose`` (then from INFO, or the configured level if lower); daemons log at
    the configured level."""
    if _STATE["daemon"]:
        return configured
    lvl = logging.getLevelName(configured.upper())
    lvl = lvl if isinstance(lvl, int) else logging.INFO
    lvl = min(lvl, logging.INFO) if _STATE["verbose"] else max(lvl, logging.WARNING)
    return logging.getLevelName(lvl)


@app.callback()
def _main(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="backfleet.toml to read (default: ./backfleet.toml, env BACKFLEET_CONFIG)",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="also print the command's info events (on stderr)"
    ),
) -> None:
    _STATE["config"] = config
    _STATE["settings"] = None
    _STATE["verbose"] = verbose
    _STATE["daemon"] = ctx.invoked_subcommand in DAEMONS
    # quiet from the start: events logged before the settings are read obey --verbose too
    configure_logging("console", console_log_level("INFO"))


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
    model: str | None = typer.Option(
        None, help="model label to migrate to (default: target_model)"
    ),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
    no_probe: bool = typer.Option(
        False, "--no-probe", help="send no sample requests: time from the rate limit only"
    ),
) -> None:
    """Plan a migration of the alias to a model: ranges and estimates (cost, time, size).

    Tokens are counted on a sample of real documents with the model's counter; a few real
    requests measure the provider's throughput (unless --no-probe)."""
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
        s,
        db,
        open_store(s),
        open_source(s),
        embedder,
        model_label=label,
        actor=actor(),
        probe=not no_probe,
    )
    if json_out:
        print_json(console, asdict(report))
    else:
        console.print(plan_table(report))
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
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
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh until interrupted"),
    interval: float = typer.Option(2.0, min=0.2, help="seconds between refreshes with --watch"),
) -> None:
    """Ranges by state, docs done of total, docs/s, tokens/min against the limit, ETA, spend."""
    from backfleet.cli.status_view import StatusWatcher

    s = settings()
    watcher = StatusWatcher(s, migration)
    if json_out and not watch:
        from backfleet.cli.render import print_json

        print_json(console, watcher.snapshot())
        return
    if not watch:
        console.print(watcher.render())
        return
    watcher.watch(console, interval, as_json=json_out)


@app.command()
def worker(
    concurrency: int = typer.Option(
        2, "--concurrency", "-C", min=1, help="task slots in this worker"
    ),
    pool: str = typer.Option("prefork", help="prefork, threads or solo"),
    name: str | None = typer.Option(None, help="worker node name (default backfleet-<pid>@host)"),
    loglevel: str = typer.Option("INFO", help="Celery log level"),
    metrics_port: int | None = typer.Option(None, help="serve Prometheus /metrics on this port"),
) -> None:
    """Run a Celery worker that executes backfill tasks."""
    import os

    if metrics_port is not None:
        # prometheus-client picks its storage when first imported: the pool's processes share
        # one directory only if it is set before any metric module is imported
        import tempfile

        os.environ.setdefault(
            "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="backfleet-prom-")
        )
        from backfleet.metrics import serve_metrics

        serve_metrics(metrics_port, multiprocess=True)

    from backfleet.cli.wiring import celery_app, check_broker

    if pool not in ("prefork", "threads", "solo"):
        raise ConfigError(f"unknown pool {pool!r}", hint="--pool prefork|threads|solo")
    s = settings()
    s.model()  # a config without its target model refuses to start, not each task
    capp = celery_app(s)
    check_broker(capp, s)
    _refuse_unservable(s)
    # a thread pool runs `concurrency` ranges in one process: size its connection pools
    capp.backfleet_context.slots = concurrency if pool == "threads" else 1
    _warm_on_start(capp, pool)
    node = name or f"backfleet-{os.getpid()}@%h"
    code = _run_celery(
        capp,
        [
            "worker",
            "-Q",
            s.backfill.queue,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-n",
            node,
            "-E",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ],
    )
    if code:
        raise typer.Exit(int(code))


def _refuse_unservable(s: Settings) -> None:
    """Refuse to start (exit 2, one line) if an active migration of this worker's queue
    needs what this configuration cannot give: its model label and identity, its target
    generation, a readable source. Outages are not reasons: the worker starts and waits."""
    from backfleet.cli.wiring import open_db, open_source, open_store
    from backfleet.db.schema import current_revision
    from backfleet.logs import get_logger
    from workers.readiness import Checks, refuse_unservable

    log = get_logger("backfleet.worker")
    try:
        db = open_db(s, require_schema=False)
        if current_revision(db.engine) is None:
            log.warning("worker_start_check_skipped", reason="no checkpoint schema yet")
            return
    except BackfleetError as exc:
        log.warning("worker_start_check_skipped", error=str(exc))
        return
    stores: list[Any] = []

    def generation_exists(name: str) -> object:
        if not stores:
            stores.append(open_store(s))
        return stores[0].describe(name)

    def source_readable() -> object:
        source = open_source(s)
        source.engine.dispose()
        return source

    try:
        checked = refuse_unservable(s, db, Checks(generation_exists, source_readable))
        log.info("worker_start_checked", migrations=checked)
    finally:
        for store in stores:
            store.close()
        db.dispose()


def _run_celery(capp: Any, argv: list[str]) -> int:
    """Run the Celery command line and return its exit code.

    Not ``worker_main``/``start``: with click's non-standalone mode Celery *returns* the
    worker's exit code and they drop it, so a worker that stopped on an "Unrecoverable
    error" (EX_FAILURE) exited 0 and a supervisor's on-failure policy left it down.
    """
    import click
    from celery.bin.celery import celery as celery_cli

    celery_cli.params[0].default = capp
    try:
        code = celery_cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    finally:
        celery_cli.params[0].default = None
    return code if isinstance(code, int) else 0


def _warm_on_start(capp: Any, pool: str) -> None:
    """Connect before the first task: in each prefork child, or here for threads/solo.

    In a prefork child the warm-up runs in a thread: Celery gives a new child only a few
    seconds (``worker_proc_alive_timeout``) to report for work, and Milvus may be slow.
    """
    ctx = capp.backfleet_context
    if pool == "prefork":
        import threading

        from celery.signals import worker_process_init

        def warm(**_: object) -> None:
            threading.Thread(target=ctx.warm, name="worker-warm-up", daemon=True).start()

        worker_process_init.connect(warm, weak=False)
    else:
        ctx.warm()


@app.command()
def demo(
    docs: int = typer.Option(3000, min=100, max=200_000, help="documents to generate"),
    workdir: Path | None = typer.Option(
        None,
        "--dir",
        help="keep the demo's files here (a later run removes only its own previous files)",
    ),
    keep: bool = typer.Option(
        False, "--keep", help="keep the temporary directory (default: removed at the end)"
    ),
) -> None:
    """Run a whole small migration with no servers (SQLite, Milvus Lite, Celery in-process)."""
    from backfleet.cli.demo import run_demo

    run_demo(console, docs=docs, workdir=workdir, keep=keep)


# every other command module registers itself on ``app`` when imported
import backfleet.cli.commands  # noqa: E402, F401


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
