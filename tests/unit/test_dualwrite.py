"""Dual write's routing: which generations a write goes to in each migration state (no services:
SQLite checkpoints and source, an in-memory stand-in for Milvus)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backfleet.corpus import seed_source
from backfleet.db.models import Migration
from backfleet.db.schema import upgrade
from backfleet.db.session import Database, make_engine
from backfleet.dualwrite import DualWriter
from backfleet.embedding.factory import embedder_for
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import ConfigError, NotFound
from backfleet.settings import CatchupSettings, Settings, SourceSettings
from backfleet.source import Source


class FakeGeneration:
    def __init__(self, name: str, identity: ModelIdentity) -> None:
        self.name = name
        self.identity = identity
        self.rows: dict[Any, tuple[str, str]] = {}

    def require_model(self, identity: ModelIdentity) -> None:
        self.identity.require_same(identity, self.name)

    def upsert(self, ids: Any, vectors: Any, hashes: Any, identity: ModelIdentity) -> int:
        self.require_model(identity)
        assert vectors.shape == (len(ids), identity.dimension)
        for i, h in zip(ids, hashes, strict=True):
            self.rows[i] = (identity.tag, h)
        return len(ids)

    def delete(self, ids: Any) -> None:
        for i in ids:
            self.rows.pop(i, None)


class FakeStore:
    def __init__(self) -> None:
        self.gens: dict[str, FakeGeneration] = {}
        self.foreign: set[str] = set()
        self.alias: dict[str, str] = {}

    def resolve_alias(self, alias: str) -> str | None:
        return self.alias.get(alias)

    def is_generation(self, name: str) -> bool:
        return name not in self.foreign

    def has(self, name: str) -> bool:
        return name in self.gens or name in self.foreign

    def open_generation(self, name: str) -> FakeGeneration:
        return self.gens[name]


@pytest.fixture
def world(tmp_path: Path) -> Any:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        alias="docs",
        source=SourceSettings(url=f"sqlite:///{tmp_path / 'src.db'}", table="documents"),
    )
    engine = make_engine(settings.source.url)
    seed_source(engine, 20)
    db = Database(settings.database_url)
    upgrade(db.engine)
    store = FakeStore()
    v1 = embedder_for(settings, "local-v1").identity
    v2 = embedder_for(settings, "local-v2").identity
    store.gens["docs__v1__g1"] = FakeGeneration("docs__v1__g1", v1)
    store.gens["docs__v2__g2"] = FakeGeneration("docs__v2__g2", v2)
    writer = DualWriter(
        settings,
        db=db,
        store=store,  # type: ignore[arg-type]
        source=Source(engine, settings.source),
    )

    def migrate(state: str, source_generation: str | None = "docs__v1__g1") -> None:
        now = datetime.now(UTC)
        with db.session() as s:
            s.add(
                Migration(
                    alias="docs",
                    source_generation=source_generation,
                    target_generation="docs__v2__g2",
                    target_model="local-v2",
                    target_identity=v2.to_json(),
                    id_type="int",
                    state=state,
                    total_docs=20,
                    est_tokens=0,
                    settings_snapshot={},
                    created_at=now,
                    updated_at=now,
                )
            )

    return settings, store, writer, migrate, v1, v2


def test_no_migration_writes_the_live_generation_only(world: Any) -> None:
    _, store, writer, _, v1, _ = world
    store.alias["docs"] = "docs__v1__g1"
    res = writer.index_documents([1, 2])
    assert res.migration_id is None and list(res.generations) == ["docs__v1__g1"]
    assert store.gens["docs__v1__g1"].rows[1][0] == v1.tag
    assert store.gens["docs__v2__g2"].rows == {}


def test_no_alias_and_no_migration_is_a_clear_error(world: Any) -> None:
    _, _, writer, _, _, _ = world
    with pytest.raises(NotFound, match="'docs' points at no collection and has no running"):
        writer.index_documents([1])


def test_planned_first_build_writes_nothing(world: Any) -> None:
    _, _, writer, migrate, _, _ = world
    migrate("planned", source_generation=None)
    res = writer.index_documents([1])
    assert res.generations == {}


@pytest.mark.parametrize("state", ["backfilling", "catching_up", "canary", "paused"])
def test_running_migration_writes_both_with_their_own_models(world: Any, state: str) -> None:
    _, store, writer, migrate, v1, v2 = world
    store.alias["docs"] = "docs__v1__g1"
    migrate(state)
    res = writer.index_documents([3, "4", 999])  # 999 is not in the source
    assert {n: g.role for n, g in res.generations.items()} == {
        "docs__v1__g1": "live",
        "docs__v2__g2": "shadow",
    }
    assert {r[0] for r in store.gens["docs__v1__g1"].rows.values()} == {v1.tag}
    assert {r[0] for r in store.gens["docs__v2__g2"].rows.values()} == {v2.tag}
    assert set(store.gens["docs__v2__g2"].rows) == {3, 4}
    writer.delete_documents([3])
    assert set(store.gens["docs__v1__g1"].rows) == set(store.gens["docs__v2__g2"].rows) == {4}


def test_live_holdover_keeps_the_previous_generation_fresh(world: Any) -> None:
    _, store, writer, migrate, _, _ = world
    store.alias["docs"] = "docs__v2__g2"  # swapped
    migrate("live")
    res = writer.index_documents([5])
    assert {n: g.role for n, g in res.generations.items()} == {
        "docs__v2__g2": "live",
        "docs__v1__g1": "previous",
    }


def test_first_build_writes_the_shadow_only(world: Any) -> None:
    _, _, writer, migrate, _, _ = world
    migrate("backfilling", source_generation=None)
    res = writer.index_documents([6])
    assert list(res.generations) == ["docs__v2__g2"]


def test_foreign_live_is_refused_or_skipped_by_setting(world: Any) -> None:
    settings, store, writer, migrate, _, _ = world
    store.foreign.add("legacy")
    store.alias["docs"] = "legacy"
    migrate("backfilling", source_generation="legacy")
    with pytest.raises(ConfigError, match="legacy, which backfleet did not create"):
        writer.index_documents([1])
    settings.catchup = CatchupSettings(foreign_live="skip")
    res = writer.index_documents([1])
    assert list(res.generations) == ["docs__v2__g2"] and res.skipped == ["legacy"]


def test_live_generation_of_an_unconfigured_model_is_a_clear_error(world: Any) -> None:
    settings, store, writer, migrate, _, _ = world
    del settings.models["local-v1"]
    store.alias["docs"] = "docs__v1__g1"
    migrate("backfilling")
    with pytest.raises(ConfigError, match="no configured model matches generation docs__v1__g1"):
        writer.index_documents([1])
