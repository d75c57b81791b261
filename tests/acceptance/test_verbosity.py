"""CLI commands print only their output; structlog's info events only with ``--verbose``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backfleet.corpus import seed_source
from backfleet.db.session import make_engine
from backfleet.settings import BackfillSettings
from tests.support.fleet import make_settings, settings_env
from tests.support.services import postgres_database, redis_db_url

pytestmark = pytest.mark.acceptance
BIN = Path(sys.executable).parent / "backfleet"


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        env={**os.environ, **env},
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def env(milvus_uri: str) -> Iterator[dict[str, str]]:
    with postgres_database() as pg:
        s = make_settings(
            pg_url=pg,
            redis_url=redis_db_url(12),
            milvus_uri=milvus_uri,
            backfill=BackfillSettings(range_size=200, batch_size=100, queue="bf_verbosity"),
        )
        seed_source(make_engine(pg), 400)
        yield settings_env(s)


def info_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if "[info" in ln]


def test_commands_are_quiet_unless_verbose(env: dict[str, str], tmp_path: Path) -> None:
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    plan = run(["plan"], env, tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "next: backfleet start" in plan.stdout
    assert info_lines(plan) == [], plan.stdout + plan.stderr
    assert plan.stderr.strip() == "", plan.stderr

    status = run(["status"], env, tmp_path)
    assert status.returncode == 0 and "planned" in status.stdout, status.stderr
    assert info_lines(status) == [] and status.stderr.strip() == "", status.stderr

    # the same events are there when asked for, on stderr (stdout stays the command's output)
    assert run(["cancel", "--reason", "verbosity test"], env, tmp_path).returncode == 0
    verbose = run(["--verbose", "plan"], env, tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert info_lines(verbose), verbose.stdout + verbose.stderr
    assert "migration_planned" in verbose.stderr, verbose.stderr
    assert all("[info" not in ln for ln in verbose.stdout.splitlines()), verbose.stdout
