"""Dual write through the Celery tasks, run by real `backfleet worker` processes, into real
Milvus generations: each generation gets its own model's vectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backfleet.dualwrite import DualWriter
from backfleet.embedding.factory import embedder_for
from backfleet.errors import ConfigError
from backfleet.settings import CatchupSettings
from backfleet.source import text_hash
from tests.integration.test_catchup import Env, _env
from tests.support.fleet import wait_for
from tests.support.services import postgres_database
from workers.dual_write import send_delete_documents, send_index_documents

pytestmark = pytest.mark.integration


@pytest.fixture
def env(milvus_uri: str, tmp_path: Path) -> Iterator[Env]:
    with postgres_database() as pg:
        e = _env(milvus_uri, tmp_path, pg, 6)
        try:
            yield e
        finally:
            e.fleet.stop()
            e.db.dispose()


def rows(env: Env, name: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    gen = env.store.open_generation(name)
    return {r["id"]: r for r in gen.get(ids, ["id", "model", "text_hash"])}


def test_celery_dual_write_reaches_both_generations_with_their_own_models(env: Env) -> None:
    live = env.live_v1(1000)
    mid = env.plan_and_start()
    shadow = env.status(mid).target_generation
    v1 = embedder_for(env.settings, "local-v1").identity.tag
    v2 = embedder_for(env.settings, "local-v2").identity.tag
    env.fleet.start(1, concurrency=2)
    env.wait_backfilled(mid)
    # the application's write path: commit to the source, then queue the dual write
    env.update_doc(5, "an edited invoice about a refund")
    env.insert_doc(10_001, "a brand new parcel tracking note")
    send_index_documents(env.app, [5, 10_001])
    env.delete_doc(6)
    send_delete_documents(env.app, [6])

    def landed() -> bool:
        got_live, got_shadow = rows(env, live, [5, 6, 10_001]), rows(env, shadow, [5, 6, 10_001])
        want = {
            5: text_hash("an edited invoice about a refund"),
            10_001: text_hash("a brand new parcel tracking note"),
        }
        return (
            all(
                i in got and got[i]["text_hash"] == h and got[i]["model"] == tag
                for got, tag in ((got_live, v1), (got_shadow, v2))
                for i, h in want.items()
            )
            and 6 not in got_live
            and 6 not in got_shadow
        )

    wait_for(landed, 60, "dual write in both generations", on_timeout=env.fleet.logs)
    assert "index_documents" in env.fleet.logs()


def test_python_api_without_a_migration_writes_live_only(env: Env) -> None:
    live = env.live_v1(500)
    writer = DualWriter.from_settings(env.settings)
    try:
        env.update_doc(3, "password reset token")
        res = writer.index_documents([3])
        assert res.migration_id is None and list(res.generations) == [live]
        assert res.generations[live].upserted == 1
        got = rows(env, live, [3])[3]
        assert got["text_hash"] == text_hash("password reset token")
    finally:
        writer.close()


def test_foreign_live_collection_is_refused_unless_skipped(env: Env) -> None:
    # production serves a collection backfleet did not create
    client = env.store.client
    foreign = f"{env.settings.alias}_legacy"
    client.create_collection(foreign, dimension=8)
    env.store.point_alias(env.settings.alias, foreign)
    mid = env.plan_and_start()
    writer = DualWriter.from_settings(env.settings)
    try:
        with pytest.raises(ConfigError, match="which backfleet did not create"):
            writer.index_documents([1])
        env.settings.catchup = CatchupSettings(foreign_live="skip")
        res = writer.index_documents([1])
        assert res.skipped == [foreign]
        assert list(res.generations) == [env.status(mid).target_generation]
    finally:
        writer.close()
