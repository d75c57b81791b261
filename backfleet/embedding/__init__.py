"""Embedding models: the protocol, implementations, identities and fingerprints."""

from backfleet.embedding.base import Embedder, EmbedResult
from backfleet.embedding.identity import ModelIdentity

__all__ = ["EmbedResult", "Embedder", "ModelIdentity"]
