"""The `backfleet` command as an operator runs it: real processes, real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backfleet.corpus import seed_source
from backfleet.db.session import make_engine
from backfleet.settings import BackfillSettings
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url

pytestmark = pytest.mark.acceptance
BIN = Path(sys.executable).parent / "backfleet"


def run(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        env={**os.environ, **env},
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def env(pg_url: str, milvus_uri: str) -> dict[str, str]:
    s = make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(11),
        milvus_uri=milvus_uri,
        backfill=BackfillSettings(
            range_size=500, batch_size=100, lease_seconds=20, heartbeat_seconds=3, queue="bf_accept"
        ),
    )
    seed_source(make_engine(pg_url), 2000)
    return settings_env(s)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return " ".join(lines)


def test_init_writes_example_and_refuses_overwrite(tmp_path: Path) -> None:
    assert run(["init"], {}, tmp_path).returncode == 0
    assert "[models.local-v2]" in (tmp_path / "backfleet.toml").read_text()
    msg = one_error_line(run(["init"], {}, tmp_path))
    assert "already exists" in msg and "--force" in msg


def test_full_flow_plan_start_worker_status(env: dict[str, str], tmp_path: Path) -> None:
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    plan = run(["plan", "--json"], env, tmp_path)
    assert plan.returncode == 0, plan.stderr
    report = json.loads(plan.stdout)
    assert report["docs"] == 2000 and report["ranges"] == 4 and report["est_tokens"] > 0
    assert report["shadow_bytes"] > 2000 * 384 * 4
    human = run(["status"], env, tmp_path)
    assert "planned" in human.stdout and "0 of 2,000" in human.stdout
    start = run(["start"], env, tmp_path)
    assert start.returncode == 0, start.stderr
    assert "4 range tasks sent" in start.stdout
    fleet = WorkerFleet(env, tmp_path)
    fleet.start(1, concurrency=2)
    try:

        def done() -> bool:
            st = json.loads(run(["status", "--json"], env, tmp_path).stdout)
            return bool(st["ranges"]["done"] == 4)

        wait_for(
            done, 180, "the CLI-started migration to finish", interval=1, on_timeout=fleet.logs
        )
    finally:
        fleet.stop()
    st = json.loads(run(["status", "--json"], env, tmp_path).stdout)
    assert st["docs_done"] == 2000 and st["eta_seconds"] == 0.0
    # starting again is idempotent: nothing left to send
    again = run(["start"], env, tmp_path)
    assert again.returncode == 0 and "0 range tasks sent" in again.stdout
    # a second plan for the same alias is refused while this one is open
    msg = one_error_line(run(["plan"], env, tmp_path))
    assert "already has migration 1 in state backfilling" in msg


def test_bad_source_settings_are_one_clear_line(env: dict[str, str], tmp_path: Path) -> None:
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    msg = one_error_line(run(["plan"], {**env, "BACKFLEET_SOURCE__TABLE": "nope"}, tmp_path))
    assert "source table 'nope' does not exist" in msg and "source.table" in msg
    msg = one_error_line(run(["plan"], {**env, "BACKFLEET_SOURCE__TEXT_COLUMN": "body"}, tmp_path))
    assert "column 'body' not found" in msg and "source.text_column" in msg
    msg = one_error_line(
        run(["plan"], {**env, "BACKFLEET_SOURCE__TABLE": "x;drop table documents"}, tmp_path)
    )
    assert "not a plain SQL identifier" in msg
    msg = one_error_line(run(["plan", "--model", "nope"], env, tmp_path))
    assert "unknown model label 'nope'" in msg


def test_unreachable_services_and_unknown_ids(env: dict[str, str], tmp_path: Path) -> None:
    down = {**env, "BACKFLEET_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/x"}
    msg = one_error_line(run(["status"], down, tmp_path))
    assert "cannot reach database_url" in msg
    msg = one_error_line(run(["status"], env, tmp_path))
    assert "checkpoint schema" in msg and "backfleet db upgrade" in msg
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    msg = one_error_line(run(["status", "--migration", "42"], env, tmp_path))
    assert "migration 42 does not exist" in msg
    assert run(["plan"], env, tmp_path).returncode == 0
    msg = one_error_line(
        run(["start"], {**env, "BACKFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}, tmp_path)
    )
    assert "cannot reach the broker" in msg


def test_generation_model_mismatch_refused(env: dict[str, str], tmp_path: Path) -> None:
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    assert run(["plan"], env, tmp_path).returncode == 0
    assert run(["start"], env, tmp_path).returncode == 0
    models = json.loads(env["BACKFLEET_MODELS"])
    models["local-v2"]["dimension"] = 512
    changed = {**env, "BACKFLEET_MODELS": json.dumps(models)}
    msg = one_error_line(run(["start"], changed, tmp_path))
    assert "is bound to model" in msg and "dimension: 384 != 512" in msg
    # a worker with that configuration refuses to start instead of writing into it
    msg = one_error_line(run(["worker", "--pool", "solo"], changed, tmp_path))
    assert "migration 1" in msg and "dimension 512 != 384" in msg, msg
    st = json.loads(run(["status", "--json"], env, tmp_path).stdout)
    assert st["docs_done"] == 0 and st["ranges"]["pending"] == 4


def test_demo_runs_a_whole_migration_with_no_servers(tmp_path: Path) -> None:
    """README's first command (`make demo` runs `backfleet demo`): plan to cutover, offline."""
    env = {
        "BACKFLEET_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",  # never used
        "BACKFLEET_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    proc = run(["demo", "--docs", "600", "--dir", str(tmp_path / "demo")], env, tmp_path, 600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "demo finished" in out
    assert (tmp_path / "demo" / "checkpoints.db").exists()
