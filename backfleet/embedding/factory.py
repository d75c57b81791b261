"""Build an embedder from a model's settings."""

from __future__ import annotations

from backfleet.embedding.base import Embedder
from backfleet.embedding.local import HashingEmbedder
from backfleet.settings import ModelSettings, Settings


def build_embedder(model: ModelSettings, label: str | None = None) -> Embedder:
    """The embedder for a ``[models.<label>]`` table."""
    if model.provider == "local":
        return HashingEmbedder(model.name, model.version, model.dimension, model.metric)
    from backfleet.embedding.openai_client import OpenAIEmbedder

    return OpenAIEmbedder(model, label=label)


def embedder_for(settings: Settings, label: str) -> Embedder:
    """The embedder of the model labelled ``label`` in ``settings``."""
    return build_embedder(settings.model(label), label=label)
