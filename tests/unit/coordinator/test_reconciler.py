"""The reconciler's diff on a SQLite source and a fake generation that streams rows in random
order (the diff must not depend on Milvus ordering) and can hold a key twice."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backfleet.corpus import seed_source
from backfleet.db.session import make_engine
from backfleet.embedding.identity import ModelIdentity
from backfleet.embedding.local import HashingEmbedder
from backfleet.errors import ConfigError
from backfleet.settings import SourceSettings
from backfleet.source import Source, text_hash
from coordinator.reconciler import Reconciler, Repairer, cosine

N = 1200


class FakeGeneration:
    def __init__(self, identity: ModelIdentity) -> None:
        self.name = "fake__g1"
        self.identity = identity
        self.rows: dict[int, dict[str, Any]] = {}
        self.copies: dict[int, int] = {}
        self.rng = random.Random(3)
        #: a broken scan whose page filter became "every row" (issue 13: an id like `" or id != "`)
        self.every_row = False

    def put(self, ident: int, vector: Any, th: str, model: str | None = None) -> None:
        self.rows[ident] = {
            "id": ident,
            "vector": list(map(float, vector)),
            "text_hash": th,
            "model": model or self.identity.tag,
        }
        self.copies[ident] = 1

    def _ids(self, lo: Any, hi: Any) -> list[int]:
        return [i for i in self.rows if (lo is None or i >= lo) and (hi is None or i < hi)]

    def count(self, lo: Any = None, hi: Any = None) -> int:
        return sum(self.copies[i] for i in self._ids(lo, hi))

    def count_ids(self, ids: Sequence[Any]) -> int:
        return sum(self.copies.get(i, 0) for i in ids)

    def scan(
        self, lo: Any, hi: Any, fields: Sequence[str] = (), batch_size: int = 2000
    ) -> Iterator[list[dict[str, Any]]]:
        ids = self._ids(None, None) if self.every_row else self._ids(lo, hi)
        self.rng.shuffle(ids)
        for k in range(0, len(ids), 97):
            yield [dict(self.rows[i]) for i in ids[k : k + 97]]

    def get(self, ids: Sequence[Any], fields: Sequence[str]) -> list[dict[str, Any]]:
        return [dict(self.rows[i]) for i in ids if i in self.rows]

    def delete(self, ids: Sequence[Any]) -> None:
        for i in ids:
            self.rows.pop(i, None)
            self.copies.pop(i, None)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Source, FakeGeneration, HashingEmbedder]:
    engine = make_engine(f"sqlite:///{tmp_path / 'src.db'}")
    seed_source(engine, N)
    source = Source(engine, SourceSettings(url="sqlite://", table="documents"))
    emb = HashingEmbedder("hash-ngrams", "2", 64)
    gen = FakeGeneration(emb.identity)
    for batch in source.iter_batches(None, None, None, 500):
        vecs = emb.embed([d.text or "" for d in batch]).vectors
        for d, v in zip(batch, vecs, strict=True):
            gen.put(int(d.id), v, text_hash(d.text or ""))
    return source, gen, emb


RANGES = [(None, "400"), ("400", "900"), ("900", None)]


def totals(rec: Reconciler) -> dict[str, int]:
    out = dict.fromkeys(("missing", "extra", "duplicated", "stale", "wrong_model", "corrupted"), 0)
    for seq, (lo, hi) in enumerate(RANGES):
        r = rec.reconcile_range(seq, lo, hi)
        for k in out:
            out[k] += getattr(r, k)
    return out


@pytest.mark.parametrize("chunk", [37, 250, 5000])
def test_every_kind_of_damage_is_counted_at_any_chunk(
    setup: tuple[Source, FakeGeneration, HashingEmbedder], chunk: int
) -> None:
    source, gen, emb = setup
    rec = Reconciler(source, gen, emb, chunk=chunk, sample=N, seed=1)  # type: ignore[arg-type]
    assert totals(rec) == dict.fromkeys(totals(rec), 0)
    gen.delete([5, 399, 400, 401])  # missing, across a range boundary
    gen.put(5000, np.ones(64), "x")  # extra, after the last id
    gen.put(0, np.ones(64), "x")  # extra, before the first id
    gen.rows[10]["text_hash"] = "0" * 64  # stale
    gen.rows[11]["model"] = "other"  # wrong model
    gen.rows[12]["vector"] = list(np.ones(64) / 8.0)  # corrupted
    gen.copies[13] = 2  # duplicated
    gen.copies[899] = 3  # duplicated, last id of a range
    rec = Reconciler(source, gen, emb, chunk=chunk, sample=N, seed=1)  # type: ignore[arg-type]
    assert totals(rec) == {
        "missing": 4,
        "extra": 2,
        "duplicated": 2,
        "stale": 1,
        "wrong_model": 1,
        "corrupted": 1,
    }


def test_repair_deletes_extras_and_duplicates_and_reembeds_the_rest(
    setup: tuple[Source, FakeGeneration, HashingEmbedder],
) -> None:
    source, gen, emb = setup
    gen.delete([7])
    gen.put(9999, np.ones(64), "x")
    gen.rows[20]["text_hash"] = "0" * 64
    gen.copies[30] = 2
    sent: list[str] = []
    repairer = Repairer(gen, sent.extend, batch_size=2)  # type: ignore[arg-type]
    rec = Reconciler(source, gen, emb, chunk=100, sample=0, repairer=repairer)  # type: ignore[arg-type]
    totals(rec)
    assert sorted(sent, key=int) == ["7", "20", "30"]
    assert 9999 not in gen.rows and 30 not in gen.rows  # deleted, 30 is re-embedded
    assert repairer.deleted == 2 and repairer.enqueued == 3


def test_repair_deletes_nothing_when_a_scan_returns_every_row(
    setup: tuple[Source, FakeGeneration, HashingEmbedder],
) -> None:
    """A scan whose page filter became "every row" (issue 13) reports valid rows as extra:
    the scan and count(*) disagree, so the repair deletes nothing and says so."""
    source, gen, emb = setup
    gen.put(9999, np.ones(64), "x")
    gen.every_row = True
    sent: list[str] = []
    repairer = Repairer(gen, sent.extend, batch_size=50)  # type: ignore[arg-type]
    rec = Reconciler(source, gen, emb, chunk=100, sample=0, repairer=repairer)  # type: ignore[arg-type]
    found = totals(rec)
    assert found["extra"] > N  # reported, ...
    assert sorted(gen.rows) == [*range(1, N + 1), 9999]  # ... but nothing deleted
    assert repairer.deleted == 0 and repairer.refused == found["extra"]


def test_repair_deletes_only_extras_confirmed_by_exact_id(
    setup: tuple[Source, FakeGeneration, HashingEmbedder],
) -> None:
    source, gen, _emb = setup
    gen.put(9999, np.ones(64), "x")
    gen.copies[30] = 2
    repairer = Repairer(gen, lambda ids: None, batch_size=2)  # type: ignore[arg-type]
    # 5 is in the source, 123456 is not stored: neither is deleted
    assert repairer.delete_extra(source, [5, 9999, 123456]) == [9999]
    # 40 is stored once: not a duplicate
    assert repairer.delete_duplicates([30, 40]) == [30]
    assert 5 in gen.rows and 40 in gen.rows and 9999 not in gen.rows and 30 not in gen.rows
    assert repairer.deleted == 2 and repairer.refused == 3


def test_bad_options_name_the_option(setup: tuple[Source, FakeGeneration, HashingEmbedder]) -> None:
    source, gen, emb = setup
    with pytest.raises(ConfigError, match="--chunk"):
        Reconciler(source, gen, emb, chunk=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--sample"):
        Reconciler(source, gen, emb, sample=-1)  # type: ignore[arg-type]


def test_cosine() -> None:
    a = np.array([1.0, 0.0], dtype=np.float32)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, np.array([0.0, 1.0], dtype=np.float32)) == pytest.approx(0.0)
    assert cosine(np.zeros(2, dtype=np.float32), a) == 0.0


def test_text_ids_compare_bytewise_across_chunks(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'src.db'}")
    seed_source(engine, 300, id_type="str")
    source = Source(engine, SourceSettings(url="sqlite://", table="documents"))
    emb = HashingEmbedder("hash-words", "1", 32)
    gen = FakeGeneration(emb.identity)
    for batch in source.iter_batches(None, None, None, 100):
        for d in batch:
            gen.put(d.id, np.ones(32), text_hash(d.text or ""))  # type: ignore[arg-type]
    gen.delete(["doc-000000150"])
    gen.put("doc-000000150a", np.ones(32), "x")  # type: ignore[arg-type]  # between two ids
    gen.put("Doc-1", np.ones(32), "x")  # type: ignore[arg-type]  # sorts before "doc-" bytewise
    rec = Reconciler(source, gen, None, chunk=40, sample=0)  # type: ignore[arg-type]
    found = [
        rec.reconcile_range(0, None, "doc-000000200"),
        rec.reconcile_range(1, "doc-000000200", None),
    ]
    assert sum(r.missing for r in found) == 1
    assert sum(r.extra for r in found) == 2
    assert found[0].examples["extra"] == ["Doc-1", "doc-000000150a"]
