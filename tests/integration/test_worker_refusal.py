"""A worker whose configuration cannot serve an active migration refuses at start, with the
reason in one line and exit status 2 (issue 13, item 11b).

Real `backfleet worker` processes against real Postgres and the shared Milvus server. Before
the fix each of these workers started, took the ranges' tasks and failed them silently
(`status` showed pending ranges).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backfleet.settings import ModelSettings
from tests.support.fleet import wait_for
from tests.support.services import postgres_database, redis_db_url
from tests.support.worker_rig import Rig, plan_and_start

pytestmark = pytest.mark.integration

REDIS_DB = 12
LOCAL = ModelSettings(provider="local", name="hash-words", version="1", dimension=32)


def _refusal(rig: Rig, **env: str) -> str:
    """Start a worker with ``env`` over the fleet's; it must exit 2 with one error line."""
    proc = rig.cli("worker", "--concurrency", "1", "--pool", "solo", env={**rig.env, **env})
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_worker_refuses_a_migration_it_cannot_serve(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with postgres_database() as pg_url:
        rig = plan_and_start(
            pg_url=pg_url,
            redis_url=redis_db_url(REDIS_DB),
            milvus_uri=milvus_uri,
            workdir=tmp_path,
            models={"planned-model": LOCAL},
            label="planned-model",
            docs=200,
            range_size=100,
            batch_size=50,
        )
        mid = rig.migration_id
        try:
            # the label is not defined in this worker's configuration
            other = json.dumps({"other": LOCAL.model_dump(mode="json")})
            line = _refusal(rig, BACKFLEET_MODELS=other, BACKFLEET_TARGET_MODEL="other")
            assert f"migration {mid}" in line and "'planned-model'" in line, line
            assert "[models.planned-model]" in line, line

            # the label is defined with another identity
            changed = json.dumps(
                {"planned-model": {**LOCAL.model_dump(mode="json"), "dimension": 64}}
            )
            line = _refusal(rig, BACKFLEET_MODELS=changed)
            assert f"migration {mid}" in line and "dimension 64 != 32" in line, line
            assert "[models.planned-model]" in line, line

            # the source table this worker would read does not exist
            line = _refusal(rig, BACKFLEET_SOURCE__TABLE="nope")
            assert f"migration {mid}" in line and "source table 'nope'" in line, line

            # the configuration the migration was planned with: it starts and finishes it
            rig.fleet.start(1, concurrency=1)
            wait_for(rig.done, 90, "every range done", on_timeout=rig.fleet.logs)
            assert len(rig.fleet.alive()) == 1
        finally:
            rig.fleet.stop()
            rig.drop_generation()
        # the target generation is gone (dropped by hand while the migration is active)
        with rig.db.session() as session:
            from sqlalchemy import update

            from backfleet.db.models import Migration

            session.execute(
                update(Migration).where(Migration.id == mid).values(state="backfilling")
            )
        line = _refusal(rig)
        assert f"migration {mid}" in line and rig.target_generation in line, line
