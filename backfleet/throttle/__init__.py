"""The fleet throttle: RPM/TPM token buckets with an adaptive factor, behind one port.

``base`` the :class:`Throttle` protocol and what it answers; ``algorithm`` the pure math (AIMD,
buckets); ``headers`` the one parser of OpenAI-style rate-limit headers; ``redis`` the
fleet-wide backend (Lua in ``lua/*.lua``); ``memory`` the same semantics in one process;
``null`` a throttle that never waits.
"""

from backfleet.throttle.algorithm import (
    AimdPolicy,
    AimdState,
    aimd_rate_limited,
    aimd_recover,
    bucket_capacity,
    clamp_retry_after,
)
from backfleet.throttle.base import Decision, Throttle, ThrottleStatus
from backfleet.throttle.headers import (
    RateLimitInfo,
    parse_count,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
)
from backfleet.throttle.memory import MemoryThrottle, MemoryThrottleStore
from backfleet.throttle.null import NullThrottle
from backfleet.throttle.redis import STATE_TTL_SECONDS, FleetThrottle

__all__ = [
    "STATE_TTL_SECONDS",
    "AimdPolicy",
    "AimdState",
    "Decision",
    "FleetThrottle",
    "MemoryThrottle",
    "MemoryThrottleStore",
    "NullThrottle",
    "RateLimitInfo",
    "Throttle",
    "ThrottleStatus",
    "aimd_rate_limited",
    "aimd_recover",
    "bucket_capacity",
    "clamp_retry_after",
    "parse_count",
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
]
