"""Throttle backends on a simulated clock, for the one behavioural suite run against each.

:class:`SimClock` is the scripts' "now" (``clock=``), the waiting loop's ``monotonic`` and its
``sleep`` (sleeping moves the clock), so a blocking ``acquire`` returns at once and the seconds
it reports are exact. A backend factory builds throttles that share one limiter: the same Redis
database and key, or the same :class:`MemoryThrottleStore`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import redis

from backfleet.throttle import FleetThrottle, MemoryThrottle, MemoryThrottleStore
from backfleet.throttle.base import ThrottleBase

KEY = "backfleet:throttle:test:model"


class SimClock:
    """A clock the test moves by hand (or by sleeping); it never reads the wall clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.on_sleep: Callable[[float], None] | None = None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)


class Backend(Protocol):
    name: str
    clock: SimClock

    def __call__(self, **kwargs: Any) -> ThrottleBase: ...


class RedisBackend:
    """Throttles on one Redis database and key, as the workers of a fleet see them."""

    name = "redis"

    def __init__(self, url: str, clock: SimClock) -> None:
        self.url, self.clock = url, clock
        self.clients: list[redis.Redis] = []

    def __call__(self, **kwargs: Any) -> FleetThrottle:
        client = redis.Redis.from_url(self.url)
        self.clients.append(client)
        return FleetThrottle(client, KEY, **_sim(self.clock, kwargs))

    def close(self) -> None:
        for client in self.clients:
            client.close()


class MemoryBackend:
    """Throttles on one in-memory store."""

    name = "memory"

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.store = MemoryThrottleStore()

    def __call__(self, **kwargs: Any) -> MemoryThrottle:
        return MemoryThrottle(KEY, store=self.store, **_sim(self.clock, kwargs))


def _sim(clock: SimClock, kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("burst_seconds", 1.0)
    kwargs.setdefault("clock", clock)
    kwargs.setdefault("sleep", clock.sleep)
    kwargs.setdefault("monotonic", clock)
    return kwargs
