"""The operator's cockpit on real services: budget cap, metrics, live status."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from backfleet.corpus import seed_source
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import BackfillSettings, ModelSettings, ThrottleSettings
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, free_port, postgres_database, redis_db_url

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent / "backfleet"
DOCS = 3000


def cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
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
def setup(milvus_uri: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], RehearsalServer]]:
    server = RehearsalServer(rpm=100_000, tpm=100_000_000).start()
    with postgres_database() as pg:
        model = ModelSettings(
            provider="openai",
            name="text-embedding-3-small",
            version="1",
            dimension=32,
            send_dimensions=True,
            base_url=server.url,
            api_key_env="REHEARSAL_API_KEY",
            price_per_million_tokens=1000.0,
        )
        settings = make_settings(
            pg_url=pg,
            redis_url=redis_db_url(7),
            milvus_uri=milvus_uri,
            backfill=BackfillSettings(
                range_size=500,
                batch_size=100,
                lease_seconds=20,
                heartbeat_seconds=3,
                queue=f"bfcockpit{time.time_ns()}",
                budget_usd=40.0,
            ),
            throttle=ThrottleSettings(rpm=6000, tpm=100_000_000),
            models={"rehearsal": model},
            target_model="rehearsal",
        )
        seed_source(make_engine(pg), DOCS)
        upgrade(Database(pg).engine)
        env = {**settings_env(settings), "REHEARSAL_API_KEY": "sk-rehearsal"}
        try:
            yield env, server
        finally:
            server.stop()


def test_budget_pauses_then_raise_and_resume_finishes(
    setup: tuple[dict[str, str], RehearsalServer], tmp_path: Path
) -> None:
    env, _ = setup
    plan = cli(["plan", "--json"], env, tmp_path)
    assert plan.returncode == 0, plan.stderr
    report = json.loads(plan.stdout)
    assert report["est_cost"] > 40.0  # the plan shows the cost would exceed the budget
    port = free_port()
    fleet = WorkerFleet(env, tmp_path)
    fleet.start(1, concurrency=2)
    fleet_metrics = WorkerFleet(env, tmp_path / "m")
    (tmp_path / "m").mkdir()
    try:
        assert cli(["start"], env, tmp_path).returncode == 0

        def paused() -> bool:
            st = json.loads(cli(["status", "--json"], env, tmp_path).stdout)
            return bool(st["state"] == "paused")

        wait_for(paused, 120, "the budget to pause the migration", on_timeout=fleet.logs)
        st = json.loads(cli(["status", "--json"], env, tmp_path).stdout)
        assert st["spent_usd"] <= 40.0 and st["budget_usd"] == 40.0
        assert "budget" in st["paused_reason"] and "backfleet budget --set" in st["paused_reason"]
        assert st["docs_done"] < DOCS and st["ranges"]["running"] == 0
        human = cli(["status"], env, tmp_path).stdout
        assert "budget $40.00" in human and "paused" in human
        low = cli(["budget", "--set", "1"], env, tmp_path)
        assert low.returncode == 2 and "below what migration 1 has already spent" in low.stderr
        assert cli(["budget", "--set", "1000"], env, tmp_path).returncode == 0
        # a second worker exposes metrics while the rest runs
        proc = subprocess.Popen(
            [str(BIN), "worker", "-C", "1", "--metrics-port", str(port)],
            env={**os.environ, **env},
            stdout=open(tmp_path / "m" / "worker-0.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        fleet_metrics.procs.append(proc)
        # resumed ranges go to whichever worker is consuming: let this one be (it checks the
        # active migrations and fingerprints the model before it consumes)
        wait_for(
            lambda: " ready." in (tmp_path / "m" / "worker-0.log").read_text(errors="replace"),
            60,
            "the metrics worker to be ready",
            on_timeout=fleet_metrics.logs,
        )
        resumed = cli(["resume"], env, tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        wait_for(
            lambda: (
                json.loads(cli(["status", "--json"], env, tmp_path).stdout)["ranges"]["done"] == 6
            ),
            120,
            "the resumed migration",
            on_timeout=fleet.logs,
        )
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "backfleet_documents_embedded_total" in body
        assert "backfleet_provider_call_seconds_bucket" in body
        assert (
            'backfleet_provider_requests_total{model="text-embedding-3-small",outcome="ok"' in body
        )
    finally:
        fleet.stop()
        fleet_metrics.stop()
    st = json.loads(cli(["status", "--json"], env, tmp_path).stdout)
    assert st["docs_done"] == DOCS and st["spent_usd"] > 40.0


def test_watch_json_and_taken_metrics_port(
    setup: tuple[dict[str, str], RehearsalServer], tmp_path: Path
) -> None:
    env, _ = setup
    assert cli(["plan"], env, tmp_path).returncode == 0
    proc = subprocess.Popen(
        [str(BIN), "status", "--watch", "--json", "--interval", "0.5"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) >= 2 and lines[-1]["recent"]["docs_per_second"] == 0.0
    assert lines[-1]["limits"]["rpm"] == 6000
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = cli(["worker", "--metrics-port", str(port)], env, tmp_path, timeout=30)
    assert res.returncode == 2 and f"cannot serve metrics on port {port}" in res.stderr
    bad = cli(["status", "--migration", "77"], env, tmp_path)
    assert bad.returncode == 2 and "migration 77 does not exist" in bad.stderr
