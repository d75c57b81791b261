"""The fleet-wide limiter of a model, as workers, dual writers and operators build it."""

from __future__ import annotations

from backfleet.settings import Settings
from backfleet.throttle import NullThrottle, Throttle

__all__ = ["NullThrottle", "Throttle", "build_throttle", "throttle_key"]


def throttle_key(settings: Settings, label: str) -> str:
    """One limiter per provider and model: every worker of the fleet shares it."""
    model = settings.model(label)
    return f"backfleet:throttle:{model.provider}:{model.name}"


def build_throttle(settings: Settings, label: str) -> Throttle:
    """A fleet-wide Redis limiter for the model's provider (local models are not limited)."""
    model = settings.model(label)
    if model.provider == "local":
        return NullThrottle()
    import redis

    from backfleet.throttle import FleetThrottle

    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
    )
    throttle = FleetThrottle(client, throttle_key(settings, label))
    throttle.ensure_limits(settings.throttle.rpm, settings.throttle.tpm)
    return throttle
