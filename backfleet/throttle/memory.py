"""The throttle in one process: the same semantics as the Redis one, on Python dicts.

:class:`MemoryThrottle` runs the algorithm module (``backfleet.throttle.algorithm``) step for
step as the Lua scripts do in Redis: the same buckets, head of line, cool-down, adaptive factor,
provider headers and limit controls, with the same answers (:class:`Decision`,
:class:`ThrottleStatus`). Throttles built on one :class:`MemoryThrottleStore` share their limits
and state (threads, or several throttles of one process); nothing is shared between processes,
and the state never expires (Redis drops an unused ``K:state`` after an hour). For unit tests
and single-process use; a fleet needs :class:`~backfleet.throttle.redis.FleetThrottle`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from backfleet.errors import ConfigError
from backfleet.throttle.algorithm import (
    AimdPolicy,
    AimdState,
    Rates,
    aimd_rate_limited,
    aimd_recover,
    effective_rates,
    lowered_level,
)
from backfleet.throttle.algorithm import positive_int as _positive_int
from backfleet.throttle.base import Decision, ThrottleBase, ThrottleStatus, log
from backfleet.throttle.headers import RateLimitInfo


@dataclass
class _Config:
    """``K:config``: absent fields are ``None`` (unconfigured), like missing hash fields."""

    rpm: int | None = None
    tpm: int | None = None
    paused: bool = False


@dataclass
class _State:
    """``K:state``: bucket levels (``None`` until first refilled), factor, cool-down, head."""

    req: float | None = None
    tok: float | None = None
    ts: float | None = None
    factor: float = 1.0
    cool_until: float = 0.0
    prov_rpm: float | None = None
    prov_tpm: float | None = None
    last_dec: float = 0.0
    last_inc: float = 0.0
    hol_id: str | None = None
    hol_until: float = 0.0
    hol_tok: float = 0.0
    hol_since: float = 0.0

    @property
    def aimd(self) -> AimdState:
        return AimdState(
            factor=self.factor,
            cool_until=self.cool_until,
            last_dec=self.last_dec,
            last_inc=self.last_inc,
        )

    def set_aimd(self, aimd: AimdState) -> None:
        self.factor, self.cool_until = aimd.factor, aimd.cool_until
        self.last_dec, self.last_inc = aimd.last_dec, aimd.last_inc


@dataclass
class MemoryThrottleStore:
    """Limits and state of in-memory throttles by key (what Redis holds for the fleet)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    configs: dict[str, _Config] = field(default_factory=dict)
    states: dict[str, _State] = field(default_factory=dict)


class MemoryThrottle(ThrottleBase):
    """RPM/TPM limiter in this process's memory, shared by the throttles of one ``store``."""

    def __init__(
        self,
        key: str = "backfleet:throttle:memory",
        *,
        store: MemoryThrottleStore | None = None,
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
        self.store = store or MemoryThrottleStore()
        self._defaults: tuple[int, int] = (0, 0)

    # -- the state, as the Lua prelude reads and writes it (call with the store's lock) --

    def _now(self) -> float:
        return time.time() if self._clock is None else float(self._clock())

    def _config(self) -> _Config:
        return self.store.configs.setdefault(self.key, _Config())

    def _state(self) -> _State:
        """A copy: the caller commits it with :meth:`_save` where the script would save."""
        return replace(self.store.states.get(self.key) or _State())

    def _save(self, state: _State) -> None:
        self.store.states[self.key] = state

    def _rates(self, cfg: _Config, s: _State) -> Rates:
        assert cfg.rpm is not None and cfg.tpm is not None
        return effective_rates(
            cfg.rpm,
            cfg.tpm,
            provider_rpm=s.prov_rpm,
            provider_tpm=s.prov_tpm,
            factor=s.factor,
            burst_seconds=self.burst_seconds,
        )

    @staticmethod
    def _refill(s: _State, r: Rates, now: float) -> None:
        if s.ts is None:
            s.ts = now
        if s.req is None:
            s.req = r.req_cap
        if s.tok is None:
            s.tok = r.tok_cap
        if now > s.ts:
            s.req += r.req_rate * (now - s.ts)
            s.tok += r.tok_rate * (now - s.ts)
            s.ts = now
        s.req = min(r.req_cap, s.req)
        s.tok = min(r.tok_cap, s.tok)

    def _climb(self, s: _State, now: float) -> bool:
        before = s.aimd
        after = aimd_recover(before, now, self.policy)
        if after is before:
            return False
        s.set_aimd(after)
        return True

    @staticmethod
    def _configured(cfg: _Config) -> bool:
        return cfg.rpm is not None and cfg.tpm is not None

    # -- acquiring --

    def try_acquire(
        self, tokens: int, *, waiter: str | None = None, since: float | None = None
    ) -> Decision:
        """One atomic attempt: take 1 request + ``tokens`` tokens, or nothing (as in Redis)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        with self.store.lock:
            cfg = self._config()
            if not self._configured(cfg) and self._defaults[0] > 0 and self._defaults[1] > 0:
                cfg.rpm = cfg.rpm if cfg.rpm is not None else self._defaults[0]
                cfg.tpm = cfg.tpm if cfg.tpm is not None else self._defaults[1]
            if not self._configured(cfg):
                raise ConfigError(
                    f"no rate limits are stored for throttle {self.key}",
                    hint="call ensure_limits with throttle.rpm and throttle.tpm first",
                )
            now = self._now()
            first_refused = now if since is None else since
            if cfg.paused:
                return Decision(False, "paused", self.poll_interval, first_refused)
            s = self._state()
            if s.cool_until > now:
                return Decision(False, "cooldown", s.cool_until - now, first_refused)
            r = self._rates(cfg, s)
            self._refill(s, r, now)
            if self._climb(s, now):
                r = self._rates(cfg, s)
            assert s.req is not None and s.tok is not None
            need_tok = min(tokens, r.tok_cap)
            # the head of line is the oldest refused waiter still polling; others take its surplus
            hol_active = s.hol_id is not None and s.hol_until > now
            first = not hol_active or s.hol_id == waiter or first_refused < s.hol_since
            if first:
                want_req, want_tok = 1.0, need_tok
                granted = s.req >= 1 and s.tok >= need_tok
            else:
                want_req, want_tok = 2.0, s.hol_tok + tokens
                granted = s.req >= want_req and s.tok - tokens >= s.hol_tok
            if granted:
                s.req -= 1
                s.tok -= tokens
                if not hol_active or s.hol_id == waiter:
                    s.hol_id = None
                self._save(s)
                return Decision(True, "granted", 0.0, first_refused)
            wait_req = max(0.0, (want_req - s.req) / r.req_rate)
            wait_tok = max(0.0, (want_tok - s.tok) / r.tok_rate)
            if first and waiter:
                s.hol_id, s.hol_until = waiter, now + self.max_sleep * 1.5 + 1.0
                s.hol_tok, s.hol_since = need_tok, first_refused
            self._save(s)
        if wait_req >= wait_tok:
            return Decision(False, "requests", wait_req, first_refused)
        return Decision(False, "tokens", wait_tok, first_refused)

    # -- limits --

    def ensure_limits(self, rpm: int, tpm: int) -> bool:
        """Store ``rpm``/``tpm`` unless limits are already stored; True if they were written."""
        rpm = _positive_int("throttle.rpm", rpm)
        tpm = _positive_int("throttle.tpm", tpm)
        self._defaults = (rpm, tpm)
        with self.store.lock:
            cfg = self._config()
            written = cfg.rpm is None or cfg.tpm is None
            cfg.rpm = cfg.rpm if cfg.rpm is not None else rpm
            cfg.tpm = cfg.tpm if cfg.tpm is not None else tpm
        if written:
            log.info("throttle_limits_initialised", key=self.key, rpm=rpm, tpm=tpm)
        return written

    def set_limits(self, rpm: int | None = None, tpm: int | None = None) -> None:
        """Change the limits now (a cut applies to acquisitions from now on)."""
        if rpm is None and tpm is None:
            raise ConfigError("set_limits needs rpm, tpm or both", hint="pass --rpm or --tpm")
        new_rpm = None if rpm is None else _positive_int("throttle.rpm", rpm)
        new_tpm = None if tpm is None else _positive_int("throttle.tpm", tpm)
        with self.store.lock:
            now = self._now()
            s = self._state()
            cfg = self._config()
            if self._configured(cfg):
                self._refill(s, self._rates(cfg, s), now)
            rpm_v = new_rpm if new_rpm is not None else cfg.rpm
            tpm_v = new_tpm if new_tpm is not None else cfg.tpm
            if rpm_v is None or tpm_v is None:
                raise ConfigError(
                    f"throttle {self.key} has no stored limits to keep; give both rpm and tpm",
                    hint="pass both --rpm and --tpm",
                )
            cfg.rpm, cfg.tpm = rpm_v, tpm_v
            self._refill(s, self._rates(cfg, s), now)
            self._save(s)
        log.info("throttle_limits_set", key=self.key, rpm=rpm, tpm=tpm)

    def pause(self) -> None:
        """Make every acquire on this store wait (polling) until :meth:`resume`."""
        with self.store.lock:
            self._config().paused = True
        log.info("throttle_paused", key=self.key)

    def resume(self) -> None:
        """Let waiting acquires proceed (within one poll interval)."""
        with self.store.lock:
            self._config().paused = False
        log.info("throttle_resumed", key=self.key)

    def limits(self) -> ThrottleStatus:
        """The limits in force, paused state, adaptive factor and cool-down left."""
        with self.store.lock:
            now = self._now()
            s = self._state()  # a copy: status writes nothing
            cfg = replace(self._config())
        if self._configured(cfg):
            self._refill(s, self._rates(cfg, s), now)
        self._climb(s, now)  # what the next acquire will see
        effective: tuple[float | None, ...] = (None, None, None, None)
        if self._configured(cfg):
            r = self._rates(cfg, s)
            self._refill(s, r, now)
            effective = (r.rpm, r.tpm, s.req, s.tok)
        return ThrottleStatus(
            key=self.key,
            rpm=cfg.rpm,
            tpm=cfg.tpm,
            paused=cfg.paused,
            factor=s.factor,
            cooldown_remaining=max(0.0, s.cool_until - now),
            provider_rpm=None if s.prov_rpm is None else int(s.prov_rpm),
            provider_tpm=None if s.prov_tpm is None else int(s.prov_tpm),
            effective_rpm=effective[0],
            effective_tpm=effective[1],
            requests_available=effective[2],
            tokens_available=effective[3],
        )

    # -- feedback from the provider --

    def _rate_limited(self, cooldown: float) -> tuple[float, float]:
        with self.store.lock:
            now = self._now()
            s = self._state()
            cfg = self._config()
            configured = self._configured(cfg)
            if configured:
                self._refill(s, self._rates(cfg, s), now)
            # one cut per round trip: a 429 inside the previous cut's cool-down was sent before it
            s.set_aimd(aimd_rate_limited(s.aimd, now, cooldown, self.policy))
            if configured:
                # start again from empty buckets once the cool-down is over: no burst into a 429
                assert s.req is not None and s.tok is not None and s.ts is not None
                s.req, s.tok = min(s.req, 0.0), min(s.tok, 0.0)
                s.ts = max(s.ts, s.cool_until)
            self._save(s)
            return s.factor, s.cool_until - now

    def report_success(self) -> None:
        """A successful call: the factor climbs back with the time since the cool-down."""
        with self.store.lock:
            s = self._state()
            if s.factor >= 1:
                return
            now = self._now()
            cfg = self._config()
            if self._configured(cfg):
                self._refill(s, self._rates(cfg, s), now)
            if self._climb(s, now):
                self._save(s)

    def _observe(self, info: RateLimitInfo) -> None:
        with self.store.lock:
            cfg = self._config()
            if not self._configured(cfg):
                return
            now = self._now()
            s = self._state()
            self._refill(s, self._rates(cfg, s), now)
            if info.limit_requests is not None and info.limit_requests > 0:
                s.prov_rpm = info.limit_requests
            if info.limit_tokens is not None and info.limit_tokens > 0:
                s.prov_tpm = info.limit_tokens
            r = self._rates(cfg, s)
            self._refill(s, r, now)
            assert s.req is not None and s.tok is not None
            burst = self.burst_seconds
            s.req = lowered_level(
                s.req, info.remaining_requests, info.reset_requests, r.req_rate, burst
            )
            s.tok = lowered_level(
                s.tok, info.remaining_tokens, info.reset_tokens, r.tok_rate, burst
            )
            self._save(s)
