"""What only the Redis throttle does: processes sharing one limiter, limits edited behind its
back, an unreachable server (db 14, flushed around each test).

The behaviour both backends share (buckets, head of line, pause, 429s, recovery, headers, limit
changes) is tested once for each in ``test_throttle_behaviour.py``. Nothing here measures wall
time: the processes and threads below ask on a frozen injected clock, so the grants they share
are an exact count.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from backfleet.errors import BrokerUnavailable, ConfigError
from backfleet.throttle import FleetThrottle
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.integration

REDIS_DB = 14
KEY = "backfleet:throttle:test:model"


def _client() -> redis.Redis:
    return redis.Redis.from_url(f"{REDIS_URL}/{REDIS_DB}")


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    conn = _client()
    try:
        conn.ping()
    except redis.ConnectionError:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def _throttle(client: redis.Redis, **kwargs: Any) -> FleetThrottle:
    kwargs.setdefault("burst_seconds", 1.0)
    return FleetThrottle(client, KEY, **kwargs)


# --- concurrency: processes and threads share one limiter, atomically -------------------------


def _grab(now: float, cost: int, attempts: int, out: list[int]) -> None:
    """Ask ``attempts`` times at the frozen time ``now``; record what was granted."""
    throttle = FleetThrottle(_client(), KEY, burst_seconds=1.0, clock=lambda: now)
    for _ in range(attempts):
        if throttle.try_acquire(cost).granted:
            out.append(cost)


def _grab_process(now: float, cost: int, attempts: int, queue: Any) -> None:
    out: list[int] = []
    _grab(now, cost, attempts, out)
    queue.put(out)


def _run_fleet(now: float, cost: int, attempts: int = 150) -> list[int]:
    """3 threads here and 3 other processes ask at the same frozen time; all grants."""
    # spawn, not fork: forking a process whose other threads (gRPC, servers of earlier tests)
    # hold locks can deadlock the child
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_grab_process, args=(now, cost, attempts, queue)) for _ in range(3)]
    for proc in procs:
        proc.start()
    local: list[list[int]] = [[] for _ in range(3)]
    threads = [threading.Thread(target=_grab, args=(now, cost, attempts, out)) for out in local]
    for thread in threads:
        thread.start()
    results = [queue.get(timeout=120) for _ in procs]
    for thread in threads:
        thread.join()
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    return [g for out in local for g in out] + [g for out in results for g in out]


def test_threads_and_processes_share_the_request_bucket_exactly(client: redis.Redis) -> None:
    _throttle(client).ensure_limits(600, 10_000_000)  # 10 requests/s, burst 1 s = 10 requests
    assert len(_run_fleet(1000.0, 1)) == 10  # a full bucket, not one request more or less
    assert len(_run_fleet(1000.5, 1)) == 5  # half a second refills half of it


def test_threads_and_processes_share_the_token_bucket_exactly(client: redis.Redis) -> None:
    _throttle(client).ensure_limits(100_000, 6000)  # 100 tokens/s, burst 1 s = 100 tokens
    assert sum(_run_fleet(1000.0, 7)) == 98  # 14 requests of 7; the 2 left fit none
    assert sum(_run_fleet(1000.5, 7)) == 49  # 2 + 50 tokens: 7 more


# --- the clock --------------------------------------------------------------------------------


def test_the_factor_climbs_back_whoever_reports(client: redis.Redis) -> None:
    """Redis TIME is the fleet's clock; a throttle with its own (here 30 s ahead) moves the
    shared factor for everybody."""
    reporter = _throttle(client)
    reporter.ensure_limits(6000, 1_000_000)
    reporter.report_rate_limited(0.6)
    assert reporter.limits().factor == pytest.approx(0.7)
    later = _throttle(_client(), clock=lambda: time.time() + 30.0)
    later.report_success()
    assert reporter.limits().factor == pytest.approx(1.0)


# --- limits edited behind the throttle's back, and outages ------------------------------------


def test_limits_written_by_hand_that_are_not_positive_are_refused(client: redis.Redis) -> None:
    throttle = _throttle(client)
    throttle.ensure_limits(10, 1000)
    client.hset(f"{KEY}:config", "rpm", "0")  # written by hand, behind our back
    with pytest.raises(ConfigError, match="not positive"):
        throttle.acquire(1)


def test_limits_deleted_behind_our_back_are_restored_from_the_defaults(
    client: redis.Redis,
) -> None:
    throttle = _throttle(client)
    throttle.ensure_limits(600, 60_000)
    client.delete(f"{KEY}:config")
    throttle.acquire(1)
    assert throttle.limits().rpm == 600


def test_unreachable_redis_raises_broker_unavailable() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    throttle = FleetThrottle(dead, KEY)
    with pytest.raises(BrokerUnavailable) as info:
        throttle.acquire(1)
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(BrokerUnavailable):
        throttle.ensure_limits(10, 100)
    with pytest.raises(BrokerUnavailable):
        throttle.pause()
    with pytest.raises(BrokerUnavailable):
        throttle.report_rate_limited(1.0)
    throttle.report_success()  # best effort: logged, not raised
    throttle.observe_headers({"x-ratelimit-remaining-tokens": "5"})
