"""Generations against a real Milvus: reads survive a restart that released the collection."""

from __future__ import annotations

import numpy as np
import pytest

from backfleet.embedding.local import HashingEmbedder
from backfleet.errors import ModelMismatch, VectorStoreUnavailable
from backfleet.vectorstore import VectorStore
from tests.support.services import MilvusServer

pytestmark = pytest.mark.integration


def test_reads_reload_a_released_collection_after_a_restart(
    milvus_server: MilvusServer | None, milvus_uri: str
) -> None:
    if milvus_server is None:
        pytest.skip("needs the Milvus server the tests own")
    emb = HashingEmbedder("hash-words", "1", 16)
    store = VectorStore(milvus_uri)
    gen = store.create_generation(
        "vs_restart__hash_words_v1__g1", "vs_restart", emb.identity, "int"
    )
    vectors = emb.embed([f"doc {i}" for i in range(50)]).vectors
    gen.upsert(list(range(50)), vectors, ["h"] * 50, emb.identity)
    assert gen.count() == 50
    milvus_server.outage(1)
    with pytest.raises(VectorStoreUnavailable):
        VectorStore("http://127.0.0.1:1")
    store = VectorStore(milvus_uri)
    gen = store.open_generation("vs_restart__hash_words_v1__g1")
    assert gen.count() == 50
    assert sum(len(rows) for rows in gen.scan(None, None)) == 50
    assert gen.search(np.asarray(vectors[:1]), 1)[0][0]["id"] == 0
    other = HashingEmbedder("hash-words", "2", 16)
    with pytest.raises(ModelMismatch):
        gen.upsert([1], other.embed(["x"]).vectors, ["h"], other.identity)
    store.drop("vs_restart__hash_words_v1__g1")


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_column_built_upserts_store_exactly_the_rows_and_replace_them(
    milvus_uri: str, id_type: str
) -> None:
    """The request built from columns (request.py) against the real server: every field
    arrives as sent, vectors bit for bit, and a second upsert of the same ids replaces them
    (milvus-server stores a second row for a plain insert of an existing key)."""
    from backfleet.vectorstore import generation as generation_module

    emb = HashingEmbedder("hash-words", "1", 8)
    store = VectorStore(milvus_uri)
    name = f"vs_columns_{id_type}__hash_words_v1__g1"
    if store.has(name):
        store.drop(name)
    gen = store.create_generation(name, f"vs_columns_{id_type}", emb.identity, id_type)
    assert gen._sender is not None
    ids: list[int | str] = (
        list(range(300)) if id_type == "int" else [f"doc-é/{i:04d}" for i in range(300)]
    )
    first = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    assert gen.upsert(ids, first, [f"h{i}" for i in range(300)], emb.identity) == 300
    second = np.random.default_rng(2).standard_normal((300, 8))  # float64: stored as float32
    assert gen.upsert(ids, second, [f"g{i}" for i in range(300)], emb.identity) == 300
    assert generation_module._columns["usable"], "the column path fell back to rows"
    assert gen.count() == 300
    got = {
        r["id"]: r
        for r in gen.get(ids, fields=("id", "vector", "model", "text_hash", "embedded_at"))
    }
    assert sorted(got) == sorted(ids)
    for i, ident in enumerate(ids):
        row = got[ident]
        assert np.array_equal(
            np.asarray(row["vector"], dtype=np.float32), second[i].astype(np.float32)
        )
        assert row["model"] == emb.identity.tag and row["text_hash"] == f"g{i}"
        assert row["embedded_at"] > 1_700_000_000_000
    store.drop(name)
