"""The real-model path as an operator runs it: the first build of an alias with a self-hosted,
keyless OpenAI-compatible model (the rehearsal provider over real HTTP, started with no key
required), real Postgres, Redis, Milvus and a real worker process."""

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
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import BackfillSettings
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url

pytestmark = pytest.mark.acceptance
BIN = Path(sys.executable).parent / "backfleet"
DOCS = 600


def run(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}  # truly keyless
    return subprocess.run(
        [str(BIN), *args],
        env={**base, "COLUMNS": "250", **env},
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
def provider() -> Iterator[RehearsalServer]:
    server = RehearsalServer(require_key=False).start()
    try:
        yield server
    finally:
        server.stop()


def self_hosted(url: str, **extra: object) -> dict[str, object]:
    """A sentence-transformer behind an OpenAI-compatible server (TEI, vLLM, Ollama)."""
    return {
        "provider": "openai",
        "name": "all-mpnet-base-v2",
        "version": "1",
        "dimension": 64,
        "send_dimensions": True,
        "base_url": url,
        **extra,
    }


@pytest.fixture
def env(pg_url: str, milvus_uri: str) -> dict[str, str]:
    s = make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(13),
        milvus_uri=milvus_uri,
        backfill=BackfillSettings(
            range_size=200, batch_size=50, lease_seconds=20, heartbeat_seconds=3, queue="bf_first"
        ),
    )
    seed_source(make_engine(pg_url), DOCS)
    out = settings_env(s)
    out["BACKFLEET_TARGET_MODEL"] = "self-hosted"
    out.pop("OPENAI_API_KEY", None)
    return out


def test_a_model_needing_a_key_without_one_is_one_clear_error(
    env: dict[str, str], tmp_path: Path, provider: RehearsalServer
) -> None:
    env = {**env, "BACKFLEET_MODELS": json.dumps({"self-hosted": self_hosted(provider.url)})}
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    plan = run(["plan"], env, tmp_path)
    assert plan.returncode == 2 and "Traceback" not in plan.stderr, plan.stderr
    assert "no API key for model 'all-mpnet-base-v2'" in plan.stderr
    assert "requires_api_key = false" in plan.stderr  # the hint names the explicit way out
    assert provider.stats()["requests"] == 0


def test_first_build_of_an_alias_with_a_keyless_self_hosted_model(
    env: dict[str, str], tmp_path: Path, provider: RehearsalServer
) -> None:
    models = {"self-hosted": self_hosted(provider.url, requires_api_key=False)}
    env = {**env, "BACKFLEET_MODELS": json.dumps(models)}
    alias = env["BACKFLEET_ALIAS"]
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0

    # plan on an empty alias: no live generation, the shadow is generation 1
    plan = run(["plan", "--json"], env, tmp_path)
    assert plan.returncode == 0, plan.stderr
    report = json.loads(plan.stdout)
    assert report["source_generation"] is None
    assert report["target_generation"] == f"{alias}__all_mpnet_base_v2_v1__g1"
    assert report["docs"] == DOCS and report["ranges"] == DOCS // 200
    # estimated from a few real (keyless) requests and the tokens they were billed
    assert report["probe_docs_per_second"] > 0 and report["est_binding"]
    assert report["est_tokens_method"].startswith("billed by the provider")
    human = run(["status"], env, tmp_path)
    assert "(none) →" in human.stdout, human.stdout

    assert run(["start"], env, tmp_path).returncode == 0
    fleet = WorkerFleet({k: v for k, v in env.items()}, tmp_path)
    fleet.env.pop("OPENAI_API_KEY", None)
    fleet.start(1, concurrency=2)
    try:

        def done() -> bool:
            st = json.loads(run(["status", "--json"], env, tmp_path).stdout)
            assert st["ranges"]["failed"] == 0, st["failed"]
            return bool(st["ranges"]["done"] == DOCS // 200)

        wait_for(done, 240, "the first build to finish", interval=1, on_timeout=fleet.logs)
    finally:
        fleet.stop()

    # every request came without a key, and none was refused
    stats = provider.stats()
    assert stats["unauthorized"] == 0 and stats["keyless"] == stats["requests"] > 0

    rec = run(["reconcile"], env, tmp_path)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    golden = tmp_path / "golden.jsonl"
    gen = run(["golden", "generate", "-n", "30", "--out", str(golden)], env, tmp_path)
    assert gen.returncode == 0, gen.stderr
    ev = run(["eval", "--golden", str(golden)], env, tmp_path)
    assert ev.returncode == 0 and "evaluation #1: GO" in ev.stdout, ev.stdout + ev.stderr

    # cutover points the (new) alias at the first generation; nothing to roll back to
    cut = run(["cutover", "--full"], env, tmp_path)
    assert cut.returncode == 0, cut.stdout + cut.stderr
    assert f"alias {alias} → {report['target_generation']} (was nothing)" in cut.stdout
    back = run(["rollback"], env, tmp_path)
    assert back.returncode == 2 and "first build of the alias" in back.stderr
    st = json.loads(run(["status", "--json"], env, tmp_path).stdout)
    assert st["state"] == "live" and st["docs_done"] == DOCS
