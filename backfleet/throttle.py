"""The fleet-wide rate limiter: token buckets for requests (RPM) and tokens (TPM) in Redis.

Every worker process calls :meth:`FleetThrottle.acquire` before each embedding-provider call.
One Lua script takes 1 request and N tokens from both buckets atomically, or takes nothing and
says how long to wait; the caller sleeps in short steps (at most ``max_sleep``) and asks again,
so a pause, a cool-down or a new limit reaches a waiting worker within about a second.

Redis layout, for a limiter key ``K`` chosen by the caller (e.g. ``backfleet:throttle:openai:m``):

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
:func:`aimd_rate_limited` and :func:`aimd_recover` are that algorithm in Python; the Lua
scripts do the same in Redis.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import redis
import structlog
from redis.commands.core import Script

from backfleet.errors import BrokerUnavailable, ConfigError

log = structlog.get_logger(__name__)

STATE_TTL_SECONDS = 3600

# --- pure helpers ------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:h|ms|us|µs|μs|ns|m|s))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s)")
_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}


def parse_duration(value: object) -> float | None:
    """Seconds in a Go-style duration (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1m30.5s"``).

    A bare non-negative number is taken as seconds. Anything else gives ``None``.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    try:
        plain = float(text)
    except ValueError:
        pass
    else:
        return plain if math.isfinite(plain) and plain >= 0 else None
    if not _DURATION_RE.fullmatch(text):
        return None
    total = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART_RE.findall(text)
    )
    return total if math.isfinite(total) else None


def parse_count(value: object) -> int | None:
    """A non-negative whole number from a header value (``"59"``, ``"59.0"``), else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0 or number != int(number):
        return None
    return int(number)


@dataclass(frozen=True)
class RateLimitInfo:
    """What OpenAI-style ``x-ratelimit-*`` headers said; ``None`` where absent or malformed."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)


_COUNT_HEADERS = {
    "x-ratelimit-remaining-requests": "remaining_requests",
    "x-ratelimit-remaining-tokens": "remaining_tokens",
    "x-ratelimit-limit-requests": "limit_requests",
    "x-ratelimit-limit-tokens": "limit_tokens",
}
_DURATION_HEADERS = {
    "x-ratelimit-reset-requests": "reset_requests",
    "x-ratelimit-reset-tokens": "reset_tokens",
}


def parse_rate_limit_headers(headers: Mapping[str, str]) -> tuple[RateLimitInfo, list[str]]:
    """Parse the rate-limit headers (names case-insensitive); also name the malformed ones."""
    found: dict[str, Any] = {}
    bad: list[str] = []
    for raw_name, raw_value in headers.items():
        name = str(raw_name).strip().lower()
        value: int | float | None
        if name in _COUNT_HEADERS:
            field_name, value = _COUNT_HEADERS[name], parse_count(raw_value)
        elif name in _DURATION_HEADERS:
            field_name, value = _DURATION_HEADERS[name], parse_duration(raw_value)
        else:
            continue
        if value is None:
            bad.append(name)
        elif field_name.startswith("limit") and value == 0:
            bad.append(name)  # a limit of zero is nonsense; never throttle to a standstill on it
        else:
            found[field_name] = value
    return RateLimitInfo(**found), sorted(bad)


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


def _positive_int(setting: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"{setting} must be a positive whole number, got {value!r}",
            hint=f"set {setting} to a value above 0",
        )
    return value


# --- Lua ---------------------------------------------------------------------------------
# KEYS[1] = K:config, KEYS[2] = K:state, ARGV[1] = burst seconds, then each script's own, then
# (added by FleetThrottle._run) recovery seconds, recovery interval, floor, clock; numbers cross
# as strings because Redis truncates Lua numbers to integers.

_LUA_PRELUDE = f"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local CFG, ST = KEYS[1], KEYS[2]
local BURST = tonumber(ARGV[1])
local NUMS = {{'req', 'tok', 'ts', 'factor', 'cool_until', 'prov_rpm', 'prov_tpm',
              'last_dec', 'last_inc'}}

-- the last four ARGV of every script: the recovery policy (seconds from the floor to 1.0, the
-- least step interval, the floor) and the caller's clock ('' = Redis TIME; tests inject one)
local NOW = tonumber(ARGV[#ARGV])
local RECOVERY, RINTERVAL = tonumber(ARGV[#ARGV - 3]), tonumber(ARGV[#ARGV - 2])
local FLOOR = tonumber(ARGV[#ARGV - 1])
local function clock()
  if NOW then return NOW end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x) return string.format('%.17g', x) end

local function read_config()
  local c = redis.call('HMGET', CFG, 'rpm', 'tpm', 'paused')
  if not c[1] or not c[2] then return nil, 'unconfigured' end
  local rpm, tpm = tonumber(c[1]), tonumber(c[2])
  if not rpm or not tpm or rpm <= 0 or tpm <= 0 then return nil, 'badconfig' end
  return {{rpm = rpm, tpm = tpm, paused = (c[3] == '1')}}
end

local function read_state()
  local v = redis.call('HMGET', ST, 'hol_id', 'hol_until', 'hol_tok', 'hol_since', unpack(NUMS))
  local s = {{hol_id = v[1] or nil, hol_until = tonumber(v[2]) or 0, hol_tok = tonumber(v[3]) or 0,
             hol_since = tonumber(v[4]) or 0}}
  for i, name in ipairs(NUMS) do s[name] = tonumber(v[i + 4]) end
  s.factor = math.max(0.001, math.min(1, s.factor or 1))
  s.cool_until = s.cool_until or 0
  s.last_dec = s.last_dec or 0
  s.last_inc = s.last_inc or 0
  return s
end

local function rates(cfg, s)
  local rpm, tpm = cfg.rpm, cfg.tpm
  if s.prov_rpm and s.prov_rpm > 0 and s.prov_rpm < rpm then rpm = s.prov_rpm end
  if s.prov_tpm and s.prov_tpm > 0 and s.prov_tpm < tpm then tpm = s.prov_tpm end
  local r = {{rpm = rpm * s.factor, tpm = tpm * s.factor}}
  r.req_rate, r.tok_rate = r.rpm / 60, r.tpm / 60
  r.req_cap = math.max(1, r.req_rate * BURST)
  r.tok_cap = math.max(1, r.tok_rate * BURST)
  return r
end

-- after the cool-down the factor climbs linearly in time (aimd_recover in Python)
local function climb(s, now)
  if s.factor >= 1 or now < s.cool_until then return false end
  local since = math.max(s.last_inc, s.cool_until, s.last_dec)
  if now - since < RINTERVAL then return false end
  s.factor = math.min(1, s.factor + (1 - FLOOR) * (now - since) / RECOVERY)
  s.last_inc = now
  return true
end

local function refill(s, r, now)
  if s.ts == nil then s.ts = now end
  if s.req == nil then s.req = r.req_cap end
  if s.tok == nil then s.tok = r.tok_cap end
  if now > s.ts then
    s.req = s.req + r.req_rate * (now - s.ts)
    s.tok = s.tok + r.tok_rate * (now - s.ts)
    s.ts = now
  end
  s.req = math.min(r.req_cap, s.req)
  s.tok = math.min(r.tok_cap, s.tok)
end

local function save(s)
  local args = {{}}
  for _, name in ipairs(NUMS) do
    if s[name] ~= nil then
      args[#args + 1] = name
      args[#args + 1] = fmt(s[name])
    end
  end
  if s.hol_id then
    local hol = {{'hol_id', s.hol_id, 'hol_until', fmt(s.hol_until),
                 'hol_tok', fmt(s.hol_tok), 'hol_since', fmt(s.hol_since)}}
    for _, item in ipairs(hol) do args[#args + 1] = item end
  else
    redis.call('HDEL', ST, 'hol_id', 'hol_until', 'hol_tok', 'hol_since')
  end
  if #args > 0 then redis.call('HSET', ST, unpack(args)) end
  redis.call('EXPIRE', ST, {STATE_TTL_SECONDS})
end
"""

# ARGV: burst, tokens, waiter id, head-of-line ttl, poll interval, default rpm, default tpm,
# first refusal time ('' on the first attempt) -> {status, wait, first refusal time}; status:
# granted | requests | tokens | paused | cooldown | unconfigured | badconfig
_ACQUIRE_LUA = (
    _LUA_PRELUDE
    + """
local tokens, waiter = tonumber(ARGV[2]), ARGV[3]
local hol_ttl, poll = tonumber(ARGV[4]), tonumber(ARGV[5])
local cfg, why = read_config()
if not cfg and why == 'unconfigured' and tonumber(ARGV[6]) > 0 and tonumber(ARGV[7]) > 0 then
  redis.call('HSETNX', CFG, 'rpm', ARGV[6])
  redis.call('HSETNX', CFG, 'tpm', ARGV[7])
  redis.call('HSETNX', CFG, 'paused', '0')
  cfg, why = read_config()
end
if not cfg then return {why, '0', '0'} end
local now = clock()
local since = tonumber(ARGV[8]) or now
if cfg.paused then return {'paused', fmt(poll), fmt(since)} end
local s = read_state()
if s.cool_until > now then return {'cooldown', fmt(s.cool_until - now), fmt(since)} end
local r = rates(cfg, s)
refill(s, r, now)
if climb(s, now) then r = rates(cfg, s) end
local need_tok = math.min(tokens, r.tok_cap)
-- the head of line is the oldest refused waiter still polling; others take only its surplus
local hol_active = s.hol_id ~= nil and s.hol_until > now
local first = not hol_active or s.hol_id == waiter or since < s.hol_since
local granted, want_req, want_tok
if first then
  want_req, want_tok = 1, need_tok
  granted = s.req >= 1 and s.tok >= need_tok
else
  want_req, want_tok = 2, s.hol_tok + tokens
  granted = s.req >= want_req and s.tok - tokens >= s.hol_tok
end
if granted then
  s.req = s.req - 1
  s.tok = s.tok - tokens
  if not hol_active or s.hol_id == waiter then s.hol_id = nil end
  save(s)
  return {'granted', '0', fmt(since)}
end
local wait_req = math.max(0, (want_req - s.req) / r.req_rate)
local wait_tok = math.max(0, (want_tok - s.tok) / r.tok_rate)
if first and waiter ~= '' then
  s.hol_id, s.hol_until, s.hol_tok, s.hol_since = waiter, now + hol_ttl, need_tok, since
end
save(s)
if wait_req >= wait_tok then return {'requests', fmt(wait_req), fmt(since)} end
return {'tokens', fmt(wait_tok), fmt(since)}
"""
)

# ARGV: burst, cool-down seconds, decrease, floor, decrease interval -> {factor, cool-down left}
_RATE_LIMITED_LUA = (
    _LUA_PRELUDE
    + """
local cooldown, decrease = tonumber(ARGV[2]), tonumber(ARGV[3])
local floor, interval = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = clock()
local s = read_state()
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
-- one cut per round trip: a 429 inside the previous cut's cool-down was sent before that cut
if now >= s.cool_until and now - s.last_dec >= interval then
  s.factor = math.max(floor, s.factor * decrease)
  s.last_dec = now
end
s.cool_until = math.max(s.cool_until, now + cooldown)
if cfg then
  -- start again from empty buckets once the cool-down is over: no burst into a 429
  s.req = math.min(s.req, 0)
  s.tok = math.min(s.tok, 0)
  s.ts = math.max(s.ts, s.cool_until)
end
save(s)
return {fmt(s.factor), fmt(s.cool_until - now)}
"""
)

# ARGV: burst -> factor
_SUCCESS_LUA = (
    _LUA_PRELUDE
    + """
local s = read_state()
if s.factor >= 1 then return fmt(s.factor) end
local now = clock()
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
if climb(s, now) then save(s) end
return fmt(s.factor)
"""
)

# ARGV: burst, remaining req, remaining tok, limit req, limit tok, reset req, reset tok
# ('' where unknown) -> {req level, tok level} or 'unconfigured'
_OBSERVE_LUA = (
    _LUA_PRELUDE
    + """
local cfg = read_config()
if not cfg then return 'unconfigured' end
local now = clock()
local s = read_state()
refill(s, rates(cfg, s), now)
local lim_req, lim_tok = tonumber(ARGV[4]), tonumber(ARGV[5])
if lim_req and lim_req > 0 then s.prov_rpm = lim_req end
if lim_tok and lim_tok > 0 then s.prov_tpm = lim_tok end
local r = rates(cfg, s)
refill(s, r, now)
local function lower(level, remaining, reset, rate)
  if remaining == nil or remaining >= level then return level end
  if remaining == 0 and reset and reset > 0 then
    return -rate * math.min(reset, BURST)
  end
  return remaining
end
s.req = lower(s.req, tonumber(ARGV[2]), tonumber(ARGV[6]), r.req_rate)
s.tok = lower(s.tok, tonumber(ARGV[3]), tonumber(ARGV[7]), r.tok_rate)
save(s)
return {fmt(s.req), fmt(s.tok)}
"""
)

# ARGV: burst, rpm or '', tpm or '' -> 'ok' | 'incomplete'
_SET_LIMITS_LUA = (
    _LUA_PRELUDE
    + """
local now = clock()
local s = read_state()
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
local raw = redis.call('HMGET', CFG, 'rpm', 'tpm')
local rpm = ARGV[2] ~= '' and ARGV[2] or raw[1]
local tpm = ARGV[3] ~= '' and ARGV[3] or raw[2]
if not tonumber(rpm) or not tonumber(tpm) then return 'incomplete' end
redis.call('HSET', CFG, 'rpm', rpm, 'tpm', tpm)
redis.call('HSETNX', CFG, 'paused', '0')
cfg = read_config()
refill(s, rates(cfg, s), now)
save(s)
return 'ok'
"""
)

# ARGV: burst -> {rpm, tpm, paused, factor, cool-down left, prov rpm, prov tpm,
# effective rpm, effective tpm, requests available, tokens available} ('' where unknown)
_STATUS_LUA = (
    _LUA_PRELUDE
    + """
local now = clock()
local s = read_state()
local raw = redis.call('HMGET', CFG, 'rpm', 'tpm', 'paused')
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
climb(s, now)  -- what the next acquire will see (status writes nothing)
local out = {raw[1] or '', raw[2] or '', raw[3] or '0', fmt(s.factor),
             fmt(math.max(0, s.cool_until - now)),
             s.prov_rpm and fmt(s.prov_rpm) or '', s.prov_tpm and fmt(s.prov_tpm) or '',
             '', '', '', ''}
if cfg then
  local r = rates(cfg, s)
  refill(s, r, now)
  out[8], out[9], out[10], out[11] = fmt(r.rpm), fmt(r.tpm), fmt(s.req), fmt(s.tok)
end
return out
"""
)


# --- public API --------------------------------------------------------------------------


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


@runtime_checkable
class Throttle(Protocol):
    """What workers call around each provider call; :class:`FleetThrottle` or a no-op."""

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


class FleetThrottle:
    """Fleet-wide RPM/TPM limiter shared through Redis under the limiter key ``key``."""

    counts_tokens = True

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
        self._keys = [f"{key}:config", f"{key}:state"]
        self._sleep = sleep
        self._monotonic = monotonic
        #: the scripts' "now": Redis TIME when None (the fleet's one clock); tests inject one
        self._clock = clock
        self._random = random.Random()
        self._lock = threading.Lock()
        self._defaults: tuple[int, int] = (0, 0)
        self._bad_headers_logged: set[str] = set()
        self._acquire_script = redis_client.register_script(_ACQUIRE_LUA)
        self._rate_limited_script = redis_client.register_script(_RATE_LIMITED_LUA)
        self._success_script = redis_client.register_script(_SUCCESS_LUA)
        self._observe_script = redis_client.register_script(_OBSERVE_LUA)
        self._set_limits_script = redis_client.register_script(_SET_LIMITS_LUA)
        self._status_script = redis_client.register_script(_STATUS_LUA)
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
        factor, remaining = self._run(
            self._rate_limited_script,
            cooldown,
            policy.decrease,
            policy.min_factor,
            policy.decrease_interval,
        )
        log.info(
            "throttle_rate_limited",
            key=self.key,
            retry_after=retry_after,
            cooldown=round(float(_text(remaining)), 3),
            factor=float(_text(factor)),
        )

    def report_success(self) -> None:
        """A successful call: the factor climbs back (best effort: a Redis error is logged)."""
        try:
            self._run(self._success_script)
        except BrokerUnavailable as exc:
            log.warning("throttle_report_failed", key=self.key, error=exc.message)

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

    def _log_bad_headers(self, names: list[str], why: str) -> None:
        new = [name for name in names if name not in self._bad_headers_logged]
        if new:
            self._bad_headers_logged.update(new)
            log.debug("throttle_headers_ignored", key=self.key, headers=new, why=why)


class NullThrottle:
    """A throttle that never waits: for the in-process demo and tests without Redis."""

    counts_tokens = False

    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.wait_seconds_total = 0.0
        self._rpm, self._tpm = rpm, tpm
        self._paused = False

    def acquire(self, tokens: int) -> float:
        return 0.0

    def try_acquire(self, tokens: int) -> Decision:
        return Decision(granted=True, reason="granted", wait=0.0)

    def ensure_limits(self, rpm: int, tpm: int) -> bool:
        written = self._rpm is None
        if written:
            self._rpm = _positive_int("throttle.rpm", rpm)
            self._tpm = _positive_int("throttle.tpm", tpm)
        return written

    def set_limits(self, rpm: int | None = None, tpm: int | None = None) -> None:
        if rpm is not None:
            self._rpm = _positive_int("throttle.rpm", rpm)
        if tpm is not None:
            self._tpm = _positive_int("throttle.tpm", tpm)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def limits(self) -> ThrottleStatus:
        return ThrottleStatus(
            key="null",
            rpm=self._rpm,
            tpm=self._tpm,
            paused=self._paused,
            factor=1.0,
            cooldown_remaining=0.0,
        )

    def report_rate_limited(self, retry_after: float | None = None) -> None:
        return None

    def report_success(self) -> None:
        return None

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        return None
