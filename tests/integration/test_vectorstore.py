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
