"""Deterministic local embedders: feature hashing, no network, no model files.

``hash-words`` hashes word unigrams and bigrams; ``hash-ngrams`` hashes words and character
3-grams (more robust to typos and inflections). Both are seeded by name and version, so two
versions of the same name live in different coordinate systems, like real models do.

``zero-cost`` is for benchmarks: it costs (almost) nothing, so what a benchmark measures is the
fleet around the embedder. Each text picks a row of a fixed table of random unit vectors (seeded
by name and version) by the crc32 of its text: deterministic, and a few microseconds a batch.
"""

from __future__ import annotations

import itertools
import re
import zlib
from functools import cached_property

import numpy as np

from backfleet.embedding.base import EmbedResult, Matrix
from backfleet.embedding.identity import PROBE_TEXTS, ModelIdentity, fingerprint_vectors
from backfleet.errors import ConfigError

WORD_RE = re.compile(r"\w+", re.UNICODE)
ZERO_COST = "zero-cost"
KINDS = ("hash-words", "hash-ngrams", ZERO_COST)
#: Rows of the zero-cost model's vector table.
ZERO_COST_ROWS = 4096


class HashingEmbedder:
    """Feature-hashing embedder with a configurable dimension."""

    provider = "local"

    def __init__(self, name: str, version: str, dimension: int, metric: str = "COSINE") -> None:
        if name not in KINDS:
            raise ConfigError(
                f"unknown local model {name!r} (known: {', '.join(KINDS)})",
                hint="set models.<label>.name to hash-words, hash-ngrams or zero-cost",
            )
        if dimension < 2:
            raise ConfigError("a local model needs dimension >= 2", hint="models.<label>.dimension")
        self.name = name
        self.version = version
        self.dimension = dimension
        self.metric = metric
        # the model's name and version prefix every feature: a different version hashes every
        # feature independently (a crc32 start value alone only XORs a length-fixed pattern)
        self._prefix = f"{name}@{version}\x00".encode()
        self._seed = zlib.crc32(self._prefix)
        self._table: Matrix | None = None
        if name == ZERO_COST:
            rng = np.random.default_rng(self._seed)
            table = rng.standard_normal((ZERO_COST_ROWS, dimension)).astype(np.float32)
            table /= np.linalg.norm(table, axis=1, keepdims=True)
            self._table = table

    def _features(self, text: str) -> list[str]:
        words = WORD_RE.findall(text.lower())
        feats = list(words)
        if self.name == "hash-words":
            feats.extend(f"{a} {b}" for a, b in itertools.pairwise(words))
        else:
            for word in words:
                padded = f"<{word}>"
                feats.extend(padded[i : i + 3] for i in range(len(padded) - 2))
        return feats

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dimension, dtype=np.float32)
        seed = self._seed
        prefix = self._prefix
        dim = self.dimension
        for feat in self._features(text):
            h = zlib.crc32(prefix + feat.encode())
            vec[h % dim] += 1.0 if (h >> 31) & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            vec[seed % dim] = 1.0
            return vec
        vec /= norm
        return vec

    def embed(self, texts: list[str]) -> EmbedResult:
        if self._table is not None:
            prefix = self._prefix
            rows = [zlib.crc32(prefix + t.encode()) % ZERO_COST_ROWS for t in texts]
            return EmbedResult(
                vectors=self._table[rows], tokens=sum(self.count_tokens(t) for t in texts)
            )
        out: Matrix = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._vector(text)
        return EmbedResult(vectors=out, tokens=sum(self.count_tokens(t) for t in texts))

    def count_tokens(self, text: str) -> int:
        if self._table is not None:  # zero-cost: an estimate that costs nothing either
            return max(1, len(text) // 4)
        return max(1, len(WORD_RE.findall(text)))

    @cached_property
    def identity(self) -> ModelIdentity:
        probe = self.embed(list(PROBE_TEXTS)).vectors
        return ModelIdentity(
            provider=self.provider,
            name=self.name,
            version=self.version,
            dimension=self.dimension,
            metric=self.metric,
            fingerprint=fingerprint_vectors(probe.tolist()),
        )
