"""Keyless models are explicit, and never for the official OpenAI endpoint."""

from __future__ import annotations

import json

import pytest

from backfleet.embedding.openai_client import OpenAIEmbedder
from backfleet.errors import ConfigError
from backfleet.settings import load_settings


def models_env(**model: object) -> dict[str, str]:
    base = {"provider": "openai", "name": "bge-small", "dimension": 8}
    return {"BACKFLEET_MODELS": json.dumps({"m": {**base, **model}})}


def test_keyless_needs_a_base_url() -> None:
    with pytest.raises(ConfigError, match="requires_api_key = false needs a base_url"):
        load_settings(environ=models_env(requires_api_key=False))


def test_keyless_reads_no_key_and_builds_an_embedder() -> None:
    env = {**models_env(requires_api_key=False, base_url="http://127.0.0.1:9/v1")}
    env["OPENAI_API_KEY"] = "sk-not-for-this-model"
    model = load_settings(environ=env).model("m")
    assert model.api_key is None  # not even read
    OpenAIEmbedder(model, label="m")


def test_a_key_is_still_required_by_default() -> None:
    model = load_settings(environ=models_env(base_url="http://127.0.0.1:9/v1")).model("m")
    with pytest.raises(ConfigError, match="no API key") as info:
        OpenAIEmbedder(model, label="m")
    assert "models.m.requires_api_key = false" in str(info.value.hint)
