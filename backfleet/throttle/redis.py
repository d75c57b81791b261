"""The fleet-wide rate limiter: token buckets for requests (RPM) and tokens (TPM) in Redis.

Every worker process calls :meth:`FleetThrottle.acquire` before each embedding-provider call.
One Lua script takes 1 request and N tokens from both buckets atomically, or takes nothing and
says how long to wait; the caller sleeps in short steps (at most ``max_sleep``) and asks again,
so a pause, a cool-down or a new limit reaches a waiting worker within about a second.

The scripts live in ``lua/*.lua`` (``prelude.lua`` is prepended to each; all are loaded by glob
at import). Redis layout, for a limiter key ``K`` chosen by the caller (e.g.
``backfleet:throttle:openai:m``):

``K:config`` (hash)
    ``rpm``, ``tpm``, ``paused`` — written by :meth:`~FleetThrottle.ensure_limits` (only if
    absent, so an operator's rethrottle survives restarts), :meth:`~FleetThrottle.set_limits`,
    :meth:`~FleetThrottle.pause` and :meth:`~FleetThrottle.resume`.
``K:state`` (hash, expires after an hour unused)
    bucket levels and their timestamp, the adaptive factor (AIMD), the 429 cool-down, the limits
    the provider announced in its headers, and the head-of-line waiter.

Time is Redis server ``TIME``, so clock skew between workers does not matter. Buckets refill
continuously at ``limit / 60`` per second up to ``limit / 60 * burst_seconds`` (at least one
request / one token), so an idle fleet cannot fire a minute's worth at once. A request larger
than the token bucket is granted when the bucket is full and leaves it in debt, so it can never
deadlock and the long-run rate still holds. The oldest refused waiter that is still polling is
the *head of line*: others may only take what it does not need, so a large request is not
starved by a stream of small ones (a crashed head's claim expires after a few seconds).

The effective rates are ``min(configured, provider-announced) * factor``. A 429 empties the
buckets, sets a shared cool-down and multiplies the factor by ``decrease`` (floor
``min_factor``) — once per round trip: a 429 inside the cool-down of the previous cut answers a
request sent before that cut, so the concurrent requests of one burst cut the rate once, not
once each (and never twice within ``decrease_interval``). After the cool-down the factor climbs
back in proportion to the *time* without a 429, not to the number of successes: linearly from
``min_factor`` to 1.0 in ``recovery_seconds``, applied whenever a worker asks (acquire, success,
status; at most one step per ``recovery_interval``, the time between is credited). So a fleet
slowed to 10 % is back at full speed ``recovery_seconds`` after the last cool-down however few
requests the reduced rate lets through (the old +0.02 per success took minutes at low rates).
:func:`~backfleet.throttle.algorithm.aimd_rate_limited` and
:func:`~backfleet.throttle.algorithm.aimd_recover` are that algorithm in Python; the Lua
scripts do the same in Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import structlog
from redis.commands.core import Script

from backfleet.errors import BrokerUnavailable, ConfigError
from backfleet.throttle.algorithm import AimdPolicy
from backfleet.throttle.algorithm import positive_int as _positive_int
from backfleet.throttle.base import Decision, ThrottleBase, ThrottleStatus
from backfleet.throttle.headers import RateLimitInfo

log = structlog.get_logger("backfleet.throttle")

STATE_TTL_SECONDS = 3600

_LUA_DIR = Path(__file__).with_name("lua")


def _load_scripts() -> dict[str, str]:
    """Every ``lua/*.lua`` but the prelude, each with the prelude prepended, by file stem."""
    prelude = (_LUA_DIR / "prelude.lua").read_text(encoding="utf-8")
    prelude = prelude.replace("__STATE_TTL_SECONDS__", str(STATE_TTL_SECONDS))
    return {
        path.stem: prelude + path.read_text(encoding="utf-8")
        for path in sorted(_LUA_DIR.glob("*.lua"))
        if path.stem != "prelude"
    }


SCRIPTS = _load_scripts()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_float(value: object) -> float | None:
    try:
        number = float(_text(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _opt_int(value: object) -> int | None:
    number = _opt_float(value)
    return None if number is None else int(number)


class FleetThrottle(ThrottleBase):
    """Fleet-wide RPM/TPM limiter shared through Redis under the limiter key ``key``."""

    def __init__(
        self,
        redis_client: redis.Redis,
        key: str,
        *,
        burst_seconds: float = 2.0,
        max_sleep: float = 1.0,
        poll_interval: float = 0.5,
        policy: AimdPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            key,
            burst_seconds=burst_seconds,
            max_sleep=max_sleep,
            poll_interval=poll_interval,
            policy=policy,
            sleep=sleep,
            monotonic=monotonic,
            clock=clock,
        )
        self._keys = [f"{key}:config", f"{key}:state"]
        self._defaults: tuple[int, int] = (0, 0)
        self._acquire_script = redis_client.register_script(SCRIPTS["acquire"])
        self._rate_limited_script = redis_client.register_script(SCRIPTS["rate_limited"])
        self._success_script = redis_client.register_script(SCRIPTS["success"])
        self._observe_script = redis_client.register_script(SCRIPTS["observe"])
        self._set_limits_script = redis_client.register_script(SCRIPTS["set_limits"])
        self._status_script = redis_client.register_script(SCRIPTS["status"])
        self._redis = redis_client

    # -- plumbing --

    def _run(self, script: Script, *args: str | int | float) -> Any:
        try:
            now = "" if self._clock is None else repr(float(self._clock()))
            policy = self.policy
            return script(
                keys=self._keys,
                args=[
                    self.burst_seconds,
                    *args,
                    policy.recovery_seconds,
                    policy.recovery_interval,
                    policy.min_factor,
                    now,
                ],
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerUnavailable(
                f"Redis could not be reached for throttle {self.key} ({type(exc).__name__})",
                hint="check redis_url and that Redis is running",
            ) from exc
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"Redis refused a throttle command for {self.key} ({type(exc).__name__})",
                hint="check the Redis server's state (memory, replica, scripts)",
            ) from exc

    # -- acquiring --

    def try_acquire(
        self, tokens: int, *, waiter: str | None = None, since: float | None = None
    ) -> Decision:
        """One atomic attempt: take 1 request + ``tokens`` tokens, or nothing.

        A caller that will retry passes the same ``waiter`` id each time and the ``since`` of
        its first refusal, to hold its place in line (the oldest waiter is served first). Without
        a ``waiter`` a refusal reserves nothing.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        status, wait, first_refused = self._run(
            self._acquire_script,
            int(tokens),
            waiter or "",
            self.max_sleep * 1.5 + 1.0,
            self.poll_interval,
            *self._defaults,
            "" if since is None else since,
        )
        reason = _text(status)
        if reason == "unconfigured":
            raise ConfigError(
                f"no rate limits are stored for throttle {self.key}",
                hint="call ensure_limits with throttle.rpm and throttle.tpm first",
            )
        if reason == "badconfig":
            raise ConfigError(
                f"the rate limits stored in {self.key}:config are not positive numbers",
                hint="run the rethrottle command with throttle.rpm and throttle.tpm above 0",
            )
        return Decision(
            granted=reason == "granted",
            reason=reason,
            wait=float(_text(wait)),
            since=float(_text(first_refused)),
        )

    # -- limits --

    def ensure_limits(self, rpm: int, tpm: int) -> bool:
        """Store ``rpm``/``tpm`` unless limits are already stored; True if they were written."""
        rpm = _positive_int("throttle.rpm", rpm)
        tpm = _positive_int("throttle.tpm", tpm)
        self._defaults = (rpm, tpm)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hsetnx(self._keys[0], "rpm", rpm)
            pipe.hsetnx(self._keys[0], "tpm", tpm)
            pipe.hsetnx(self._keys[0], "paused", "0")
            wrote_rpm, wrote_tpm, _ = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"Redis could not store limits for throttle {self.key} ({type(exc).__name__})",
                hint="check redis_url and that Redis is running",
            ) from exc
        written = bool(wrote_rpm or wrote_tpm)
        if written:
            log.info("throttle_limits_initialised", key=self.key, rpm=rpm, tpm=tpm)
        return written

    def set_limits(self, rpm: int | None = None, tpm: int | None = None) -> None:
        """Change the fleet's limits now (a cut applies to acquisitions from now on)."""
        if rpm is None and tpm is None:
            raise ConfigError("set_limits needs rpm, tpm or both", hint="pass --rpm or --tpm")
        new_rpm = "" if rpm is None else _positive_int("throttle.rpm", rpm)
        new_tpm = "" if tpm is None else _positive_int("throttle.tpm", tpm)
        result = _text(self._run(self._set_limits_script, new_rpm, new_tpm))
        if result != "ok":
            raise ConfigError(
                f"throttle {self.key} has no stored limits to keep; give both rpm and tpm",
                hint="pass both --rpm and --tpm",
            )
        log.info("throttle_limits_set", key=self.key, rpm=rpm, tpm=tpm)

    def _set_paused(self, paused: bool) -> None:
        try:
            self._redis.hset(self._keys[0], "paused", "1" if paused else "0")
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"Redis could not be reached for throttle {self.key} ({type(exc).__name__})",
                hint="check redis_url and that Redis is running",
            ) from exc

    def pause(self) -> None:
        """Make every acquire in the fleet wait (polling) until :meth:`resume`."""
        self._set_paused(True)
        log.info("throttle_paused", key=self.key)

    def resume(self) -> None:
        """Let waiting acquires proceed (within one poll interval)."""
        self._set_paused(False)
        log.info("throttle_resumed", key=self.key)

    def limits(self) -> ThrottleStatus:
        """The limits in force, paused state, adaptive factor and cool-down left."""
        raw = self._run(self._status_script)
        return ThrottleStatus(
            key=self.key,
            rpm=_opt_int(raw[0]),
            tpm=_opt_int(raw[1]),
            paused=_text(raw[2]) == "1",
            factor=float(_text(raw[3])),
            cooldown_remaining=float(_text(raw[4])),
            provider_rpm=_opt_int(raw[5]),
            provider_tpm=_opt_int(raw[6]),
            effective_rpm=_opt_float(raw[7]),
            effective_tpm=_opt_float(raw[8]),
            requests_available=_opt_float(raw[9]),
            tokens_available=_opt_float(raw[10]),
        )

    # -- feedback from the provider --

    def _rate_limited(self, cooldown: float) -> tuple[float, float]:
        policy = self.policy
        factor, remaining = self._run(
            self._rate_limited_script,
            cooldown,
            policy.decrease,
            policy.min_factor,
            policy.decrease_interval,
        )
        return float(_text(factor)), float(_text(remaining))

    def report_success(self) -> None:
        """A successful call: the factor climbs back (best effort: a Redis error is logged)."""
        try:
            self._run(self._success_script)
        except BrokerUnavailable as exc:
            log.warning("throttle_report_failed", key=self.key, error=exc.message)

    def _observe(self, info: RateLimitInfo) -> None:
        args = [
            "" if value is None else value
            for value in (
                info.remaining_requests,
                info.remaining_tokens,
                info.limit_requests,
                info.limit_tokens,
                info.reset_requests,
                info.reset_tokens,
            )
        ]
        try:
            self._run(self._observe_script, *args)
        except BrokerUnavailable as exc:
            log.warning("throttle_report_failed", key=self.key, error=exc.message)
