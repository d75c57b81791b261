"""A worker's model-identity probe is throttled and retried, and a worker that cannot
establish its model (or has no such model) says so in `status` (issue 13, items 8 and 11b).

Real `backfleet worker` processes, real Postgres, the shared Milvus server, and the
rehearsal provider over real HTTP with its fault injection. A freshly started worker must
fingerprint the model (one request for the probe texts) before it may claim a range. Before
the fix that request was sent bare: a 429 or 500 made the task die "raised unexpected:
ProviderRateLimited" — no claim, no attempt, no last_error — and `status` showed only
pending ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backfleet.db.models import Range
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import ModelSettings, ThrottleSettings
from tests.support.fleet import wait_for
from tests.support.services import postgres_database, redis_db_url
from tests.support.worker_rig import plan_and_start, rehearsal_model

pytestmark = pytest.mark.integration

REDIS_DB = 11


def _attempts(rig: Any) -> list[int]:
    with rig.db.session() as session:
        return list(
            session.execute(
                select(Range.attempts).where(Range.migration_id == rig.migration_id)
            ).scalars()
        )


def test_probe_waits_out_a_provider_outage_and_status_shows_why(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray backfleet.toml reaches the workers
    server = RehearsalServer(rpm=100_000, tpm=100_000_000, default_dimension=32)
    with postgres_database() as pg_url, server:
        rig = plan_and_start(
            pg_url=pg_url,
            redis_url=redis_db_url(REDIS_DB),
            milvus_uri=milvus_uri,
            workdir=tmp_path,
            models={"rehearsal": rehearsal_model(server)},
            label="rehearsal",
            docs=300,
            range_size=100,
            batch_size=50,
            throttle=ThrottleSettings(rpm=100_000, tpm=100_000_000),
        )
        try:
            # the provider is down when the worker starts: every request answers 500
            server.set_faults(probability={"500": 1.0})
            rig.fleet.start(1, concurrency=1)

            def model_error_shown() -> bool:
                errors = rig.status_json().get("worker_errors") or []
                return any(
                    e["kind"] == "worker_model_unavailable" and "500" in (e["error"] or "")
                    for e in errors
                )

            wait_for(
                model_error_shown,
                150,
                "status --json to show the worker's model error",
                interval=3,
                on_timeout=rig.fleet.logs,
            )
            st = rig.status()
            assert st.ranges["pending"] == rig.ranges, st.ranges  # nothing claimed
            assert _attempts(rig) == [0] * rig.ranges  # no attempt counted
            text = rig.cli("status", "--migration", str(rig.migration_id))
            assert "cannot serve" in text.stdout, text.stdout

            # it comes back with a burst of 429s and 500s: the probe waits and retries
            server.set_faults(clear=True, next={"429": 3, "500": 2}, retry_after_seconds=1)
            wait_for(rig.done, 150, "every range done after the outage", on_timeout=rig.fleet.logs)
            assert len(rig.fleet.alive()) == 1, rig.fleet.logs()
            logs = rig.fleet.logs()
            assert "raised unexpected" not in logs, logs
            assert rig.status().ranges["failed"] == 0
            # a worker that has claimed since is no longer shown as unable to serve
            assert rig.status_json()["worker_errors"] == []
        finally:
            rig.fleet.stop()
            rig.drop_generation()


def test_a_burst_of_429_and_500_at_worker_start_is_retried(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = RehearsalServer(rpm=100_000, tpm=100_000_000, default_dimension=32)
    with postgres_database() as pg_url, server:
        rig = plan_and_start(
            pg_url=pg_url,
            redis_url=redis_db_url(REDIS_DB),
            milvus_uri=milvus_uri,
            workdir=tmp_path,
            models={"rehearsal": rehearsal_model(server)},
            label="rehearsal",
            docs=200,
            range_size=100,
            batch_size=50,
            throttle=ThrottleSettings(rpm=100_000, tpm=100_000_000),
        )
        try:
            server.set_faults(next={"429": 2, "500": 2}, retry_after_seconds=1)
            rig.fleet.start(1, concurrency=1, pool="threads")
            wait_for(rig.done, 120, "every range done", on_timeout=rig.fleet.logs)
            logs = rig.fleet.logs()
            assert "raised unexpected" not in logs, logs
        finally:
            rig.fleet.stop()
            rig.drop_generation()


def test_unknown_model_label_in_a_task_shows_in_status(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started before the migration, without its model label: status says so."""
    monkeypatch.chdir(tmp_path)
    with postgres_database() as pg_url:
        local = ModelSettings(provider="local", name="hash-words", version="1", dimension=32)
        rig = plan_and_start(
            pg_url=pg_url,
            redis_url=redis_db_url(REDIS_DB),
            milvus_uri=milvus_uri,
            workdir=tmp_path,
            models={"planned-model": local},
            label="planned-model",
            docs=100,
            range_size=50,
            batch_size=50,
            start=False,
        )
        try:
            import json

            from backfleet.vectorstore import VectorStore
            from coordinator.dispatcher import start_migration
            from workers.app import create_app

            other = {"other": local.model_dump(mode="json")}
            rig.fleet.env["BACKFLEET_MODELS"] = json.dumps(other)
            rig.fleet.env["BACKFLEET_TARGET_MODEL"] = "other"
            rig.fleet.start(1, concurrency=1)  # no active migration yet: it starts
            wait_for(
                lambda: " ready." in (tmp_path / "worker-0.log").read_text(errors="replace"),
                60,
                "worker ready",
                on_timeout=rig.fleet.logs,
            )
            store = VectorStore(milvus_uri)
            start_migration(
                rig.db,
                store,
                create_app(rig.settings),
                rig.migration_id,
                actor="t",
                index_type="HNSW",
            )
            store.close()

            def label_error_shown() -> bool:
                errors = rig.status_json().get("worker_errors") or []
                return any(
                    "unknown model label 'planned-model'" in (e["error"] or "") for e in errors
                )

            wait_for(
                label_error_shown,
                60,
                "status to show the unknown label",
                interval=2,
                on_timeout=rig.fleet.logs,
            )
            assert _attempts(rig) == [0] * rig.ranges
            with rig.db.session() as session:
                errors = set(
                    session.execute(
                        select(Range.last_error).where(Range.migration_id == rig.migration_id)
                    ).scalars()
                )
            assert any(e and "planned-model" in e for e in errors), errors
        finally:
            rig.fleet.stop()
            rig.drop_generation()
