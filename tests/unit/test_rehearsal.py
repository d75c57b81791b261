"""The rehearsal provider: window counting, faults, admin endpoints, over real HTTP."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from backfleet.rehearsal import (
    DEFAULT_DIMENSION,
    BadRequest,
    Faults,
    RehearsalServer,
    SlidingWindow,
    count_tokens,
    format_reset,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def call(
    url: str, body: object | None = None, *, auth: str | None = "Bearer test", method: str = "POST"
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method if body is not None else "GET")
    if auth is not None:
        request.add_header("Authorization", auth)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(raw)


@pytest.fixture
def server() -> Iterator[RehearsalServer]:
    with RehearsalServer(rpm=3, tpm=100, window_seconds=1.0) as srv:
        yield srv


# --- the window, with a fake clock ------------------------------------------------------


def test_window_admits_up_to_rpm_then_says_when_a_slot_frees() -> None:
    clock = FakeClock()
    window = SlidingWindow(rpm=3, tpm=1000, window_seconds=60, clock=clock)
    for _ in range(3):
        assert window.check(1).ok
        window.admit(1)
        clock.now += 10
    decision = window.check(1)
    assert not decision.ok and decision.reason == "requests"
    # the first request (t=1000) leaves the window at t=1060; now is 1030
    assert decision.retry_after == pytest.approx(30)
    clock.now = 1060.0
    assert window.check(1).ok
    assert window.max_requests == 3


def test_window_counts_tokens_and_frees_the_oldest_first() -> None:
    clock = FakeClock()
    window = SlidingWindow(rpm=100, tpm=100, window_seconds=60, clock=clock)
    window.admit(60)
    clock.now += 5
    window.admit(30)
    clock.now += 5
    decision = window.check(20)
    assert not decision.ok and decision.reason == "tokens"
    assert decision.retry_after == pytest.approx(50)  # the 60-token request leaves at +60
    assert window.check(10).ok
    requests, tokens, reset = window.usage()
    assert (requests, tokens) == (2, 90)
    assert reset == pytest.approx(55)
    assert window.max_tokens == 90


def test_window_headers_report_limits_and_remaining() -> None:
    clock = FakeClock()
    window = SlidingWindow(rpm=10, tpm=500, window_seconds=60, clock=clock)
    window.admit(120)
    headers = window.headers()
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-remaining-tokens"] == "380"
    assert headers["x-ratelimit-reset-tokens"] == "1m0s"


def test_format_reset_like_openai() -> None:
    assert format_reset(0) == "0s"
    assert format_reset(0.0201) == "21ms"
    assert format_reset(1.5) == "1.5s"
    assert format_reset(360) == "6m0s"


def test_count_tokens_is_a_quarter_of_the_characters_rounded_up() -> None:
    assert count_tokens("a") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2


# --- faults ---------------------------------------------------------------------------


def test_faults_next_counts_come_first_then_probabilities() -> None:
    faults = Faults()
    faults.update({"next": {"503": 2}, "probability": {"500": 1.0}})
    rng = random.Random(0)
    assert [faults.draw(rng) for _ in range(3)] == ["503", "503", "500"]
    faults.update({"clear": True})
    assert faults.draw(rng) is None


def test_faults_refuse_unknown_kinds_and_keep_the_old_config() -> None:
    faults = Faults()
    faults.update({"latency_ms": 5})
    with pytest.raises(BadRequest):
        faults.update({"latency_ms": 7, "next": {"418": 1}})
    with pytest.raises(BadRequest):
        faults.update({"latency_ms": -1})
    with pytest.raises(BadRequest):
        faults.update({"bogus": 1})
    assert faults.latency_ms == 5


# --- HTTP ------------------------------------------------------------------------------


def test_embeddings_response_is_openai_shaped(server: RehearsalServer) -> None:
    status, headers, body = call(
        f"{server.url}/embeddings", {"model": "m1", "input": ["hello", "world peace"]}
    )
    assert status == 200
    assert body["object"] == "list" and body["model"] == "m1"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    assert len(body["data"][0]["embedding"]) == DEFAULT_DIMENSION
    assert body["usage"] == {"prompt_tokens": 2 + 3, "total_tokens": 5}
    assert (
        headers["x-ratelimit-limit-requests"] == "180"
    )  # 3 per 1 s window, announced per minute like OpenAI
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-remaining-tokens"] == str(100 - 5)


def test_dimensions_known_models_string_input_and_base64(server: RehearsalServer) -> None:
    url = f"{server.url}/embeddings"
    _, _, large = call(url, {"model": "text-embedding-3-large", "input": "x"})
    assert len(large["data"][0]["embedding"]) == 3072
    _, _, floats = call(url, {"model": "m", "input": "same text", "dimensions": 8})
    _, _, b64 = call(
        url, {"model": "m", "input": "same text", "dimensions": 8, "encoding_format": "base64"}
    )
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], rtol=1e-6)


def test_vectors_are_deterministic_per_model_name(server: RehearsalServer) -> None:
    url = f"{server.url}/embeddings"
    text = "invoices are payable within thirty days"

    def vector(model: str) -> list[float]:
        body = call(url, {"model": model, "input": text, "dimensions": 64})[2]
        return list(body["data"][0]["embedding"])

    one, two, other = vector("model-a"), vector("model-a"), vector("model-b")
    assert one == two
    assert one != other


def test_requests_need_a_bearer_token(server: RehearsalServer) -> None:
    status, _, body = call(f"{server.url}/embeddings", {"model": "m", "input": "x"}, auth=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, _, _ = call(f"{server.url}/embeddings", {"model": "m", "input": "x"}, auth="Bearer ")
    assert status == 401
    assert server.stats()["unauthorized"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"input": "x"},
        {"model": "m", "input": []},
        {"model": "m", "input": [""]},
        {"model": "m", "input": [[1, 2]]},
        {"model": "m", "input": "x", "dimensions": 0},
        {"model": "m", "input": "x", "encoding_format": "int8"},
        {"model": "m", "input": "x" * 404},  # 101 tokens: more than the whole TPM
    ],
)
def test_invalid_requests_get_400(server: RehearsalServer, body: dict[str, Any]) -> None:
    status, _, answer = call(f"{server.url}/embeddings", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert server.stats()["accepted"] == 0


def test_burst_beyond_rpm_gets_429_with_headers_and_stats(server: RehearsalServer) -> None:
    url = f"{server.url}/embeddings"
    statuses = []
    for _ in range(5):
        status, headers, _ = call(url, {"model": "m", "input": "abcd"})
        statuses.append(status)
    assert statuses == [200, 200, 200, 429, 429]
    assert int(headers["retry-after"]) >= 1
    assert 0 < int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    stats = server.stats()
    assert stats["requests"] == 5
    assert stats["accepted"] == 3
    assert stats["429s"] == stats["rate_limited"] == 2
    assert stats["tokens_accepted"] == 3
    assert stats["max_requests_in_window"] == 3
    time.sleep(1.05)  # the window slides
    assert call(url, {"model": "m", "input": "abcd"})[0] == 200


def test_tpm_is_enforced(server: RehearsalServer) -> None:
    url = f"{server.url}/embeddings"
    assert call(url, {"model": "m", "input": "x" * 320})[0] == 200  # 80 tokens
    status, _, body = call(url, {"model": "m", "input": "x" * 100})  # 25 more: over 100
    assert status == 429 and "tokens" in body["error"]["message"]
    assert server.stats()["max_tokens_in_window"] == 80


def test_admin_faults_stats_limits_and_reset_over_http(server: RehearsalServer) -> None:
    status, _, faults = call(f"{server.base}/admin/faults", {"next": {"503": 1}, "poison": "BAD"})
    assert status == 200 and faults["next"] == {"503": 1} and faults["poison"] == ["BAD"]
    assert call(f"{server.base}/admin/faults", {"next": {"nope": 1}})[0] == 400
    url = f"{server.url}/embeddings"
    assert call(url, {"model": "m", "input": ["ok", "this is BAD"]})[0] == 400
    assert call(url, {"model": "m", "input": "ok"})[0] == 503
    assert call(url, {"model": "m", "input": "ok"})[0] == 200
    _, _, stats = call(f"{server.base}/admin/stats", method="GET")
    assert stats["poisoned"] == 1 and stats["faults"] == {"503": 1} and stats["accepted"] == 2
    assert call(f"{server.base}/admin/limits", {"rpm": 50})[2] == {"rpm": 50, "tpm": 100}
    assert call(f"{server.base}/admin/reset", {})[0] == 200
    _, _, stats = call(f"{server.base}/admin/stats", method="GET")
    assert stats["requests"] == 0 and stats["requests_in_window"] == 0 and stats["rpm"] == 50
    assert call(f"{server.base}/nowhere", method="GET")[0] == 404
    assert call(f"{server.base}/health", method="GET")[2] == {"ok": True}


def test_injected_429_burst_is_not_counted_in_the_window(server: RehearsalServer) -> None:
    server.set_faults(next={"429": 2}, retry_after_seconds=0.25)
    url = f"{server.url}/embeddings"
    first = call(url, {"model": "m", "input": "x"})
    assert first[0] == 429 and first[1]["retry-after-ms"] == "250"
    assert call(url, {"model": "m", "input": "x"})[0] == 429
    assert call(url, {"model": "m", "input": "x"})[0] == 200
    stats = server.stats()
    assert stats["injected_429"] == 2 and stats["accepted"] == 1 and stats["429s"] == 2


def test_latency_is_added_and_stop_interrupts_a_sleeping_timeout_fault() -> None:
    srv = RehearsalServer(latency_ms=100).start()
    srv.set_faults(latency_per_input_ms=10)
    body = json.dumps({"model": "m", "input": ["x", "y"]}).encode()
    assert srv.app.embeddings("Bearer test", body).delay == pytest.approx(0.12)
    url = f"{srv.url}/embeddings"
    assert call(url, {"model": "m", "input": "x"})[0] == 200  # answered after its latency
    # an hour-long timeout fault: stop() must wake the handler sleeping on it, which then
    # answers the waiting client (that would otherwise give up after its own 5 s timeout)
    srv.set_faults(latency_ms=0, latency_per_input_ms=0, next={"timeout": 1}, timeout_seconds=3600)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_swallow(url)), daemon=True)
    worker.start()
    for _ in range(1000):  # until the handler holds the request (no fixed sleep)
        if srv.stats()["faults"].get("timeout") == 1:
            break
        time.sleep(0.01)
    assert srv.stats()["faults"] == {"timeout": 1}
    srv.stop()
    worker.join(timeout=120)  # a guard, not a figure
    assert outcome == [200], "the handler slept on after stop() and the client gave up"


def _swallow(url: str) -> int | str:
    try:
        return call(url, {"model": "m", "input": "x"})[0]
    except Exception as exc:
        return type(exc).__name__


def test_url_and_port() -> None:
    with RehearsalServer() as srv:
        assert srv.port > 0
        assert srv.url == f"http://127.0.0.1:{srv.port}/v1"
    with pytest.raises(RuntimeError):
        _ = srv.port
