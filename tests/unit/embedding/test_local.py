"""Local embedders and model identities."""

from __future__ import annotations

import numpy as np
import pytest

from backfleet.embedding.base import validate_vectors
from backfleet.embedding.identity import ModelIdentity, fingerprint_vectors
from backfleet.embedding.local import HashingEmbedder
from backfleet.errors import ConfigError, InvalidEmbedding, ModelMismatch


def test_deterministic_and_normalized() -> None:
    a = HashingEmbedder("hash-ngrams", "2", 128)
    b = HashingEmbedder("hash-ngrams", "2", 128)
    va, vb = a.embed(["hello world", "café"]).vectors, b.embed(["hello world", "café"]).vectors
    assert va.dtype == np.float32 and va.shape == (2, 128)
    assert np.array_equal(va, vb)
    assert np.allclose(np.linalg.norm(va, axis=1), 1.0, atol=1e-5)


def test_versions_are_different_coordinate_systems() -> None:
    v1 = HashingEmbedder("hash-ngrams", "1", 64).embed(["text", "invoice payment refund"]).vectors
    v2 = HashingEmbedder("hash-ngrams", "2", 64).embed(["text", "invoice payment refund"]).vectors
    cos = (v1 * v2).sum(axis=1)
    assert (np.abs(cos) < 0.9).all()


def test_similar_texts_are_close() -> None:
    e = HashingEmbedder("hash-ngrams", "2", 384)
    v = e.embed(
        ["refund my card payment", "refunds for card payments", "garden compost soil"]
    ).vectors
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])


def test_fingerprint_identity_and_mismatch() -> None:
    e = HashingEmbedder("hash-words", "1", 32)
    ident = e.identity
    assert ident == HashingEmbedder("hash-words", "1", 32).identity
    assert ident != HashingEmbedder("hash-words", "1", 33).identity
    assert ModelIdentity.from_json(ident.to_json()) == ident
    assert ident.tag.startswith("local:hash-words@1/32#")
    other = HashingEmbedder("hash-words", "9", 32).identity
    with pytest.raises(ModelMismatch, match="version: '1' != '9'"):
        ident.require_same(other, "generation g1")


def test_fingerprint_stable_under_float_noise() -> None:
    rows = [[0.123456, 0.5], [1.0, -0.25]]
    noisy = [[0.1234561, 0.50000001], [1.0, -0.2500001]]
    assert fingerprint_vectors(rows) == fingerprint_vectors(noisy)
    assert fingerprint_vectors(rows) != fingerprint_vectors([[0.1236, 0.5], [1.0, -0.25]])


def test_unknown_local_model() -> None:
    with pytest.raises(ConfigError, match="unknown local model"):
        HashingEmbedder("bert", "1", 8)


def test_validate_vectors() -> None:
    good = np.ones((3, 4), dtype=np.float32)
    validate_vectors(good, 3, 4)
    with pytest.raises(InvalidEmbedding, match="2 vectors for 3 inputs"):
        validate_vectors(good[:2], 3, 4)
    with pytest.raises(InvalidEmbedding, match="dimension 4, the model has 8"):
        validate_vectors(good, 3, 8)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidEmbedding) as exc:
        validate_vectors(bad, 3, 4)
    assert exc.value.bad_indexes == [1]


def test_zero_cost_kind_is_deterministic_unit_and_versioned() -> None:
    from backfleet.embedding.local import ZERO_COST

    a = HashingEmbedder(ZERO_COST, "1", 64)
    again = HashingEmbedder(ZERO_COST, "1", 64)
    texts = ["alpha", "beta", "alpha", ""]
    res = a.embed(texts)
    assert res.vectors.shape == (4, 64)
    assert res.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(res.vectors[0], res.vectors[2])  # same text, same vector
    assert not np.allclose(res.vectors[0], res.vectors[1])
    np.testing.assert_array_equal(res.vectors, again.embed(texts).vectors)
    assert res.tokens == sum(a.count_tokens(t) for t in texts) >= len(texts)
    assert a.identity == again.identity
    assert a.identity.fingerprint != HashingEmbedder(ZERO_COST, "2", 64).identity.fingerprint
    assert a.identity.fingerprint != HashingEmbedder("hash-words", "1", 64).identity.fingerprint
