"""Token counting: exact cl100k counts offline, the calibrated estimate, the model mapping."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backfleet.embedding.tokens import (
    Cl100kCounter,
    EstimatingCounter,
    TokenCounter,
    counter_for,
)

# Counts from tiktoken's cl100k_base (encode_ordinary); the first six are the published
# examples of tiktoken's README and OpenAI's cookbook.
KNOWN = [
    ("hello world", 2),
    ("The quick brown fox jumps over the lazy dog.", 10),
    ("tiktoken is great!", 6),
    ("antidisestablishmentarianism", 6),
    ("2 + 2 = 4", 7),
    ("お誕生日おめでとう", 9),
    ("Zürich café naïve", 6),
    ("Привет, мир!", 7),
    ("🧠👍🏽🇩🇪", 15),
    ("  \n\n\t ", 2),
    ("<|endoftext|>", 7),  # a special token's text counts as text, as the API bills it
    ("def f(x):\n    return x ** 2\n", 11),
    ("", 0),
]
LONG = " ".join(
    f"Section {i}: the migration re-embeds document {i * 7919 % 10007} of the corpus."
    for i in range(2000)
)
LONG_TOKENS = 36801


@pytest.fixture
def cl100k() -> Cl100kCounter:
    return Cl100kCounter()


@pytest.mark.parametrize(("text", "expected"), KNOWN)
def test_cl100k_counts_are_exact(cl100k: Cl100kCounter, text: str, expected: int) -> None:
    assert cl100k.count(text) == expected


def test_cl100k_counts_long_text_and_batches(cl100k: Cl100kCounter) -> None:
    assert len(LONG) == 132668
    assert cl100k.count(LONG) == LONG_TOKENS
    texts = [t for t, _ in KNOWN] + [LONG]
    expected = [n for _, n in KNOWN] + [LONG_TOKENS]
    assert cl100k.count_many(texts) == expected
    assert Cl100kCounter(threads=0).count_many(texts) == expected
    assert cl100k.count_many([]) == []


def test_cl100k_truncate_keeps_a_prefix_within_the_limit(cl100k: Cl100kCounter) -> None:
    rng = random.Random(3)
    pieces = ["word ", "日本語", "🧠👍🏽", "  \n", "1234567", "éé", "{x: 1}", "'re "]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        limit = rng.randint(0, 40)
        cut = cl100k.truncate(text, limit)
        assert text.startswith(cut)
        assert cl100k.count(cut) <= limit
        if cl100k.count(text) <= limit:
            assert cut == text
    cut = cl100k.truncate(LONG, 8192)  # plain text cuts at exactly the limit
    assert cl100k.count(cut) == 8192
    assert cl100k.truncate("hello world", 0) == ""
    with pytest.raises(ValueError):
        cl100k.truncate("hello", -1)


def test_counting_never_touches_the_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("token counting tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    counter = Cl100kCounter()
    assert counter.count("hello world") == 2
    assert counter.count(LONG) == LONG_TOKENS
    assert counter.count(counter.truncate(LONG, 100)) == 100
    assert list(tmp_path.iterdir()) == []  # no cache file read or written


def test_a_fresh_interpreter_counts_with_the_network_blocked(tmp_path: Path) -> None:
    """Import and first use in a new process, with sockets refused from the start."""
    script = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network blocked')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from backfleet.embedding.tokens import counter_for\n"
        "c = counter_for('openai', 'text-embedding-3-small')\n"
        "print(c.count('The quick brown fox jumps over the lazy dog.'))\n"
    )
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"


# --- the estimate -------------------------------------------------------------------------


def test_estimate_starts_at_four_characters_per_token() -> None:
    counter = EstimatingCounter()
    assert counter.count("") == 0
    assert counter.count("abcd") == 1
    assert counter.count("abcde") == 2
    assert counter.count_many(["abcd", "abcdefghi", ""]) == [1, 3, 0]


def test_estimate_calibrates_toward_the_billed_ratio() -> None:
    counter = EstimatingCounter()
    texts = ["x" * 300, "y" * 300]  # 600 characters billed 200 tokens: 3 per token
    for _ in range(40):
        counter.observe(texts, 200)
    assert counter.chars_per_token == pytest.approx(3.0, rel=1e-3)
    assert counter.observations == 40
    assert counter.count("z" * 300) == 100


def test_estimate_moves_a_bounded_step_and_ignores_empty_observations() -> None:
    counter = EstimatingCounter(alpha=0.2, min_ratio=1.0, max_ratio=8.0)
    counter.observe(["a" * 1000], 1)  # absurd: 1000 chars per token, clamped to 8
    assert counter.chars_per_token == pytest.approx(4.0 + 0.2 * (8.0 - 4.0))
    before = counter.chars_per_token
    counter.observe(["abc"], 0)
    counter.observe([""], 5)
    counter.observe([], 5)
    assert counter.chars_per_token == before
    for _ in range(200):
        counter.observe(["a"], 1000)  # 0.001 chars per token, clamped to 1
    assert counter.chars_per_token == pytest.approx(1.0)
    with pytest.raises(ValueError):
        EstimatingCounter(chars_per_token=20.0, max_ratio=8.0)
    with pytest.raises(ValueError):
        EstimatingCounter(alpha=0.0)


def test_estimate_truncate_stays_within_the_limit() -> None:
    rng = random.Random(5)
    for ratio in (0.3, 1.0, 2.7, 3.3333333, 4.0, 7.9):
        counter = EstimatingCounter(chars_per_token=ratio, min_ratio=0.1, max_ratio=10.0)
        for _ in range(200):
            text = "a" * rng.randint(0, 500)
            limit = rng.randint(0, 120)
            cut = counter.truncate(text, limit)
            assert text.startswith(cut)
            assert counter.count(cut) <= limit
            if counter.count(text) <= limit:
                assert cut == text


# --- which counter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]
)
def test_openai_embedding_models_count_exactly(name: str) -> None:
    counter = counter_for("openai", name)
    assert isinstance(counter, Cl100kCounter)
    assert isinstance(counter, TokenCounter)


@pytest.mark.parametrize(
    ("provider", "name"),
    [
        ("openai", "nomic-embed-text"),
        ("openai", "text-embedding-004"),
        ("local", "text-embedding-3-small"),
        ("local", "hash-words"),
    ],
)
def test_other_models_get_their_own_estimating_counter(provider: str, name: str) -> None:
    first = counter_for(provider, name)
    second = counter_for(provider, name)
    assert isinstance(first, EstimatingCounter)
    assert isinstance(first, TokenCounter)
    assert first is not second  # calibration is per embedder
