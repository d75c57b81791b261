"""The throttle port: what workers call around each provider call, and what it answers."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog

from backfleet.errors import ConfigError
from backfleet.throttle.algorithm import AimdPolicy, clamp_retry_after
from backfleet.throttle.headers import RateLimitInfo, parse_rate_limit_headers

log = structlog.get_logger("backfleet.throttle")


@dataclass(frozen=True)
class Decision:
    """One attempt to acquire: granted, or why not and how long to wait before asking again."""

    granted: bool
    reason: str
    wait: float
    since: float | None = None  # Redis time of this waiter's first refusal (queue order)


@dataclass(frozen=True)
class ThrottleStatus:
    """The limits in force, for ``backfleet status``; ``None`` where nothing is stored."""

    key: str
    rpm: int | None
    tpm: int | None
    paused: bool
    factor: float
    cooldown_remaining: float
    provider_rpm: int | None = None
    provider_tpm: int | None = None
    effective_rpm: float | None = None
    effective_tpm: float | None = None
    requests_available: float | None = None
    tokens_available: float | None = None


@runtime_checkable
class Throttle(Protocol):
    """What workers call around each provider call: the Redis, the in-memory or the null one."""

    wait_seconds_total: float
    #: whether ``acquire`` uses its token count (callers skip counting when it does not)
    counts_tokens: bool

    def acquire(self, tokens: int) -> float: ...
    def try_acquire(self, tokens: int) -> Decision: ...
    def ensure_limits(self, rpm: int, tpm: int) -> bool: ...
    def set_limits(self, rpm: int | None = None, tpm: int | None = None) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def limits(self) -> ThrottleStatus: ...
    def report_rate_limited(self, retry_after: float | None = None) -> None: ...
    def report_success(self) -> None: ...
    def observe_headers(self, headers: Mapping[str, str]) -> None: ...


class ThrottleBase:
    """What both backends share: the settings' checks, the polling ``acquire`` loop, and the
    parsing and logging around the provider's feedback. A backend implements the atomic steps
    (``try_acquire``, ``_rate_limited``, ``_observe`` and the limit controls)."""

    counts_tokens = True

    def __init__(
        self,
        key: str,
        *,
        burst_seconds: float,
        max_sleep: float,
        poll_interval: float,
        policy: AimdPolicy | None,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
        clock: Callable[[], float] | None,
    ) -> None:
        if not key:
            raise ConfigError("the throttle key must not be empty", hint="pass a limiter key")
        if not burst_seconds > 0:
            raise ConfigError(
                f"burst_seconds must be above 0, got {burst_seconds!r}",
                hint="set throttle burst_seconds to a few seconds",
            )
        if not max_sleep > 0 or not poll_interval > 0:
            raise ConfigError("max_sleep and poll_interval must be above 0")
        self.key = key
        self.burst_seconds = float(burst_seconds)
        self.max_sleep = float(max_sleep)
        self.poll_interval = float(poll_interval)
        self.policy = policy or AimdPolicy()
        self.wait_seconds_total = 0.0
        self._sleep = sleep
        self._monotonic = monotonic
        #: the backend's "now"; None = its own clock (Redis TIME, or time.time in memory)
        self._clock = clock
        self._random = random.Random()
        self._lock = threading.Lock()
        self._bad_headers_logged: set[str] = set()

    # -- the backend's atomic steps --

    def try_acquire(
        self, tokens: int, *, waiter: str | None = None, since: float | None = None
    ) -> Decision:
        raise NotImplementedError

    def _rate_limited(self, cooldown: float) -> tuple[float, float]:
        """Apply a 429 with this cool-down; return the factor and the cool-down left."""
        raise NotImplementedError

    def _observe(self, info: RateLimitInfo) -> None:
        raise NotImplementedError

    def ensure_limits(self, rpm: int, tpm: int) -> bool:
        raise NotImplementedError

    def set_limits(self, rpm: int | None = None, tpm: int | None = None) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def limits(self) -> ThrottleStatus:
        raise NotImplementedError

    def report_success(self) -> None:
        raise NotImplementedError

    # -- acquiring --

    def acquire(self, tokens: int) -> float:
        """Block until 1 request + ``tokens`` tokens are granted; return the seconds waited."""
        waiter = uuid.uuid4().hex
        started: float | None = None
        first_reason = ""
        since: float | None = None
        while True:
            decision = self.try_acquire(tokens, waiter=waiter, since=since)
            if decision.granted:
                break
            if started is None:
                started, first_reason = self._monotonic(), decision.reason
                since = decision.since
            delay = min(max(decision.wait, 0.005), self.max_sleep)
            self._sleep(delay * (1.0 + 0.1 * self._random.random()))
        if started is None:
            return 0.0
        waited = self._monotonic() - started
        with self._lock:
            self.wait_seconds_total += waited
        emit = log.info if waited >= 1.0 else log.debug
        emit(
            "throttle_wait",
            key=self.key,
            waited=round(waited, 3),
            reason=first_reason,
            tokens=tokens,
        )
        return waited

    # -- feedback from the provider --

    def report_rate_limited(self, retry_after: float | None = None) -> None:
        """A 429: every acquire in the fleet waits out the cool-down, and the rates shrink."""
        policy = self.policy
        cooldown, clamped = clamp_retry_after(
            retry_after, default=policy.default_retry_after, maximum=policy.max_retry_after
        )
        if clamped:
            log.warning(
                "throttle_retry_after_clamped", key=self.key, given=retry_after, used=cooldown
            )
        factor, remaining = self._rate_limited(cooldown)
        log.info(
            "throttle_rate_limited",
            key=self.key,
            retry_after=retry_after,
            cooldown=round(remaining, 3),
            factor=factor,
        )

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Lower the buckets to what the provider says remains. Never raises."""
        try:
            info, bad = parse_rate_limit_headers(headers)
        except Exception as exc:  # a header mapping that cannot even be iterated
            self._log_bad_headers(["<unreadable>"], type(exc).__name__)
            return
        if bad:
            self._log_bad_headers(bad, "malformed")
        if info.empty:
            return
        self._observe(info)

    def _log_bad_headers(self, names: list[str], why: str) -> None:
        new = [name for name in names if name not in self._bad_headers_logged]
        if new:
            self._bad_headers_logged.update(new)
            log.debug("throttle_headers_ignored", key=self.key, headers=new, why=why)
