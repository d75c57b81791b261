"""The throttle a worker uses before each provider call (fleet-wide in Redis)."""

from __future__ import annotations

from typing import Protocol

from backfleet.settings import Settings


class Throttle(Protocol):
    def acquire(self, tokens: int) -> float: ...

    def report_rate_limited(self, retry_after: float | None) -> None: ...

    def report_success(self) -> None: ...

    def observe_headers(self, headers: dict[str, str]) -> None: ...


class NoThrottle:
    """For the in-process demo with a local model: nothing to share, nothing to wait for."""

    def acquire(self, tokens: int) -> float:
        return 0.0

    def report_rate_limited(self, retry_after: float | None) -> None:
        return None

    def report_success(self) -> None:
        return None

    def observe_headers(self, headers: dict[str, str]) -> None:
        return None


def throttle_key(settings: Settings, label: str) -> str:
    model = settings.model(label)
    return f"backfleet:throttle:{model.provider}:{model.name}"


def build_throttle(settings: Settings, label: str) -> Throttle:
    """A fleet-wide Redis limiter for the model's provider (local models are not limited)."""
    model = settings.model(label)
    if model.provider == "local":
        return NoThrottle()
    import redis

    from backfleet.throttle import FleetThrottle

    client = redis.Redis.from_url(settings.redis_url)
    throttle = FleetThrottle(client, throttle_key(settings, label))
    throttle.ensure_limits(settings.throttle.rpm, settings.throttle.tpm)
    return throttle
