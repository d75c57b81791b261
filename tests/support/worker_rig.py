"""A migration to the rehearsal provider with real `backfleet worker` processes, and a private
redis-server the test can shut down and start again (the worker tests of issue 13, items 8-11b)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from backfleet.corpus import seed_source
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import ModelSettings, Settings, load_settings
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.status import MigrationStatus, migration_status
from tests.support.fleet import make_settings, settings_env
from tests.support.services import VENV_BIN, WorkerFleet, free_port
from workers.app import create_app

KEY_ENV = "REHEARSAL_KEY"
KEY = "rehearsal-test-key"


class OwnRedis:
    """A redis-server of this test alone, on a free port, that keeps nothing on disk."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with suppress(redis.RedisError):
                if redis.Redis.from_url(self.url).ping():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def shutdown(self) -> None:
        """What a crash of the broker looks like to its clients: `shutdown nosave`."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
            capture_output=True,
            timeout=30,
        )
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@contextmanager
def own_redis(workdir: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Rig:
    """One planned-and-started migration to the rehearsal model, and its worker fleet."""

    settings: Settings
    env: dict[str, str]
    db: Database
    fleet: WorkerFleet
    migration_id: int
    ranges: int
    target_generation: str
    milvus_uri: str

    def status(self) -> MigrationStatus:
        return migration_status(self.db, self.migration_id, self.settings.alias)

    def done(self) -> bool:
        return bool(self.status().ranges["done"] == self.ranges)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A `backfleet` command as an operator runs it, with the fleet's environment."""
        return subprocess.run(
            [str(VENV_BIN / "backfleet"), *args],
            env={**os.environ, **(env or self.env)},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def status_json(self) -> dict[str, Any]:
        proc = self.cli("status", "--json", "--migration", str(self.migration_id))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def drop_generation(self) -> None:
        store = VectorStore(self.milvus_uri)
        try:
            with suppress(Exception):
                store.drop(self.target_generation)
        finally:
            store.close()


def rehearsal_model(server: RehearsalServer, dimension: int = 32) -> ModelSettings:
    return ModelSettings(
        provider="openai",
        name="rehearsal-embed",
        version="1",
        dimension=dimension,
        send_dimensions=True,
        base_url=server.url,
        api_key_env=KEY_ENV,
        timeout_seconds=10,
    )


def plan_and_start(
    *,
    pg_url: str,
    redis_url: str,
    milvus_uri: str,
    workdir: Path,
    models: dict[str, ModelSettings],
    label: str,
    docs: int,
    range_size: int,
    batch_size: int,
    start: bool = True,
    plan: bool = True,
    **extra: Any,
) -> Rig:
    """Seed ``docs`` documents, plan a migration to ``label`` (``plan``) and start it
    (``start``); without ``plan`` the rig has no migration (``migration_id`` 0)."""
    settings = make_settings(
        pg_url=pg_url,
        redis_url=redis_url,
        milvus_uri=milvus_uri,
        range_size=range_size,
        batch_size=batch_size,
        models=models,
        target_model=label,
        **extra,
    )
    env = {**settings_env(settings), KEY_ENV: KEY}
    full = load_settings(None, environ=env)  # what the workers load: the API key resolved
    engine = make_engine(pg_url)
    seed_source(engine, docs)
    engine.dispose()
    db = Database(pg_url)
    upgrade(db.engine)
    if not plan:
        return Rig(full, env, db, WorkerFleet(env, workdir), 0, 0, "", milvus_uri)
    store = VectorStore(milvus_uri)
    try:
        source_engine = make_engine(pg_url)
        from backfleet.source import Source

        report = plan_migration(
            full,
            db,
            store,
            Source(source_engine, full.source),
            embedder_for(full, label),
            model_label=label,
            actor="test",
        )
        source_engine.dispose()
        if start:
            start_migration(
                db, store, create_app(full), report.migration_id, actor="test", index_type="HNSW"
            )
    finally:
        store.close()
    return Rig(
        settings=full,
        env=env,
        db=db,
        fleet=WorkerFleet(env, workdir),
        migration_id=report.migration_id,
        ranges=report.ranges,
        target_generation=report.target_generation,
        milvus_uri=milvus_uri,
    )
