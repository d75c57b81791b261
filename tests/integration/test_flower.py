"""Flower shows backfleet's tasks with readable names and arguments (real broker, workers,
and a headless Chromium looking at the tasks page). The screenshot goes to the test's temporary
directory; ``BACKFLEET_UPDATE_DOCS_IMAGES=1`` also copies it to docs/flower-tasks.png."""

from __future__ import annotations

import base64
import json
import os
import shutil
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
from backfleet.settings import BackfillSettings
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import (
    WorkerFleet,
    free_port,
    port_open,
    postgres_database,
    redis_db_url,
)

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
AUTH = "operator:s3cret-flower"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed (apt-get install chromium; `make test` installs it)")


def get(url: str, auth: str | None = AUTH) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.fixture
def env(milvus_uri: str) -> Iterator[dict[str, str]]:
    with postgres_database() as pg:
        settings = make_settings(
            pg_url=pg,
            redis_url=redis_db_url(15),
            milvus_uri=milvus_uri,
            backfill=BackfillSettings(range_size=250, batch_size=125, queue="bfflower"),
        )
        seed_source(make_engine(pg), 1000)
        upgrade(Database(pg).engine)
        yield settings_env(settings)


def test_flower_lists_finished_backfill_tasks(env: dict[str, str], tmp_path: Path) -> None:
    browser = chromium()
    port = free_port()
    flower = subprocess.Popen(
        [
            str(BIN / "celery"),
            "--broker",
            env["BACKFLEET_BROKER_URL"],
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic-auth={AUTH}",
            "--persistent=False",
            "--purge_offline_workers=60",
        ],
        stdout=open(tmp_path / "flower.log", "ab"),  # noqa: SIM115 - lives as long as Flower
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    fleet = WorkerFleet(env, tmp_path)
    try:
        wait_for(lambda: port_open(port), 60, "flower to listen")
        assert get(f"http://127.0.0.1:{port}/tasks", auth=None)[0] == 401  # basic auth is on
        fleet.start(1, concurrency=2)

        def run(*a):
            return subprocess.run(
                [str(BIN / "backfleet"), *a],
                env={**os.environ, **env},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )

        assert run("plan").returncode == 0
        assert run("start").returncode == 0

        def tasks() -> dict[str, dict[str, object]]:
            status, body = get(f"http://127.0.0.1:{port}/api/tasks")
            return json.loads(body) if status == 200 else {}

        def all_succeeded() -> bool:
            done = [
                t
                for t in tasks().values()
                if t.get("name") == "backfleet.backfill_range" and t.get("state") == "SUCCESS"
            ]
            return len(done) >= 4

        wait_for(
            all_succeeded,
            120,
            "flower to see 4 finished backfill tasks",
            on_timeout=lambda: (tmp_path / "flower.log").read_text()[-3000:] + fleet.logs(),
        )
        sample = next(iter(tasks().values()))
        assert "migration_id" in str(sample.get("kwargs")) and "range_id" in str(
            sample.get("kwargs")
        )

        shot = tmp_path / "flower-tasks.png"
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--window-size=1500,900",
            "--virtual-time-budget=8000",
        ]
        url = f"http://{AUTH}@127.0.0.1:{port}/tasks"
        dom = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=90)
        assert "backfleet.backfill_range" in dom.stdout, dom.stdout[-2000:] + dom.stderr[-2000:]
        assert "SUCCESS" in dom.stdout
        subprocess.run([*cmd, f"--screenshot={shot}", url], capture_output=True, timeout=90)
        assert shot.exists() and shot.stat().st_size > 10_000
        if os.environ.get("BACKFLEET_UPDATE_DOCS_IMAGES") == "1":
            DOCS_DIR.mkdir(exist_ok=True)
            shutil.copy(shot, DOCS_DIR / "flower-tasks.png")
    finally:
        fleet.stop()
        flower.terminate()
        try:
            flower.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flower.kill()
        time.sleep(0.2)
