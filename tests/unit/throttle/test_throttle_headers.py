"""The one parser of OpenAI-style rate-limit headers (``backfleet/throttle/headers.py``)."""

from __future__ import annotations

import math

import pytest

from backfleet.throttle import RateLimitInfo, parse_count, parse_duration, parse_rate_limit_headers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1m30.5s", 90.5),
        ("1h2m3s", 3723.0),
        ("0s", 0.0),
        (".5s", 0.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("7ns", 7e-9),
        (" 2s ", 2.0),
        ("1.5", 1.5),
        ("0", 0.0),
    ],
)
def test_parse_duration_accepts_go_durations_and_bare_seconds(text: str, seconds: float) -> None:
    result = parse_duration(text)
    assert result is not None
    assert math.isclose(result, seconds, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "soon", "1x", "s", "1s2", "-1s", "-3", "1 s", "inf", "nan", "1e400", "ms"],
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    assert parse_duration(text) is None


def test_parse_duration_rejects_non_strings() -> None:
    assert parse_duration(None) is None
    assert parse_duration(3) is None
    assert parse_duration(b"1s") is None


@pytest.mark.parametrize(("text", "count"), [("59", 59), ("0", 0), ("150000.0", 150000)])
def test_parse_count(text: str, count: int) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["", "lots", "-1", "1.5", "inf", "nan", "1e999"])
def test_parse_count_rejects_garbage(text: str) -> None:
    assert parse_count(text) is None


def test_parse_rate_limit_headers_reads_openai_headers_case_insensitively() -> None:
    info, bad = parse_rate_limit_headers(
        {
            "X-RateLimit-Limit-Requests": "3000",
            "x-ratelimit-limit-tokens": "1000000",
            "x-ratelimit-remaining-requests": "2999",
            "x-ratelimit-remaining-tokens": "999000",
            "x-ratelimit-reset-requests": "20ms",
            "x-ratelimit-reset-tokens": "1m30.5s",
            "content-type": "application/json",
        }
    )
    assert bad == []
    assert info == RateLimitInfo(
        remaining_requests=2999,
        remaining_tokens=999000,
        limit_requests=3000,
        limit_tokens=1000000,
        reset_requests=0.02,
        reset_tokens=90.5,
    )
    assert not info.empty


def test_parse_rate_limit_headers_names_garbage_and_keeps_the_rest() -> None:
    info, bad = parse_rate_limit_headers(
        {
            "x-ratelimit-remaining-tokens": "lots",
            "x-ratelimit-reset-tokens": "soon",
            "x-ratelimit-limit-requests": "0",
            "x-ratelimit-remaining-requests": "5",
        }
    )
    assert info == RateLimitInfo(remaining_requests=5)
    assert bad == [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ]


def test_parse_rate_limit_headers_without_headers_is_empty() -> None:
    info, bad = parse_rate_limit_headers({})
    assert info.empty
    assert bad == []
