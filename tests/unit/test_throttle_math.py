"""Pure helpers of the fleet throttle: header parsing, clamping, capacities, the null throttle,
and the adaptive factor's algorithm on a simulated clock."""

from __future__ import annotations

import math

import pytest
import redis

from backfleet.errors import ConfigError
from backfleet.throttle import (
    AimdPolicy,
    AimdState,
    FleetThrottle,
    NullThrottle,
    RateLimitInfo,
    Throttle,
    aimd_rate_limited,
    aimd_recover,
    bucket_capacity,
    clamp_retry_after,
    parse_count,
    parse_duration,
    parse_rate_limit_headers,
)
from tests.support.throttle_scenarios import Event, burst_then_healthy


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


def test_clamp_retry_after() -> None:
    assert clamp_retry_after(None, default=5.0, maximum=300.0) == (5.0, False)
    assert clamp_retry_after(2.5, default=5.0, maximum=300.0) == (2.5, False)
    assert clamp_retry_after(86400.0, default=5.0, maximum=300.0) == (300.0, True)
    assert clamp_retry_after(float("inf"), default=5.0, maximum=300.0) == (300.0, True)
    assert clamp_retry_after(-1.0, default=5.0, maximum=300.0) == (0.0, True)
    assert clamp_retry_after(float("nan"), default=5.0, maximum=300.0) == (5.0, True)


def test_bucket_capacity_is_a_burst_never_below_one() -> None:
    assert bucket_capacity(600, 2.0) == 20.0
    assert bucket_capacity(1_000_000, 2.0) == pytest.approx(33333.33, rel=1e-6)
    assert bucket_capacity(6, 2.0) == 1.0


@pytest.mark.parametrize(
    ("rpm", "tpm", "setting"), [(0, 10, "throttle.rpm"), (10, -1, "throttle.tpm")]
)
def test_null_throttle_rejects_non_positive_limits(rpm: int, tpm: int, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        NullThrottle().ensure_limits(rpm, tpm)


def test_null_throttle_never_waits() -> None:
    throttle = NullThrottle(rpm=10, tpm=100)
    assert isinstance(throttle, Throttle)
    throttle.pause()
    assert throttle.acquire(10**9) == 0.0
    assert throttle.try_acquire(5).granted
    throttle.report_rate_limited(30.0)
    throttle.report_success()
    throttle.observe_headers({"x-ratelimit-remaining-tokens": "garbage"})
    assert not throttle.ensure_limits(20, 200)  # limits already given
    throttle.set_limits(rpm=30)
    status = throttle.limits()
    assert (status.rpm, status.tpm, status.paused, status.factor) == (30, 100, True, 1.0)
    assert throttle.wait_seconds_total == 0.0


def test_fleet_throttle_checks_its_settings_without_touching_redis() -> None:
    client = redis.Redis(host="127.0.0.1", port=1)  # never contacted
    with pytest.raises(ConfigError, match="burst_seconds"):
        FleetThrottle(client, "backfleet:throttle:x:y", burst_seconds=0)
    with pytest.raises(ConfigError, match="key"):
        FleetThrottle(client, "")
    throttle = FleetThrottle(client, "backfleet:throttle:x:y")
    assert isinstance(throttle, Throttle)
    with pytest.raises(ConfigError, match=r"throttle\.rpm"):
        throttle.set_limits(rpm=0)
    with pytest.raises(ConfigError, match=r"throttle\.tpm"):
        throttle.ensure_limits(10, 0)


# --- the adaptive factor (pure algorithm, simulated clock) --------------------------------


class _Model:
    """The pure AIMD functions on a simulated clock."""

    def __init__(self, policy: AimdPolicy | None = None) -> None:
        self.policy = policy or AimdPolicy()
        self.state = AimdState()

    def report(self, event: Event) -> None:
        now, kind, retry_after = event
        if kind == "429":
            self.state = aimd_rate_limited(self.state, now, retry_after, self.policy)
        else:
            self.state = aimd_recover(self.state, now, self.policy)

    def factor(self) -> float:
        return self.state.factor


def test_a_429_burst_drops_the_factor_and_it_is_back_within_30s() -> None:
    # the chaos run: 0.10 after a burst, only 0.39 two and a half minutes later
    model = _Model()
    after_burst, trace = burst_then_healthy(model.factor, model.report)
    assert after_burst == pytest.approx(0.1)  # ten cuts of 0.7: the floor
    assert [f for t, f in trace if t <= 30.0][-1] >= 0.95, trace
    assert [f for t, f in trace if t <= 20.0][-1] >= 0.9  # linear: 0.9 in recovery_seconds
    assert max(f for t, f in trace if t <= 1.0) == pytest.approx(0.1)  # no climb in cool-down


@pytest.mark.parametrize("ask_every", [0.05, 1.0, 5.0, 10.0])
def test_recovery_does_not_depend_on_how_often_the_fleet_asks(ask_every: float) -> None:
    model = _Model()
    _, trace = burst_then_healthy(model.factor, model.report, ask_every=ask_every)
    assert [f for t, f in trace if t <= 30.0][-1] >= 0.95, (ask_every, trace)


def test_concurrent_429s_of_one_burst_cut_the_rate_once() -> None:
    model = _Model()
    for w in range(8):
        model.report((100.0 + 0.05 * w, "429", 5.0))
    assert model.factor() == pytest.approx(0.7)
    # a request sent before the cut, answered 429 two seconds later (inside the cool-down)
    model.report((102.0, "429", 5.0))
    assert model.factor() == pytest.approx(0.7)
    assert model.state.cool_until == pytest.approx(107.0)
    # after the cool-down a fresh request is refused: that is a new signal, cut again
    model.report((107.5, "429", 5.0))
    assert model.factor() == pytest.approx(0.49)


def test_no_climb_during_a_cooldown_and_the_floor_holds() -> None:
    model = _Model()
    t = 0.0
    for _ in range(20):
        model.report((t, "429", 1.0))
        t += 1.0
    assert model.factor() == pytest.approx(0.1)  # the floor
    model.report((t - 0.5, "ok", 0.0))  # inside the last cool-down
    assert model.factor() == pytest.approx(0.1)


def test_the_climb_is_linear_in_time_and_capped_at_one() -> None:
    policy = AimdPolicy(recovery_seconds=20.0)
    model = _Model(policy)
    model.report((0.0, "429", 2.0))  # 0.7, cool-down until 2.0
    model.report((2.5, "ok", 0.0))  # within recovery_interval of the cool-down's end: no write
    assert model.factor() == pytest.approx(0.7)
    model.report((3.5, "ok", 0.0))  # 1.5 s of an 0.9-per-20-s climb
    assert model.factor() == pytest.approx(0.7 + 0.9 * 1.5 / 20)
    model.report((3.9, "ok", 0.0))
    assert model.factor() == pytest.approx(0.7 + 0.9 * 1.5 / 20)
    model.report((8.0, "ok", 0.0))  # the time since the last climb is credited, not lost
    assert model.factor() == pytest.approx(0.7 + 0.9 * 6.0 / 20)
    model.report((1000.0, "ok", 0.0))
    assert model.factor() == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"decrease": 1.0}, {"decrease": 0.0}, {"min_factor": 0.0}, {"recovery_seconds": 0.0}],
)
def test_aimd_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="AIMD"):
        AimdPolicy(**kwargs)
