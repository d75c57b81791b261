"""Audit on a real Milvus: collections built by hand with pymilvus (not backfleet's), mixed on
purpose, and a backfleet generation with a foreign row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backfleet.embedding.factory import embedder_for
from backfleet.settings import Settings
from backfleet.source import text_hash
from backfleet.vectorstore import VectorStore
from backfleet.vectorstore.audit import audit_collection, effective_dimension

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "backfleet"
DIM = 64


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray[Any, Any]:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def store(milvus_uri: str) -> Iterator[VectorStore]:
    s = VectorStore(milvus_uri)
    made: list[str] = []
    s.made = made  # type: ignore[attr-defined]
    yield s
    for name in made:
        if s.has(name):
            s.drop(name)
    s.close()


def make_collection(store: VectorStore, *, model_field: str | None, dynamic: bool = False) -> str:
    from pymilvus import DataType

    client = store.client
    name = f"foreign_{uuid.uuid4().hex[:8]}"
    schema = client.create_schema(auto_id=False, enable_dynamic_field=dynamic)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    if model_field:
        schema.add_field(model_field, DataType.VARCHAR, max_length=128)
    schema.add_field("title", DataType.VARCHAR, max_length=128)
    index = client.prepare_index_params()
    index.add_index(field_name="embedding", index_type="FLAT", metric_type="COSINE")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    store.made.append(name)  # type: ignore[attr-defined]
    return name


def insert(store: VectorStore, name: str, start: int, vectors: Any, **fields: str) -> None:
    rows = [
        {"pk": start + i, "embedding": v.tolist(), "title": f"t{start + i}", **fields}
        for i, v in enumerate(vectors)
    ]
    store.client.insert(name, rows)


def cli(args: list[str], milvus_uri: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BACKFLEET_MILVUS_URI": milvus_uri}
    return subprocess.run(
        [str(BIN), *args], env=env, cwd=cwd, text=True, capture_output=True, timeout=120
    )


def test_audit_finds_a_mixed_collection(
    store: VectorStore, milvus_uri: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    name = make_collection(store, model_field="embedding_model")
    insert(store, name, 0, unit(rng, 300, DIM), embedding_model="ada-002")
    padded = np.zeros((200, DIM), dtype=np.float32)
    padded[:, :32] = unit(rng, 200, 32)  # a 32-dim model zero-padded into the 64-dim field
    insert(store, name, 1000, padded, embedding_model="e5-small")
    insert(store, name, 2000, 5.0 * unit(rng, 100, DIM), embedding_model="ada-002")

    report = audit_collection(store, name)
    assert report.mixed and report.rows == report.scanned == 600
    assert report.model_field == "embedding_model" and report.declared_model is None
    cohorts = {(c.model, c.dimension, c.norm): c.count for c in report.cohorts}
    assert cohorts == {
        ("ada-002", 64, "unit"): 300,
        ("e5-small", 32, "unit"): 200,
        ("ada-002", 64, "other"): 100,
    }
    other = next(c for c in report.cohorts if c.norm == "other")
    assert 4.99 < other.norm_min <= other.norm_max < 5.01
    assert len(report.reasons) == 3, report.reasons

    # sampled: model counts stay exact, vectors come from a sample
    sampled = audit_collection(store, name, sample=60, seed=3)
    assert sampled.sampled and sampled.vectors_examined == 60
    assert sampled.models == {"ada-002": 400, "e5-small": 200}
    assert sum(c.count for c in sampled.cohorts) == 60 and sampled.mixed

    # the CLI: a table or JSON, exit 1 when mixed
    proc = cli(["audit", name, "--json"], milvus_uri, tmp_path)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["mixed"] and len(data["cohorts"]) == 3
    proc = cli(["audit", name], milvus_uri, tmp_path)
    assert proc.returncode == 1 and "MIXED" in proc.stdout and "e5-small" in proc.stdout


def test_audit_one_cohort_and_unknown_models(
    store: VectorStore, milvus_uri: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(6)
    plain = make_collection(store, model_field=None)
    insert(store, plain, 0, unit(rng, 150, DIM))
    report = audit_collection(store, plain)
    assert not report.mixed and report.model_field is None
    assert [(c.model, c.dimension, c.norm, c.count) for c in report.cohorts] == [
        ("unknown", DIM, "unit", 150)
    ]
    proc = cli(["audit", plain], milvus_uri, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "one cohort" in proc.stdout

    # the model tag as a dynamic key
    dyn = make_collection(store, model_field=None, dynamic=True)
    insert(store, dyn, 0, unit(rng, 40, DIM), model="m-one")
    insert(store, dyn, 100, unit(rng, 10, DIM), model="m-two")
    report = audit_collection(store, dyn)
    assert report.mixed and report.models == {"m-one": 40, "m-two": 10}

    proc = cli(["audit", "no_such_collection"], milvus_uri, tmp_path)
    assert proc.returncode == 2 and "no_such_collection" in proc.stderr


def test_audit_a_generation_with_a_foreign_row(store: VectorStore, milvus_uri: str) -> None:
    settings = Settings(milvus_uri=milvus_uri)
    v2 = embedder_for(settings, "local-v2")
    name = f"audit_{uuid.uuid4().hex[:6]}__hash_ngrams_v2__g1"
    gen = store.create_generation(name, "audit", v2.identity, "int", "FLAT")
    store.made.append(name)  # type: ignore[attr-defined]
    texts = [f"document number {i} about invoices" for i in range(50)]
    gen.upsert(list(range(50)), v2.embed(texts).vectors, [text_hash(t) for t in texts], v2.identity)
    clean = audit_collection(store, name)
    assert not clean.mixed and clean.declared_model == v2.identity.tag
    # a row written behind backfleet's back, tagged as another model (same dimension)
    foreign = {
        "id": 99,
        "vector": v2.embed(["x"]).vectors[0].tolist(),
        "model": "other:m@1",
        "text_hash": text_hash("x"),
        "embedded_at": 0,
    }
    store.client.upsert(name, [foreign])
    mixed = audit_collection(store, name)
    assert mixed.mixed and mixed.models == {v2.identity.tag: 50, "other:m@1": 1}
    assert any("declared model" in r for r in mixed.reasons)


def test_effective_dimension_only_flags_long_zero_tails() -> None:
    v = np.ones(384, dtype=np.float32)
    assert effective_dimension(v) == 384
    v[380:] = 0  # a few trailing zeros are not padding
    assert effective_dimension(v) == 384
    v[256:] = 0
    assert effective_dimension(v) == 256
    assert effective_dimension(np.zeros(64, dtype=np.float32)) == 32
