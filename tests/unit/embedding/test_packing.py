"""Request packing: every request within the limits, over-limit inputs truncated or rejected."""

from __future__ import annotations

import random

import pytest

from backfleet.embedding.packing import PackLimits, PackResult, pack
from backfleet.embedding.tokens import Cl100kCounter, EstimatingCounter, TokenCounter
from backfleet.errors import ConfigError
from backfleet.settings import ModelSettings

CL100K = Cl100kCounter()
WORDS = ["the", "vector", "index", "migration", "日本語", "café", "🧠", "42", "\n", "re-embed"]


def random_text(rng: random.Random, max_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words)))


def check_invariants(
    texts: list[str], result: PackResult, counter: TokenCounter, limits: PackLimits
) -> None:
    """Each input sent once, in order, or rejected; every request and input within limits."""
    sent = [i for request in result.requests for i in request]
    rejected = {i for i, _ in result.rejected}
    assert sent == sorted(sent)
    assert sorted(sent + list(rejected)) == list(range(len(texts)))
    assert len(result.texts) == len(texts)
    assert len(result.request_tokens) == len(result.requests)
    for request, tokens in zip(result.requests, result.request_tokens, strict=True):
        assert 0 < len(request) <= limits.max_inputs
        assert tokens == sum(counter.count(result.texts[i]) for i in request)
        assert tokens <= limits.max_request_tokens
    for i in sent:
        assert counter.count(result.texts[i]) <= limits.max_input_tokens
        assert result.input_tokens[i] == counter.count(result.texts[i])
        if i in result.truncated:
            assert texts[i].startswith(result.texts[i])
            assert result.texts[i] != texts[i]
        else:
            assert result.texts[i] == texts[i]


def test_defaults_are_openai_limits_and_settings_override_them() -> None:
    assert PackLimits() == PackLimits(2048, 300_000, 8192)
    model = ModelSettings(
        max_inputs_per_request=96, max_request_tokens=120_000, max_input_tokens=512
    )
    assert PackLimits.from_settings(model) == PackLimits(96, 120_000, 512)
    assert ModelSettings().oversize_policy == "truncate"


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ConfigError):
        PackLimits(max_inputs=0)
    with pytest.raises(ConfigError):
        PackLimits(max_request_tokens=1000, max_input_tokens=2000)


def test_empty_input_gives_no_requests() -> None:
    result = pack([], CL100K, PackLimits())
    assert result.requests == []
    assert result.texts == []
    assert result.request_tokens == []
    assert result.truncated == []
    assert result.rejected == []
    assert result.total_tokens == 0


def test_small_batch_is_one_request_with_exact_tokens() -> None:
    texts = ["hello world", "The quick brown fox jumps over the lazy dog."]
    result = pack(texts, CL100K, PackLimits())
    assert result.requests == [[0, 1]]
    assert result.request_tokens == [12]
    assert result.request_texts(0) == texts


def test_max_inputs_splits_requests_in_order() -> None:
    texts = [f"doc {i}" for i in range(10)]
    result = pack(texts, CL100K, PackLimits(max_inputs=4))
    assert result.requests == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_request_token_limit_splits_requests() -> None:
    texts = ["word" + " word" * 98] * 7  # 99 tokens each
    assert CL100K.count(texts[0]) == 99
    limits = PackLimits(max_request_tokens=300, max_input_tokens=200)
    result = pack(texts, CL100K, limits)
    assert result.requests == [[0, 1, 2], [3, 4, 5], [6]]
    assert result.request_tokens == [297, 297, 99]


def test_truncate_policy_cuts_to_exactly_the_input_limit() -> None:
    long = "migration " * 10_000  # 10,000 tokens
    texts = ["short one", long, "short two"]
    result = pack(texts, CL100K, PackLimits(), "truncate")
    assert result.truncated == [1]
    assert result.rejected == []
    assert result.requests == [[0, 1, 2]]
    assert CL100K.count(result.texts[1]) == 8192
    assert long.startswith(result.texts[1])
    assert result.texts[0] == "short one"
    check_invariants(texts, result, CL100K, PackLimits())


def test_reject_policy_lists_the_input_and_packs_the_rest() -> None:
    texts = ["first", "word" + " word" * 9000, "third", "fourth"]
    assert CL100K.count(texts[1]) == 9001
    result = pack(texts, CL100K, PackLimits(), "reject")
    assert result.rejected == [(1, "input has 9001 tokens, limit 8192")]
    assert result.truncated == []
    assert result.requests == [[0, 2, 3]]
    assert result.texts[1] == texts[1]
    assert result.input_tokens[1] == 9001


def test_every_input_rejected_gives_no_requests() -> None:
    texts = ["word " * 20, "word " * 30]
    result = pack(texts, CL100K, PackLimits(max_input_tokens=10), "reject")
    assert result.requests == []
    assert [i for i, _ in result.rejected] == [0, 1]


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        pack(["x"], CL100K, PackLimits(), "drop")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["truncate", "reject"])
def test_random_batches_respect_every_limit_exactly(policy: str) -> None:
    rng = random.Random(20240611 + len(policy))
    for _ in range(150):
        limits = PackLimits(
            max_inputs=rng.randint(1, 12),
            max_request_tokens=rng.randint(60, 400),
            max_input_tokens=rng.randint(1, 60),
        )
        texts = [random_text(rng, 80) for _ in range(rng.randint(0, 40))]
        result = pack(texts, CL100K, limits, policy)  # type: ignore[arg-type]
        check_invariants(texts, result, CL100K, limits)
        if policy == "reject":
            assert result.truncated == []
            for i, reason in result.rejected:
                assert CL100K.count(texts[i]) > limits.max_input_tokens
                assert reason == (
                    f"input has {CL100K.count(texts[i])} tokens, limit {limits.max_input_tokens}"
                )
        else:
            assert result.rejected == []


def test_random_batches_with_the_estimating_counter() -> None:
    rng = random.Random(7)
    for _ in range(100):
        counter = EstimatingCounter(chars_per_token=rng.uniform(0.6, 9.0), min_ratio=0.5)
        limits = PackLimits(
            max_inputs=rng.randint(1, 8),
            max_request_tokens=rng.randint(50, 500),
            max_input_tokens=rng.randint(1, 50),
        )
        texts = [random_text(rng, 60) for _ in range(rng.randint(0, 30))]
        check_invariants(texts, pack(texts, counter, limits), counter, limits)


def test_greedy_packing_uses_few_requests() -> None:
    """No request could have taken the next input: each split is forced by a limit."""
    rng = random.Random(11)
    limits = PackLimits(max_inputs=50, max_request_tokens=2000, max_input_tokens=300)
    texts = [random_text(rng, 200) for _ in range(400)]
    result = pack(texts, CL100K, limits)
    for request, tokens, following in zip(
        result.requests, result.request_tokens, result.requests[1:], strict=False
    ):
        next_tokens = CL100K.count(result.texts[following[0]])
        assert len(request) == limits.max_inputs or tokens + next_tokens > 2000
