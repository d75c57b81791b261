"""The throttle's algorithm, pure: token buckets and the adaptive factor (AIMD).

The Lua scripts (``lua/*.lua``, run by :class:`~backfleet.throttle.redis.FleetThrottle`) do the
same in Redis; :class:`~backfleet.throttle.memory.MemoryThrottle` runs these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from backfleet.errors import ConfigError


def clamp_retry_after(
    retry_after: float | None, *, default: float, maximum: float
) -> tuple[float, bool]:
    """The cool-down to apply for a 429: ``default`` if unknown, within ``[0, maximum]``.

    Returns the seconds and whether the provider's value had to be changed.
    """
    if retry_after is None:
        return default, False
    if math.isnan(retry_after):
        return default, True
    if retry_after < 0:
        return 0.0, True
    if retry_after > maximum:
        return maximum, True
    return float(retry_after), False


def bucket_capacity(limit_per_minute: float, burst_seconds: float) -> float:
    """Capacity of a bucket refilled at ``limit / 60`` per second: a burst, never below 1."""
    return max(1.0, limit_per_minute / 60.0 * burst_seconds)


def positive_int(setting: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"{setting} must be a positive whole number, got {value!r}",
            hint=f"set {setting} to a value above 0",
        )
    return value


# --- Lua ---------------------------------------------------------------------------------
# KEYS[1] = K:config, KEYS[2] = K:state, ARGV[1] = burst seconds, then each script's own, then
# (added by FleetThrottle._run) recovery seconds, recovery interval, floor, clock; numbers cross


@dataclass(frozen=True)
class AimdPolicy:
    """How 429s and successes move the adaptive factor, and how cool-downs are bounded."""

    decrease: float = 0.7
    min_factor: float = 0.1
    decrease_interval: float = 1.0
    #: seconds without a 429 (after the cool-down) to climb from ``min_factor`` to 1.0
    recovery_seconds: float = 20.0
    #: at most one climb (one Redis write) per this many seconds; the time between is credited
    recovery_interval: float = 1.0
    default_retry_after: float = 5.0
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.decrease < 1 or not 0 < self.min_factor <= 1:
            raise ConfigError(
                f"AIMD decrease {self.decrease} must be in (0, 1) and min_factor "
                f"{self.min_factor} in (0, 1]",
                hint="pass an AimdPolicy with 0 < decrease < 1 and 0 < min_factor <= 1",
            )
        if not self.recovery_seconds > 0:
            raise ConfigError(
                f"AIMD recovery_seconds must be above 0, got {self.recovery_seconds!r}",
                hint="pass an AimdPolicy with recovery_seconds of a few tens of seconds",
            )


@dataclass(frozen=True)
class AimdState:
    """The adaptive factor's state (what ``K:state`` holds besides the buckets)."""

    factor: float = 1.0
    cool_until: float = -math.inf
    last_dec: float = -math.inf
    last_inc: float = -math.inf


def aimd_rate_limited(
    state: AimdState, now: float, cooldown: float, policy: AimdPolicy
) -> AimdState:
    """A 429 at ``now``: cut the factor once per round trip, extend the cool-down.

    A 429 inside the previous cut's cool-down answers a request sent before that cut (none is
    granted during a cool-down), so it extends the cool-down but does not cut again.
    """
    factor, last_dec = state.factor, state.last_dec
    if now >= state.cool_until and now - state.last_dec >= policy.decrease_interval:
        factor, last_dec = max(policy.min_factor, factor * policy.decrease), now
    cool_until = max(state.cool_until, now + cooldown)
    return replace(state, factor=factor, cool_until=cool_until, last_dec=last_dec)


def aimd_recover(state: AimdState, now: float, policy: AimdPolicy) -> AimdState:
    """Any acquire, success or status at ``now``: climb by the time since the cool-down ended
    (or the last climb), at most one step per ``recovery_interval``."""
    if state.factor >= 1 or now < state.cool_until:
        return state
    since = max(state.last_inc, state.cool_until, state.last_dec)
    if now - since < policy.recovery_interval:
        return state
    step = (1 - policy.min_factor) * (now - since) / policy.recovery_seconds
    return replace(state, factor=min(1.0, state.factor + step), last_inc=now)


# --- token buckets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """The rates in force: ``min(configured, provider-announced) * factor``, and the buckets."""

    rpm: float
    tpm: float
    req_rate: float  # requests per second
    tok_rate: float  # tokens per second
    req_cap: float
    tok_cap: float


def effective_rates(
    rpm: float,
    tpm: float,
    *,
    provider_rpm: float | None,
    provider_tpm: float | None,
    factor: float,
    burst_seconds: float,
) -> Rates:
    """The configured limits, lowered to the provider's announced ones, times the factor."""
    if provider_rpm is not None and 0 < provider_rpm < rpm:
        rpm = provider_rpm
    if provider_tpm is not None and 0 < provider_tpm < tpm:
        tpm = provider_tpm
    eff_rpm, eff_tpm = rpm * factor, tpm * factor
    return Rates(
        rpm=eff_rpm,
        tpm=eff_tpm,
        req_rate=eff_rpm / 60,
        tok_rate=eff_tpm / 60,
        req_cap=bucket_capacity(eff_rpm, burst_seconds),
        tok_cap=bucket_capacity(eff_tpm, burst_seconds),
    )


def lowered_level(
    level: float, remaining: float | None, reset: float | None, rate: float, burst_seconds: float
) -> float:
    """A bucket lowered to what the provider says remains (never raised).

    ``remaining == 0`` with a reset time leaves the bucket in debt for that long (at most one
    burst), so nobody asks again before the provider's window resets.
    """
    if remaining is None or remaining >= level:
        return level
    if remaining == 0 and reset is not None and reset > 0:
        return -rate * min(reset, burst_seconds)
    return remaining
