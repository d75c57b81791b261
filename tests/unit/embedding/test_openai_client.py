"""The OpenAI embedder and the retry wrapper, against the rehearsal server over real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from backfleet.embedding.base import Embedder
from backfleet.embedding.openai_client import OpenAIEmbedder, estimate_tokens, parse_retry_after
from backfleet.embedding.retry import call_with_retries
from backfleet.errors import (
    ConfigError,
    InvalidEmbedding,
    ProviderRateLimited,
    ProviderRejected,
    ProviderRetryable,
    ProviderTimeout,
)
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import ModelSettings

KEY = "sk-test-TOPSECRET-0123456789abcdef"
DIM = 32


def settings(base_url: str, **overrides: object) -> ModelSettings:
    values: dict[str, object] = {
        "provider": "openai",
        "name": "text-embedding-3-small",
        "version": "2024-01",
        "dimension": DIM,
        "send_dimensions": True,
        "base_url": base_url,
        "timeout_seconds": 0.5,
        "api_key_env": "REHEARSAL_KEY",
    }
    values.update(overrides)
    model = ModelSettings.model_validate(values)
    model.resolve_api_key({"REHEARSAL_KEY": KEY})
    return model


@pytest.fixture
def server() -> Iterator[RehearsalServer]:
    with RehearsalServer(rpm=1000, tpm=1_000_000, window_seconds=1.0) as srv:
        srv.set_faults(retry_after_seconds=0.01, timeout_seconds=5)
        yield srv


@pytest.fixture
def embedder(server: RehearsalServer) -> OpenAIEmbedder:
    return OpenAIEmbedder(settings(server.url), label="small")


# --- happy path -------------------------------------------------------------------------


def test_embed_returns_vectors_tokens_and_headers(embedder: OpenAIEmbedder) -> None:
    texts = ["hello world", "the quick brown fox", "x"]
    result = embedder.embed(texts)
    assert isinstance(embedder, Embedder)
    assert result.vectors.dtype == np.float32
    assert result.vectors.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-5)
    assert result.tokens == sum(embedder.count_tokens(t) for t in texts)  # billed like OpenAI
    assert (
        result.headers["x-ratelimit-limit-requests"] == "60000"
    )  # 1000 per 1 s window, announced per minute
    assert result.headers["x-ratelimit-remaining-requests"] == "999"
    assert "x-ratelimit-remaining-tokens" in result.headers


def test_embed_is_deterministic_and_identity_is_cached(server: RehearsalServer) -> None:
    first = OpenAIEmbedder(settings(server.url))
    second = OpenAIEmbedder(settings(server.url))
    texts = ["alpha beta", "gamma"]
    np.testing.assert_array_equal(first.embed(texts).vectors, second.embed(texts).vectors)
    before = server.stats()["requests"]
    identity = first.identity
    assert first.identity is identity
    assert server.stats()["requests"] == before + 1
    assert identity == second.identity
    assert identity.provider == "openai" and identity.dimension == DIM
    other = OpenAIEmbedder(settings(server.url, name="text-embedding-3-large"))
    assert other.identity.fingerprint != identity.fingerprint


def test_vectors_are_ordered_by_index(embedder: OpenAIEmbedder) -> None:
    body = {
        "data": [
            {"index": 1, "embedding": [0.0] * (DIM - 1) + [1.0]},
            {"index": 0, "embedding": [1.0] + [0.0] * (DIM - 1)},
        ],
        "usage": {"prompt_tokens": 7},
    }
    vectors, tokens = embedder._parse(json.dumps(body).encode(), 2)
    assert vectors[0, 0] == 1.0 and vectors[1, -1] == 1.0
    assert tokens == 7


def test_empty_batch_makes_no_call(server: RehearsalServer, embedder: OpenAIEmbedder) -> None:
    result = embedder.embed([])
    assert result.vectors.shape == (0, DIM) and result.tokens == 0
    assert server.stats()["requests"] == 0


def test_too_many_inputs_is_a_config_error(server: RehearsalServer) -> None:
    embedder = OpenAIEmbedder(settings(server.url, max_inputs_per_request=2))
    with pytest.raises(ConfigError, match="max_inputs_per_request"):
        embedder.embed(["a", "b", "c"])


def test_count_tokens_estimate() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens("abcdefgh") == 2
    assert estimate_tokens("abcdefghi") == 3


# --- error conversion --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("500", ProviderRetryable),
        ("503", ProviderRetryable),
        ("429", ProviderRateLimited),
        ("timeout", ProviderTimeout),
        ("malformed", InvalidEmbedding),
        ("wrong_count", InvalidEmbedding),
        ("wrong_dimension", InvalidEmbedding),
        ("nan", InvalidEmbedding),
    ],
)
def test_each_fault_maps_to_its_error_type(
    server: RehearsalServer, embedder: OpenAIEmbedder, fault: str, error: type[Exception]
) -> None:
    server.set_faults(next={fault: 1})
    with pytest.raises(error) as info:
        embedder.embed(["one text", "another text"])
    assert type(info.value) is error
    assert server.url in str(info.value) and "text-embedding-3-small" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    # the next call is healthy again
    assert embedder.embed(["one text"]).vectors.shape == (1, DIM)


def test_nan_names_the_bad_index(server: RehearsalServer, embedder: OpenAIEmbedder) -> None:
    server.set_faults(next={"nan": 1})
    with pytest.raises(InvalidEmbedding) as info:
        embedder.embed(["a", "b"])
    assert info.value.bad_indexes == [0]


def test_poisoned_input_is_rejected(server: RehearsalServer, embedder: OpenAIEmbedder) -> None:
    server.set_faults(poison="POISON")
    with pytest.raises(ProviderRejected, match="400"):
        embedder.embed(["fine", "this is POISON"])


def test_wrong_path_is_rejected_with_a_hint(server: RehearsalServer) -> None:
    embedder = OpenAIEmbedder(settings(f"{server.base}/nowhere"), label="small")
    with pytest.raises(ProviderRejected) as info:
        embedder.embed(["x"])
    assert "404" in str(info.value) and "models.small.base_url" in str(info.value)


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    embedder = OpenAIEmbedder(settings(f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(ProviderRetryable, match="cannot reach"):
        embedder.embed(["x"])


def test_rate_limit_burst_gives_429_with_retry_after() -> None:
    with RehearsalServer(rpm=2, tpm=10_000, window_seconds=2.0) as srv:
        embedder = OpenAIEmbedder(settings(srv.url))
        embedder.embed(["a"])
        last = embedder.embed(["b"])
        assert last.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(ProviderRateLimited) as info:
            embedder.embed(["c"])
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 2.0
        assert srv.stats()["rate_limited"] == 1


# --- Retry-After --------------------------------------------------------------------------


def test_parse_retry_after_seconds_ms_and_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = format_datetime(now + timedelta(seconds=20), usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(20)
    past = format_datetime(now - timedelta(seconds=20), usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-4"}) is None
    assert parse_retry_after({"retry-after-ms": "nan"}) is None
    assert parse_retry_after({}) is None


# --- the retry wrapper ----------------------------------------------------------------


def test_retries_503_then_succeeds(server: RehearsalServer, embedder: OpenAIEmbedder) -> None:
    server.set_faults(next={"503": 2})
    with capture_logs() as logs:
        result = call_with_retries(
            lambda: embedder.embed(["x"]), max_attempts=5, max_wait=0.05, base_wait=0.001
        )
    assert result.vectors.shape == (1, DIM)
    assert server.stats()["requests"] == 3
    retries = [e for e in logs if e["event"] == "provider_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(0 <= e["wait"] <= 0.05 for e in retries)
    assert KEY not in repr(logs)


def test_gives_up_after_max_attempts(server: RehearsalServer, embedder: OpenAIEmbedder) -> None:
    server.set_faults(next={"503": 10})
    with pytest.raises(ProviderRetryable, match="503"):
        call_with_retries(
            lambda: embedder.embed(["x"]), max_attempts=3, max_wait=0.01, base_wait=0.001
        )
    assert server.stats()["requests"] == 3


def test_rejected_is_not_retried(server: RehearsalServer, embedder: OpenAIEmbedder) -> None:
    server.set_faults(poison="POISON")
    with pytest.raises(ProviderRejected):
        call_with_retries(lambda: embedder.embed(["POISON"]), max_attempts=5, base_wait=0.001)
    assert server.stats()["requests"] == 1


def test_invalid_embedding_is_not_retried(
    server: RehearsalServer, embedder: OpenAIEmbedder
) -> None:
    server.set_faults(next={"wrong_count": 1})
    with pytest.raises(InvalidEmbedding):
        call_with_retries(lambda: embedder.embed(["a", "b"]), max_attempts=5, base_wait=0.001)
    assert server.stats()["requests"] == 1


def test_injected_429_burst_is_retried(server: RehearsalServer, embedder: OpenAIEmbedder) -> None:
    server.set_faults(next={"429": 2}, retry_after_seconds=0.02)
    result = call_with_retries(
        lambda: embedder.embed(["x"]), max_attempts=4, max_wait=1.0, base_wait=0.001
    )
    assert result.vectors.shape == (1, DIM)
    assert server.stats()["injected_429"] == 2


def test_retry_after_is_honoured_and_capped() -> None:
    sleeps: list[float] = []
    advice = iter([0.7, 30.0])

    def flaky() -> str:
        retry_after = next(advice, None)
        if retry_after is not None:
            raise ProviderRateLimited("429", retry_after=retry_after)
        return "ok"

    result = call_with_retries(
        flaky, max_attempts=5, max_wait=5.0, base_wait=0.01, sleep=sleeps.append
    )
    assert result == "ok"
    assert sleeps[0] >= 0.7
    assert sleeps[1] == 5.0


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        call_with_retries(lambda: None, max_attempts=0)


# --- secrets ----------------------------------------------------------------------------


def test_missing_key_names_the_variable() -> None:
    model = ModelSettings(provider="openai", name="m", api_key_env="MY_EMBED_KEY")
    model.resolve_api_key({})
    with pytest.raises(ConfigError) as info:
        OpenAIEmbedder(model, label="prod")
    assert "MY_EMBED_KEY" in str(info.value) and "models.prod.api_key_env" in str(info.value)


def test_key_from_file_works(server: RehearsalServer, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    model = settings(server.url, api_key_file=key_file)
    assert OpenAIEmbedder(model).embed(["x"]).tokens == 1


def test_key_never_in_repr_or_messages(embedder: OpenAIEmbedder) -> None:
    assert KEY not in repr(embedder) and KEY not in str(embedder)
    assert KEY not in repr(vars(embedder))
    assert "127.0.0.1" in repr(embedder)
    redacted = embedder._redact(f"Incorrect API key provided: {KEY}. Also sk-abc1***wxyz.")
    assert KEY not in redacted and "sk-abc1" not in redacted
    assert "Incorrect API key provided" in redacted


def test_credentials_in_base_url_are_redacted(server: RehearsalServer) -> None:
    url = server.url.replace("http://", "http://user:hunter2@")
    embedder = OpenAIEmbedder(settings(url))
    assert "hunter2" not in repr(embedder)
