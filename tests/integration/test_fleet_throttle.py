"""The fleet-wide throttle with real workers against the rehearsal provider (OpenAI-compatible).

Three `backfleet worker` processes embed through an in-process :class:`RehearsalServer` that
enforces RPM/TPM itself over a sliding window; its counters (``/admin/stats``) are the ground
truth for what the fleet sent. The rehearsal server announces its limits in
``x-ratelimit-limit-*`` headers, which the throttle reads as *per minute*, so the window is the
real 60 s wherever the server's limits are meant to bind (test 1). Tests 2-4 share one running
backfill (module fixture, in file order) whose server limits are far above the throttle's, so
the throttle alone sets the pace; test 4 lifts the limits and finishes that backfill.

The model is named ``rehearsal-embed`` rather than ``text-embedding-3-small``: for OpenAI's
cl100k model names the client counts tokens exactly with cl100k (``embedding/tokens.py``), but
the rehearsal server bills ``ceil(len / 4)`` whatever the name, ~1.45x more on this corpus, so
the throttle's TPM and the server's would disagree. For any other name the client's
estimating counter learns the server's billing ratio and both count the same tokens.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from backfleet.corpus import seed_source
from backfleet.db.models import Range, RangeState
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.embedding.factory import embedder_for
from backfleet.limits import throttle_key
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import ModelSettings, Settings, ThrottleSettings
from backfleet.source import Source, text_hash
from backfleet.throttle import FleetThrottle
from coordinator.dispatcher import start_migration
from coordinator.planner import plan_migration
from coordinator.status import migration_status
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import VENV_BIN, WorkerFleet, postgres_database, redis_db_url
from workers.app import create_app

pytestmark = pytest.mark.integration

REDIS_DB = 10
KEY_ENV = "REHEARSAL_KEY"
DIMENSION = 64
MODEL_NAME = "rehearsal-embed"  # not a cl100k name: see the module docstring
WORKERS = 3


@dataclass
class Rig:
    """One migration to the rehearsal model, its fleet, and handles to measure it."""

    settings: Settings
    server: RehearsalServer
    fleet: WorkerFleet
    db: Database
    source: Source
    migration_id: int
    ranges: int
    target_generation: str
    env: dict[str, str]
    throttle: FleetThrottle
    model_tag: str

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def accepted(self) -> int:
        return int(self.stats()["accepted"])

    def rate(self, seconds: float) -> tuple[float, float]:
        """Accepted requests/s and tokens/s at the server over the next ``seconds``."""
        before = self.stats()
        t0 = time.monotonic()
        time.sleep(seconds)
        after = self.stats()
        elapsed = time.monotonic() - t0
        return (
            (after["accepted"] - before["accepted"]) / elapsed,
            (after["tokens_accepted"] - before["tokens_accepted"]) / elapsed,
        )

    def status(self) -> Any:
        return migration_status(self.db, self.migration_id, self.settings.alias)

    def done(self) -> bool:
        st = self.status()
        assert st.ranges["failed"] == 0, st.failed
        return bool(st.ranges["done"] == self.ranges)

    def cli(self, *args: str) -> str:
        """``backfleet throttle …`` as an operator runs it: a process with the fleet's env."""
        proc = subprocess.run(
            [str(VENV_BIN / "backfleet"), "throttle", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout


def _rig(
    *,
    pg_url: str,
    milvus_uri: str,
    workdir: Path,
    server: RehearsalServer,
    docs: int,
    rpm: int,
    tpm: int,
    batch_size: int,
    range_size: int,
) -> Rig:
    model = ModelSettings(
        provider="openai",
        name=MODEL_NAME,
        version="1",
        dimension=DIMENSION,
        send_dimensions=True,
        base_url=server.url,
        api_key_env=KEY_ENV,
    )
    settings = make_settings(
        pg_url=pg_url,
        redis_url=redis_db_url(REDIS_DB),
        milvus_uri=milvus_uri,
        range_size=range_size,
        batch_size=batch_size,
        models={"rehearsal": model},
        target_model="rehearsal",
        throttle=ThrottleSettings(rpm=rpm, tpm=tpm),
    )
    settings.models["rehearsal"].resolve_api_key({KEY_ENV: "rehearsal-test-key"})
    engine = make_engine(pg_url)
    seed_source(engine, docs)
    source = Source(engine, settings.source)
    db = Database(settings.database_url)
    upgrade(db.engine)
    from backfleet.vectorstore import VectorStore

    store = VectorStore(milvus_uri)
    embedder = embedder_for(settings, "rehearsal")
    report = plan_migration(
        settings, db, store, source, embedder, model_label="rehearsal", actor="test"
    )
    env = {**settings_env(settings), KEY_ENV: "rehearsal-test-key"}
    throttle = FleetThrottle(
        redis.Redis.from_url(settings.redis_url), throttle_key(settings, "rehearsal")
    )
    throttle.ensure_limits(rpm, tpm)
    fleet = WorkerFleet(env, workdir)
    fleet.start(WORKERS, concurrency=1)
    app = create_app(settings)
    sent = start_migration(db, store, app, report.migration_id, actor="test", index_type="HNSW")
    assert sent == report.ranges
    store.close()
    return Rig(
        settings=settings,
        server=server,
        fleet=fleet,
        db=db,
        source=source,
        migration_id=report.migration_id,
        ranges=report.ranges,
        target_generation=report.target_generation,
        env=env,
        throttle=throttle,
        model_tag=embedder.identity.tag,
    )


def _assert_exactly_once(rig: Rig, milvus_uri: str) -> None:
    """Every source document is in the shadow once, from its current text, with the model tag."""
    from backfleet.vectorstore import VectorStore

    store = VectorStore(milvus_uri)
    try:
        shadow = store.open_generation(rig.target_generation)
        texts = {d.id: d.text for b in rig.source.iter_batches(None, None, None, 5000) for d in b}
        assert shadow.count() == len(texts)
        seen: set[int] = set()
        for rows in shadow.scan(None, None, fields=("id", "model", "text_hash")):
            for row in rows:
                assert row["id"] not in seen, f"id {row['id']} twice"
                seen.add(row["id"])
                assert row["model"] == rig.model_tag
                assert row["text_hash"] == text_hash(texts[row["id"]])
        assert seen == set(texts)
    finally:
        store.close()
    with rig.db.session() as session:
        states = set(
            session.execute(
                select(Range.state).where(Range.migration_id == rig.migration_id)
            ).scalars()
        )
    assert states == {RangeState.DONE}
    assert rig.status().docs_done == len(texts)


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray backfleet.toml reaches the workers or the CLI
    return tmp_path


# --- 1: the provider's own limits are never exceeded ----------------------------------------


def test_three_workers_stay_within_provider_limits(milvus_uri: str, chdir_tmp: Path) -> None:
    rpm, tpm = 300, 1_000_000  # requests bind: 8 docs x ~75 tokens = ~600 tokens a request
    # 2,400 docs in batches of 8 = 300 requests (+4 fingerprint probes): a bit over one 60 s
    # window of the limit, so the run covers the first-window burst and the window sliding on
    server = RehearsalServer(rpm=rpm, tpm=tpm, window_seconds=60.0, default_dimension=DIMENSION)
    with postgres_database() as pg_url, server:
        rig = _rig(
            pg_url=pg_url,
            milvus_uri=milvus_uri,
            workdir=chdir_tmp,
            server=server,
            docs=2400,
            rpm=rpm,
            tpm=tpm,
            batch_size=8,
            range_size=200,
        )
        try:
            started = time.monotonic()
            wait_for(rig.done, 150, "every range done", on_timeout=rig.fleet.logs)
            elapsed = time.monotonic() - started
            assert len(rig.fleet.alive()) == WORKERS, rig.fleet.logs()
            per_worker = [
                p.read_text(errors="replace").count("range_done")
                for p in sorted(chdir_tmp.glob("worker-*.log"))
            ]
        finally:
            rig.fleet.stop()
        stats = rig.stats()
        print(f"\nfleet within provider limits: {elapsed:.1f}s, stats {stats}")
        # every worker took part
        assert len(per_worker) == WORKERS and all(per_worker), per_worker
        assert stats["max_requests_in_window"] <= rpm
        assert stats["max_tokens_in_window"] <= tpm
        # 304 requests cannot fit in one window: the run spanned more than one, and the
        # provider's window never saw more than its limit (how close to the limit the fleet
        # ran, and how long it took, are figures: printed above, measured in bench/rate_limit.py;
        # that a fleet asking all the time gets exactly its rate is test_throttle_behaviour's)
        assert stats["requests"] > rpm
        assert stats["429s"] <= 0.02 * stats["requests"], stats
        _assert_exactly_once(rig, milvus_uri)


# --- 2-4: one running backfill, paced by the throttle alone ---------------------------------

BASE_RPM = 360  # 6 requests/s
BASE_TPM = 10_000_000


@pytest.fixture(scope="module")
def rig(milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("fleet-throttle")
    cwd = os.getcwd()
    os.chdir(workdir)
    # the server's limits are far above the throttle's: only the throttle sets the pace
    server = RehearsalServer(
        rpm=1_000_000, tpm=1_000_000_000, window_seconds=60.0, default_dimension=DIMENSION
    )
    try:
        with postgres_database() as pg_url, server:
            rig = _rig(
                pg_url=pg_url,
                milvus_uri=milvus_uri,
                workdir=workdir,
                server=server,
                docs=5600,
                rpm=BASE_RPM,
                tpm=BASE_TPM,
                batch_size=8,
                range_size=500,
            )
            try:
                wait_for(
                    lambda: rig.accepted() >= 20,
                    60,
                    "the fleet to start",
                    on_timeout=rig.fleet.logs,
                )
                yield rig
            finally:
                rig.fleet.stop()
    finally:
        os.chdir(cwd)


def _running(rig: Rig) -> None:
    assert not rig.done(), "the shared backfill finished early: tests 2-4 run in file order"
    assert len(rig.fleet.alive()) == WORKERS, rig.fleet.logs()


def test_injected_429_burst_cools_the_fleet_and_it_recovers(rig: Rig) -> None:
    _running(rig)
    wait_for(lambda: rig.throttle.limits().factor >= 1.0, 60, "full speed before the burst")
    before, _ = rig.rate(4.0)
    assert before == pytest.approx(BASE_RPM / 60, rel=0.2)

    # two 429s with Retry-After 0.4 s: each holds every worker (shared cool-down), and the
    # fleet's rate is cut by 30% (AIMD, at most once a second, so once or twice here)
    stats0 = rig.stats()
    t0 = time.monotonic()
    rig.server.set_faults(next={"429": 2}, retry_after_seconds=0.4)
    wait_for(
        lambda: rig.stats()["injected_429"] - stats0["injected_429"] >= 2,
        20,
        "the injected 429s to be served",
    )
    burst = rig.stats()
    burst_seconds = time.monotonic() - t0
    assert 0.45 <= rig.throttle.limits().factor <= 0.75
    # while the 429s were served the fleet all but stopped (not 6/s each worker on its own)
    during = burst["accepted"] - stats0["accepted"]
    assert during <= 0.5 * before * burst_seconds + 2, (during, burst_seconds)

    # the factor climbs back (+0.02/s fleet-wide): slower meanwhile, then full speed again
    wait_for(lambda: rig.throttle.limits().factor >= 1.0, 60, "the factor back at 1.0")
    recovering = rig.stats()
    recovery_seconds = time.monotonic() - t0 - burst_seconds
    slowed = (recovering["accepted"] - burst["accepted"]) / recovery_seconds
    assert slowed < 0.9 * before
    after, _ = rig.rate(4.0)
    print(
        f"\n429 burst: before {before:.2f}/s, {during} accepted in the {burst_seconds:.1f}s "
        f"burst, {slowed:.2f}/s over the {recovery_seconds:.1f}s recovery, after {after:.2f}/s"
    )
    assert after == pytest.approx(before, rel=0.15)
    assert rig.stats()["rate_limited"] == 0  # the provider's own limit was never hit


def test_rethrottle_applies_to_the_running_fleet(rig: Rig) -> None:
    _running(rig)
    base, _ = rig.rate(4.0)
    assert base == pytest.approx(BASE_RPM / 60, rel=0.2)

    out = rig.cli("--rpm", "120")  # 2 requests/s
    assert "120" in out
    time.sleep(1.5)  # the in-flight request and the old bucket drain
    cut, _ = rig.rate(6.0)
    assert cut == pytest.approx(2.0, rel=0.25), f"after --rpm 120: {cut:.2f}/s"

    rig.cli("--rpm", "720")  # 12 requests/s
    time.sleep(1.5)
    raised, _ = rig.rate(4.0)
    assert raised == pytest.approx(12.0, rel=0.2), f"after --rpm 720: {raised:.2f}/s"

    # tokens bind: 24,000 tokens/min = 400 tokens/s, under 1 request/s of ~600 tokens
    rig.cli("--tpm", "24000")
    time.sleep(2.5)
    req_rate, tok_rate = rig.rate(9.0)
    assert tok_rate == pytest.approx(400, rel=0.3), f"after --tpm 24000: {tok_rate:.0f} tok/s"
    assert req_rate < 1.5

    rig.throttle.set_limits(rpm=BASE_RPM, tpm=BASE_TPM)  # in-process, like the CLI does
    print(
        f"\nrethrottle: base {base:.2f}/s, --rpm 120 {cut:.2f}/s, --rpm 720 {raised:.2f}/s, "
        f"--tpm 24000 {tok_rate:.0f} tok/s ({req_rate:.2f}/s)"
    )
    assert rig.stats()["rate_limited"] == 0


def test_pause_holds_every_call_and_resume_finishes_exactly_once(rig: Rig, milvus_uri: str) -> None:
    _running(rig)
    docs_before = rig.status().docs_done
    out = rig.cli("--pause")
    assert "yes" in out
    time.sleep(1.5)  # a call granted just before the pause may still land
    held_from = rig.stats()
    docs_held = rig.status().docs_done
    time.sleep(5.0)
    held_to = rig.stats()
    assert held_to["requests"] == held_from["requests"], "a call went out while paused"
    assert rig.status().docs_done == docs_held
    assert docs_held > docs_before or docs_held == docs_before  # nothing went backwards
    assert not rig.done()
    assert len(rig.fleet.alive()) == WORKERS

    rig.cli("--resume")
    wait_for(lambda: rig.stats()["accepted"] > held_to["accepted"] + 5, 10, "calls after --resume")
    # finish the rest at full speed
    rig.throttle.set_limits(rpm=100_000, tpm=1_000_000_000)
    wait_for(rig.done, 120, "every range done", on_timeout=rig.fleet.logs)
    assert len(rig.fleet.alive()) == WORKERS, rig.fleet.logs()
    assert rig.stats()["rate_limited"] == 0
    _assert_exactly_once(rig, milvus_uri)
