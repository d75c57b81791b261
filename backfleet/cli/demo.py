"""``backfleet demo``: a whole migration with no servers, through the fleet's own code.

SQLite holds the demo's source table and checkpoints, Milvus Lite a local file, and the
Celery app runs its tasks in-process (eager); the range pipeline is the one the fleet runs.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backfleet.cli.render import catchup_table, plan_table, status_table
from backfleet.corpus import seed_source
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.errors import ConfigError
from backfleet.limits import NullThrottle
from backfleet.logs import configure_logging
from backfleet.settings import BackfillSettings, Settings, SourceSettings
from backfleet.source import Source
from backfleet.vectorstore import Generation, VectorStore, generation_name
from coordinator.catchup import run_catchup
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.status import migration_status
from workers.app import create_app
from workers.pipeline import embed_batch

ACTOR = "demo"
QUERIES = [
    "refund for a duplicate card charge",
    "reset my login password",
    "parcel stuck in customs",
]


def demo_settings(workdir: Path, docs: int) -> Settings:
    return Settings(
        database_url=f"sqlite:///{workdir / 'checkpoints.db'}",
        milvus_uri=str(workdir / "milvus.db"),
        alias="demo_docs",
        target_model="local-v2",
        source=SourceSettings(
            url=f"sqlite:///{workdir / 'source.db'}",
            table="documents",
            updated_at_column="updated_at",
        ),
        backfill=BackfillSettings(
            range_size=max(100, docs // 8),
            batch_size=128,
            index_type="FLAT",
            heartbeat_seconds=5,
            lease_seconds=60,
        ),
        log_level="WARNING",
    )


def seed_live_generation(
    settings: Settings, store: VectorStore, source: Source, label: str
) -> Generation:
    """The index production serves before the migration: every document embedded with v1."""
    embedder = embedder_for(settings, label)
    name = generation_name(
        settings.alias, embedder.identity, store.next_generation_number(settings.alias)
    )
    gen = store.create_generation(name, settings.alias, embedder.identity, source.id_type, "FLAT")
    for docs in source.iter_batches(None, None, None, settings.backfill.batch_size):
        embed_batch(docs, embedder, NullThrottle(), gen)
    store.point_alias(settings.alias, name)
    return gen


def search_table(
    store: VectorStore, settings: Settings, gens: dict[str, tuple[Generation, str]], source: Source
) -> Table:
    table = Table(title="the same queries, each embedded with its own generation's model")
    table.add_column("query")
    for title in gens:
        table.add_column(title)
    for q in QUERIES:
        cells = [q]
        for gen, label in gens.values():
            vec = embedder_for(settings, label).embed([q]).vectors
            hits = gen.search(np.asarray(vec), 3)[0]
            topics = [
                d.text.split()[1] if d.text else "?" for d in source.fetch([h["id"] for h in hits])
            ]
            cells.append(
                ", ".join(
                    f"#{h['id']} {t} {h['distance']:.2f}"
                    for h, t in zip(hits, topics, strict=False)
                )
            )
        table.add_row(*cells)
    return table


def edit_source(engine: Any, docs: int) -> dict[str, int]:
    """What users do during a multi-day backfill: edit, add and delete documents."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import delete, insert, update

    from backfleet.corpus import documents, source_table

    tbl = source_table("documents")
    later = datetime.now(UTC) + timedelta(seconds=1)
    updated = list(range(7, docs, max(1, docs // 40)))[:40]
    deleted = list(range(11, docs, max(1, docs // 15)))[:15]
    deleted = [i for i in deleted if i not in updated]
    with engine.begin() as conn:
        for i in updated:
            conn.execute(
                update(tbl)
                .where(tbl.c.id == i)
                .values(text=f"edited document {i}: refund policy changed", updated_at=later)
            )
        conn.execute(delete(tbl).where(tbl.c.id.in_(deleted)))
        new = [
            {"id": ident, "topic": topic, "text": text, "updated_at": later}
            for ident, topic, text in documents(25, seed=99, start_id=docs + 1)
        ]
        conn.execute(insert(tbl), new)
    return {"updated": len(updated), "created": len(new), "deleted": len(deleted)}


#: written into the demo's directory: a later run may remove only what a demo wrote there
MARKER = ".backfleet-demo"
DEMO_FILES = ("checkpoints.db", "source.db", "milvus.db")


def prepare_workdir(work: Path) -> None:
    """Make ``work`` ready for a fresh run, removing only a previous demo run's own files.

    A directory holding anything else without the marker is refused: it is not the demo's.
    """
    if work.exists() and not work.is_dir():
        raise ConfigError(
            f"demo directory {work} is a file", hint="pass a new or empty directory with --dir"
        )
    work.mkdir(parents=True, exist_ok=True)
    entries = {p.name for p in work.iterdir()}
    if entries and MARKER not in entries:
        raise ConfigError(
            f"demo directory {work} is not empty and holds no {MARKER} marker of a previous demo",
            hint="pass a new or empty directory with --dir, or leave --dir out for a temporary one",
        )
    for name in DEMO_FILES:
        path = work / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (work / MARKER).write_text(f"files of `backfleet demo`: {', '.join(DEMO_FILES)}\n")


def release_milvus_lite(path: Path) -> None:
    """Stop this process's Milvus Lite server for ``path``: it writes its data when stopped
    (at exit otherwise), which would recreate a directory removed before."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(path))


def run_demo(console: Console, *, docs: int, workdir: Path | None, keep: bool = False) -> None:
    started = time.monotonic()
    temporary = workdir is None
    if workdir is None:
        work = Path(tempfile.mkdtemp(prefix="backfleet-demo-"))
        (work / MARKER).write_text(f"files of `backfleet demo`: {', '.join(DEMO_FILES)}\n")
    else:
        work = workdir.resolve()
        prepare_workdir(work)
    removed = temporary and not keep
    try:
        _run(console, docs, work, removed)
    finally:
        release_milvus_lite(work / "milvus.db")
        if removed:
            shutil.rmtree(work, ignore_errors=True)
    console.print(f"\n[bold green]demo finished[/] in {time.monotonic() - started:.1f} s")
    if removed:
        console.print(f"temporary directory {work} removed", soft_wrap=True)
    else:
        console.print(f"files kept in {work}", soft_wrap=True)


def _run(console: Console, docs: int, work: Path, removed: bool) -> None:
    settings = demo_settings(work, docs)
    configure_logging(settings.log_format, settings.log_level)
    console.rule("[bold]backfleet demo: migrate an alias from model v1 to v2, no servers")
    where = "temporary, removed at the end; --keep keeps it" if removed else "kept at the end"
    console.print(f"work dir {work} ({where})", soft_wrap=True)
    console.print("SQLite source + checkpoints, Milvus Lite, Celery in-process")

    source_engine = make_engine(settings.source.url)
    seed_source(source_engine, docs)
    source = Source(source_engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = VectorStore(settings.milvus_uri)
    console.print(f"source: {docs:,} documents in table documents")

    console.rule("1. production today: alias served by a v1 generation")
    live = seed_live_generation(settings, store, source, "local-v1")
    console.print(
        f"alias {settings.alias} → {live.name} ({live.identity.tag}), {live.count():,} rows"
    )

    console.rule("2. backfleet plan (target model local-v2)")
    embedder = embedder_for(settings, "local-v2")
    report = plan_migration(
        settings, db, store, source, embedder, model_label="local-v2", actor=ACTOR
    )
    console.print(plan_table(report))

    console.rule("3. backfleet start: the Celery range tasks run (in-process here)")
    app = create_app(settings, eager=True)
    done = threading.Event()
    errors: list[BaseException] = []

    def run_fleet() -> None:
        try:
            start_migration(
                db,
                store,
                app,
                report.migration_id,
                actor=ACTOR,
                index_type=settings.backfill.index_type,
            )
        except BaseException as exc:  # shown below, after the progress bar stops
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run_fleet, daemon=True)
    with Progress(
        TextColumn("backfill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("docs"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("backfill", total=report.docs)
        thread.start()
        while not done.wait(0.2):
            st = migration_status(db, report.migration_id, settings.alias)
            progress.update(task, completed=st.docs_done)
        st = migration_status(db, report.migration_id, settings.alias)
        progress.update(task, completed=st.docs_done)
    thread.join()
    if errors:
        raise errors[0]
    console.print(status_table(st))

    console.rule("4. check: the shadow holds every document once, with the v2 model tag")
    shadow = store.open_generation(report.target_generation)
    count = shadow.count()
    tags = {
        row["model"] for batch in shadow.scan(None, None, fields=("id", "model")) for row in batch
    }
    console.print(
        f"shadow {shadow.name}: {count:,} rows (source {docs:,}); model tags {sorted(tags)}"
    )
    console.print(
        f"alias {settings.alias} still → {store.resolve_alias(settings.alias)} (untouched)"
    )
    if count != docs or tags != {shadow.identity.tag}:
        raise SystemExit("demo check failed: the shadow does not match the source")

    console.rule("5. each generation answers with its own model")
    console.print(
        search_table(
            store,
            settings,
            {
                f"live {live.name}": (live, "local-v1"),
                f"shadow {shadow.name}": (shadow, "local-v2"),
            },
            source,
        )
    )
    console.rule("6. users keep editing during the backfill: backfleet catchup")
    edits = edit_source(source_engine, docs)
    console.print(
        f"source edited behind the fleet's back: {edits['updated']} updated, "
        f"{edits['created']} created, {edits['deleted']} deleted"
    )
    catchup = run_catchup(settings, db, store, source, app, report.migration_id, actor=ACTOR)
    console.print(catchup_table(catchup))
    console.print("settled: the shadow has caught up" if catchup.settled else "not settled")

    from backfleet.cli.demo_switch import prove_and_switch

    prove_and_switch(console, settings, db, store, source, report.migration_id)
    store.close()
