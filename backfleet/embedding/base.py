"""The Embedder protocol and response validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import InvalidEmbedding

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbedResult:
    """Vectors for a batch of texts, in input order, and the tokens the provider billed."""

    vectors: Matrix
    tokens: int
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of one model identity."""

    @property
    def identity(self) -> ModelIdentity: ...

    def embed(self, texts: list[str]) -> EmbedResult: ...

    def count_tokens(self, text: str) -> int: ...


def validate_vectors(vectors: Matrix, expected_count: int, dimension: int) -> None:
    """Refuse a response with the wrong count, the wrong dimension or non-finite values."""
    if vectors.ndim != 2 or vectors.shape[0] != expected_count:
        got = vectors.shape[0] if vectors.ndim >= 1 else 0
        raise InvalidEmbedding(f"provider returned {got} vectors for {expected_count} inputs")
    if vectors.shape[1] != dimension:
        raise InvalidEmbedding(
            f"provider returned vectors of dimension {vectors.shape[1]}, the model has {dimension}"
        )
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = [int(i) for i in np.flatnonzero(~finite)]
        raise InvalidEmbedding(
            f"provider returned non-finite values for {len(bad)} of {expected_count} inputs",
            bad_indexes=bad,
        )
