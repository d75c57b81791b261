"""Poison documents are isolated by bisection and dead-lettered; the rest of the batch lands."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from backfleet.embedding.base import EmbedResult
from backfleet.embedding.local import HashingEmbedder
from backfleet.errors import InvalidEmbedding, ProviderRejected
from backfleet.source import Doc
from backfleet.throttle import NullThrottle
from workers.pipeline import embed_batch


class FlakyEmbedder:
    """Local vectors, but rejects inputs with POISON and answers NaN for inputs with NAN."""

    def __init__(self, *, broken: bool = False) -> None:
        self.inner = HashingEmbedder("hash-words", "1", 16)
        self.calls: list[int] = []
        self.broken = broken

    @property
    def identity(self) -> Any:
        return self.inner.identity

    def count_tokens(self, text: str) -> int:
        return 1

    def embed(self, texts: list[str]) -> EmbedResult:
        self.calls.append(len(texts))
        if self.broken:
            raise ProviderRejected("provider says no")
        if any("POISON" in t for t in texts):
            raise ProviderRejected("input rejected by provider")
        res = self.inner.embed(texts)
        vectors = res.vectors.copy()
        for i, t in enumerate(texts):
            if "NAN" in t:
                vectors[i, 0] = np.nan
        return EmbedResult(vectors=vectors, tokens=len(texts))


class Sink:
    def __init__(self) -> None:
        self.ids: list[object] = []

    def upsert(self, ids: list[object], vectors: Any, hashes: list[str], identity: Any) -> int:
        assert np.isfinite(vectors).all()
        self.ids.extend(ids)
        return len(ids)


def docs(texts: list[str | None]) -> list[Doc]:
    return [Doc(id=i + 1, text=t) for i, t in enumerate(texts)]


def test_poison_is_isolated_and_rest_embedded() -> None:
    texts: list[str | None] = [f"doc {i}" for i in range(16)]
    texts[5] = "a POISON pill"
    texts[11] = "NAN here"
    texts[3] = None
    texts[8] = "   "
    emb, sink = FlakyEmbedder(), Sink()
    res = embed_batch(docs(texts), emb, NullThrottle(), sink)  # type: ignore[arg-type]
    dead = {d.doc_id: d for d in res.dead}
    assert set(dead) == {"6", "12", "4", "9"}
    assert dead["6"].kind == "rejected" and "rejected" in dead["6"].reason
    assert dead["12"].kind == "rejected" and "non-finite" in dead["12"].reason
    assert dead["4"].kind == dead["9"].kind == "skipped"
    assert sorted(sink.ids) == [i + 1 for i in range(16) if str(i + 1) not in dead]  # type: ignore[type-var]
    assert res.embedded == 12 and res.skipped == 2 and res.docs == 16
    # bisection, not one call per document
    assert len(emb.calls) < 16


def test_a_provider_rejecting_everything_fails_the_range_not_the_documents() -> None:
    with pytest.raises(ProviderRejected):
        embed_batch(docs(["a", "b", "c", "d"]), FlakyEmbedder(broken=True), NullThrottle(), Sink())  # type: ignore[arg-type]


def test_all_empty_batch_is_skipped_without_calls() -> None:
    emb = FlakyEmbedder()
    res = embed_batch(docs([None, ""]), emb, NullThrottle(), Sink())  # type: ignore[arg-type]
    assert emb.calls == [] and res.skipped == 2 and res.embedded == 0


def test_transient_invalid_response_is_retried_for_a_single_document() -> None:
    class OnceBad(FlakyEmbedder):
        def embed(self, texts: list[str]) -> EmbedResult:
            self.calls.append(len(texts))
            if len(self.calls) == 1:
                raise InvalidEmbedding("provider returned 0 vectors for 1 inputs")
            return self.inner.embed(texts)

    sink = Sink()
    res = embed_batch(docs(["only one"]), OnceBad(), NullThrottle(), sink)  # type: ignore[arg-type]
    assert res.dead == [] and sink.ids == [1]
