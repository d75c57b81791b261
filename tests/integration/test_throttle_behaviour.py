"""One behavioural suite for every throttle backend: Redis (db 13, flushed) and in-memory.

Each test runs once per backend on a simulated clock (``tests/support/throttles.py``): the
clock is injected into the Lua scripts and into the memory backend, and sleeping moves it, so
every figure below is exact — no test here measures wall time. Throttles made by one backend
share one limiter (the fleet's Redis key, or one ``MemoryThrottleStore``). What only Redis can
do — processes sharing a limiter, a config edited behind the throttle's back, an unreachable
server — is tested in ``test_throttle.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from backfleet.errors import ConfigError
from backfleet.throttle import AimdPolicy, AimdState, aimd_rate_limited, aimd_recover
from tests.support.services import REDIS_URL
from tests.support.throttle_scenarios import Event, burst_then_healthy
from tests.support.throttles import Backend, MemoryBackend, RedisBackend, SimClock

REDIS_DB = 13


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.integration), pytest.param("memory")]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    clock = SimClock()
    if request.param == "memory":
        yield MemoryBackend(clock)
        return
    url = f"{REDIS_URL}/{REDIS_DB}"
    conn = redis.Redis.from_url(url)
    try:
        conn.ping()
    except redis.ConnectionError:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    conn.flushdb()
    made = RedisBackend(url, clock)
    try:
        yield made
    finally:
        made.close()
        conn.flushdb()
        conn.close()


# --- acquiring within the limits ------------------------------------------------------------


def test_the_request_bucket_grants_a_burst_then_refuses_with_the_wait(backend: Backend) -> None:
    throttle = backend()
    throttle.ensure_limits(600, 10_000_000)  # 10 requests/s, bucket of 1 s = 10 requests
    assert all(throttle.try_acquire(1).granted for _ in range(10))
    refused = throttle.try_acquire(1)
    assert (refused.granted, refused.reason) == (False, "requests")
    assert refused.wait == pytest.approx(0.1)
    backend.clock.now += 0.1
    assert throttle.try_acquire(1).granted


def test_a_fleet_asking_all_the_time_gets_the_rate_plus_one_burst_never_more(
    backend: Backend,
) -> None:
    """Never exceeded in any window, and not starved either: exactly rate x time + burst."""
    workers = [backend() for _ in range(3)]
    workers[0].ensure_limits(600, 10_000_000)  # 10 requests/s, burst 10
    clock, grants = backend.clock, []
    start = clock.now
    while clock.now < start + 3.0:
        for worker in workers:
            while worker.try_acquire(1).granted:
                grants.append(clock.now)
        clock.now += 0.01
    assert 39 <= len(grants) <= 40  # 10 + 3 s x 10/s (the last refill may round below)
    for i, first in enumerate(grants):
        for j in range(i, len(grants)):
            assert j - i + 1 <= 10 * (grants[j] - first) + 10 + 1e-6


def test_a_fleet_asking_all_the_time_gets_the_token_rate_plus_one_burst(
    backend: Backend,
) -> None:
    workers = [backend() for _ in range(3)]
    workers[0].ensure_limits(100_000, 6000)  # 100 tokens/s, burst 100
    sizes, clock = [5, 40, 12, 25, 8], backend.clock
    granted: list[tuple[float, int]] = []
    start, i = clock.now, 0
    while clock.now < start + 3.0:
        for worker in workers:
            for _ in range(len(sizes)):
                cost = sizes[i % len(sizes)]
                i += 1
                if worker.try_acquire(cost).granted:
                    granted.append((clock.now, cost))
        clock.now += 0.01
    total = sum(cost for _, cost in granted)
    assert 400 - max(sizes) <= total <= 400 + 1
    for a, (first, _) in enumerate(granted):
        window = 0
        for b in range(a, len(granted)):
            window += granted[b][1]
            assert window <= 100 * (granted[b][0] - first) + 100 + 1e-6


def test_a_request_larger_than_the_bucket_proceeds_and_leaves_debt(backend: Backend) -> None:
    throttle = backend()
    throttle.ensure_limits(100_000, 6000)  # token bucket holds 100
    assert throttle.acquire(500) == 0.0  # bucket full: allowed at once, never deadlocks
    decision = throttle.try_acquire(1)
    assert (decision.granted, decision.reason) == (False, "tokens")
    assert decision.wait == pytest.approx(4.01)  # 400 tokens of debt + 1 at 100 tokens/s


def test_a_large_request_is_not_starved_by_small_ones(backend: Backend) -> None:
    big, small = backend(), [backend() for _ in range(4)]
    big.ensure_limits(100_000, 60_000)  # 1000 tokens/s, bucket 1000
    clock = backend.clock
    for worker in small:  # the small stream empties the bucket
        while worker.try_acquire(100).granted:
            pass
    first = big.try_acquire(3000, waiter="big")
    assert not first.granted
    asked_at, since, granted_at = clock.now, first.since, None
    while granted_at is None and clock.now < asked_at + 10:
        clock.now += 0.05
        for worker in small:
            worker.try_acquire(20)  # takes only what the head of line does not need
        if big.try_acquire(3000, waiter="big", since=since).granted:
            granted_at = clock.now
    assert granted_at is not None
    # the head of line needs one full bucket (1000 tokens at 1000/s) plus one small request
    assert granted_at - asked_at <= 1.0 + 0.05 + 1e-6


def test_an_abandoned_place_in_line_expires(backend: Backend) -> None:
    throttle = backend(max_sleep=0.2)  # a waiter's claim lasts 0.2 x 1.5 + 1 = 1.3 s
    throttle.ensure_limits(60, 1_000_000)  # 1 request/s, bucket of 1
    assert throttle.try_acquire(1).granted
    assert not throttle.try_acquire(1, waiter="ghost").granted  # then never comes back
    backend.clock.now += 1.0  # a request is back, but the ghost holds it
    assert not throttle.try_acquire(1, waiter="other").granted
    backend.clock.now += 0.4  # the ghost's claim is over
    assert throttle.try_acquire(1, waiter="other").granted


# --- operator controls ----------------------------------------------------------------------


def test_ensure_limits_keeps_a_stored_rethrottle(backend: Backend) -> None:
    first = backend()
    assert first.ensure_limits(600, 60_000)
    first.set_limits(rpm=1200)
    restarted = backend()
    assert not restarted.ensure_limits(600, 60_000)
    status = restarted.limits()
    assert (status.rpm, status.tpm, status.paused) == (1200, 60_000, False)


def test_a_raised_limit_applies_at_once_and_a_cut_to_new_acquisitions(backend: Backend) -> None:
    throttle, operator = backend(), backend()
    throttle.ensure_limits(60, 1_000_000)  # 1 request/s, bucket of 1
    throttle.acquire(1)
    assert not throttle.try_acquire(1).granted

    operator.set_limits(rpm=6000)  # 100 requests/s
    waited = sum(throttle.acquire(1) for _ in range(20))
    assert waited <= 20 * 0.01 * 1.1 + 1e-6  # at 1/s this would take 20 s

    operator.set_limits(rpm=60)
    assert throttle.limits().rpm == 60
    assert throttle.acquire(1) <= 1.1  # the bucket holds at most 1 request now
    decision = throttle.try_acquire(1)
    assert not decision.granted
    assert decision.wait == pytest.approx(1.0)


def test_tpm_alone_can_be_changed_and_a_missing_half_is_refused(backend: Backend) -> None:
    throttle = backend()
    with pytest.raises(ConfigError, match="rpm, tpm or both"):
        throttle.set_limits()
    with pytest.raises(ConfigError, match="no stored limits"):
        throttle.set_limits(rpm=100)
    throttle.ensure_limits(600, 60_000)
    throttle.set_limits(tpm=6000)
    status = throttle.limits()
    assert (status.rpm, status.tpm) == (600, 6000)
    assert status.effective_tpm == pytest.approx(6000)


def test_pause_blocks_every_acquire_until_resume(backend: Backend) -> None:
    throttle, operator = backend(poll_interval=0.1), backend()
    throttle.ensure_limits(6000, 1_000_000)
    operator.pause()
    assert throttle.limits().paused
    decision = throttle.try_acquire(1)
    assert (decision.granted, decision.reason) == (False, "paused")
    assert decision.wait == pytest.approx(0.1)

    clock, polls = backend.clock, []
    paused_at = clock.now

    def poll(seconds: float) -> None:  # the waiting worker sleeps; the operator resumes at 5 s
        polls.append(seconds)
        if clock.now >= paused_at + 5.0:
            operator.resume()

    clock.on_sleep = poll
    waited = throttle.acquire(1)
    assert len(polls) >= 45  # it polled every ~0.1 s all the while
    assert 5.0 <= waited <= 5.0 + 0.11 + 1e-6
    assert throttle.wait_seconds_total == pytest.approx(waited)
    assert not throttle.limits().paused


# --- feedback from the provider ---------------------------------------------------------------


def test_a_429_burst_cuts_once_and_its_cooldown_holds_everybody(backend: Backend) -> None:
    reporter, other = backend(), backend()
    reporter.ensure_limits(6000, 1_000_000)
    reporter.report_rate_limited(0.6)
    reporter.report_rate_limited(0.6)  # a burst of 429s shrinks the rates once
    status = other.limits()
    assert status.factor == pytest.approx(0.7)
    assert status.effective_rpm == pytest.approx(6000 * 0.7)
    assert status.cooldown_remaining == pytest.approx(0.6)

    decision = other.try_acquire(1)
    assert (decision.granted, decision.reason) == (False, "cooldown")
    assert decision.wait == pytest.approx(0.6)
    assert other.acquire(1) >= 0.6  # waited out the cool-down


def test_the_factor_climbs_linearly_in_time_after_the_cooldown(backend: Backend) -> None:
    throttle = backend()  # recovery_seconds 20: from the floor 0.1 to 1.0 in 20 s
    throttle.ensure_limits(6000, 1_000_000)
    throttle.report_rate_limited(1.0)
    clock = backend.clock
    clock.now += 1.0 + 5.0  # the cool-down, then a quarter of recovery_seconds
    throttle.report_success()
    assert throttle.limits().factor == pytest.approx(0.7 + 0.9 * 5 / 20)
    clock.now += 20.0
    assert throttle.limits().factor == pytest.approx(1.0)


def test_no_recovery_during_a_cooldown_and_absurd_retry_after_is_clamped(
    backend: Backend,
) -> None:
    throttle = backend()
    throttle.ensure_limits(6000, 1_000_000)
    throttle.report_rate_limited(10**9)
    backend.clock.now += 299.0
    throttle.report_success()
    throttle.try_acquire(1)
    status = throttle.limits()
    assert status.factor == pytest.approx(0.7)
    assert status.cooldown_remaining == pytest.approx(1.0)
    backend.clock.now += 1.0 + 20.0  # the cool-down is over, then recovery_seconds pass
    assert throttle.limits().factor == pytest.approx(1.0)


def test_a_429_without_retry_after_uses_the_default_cooldown(backend: Backend) -> None:
    throttle = backend(policy=AimdPolicy(default_retry_after=2.0))
    throttle.ensure_limits(6000, 1_000_000)
    throttle.report_rate_limited(None)
    assert throttle.limits().cooldown_remaining == pytest.approx(2.0)


def test_the_factor_follows_the_algorithm_through_a_429_burst(backend: Backend) -> None:
    """0.10 after a burst of 429s and back within 30 s, one cut per round trip, a climb linear
    in time however rarely a request gets through (60 RPM at 10 %: one request in 10 s) —
    step by step what ``aimd_rate_limited`` / ``aimd_recover`` say."""
    clock = backend.clock
    throttle = backend()
    throttle.ensure_limits(60, 1_000_000)
    policy = throttle.policy
    model = {"state": AimdState()}
    granted = []

    def report(event: Event) -> None:
        clock.now, kind, retry_after = event
        state = model["state"]
        if kind == "429":
            throttle.report_rate_limited(retry_after)
            model["state"] = aimd_rate_limited(state, clock.now, retry_after, policy)
        else:
            model["state"] = aimd_recover(state, clock.now, policy)
            if throttle.try_acquire(1).granted:
                granted.append(clock.now)
                throttle.report_success()
        assert throttle.limits().factor == pytest.approx(model["state"].factor, abs=1e-9)

    after_burst, trace = burst_then_healthy(lambda: throttle.limits().factor, report)
    assert after_burst == pytest.approx(0.1)
    assert [f for t, f in trace if t <= 30.0][-1] >= 0.95, trace
    assert len(granted) >= 10  # the rate came back with the factor


def test_headers_lower_the_bucket_but_never_raise_it(backend: Backend) -> None:
    throttle = backend()
    throttle.ensure_limits(600, 60_000)  # buckets of 10 requests, 1000 tokens
    throttle.observe_headers(
        {"x-ratelimit-remaining-tokens": "100", "x-ratelimit-remaining-requests": "500"}
    )
    status = throttle.limits()
    assert status.tokens_available == pytest.approx(100)
    assert status.requests_available == pytest.approx(10)

    throttle.observe_headers(
        {"x-ratelimit-limit-requests": "300", "x-ratelimit-limit-tokens": "9e9"}
    )
    status = throttle.limits()
    assert status.provider_rpm == 300
    assert status.effective_rpm == pytest.approx(300)  # the provider's lower limit wins
    assert status.effective_tpm == pytest.approx(60_000)  # never above ours
    assert status.rpm == 600  # the operator's setting is untouched

    throttle.observe_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}
    )
    decision = throttle.try_acquire(1)
    assert (decision.granted, decision.reason) == (False, "requests")
    assert decision.wait == pytest.approx(1.2)  # 1 s of debt (5 requests at 5/s) + 1 more


def test_garbage_headers_are_ignored(backend: Backend) -> None:
    throttle = backend()
    throttle.ensure_limits(600, 60_000)
    before = throttle.limits()
    throttle.observe_headers({})
    throttle.observe_headers(
        {
            "x-ratelimit-remaining-tokens": "lots",
            "x-ratelimit-reset-tokens": "soon",
            "x-ratelimit-limit-requests": "-5",
            "x-ratelimit-limit-tokens": "0",
        }
    )
    throttle.observe_headers({"x-ratelimit-remaining-requests": None})  # type: ignore[dict-item]
    throttle.observe_headers(None)  # type: ignore[arg-type]
    after = throttle.limits()
    assert after.provider_rpm is None and after.provider_tpm is None
    assert after.requests_available == pytest.approx(before.requests_available)
    assert after.tokens_available == pytest.approx(before.tokens_available)


# --- bad input --------------------------------------------------------------------------------


def test_zero_limits_are_rejected_naming_the_setting(backend: Backend) -> None:
    throttle = backend()
    with pytest.raises(ConfigError, match=r"throttle\.rpm"):
        throttle.ensure_limits(0, 1000)
    with pytest.raises(ConfigError, match=r"throttle\.tpm"):
        throttle.ensure_limits(10, -1)
    with pytest.raises(ConfigError, match="no rate limits"):
        throttle.acquire(1)  # nothing stored and no defaults given
    throttle.ensure_limits(10, 1000)
    with pytest.raises(ConfigError, match=r"throttle\.rpm"):
        throttle.set_limits(rpm=0)
    with pytest.raises(ValueError, match="tokens"):
        throttle.try_acquire(-1)


# --- the two backends, side by side -----------------------------------------------------------


@pytest.mark.integration
def test_memory_and_redis_answer_a_random_script_alike() -> None:
    """2,000 seeded random steps (acquires with and without a place in line, 429s, successes,
    headers, limit changes, pause/resume, time passing): every answer and every status of the
    memory backend equals the Redis one's."""
    import dataclasses
    import random

    url = f"{REDIS_URL}/{REDIS_DB}"
    conn = redis.Redis.from_url(url)
    try:
        conn.ping()
    except redis.ConnectionError:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    conn.flushdb()
    clock = SimClock()
    on_redis, in_memory = RedisBackend(url, clock), MemoryBackend(clock)
    pair = [on_redis(max_sleep=0.2), in_memory(max_sleep=0.2)]
    rng = random.Random(14)
    since: dict[str, float | None] = {"a": None, "b": None}
    try:
        for throttle in pair:
            throttle.ensure_limits(120, 6000)
        for step in range(2000):
            op = rng.choice(["acquire"] * 6 + ["429", "ok", "headers", "limits", "pause", "tick"])
            if op == "acquire":
                tokens, waiter = rng.choice([1, 10, 50, 150, 400]), rng.choice([None, "a", "b"])
                first = since[waiter] if waiter else None
                answers = [t.try_acquire(tokens, waiter=waiter, since=first) for t in pair]
                if waiter:
                    since[waiter] = None if answers[0].granted else answers[0].since
                got = [dataclasses.astuple(answer) for answer in answers]
                assert got[1] == pytest.approx(got[0], abs=1e-6), (step, op)
            elif op == "429":
                retry = rng.choice([None, 0.0, 0.3, 1.5])
                for t in pair:
                    t.report_rate_limited(retry)
            elif op == "ok":
                for t in pair:
                    t.report_success()
            elif op == "headers":
                headers = {
                    "x-ratelimit-remaining-requests": str(rng.randint(0, 3)),
                    "x-ratelimit-remaining-tokens": str(rng.randint(0, 500)),
                    "x-ratelimit-reset-requests": rng.choice(["0s", "500ms", "2s"]),
                    "x-ratelimit-limit-requests": str(rng.choice([60, 100, 1000])),
                }
                for t in pair:
                    t.observe_headers(headers)
            elif op == "limits":
                rpm, tpm = rng.choice([None, 60, 240]), rng.choice([None, 3000, 12000])
                if rpm is None and tpm is None:
                    continue
                for t in pair:
                    t.set_limits(rpm=rpm, tpm=tpm)
            elif op == "pause":
                pausing = rng.random() < 0.3
                for t in pair:
                    (t.pause if pausing else t.resume)()
            else:
                clock.now += rng.choice([0.01, 0.1, 0.5, 2.0])
                continue
            statuses = [dataclasses.asdict(t.limits()) for t in pair]
            assert statuses[1] == pytest.approx(statuses[0], abs=1e-6), (step, op)
    finally:
        on_redis.close()
        conn.flushdb()
        conn.close()
