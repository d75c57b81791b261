"""Generation names: the model slug is short, does not repeat the model, and stays parseable."""

from __future__ import annotations

import pytest

from backfleet.embedding.identity import ModelIdentity
from backfleet.vectorstore import generation_name, parse_generation_name


def ident(name: str, version: str) -> ModelIdentity:
    return ModelIdentity("openai", name, version, 768, "COSINE", "f" * 64)


@pytest.mark.parametrize(
    ("name", "version", "slug"),
    [
        ("hash-ngrams", "2", "hash_ngrams_v2"),  # existing names are unchanged
        ("hash-words", "1", "hash_words_v1"),
        ("text-embedding-3-small", "2024-01", "text_embedding_3_small_v2024_01"),
        # the real-model migration: the version repeated the model name
        ("mpnet-base", "all-mpnet-base-v2", "all_mpnet_base_v2"),
        ("all-mpnet-base-v2", "v2", "all_mpnet_base_v2"),
        ("all-mpnet-base-v2", "all-mpnet-base-v2", "all_mpnet_base_v2"),
        ("sentence-transformers/all-MiniLM-L6-v2", "1", "all_minilm_l6_v2_v1"),
    ],
)
def test_slug_names_the_model_once(name: str, version: str, slug: str) -> None:
    assert ident(name, version).slug == slug


def test_long_slug_is_truncated_with_a_hash_and_stays_unique() -> None:
    a = ident("x" * 60 + "-alpha", "1")
    b = ident("x" * 60 + "-beta", "1")
    assert len(a.slug) <= 48 and len(b.slug) <= 48
    assert a.slug != b.slug
    assert a.slug == ident("x" * 60 + "-alpha", "1").slug  # deterministic


def test_generation_names_round_trip_new_and_existing() -> None:
    name = generation_name("docs", ident("mpnet-base", "all-mpnet-base-v2"), 2)
    assert name == "docs__all_mpnet_base_v2__g2"
    assert parse_generation_name(name) == ("docs", "all_mpnet_base_v2", 2)
    old = "docs__mpnet_base_vall_mpnet_base_v2__g2"  # built before: still parsed
    assert parse_generation_name(old) == ("docs", "mpnet_base_vall_mpnet_base_v2", 2)
    long = generation_name("docs", ident("y" * 90, "3"), 7)
    assert parse_generation_name(long) is not None


def test_a_number_in_the_name_is_not_taken_for_the_version() -> None:
    assert ident("text-embedding-3-small", "3").slug == "text_embedding_3_small_v3"
    assert ident("text-embedding-3-small", "4").slug == "text_embedding_3_small_v4"
