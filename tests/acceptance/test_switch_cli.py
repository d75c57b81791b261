"""`backfleet eval / golden / cutover / rollback / finalize` refusals: one line, exit 2,
nothing changed; eval's verdict in its exit code (GO 0, NO-GO 1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from backfleet.corpus import seed_source
from backfleet.db.session import make_engine
from tests.acceptance.test_cli import one_error_line, run
from tests.support.fleet import make_settings, settings_env, wait_for
from tests.support.services import WorkerFleet, postgres_database, redis_db_url

pytestmark = pytest.mark.acceptance


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def env(pg_url: str, milvus_uri: str) -> dict[str, str]:
    s = make_settings(
        pg_url=pg_url, redis_url=redis_db_url(2), milvus_uri=milvus_uri, range_size=500
    )
    seed_source(make_engine(pg_url), 1000)
    return settings_env(s)


def snapshot(pg_url: str) -> tuple[object, ...]:
    with make_engine(pg_url).connect() as conn:
        migrations = conn.execute(
            text("SELECT id, state, canary_percent, cutover_at FROM bf_migrations ORDER BY id")
        ).all()
        events = conn.execute(text("SELECT count(*) FROM bf_events")).scalar_one()
        evals = conn.execute(text("SELECT count(*) FROM bf_evaluations")).scalar_one()
    return tuple(migrations), events, evals


def test_switch_commands_refuse_bad_input(env: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    alias = env["BACKFLEET_ALIAS"]
    for args in (["cutover", "--percent", "5"], ["cutover", "--full"], ["rollback"]):
        msg = one_error_line(run(args, env, tmp_path))
        assert f"no migration for alias {alias!r}" in msg

    assert run(["plan"], env, tmp_path).returncode == 0
    before = snapshot(pg_url)

    golden = tmp_path / "g.jsonl"
    cases = [
        ('{"query": "a", "relevant": [1]}\n\n{"query": "b", "relevant": [2]', "line 3: bad JSON"),
        ('{"query": "a", "relevant": [1]}\n{"query": " ", "relevant": [2]}', "line 2: empty"),
        (
            '{"query": "a", "relevant": [1]}\n{"query": "b", "relevant": [999999]}',
            "line 2: id 999999 is not in the source",
        ),
    ]
    for content, expected in cases:
        golden.write_text(content + "\n")
        msg = one_error_line(run(["eval", "--golden", str(golden)], env, tmp_path))
        assert expected in msg and str(golden) in msg
    msg = one_error_line(run(["eval", "--golden", str(tmp_path / "nope.jsonl")], env, tmp_path))
    assert "cannot read golden file" in msg

    msg = one_error_line(run(["rollback"], env, tmp_path))
    assert "migration 1 is planned: nothing to roll back" in msg
    msg = one_error_line(run(["cutover", "--percent", "5"], env, tmp_path))
    assert "migration 1 is planned; canary 5% needs one of" in msg
    msg = one_error_line(run(["cutover"], env, tmp_path))
    assert "exactly one of --percent P and --full" in msg
    msg = one_error_line(run(["cutover", "--full", "--force"], env, tmp_path))
    assert "--force needs a reason" in msg
    msg = one_error_line(run(["finalize"], env, tmp_path))
    assert "only a live migration" in msg
    assert snapshot(pg_url) == before

    # a backfilling migration with open ranges cannot be switched, even forced
    with make_engine(pg_url).begin() as conn:
        conn.execute(text("UPDATE bf_migrations SET state = 'backfilling'"))
    before = snapshot(pg_url)
    msg = one_error_line(run(["cutover", "--full", "--force", "--reason", "x"], env, tmp_path))
    assert "backfilling with 2 ranges not done" in msg
    # all ranges done: the gates decide
    with make_engine(pg_url).begin() as conn:
        conn.execute(text("UPDATE bf_ranges SET state = 'done', finished_at = now()"))
    before = snapshot(pg_url)
    msg = one_error_line(run(["cutover", "--percent", "5"], env, tmp_path))
    assert "canary 5% of migration 1 refused: no reconcile has run" in msg
    assert "no evaluation has run" in msg
    assert snapshot(pg_url) == before

    # finalize inside the holdover
    with make_engine(pg_url).begin() as conn:
        conn.execute(text("UPDATE bf_migrations SET state = 'live', cutover_at = now()"))
    before = snapshot(pg_url)
    msg = one_error_line(run(["finalize"], env, tmp_path))
    assert "holdover until" in msg and "cutover.holdover_hours" in msg
    assert snapshot(pg_url) == before


def test_golden_generate_says_it_is_weaker(env: dict[str, str], tmp_path: Path) -> None:
    out = run(["golden", "generate", "--out", "g.jsonl", "--queries", "20"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "pseudo-queries" in out.stdout and "weaker" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(r["pseudo"] and len(r["relevant"]) == 1 for r in rows)
    assert len({r["relevant"][0] for r in rows}) == 20  # spread over the corpus
    msg = one_error_line(run(["golden", "generate", "--out", "g.jsonl"], env, tmp_path))
    assert "already exists" in msg


def test_eval_exit_code_is_its_verdict(env: dict[str, str], tmp_path: Path) -> None:
    """NO-GO exits 1 (like reconcile when not clean), GO exits 0, errors stay 2."""
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    assert run(["plan"], env, tmp_path).returncode == 0
    assert run(["start"], env, tmp_path).returncode == 0
    fleet = WorkerFleet(env, tmp_path)
    fleet.start(1, concurrency=2)
    try:

        def done() -> bool:
            st = json.loads(run(["status", "--json"], env, tmp_path).stdout)
            return bool(st["ranges"]["done"] == 2)

        wait_for(done, 180, "the backfill to finish", interval=1, on_timeout=fleet.logs)
    finally:
        fleet.stop()

    # 5 queries: below cutover.min_queries (20), so NO-GO
    few = tmp_path / "few.jsonl"
    out = run(["golden", "generate", "--out", str(few), "--queries", "5"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    no_go = run(["eval", "--golden", str(few)], env, tmp_path)
    assert no_go.returncode == 1, (no_go.stdout, no_go.stderr)
    assert "NO-GO" in no_go.stdout and "cutover.min_queries" in no_go.stdout
    as_json = run(["eval", "--golden", str(few), "--json"], env, tmp_path)
    assert as_json.returncode == 1, as_json.stderr
    assert json.loads(as_json.stdout)["verdict"] == "NO-GO"

    enough = tmp_path / "enough.jsonl"
    out = run(["golden", "generate", "--out", str(enough), "--queries", "30"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    go = run(["eval", "--golden", str(enough), "--json"], env, tmp_path)
    assert go.returncode == 0, (go.stdout, go.stderr)
    assert json.loads(go.stdout)["verdict"] == "GO"
