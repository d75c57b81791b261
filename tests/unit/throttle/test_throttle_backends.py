"""What each throttle backend checks before it runs: the null one, the Redis one (without
touching Redis), the in-memory one; and the Lua scripts loaded from ``lua/*.lua``."""

from __future__ import annotations

import pytest
import redis

from backfleet.errors import ConfigError
from backfleet.throttle import FleetThrottle, MemoryThrottle, NullThrottle, Throttle
from backfleet.throttle.redis import SCRIPTS, STATE_TTL_SECONDS


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


def test_memory_throttle_checks_its_settings_like_the_redis_one() -> None:
    with pytest.raises(ConfigError, match="burst_seconds"):
        MemoryThrottle(burst_seconds=0)
    with pytest.raises(ConfigError, match="key"):
        MemoryThrottle("")
    throttle = MemoryThrottle()
    assert isinstance(throttle, Throttle)
    assert throttle.counts_tokens
    with pytest.raises(ConfigError, match="no rate limits"):
        throttle.try_acquire(1)
    with pytest.raises(ConfigError, match=r"throttle\.tpm"):
        throttle.ensure_limits(10, 0)


def test_every_lua_script_is_loaded_with_the_prelude_and_its_ttl() -> None:
    assert sorted(SCRIPTS) == [
        "acquire",
        "observe",
        "rate_limited",
        "set_limits",
        "status",
        "success",
    ]
    for name, text in SCRIPTS.items():
        assert "local function refill(s, r, now)" in text, name
        assert f"redis.call('EXPIRE', ST, {STATE_TTL_SECONDS})" in text, name
        assert "__STATE_TTL_SECONDS__" not in text, name
