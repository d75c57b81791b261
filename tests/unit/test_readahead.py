"""ReadAhead: order, bounded look-ahead, errors at the consumer, early close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from backfleet.errors import DatabaseUnavailable
from backfleet.readahead import ReadAhead


def counting(
    n: int, produced: list[int], fail_at: int | None = None, closed: list[bool] | None = None
) -> Iterator[int]:
    try:
        for i in range(n):
            if i == fail_at:
                raise DatabaseUnavailable("source went away")
            produced.append(i)
            yield i
    finally:
        if closed is not None:
            closed.append(True)


def wait_until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_items_arrive_in_order_and_the_end_is_seen() -> None:
    produced: list[int] = []
    with ReadAhead(counting(50, produced)) as ahead:
        assert list(ahead) == list(range(50))
        assert next(ahead, None) is None  # exhausted stays exhausted


def test_reads_at_most_depth_plus_one_ahead() -> None:
    produced: list[int] = []
    ahead = ReadAhead(counting(100, produced), depth=2)
    try:
        assert next(ahead) == 0
        wait_until(lambda: len(produced) >= 4)
        time.sleep(0.3)  # it would run away here if unbounded
        # consumed 1, queued 2, one more read and waiting to be queued
        assert len(produced) == 4
    finally:
        ahead.close()


def test_reader_error_reaches_the_consumer_after_the_items_before_it() -> None:
    produced: list[int] = []
    got: list[int] = []
    with (
        ReadAhead(counting(10, produced, fail_at=3)) as ahead,
        pytest.raises(DatabaseUnavailable, match="source went away"),
    ):
        for item in ahead:
            got.append(item)
    assert got == [0, 1, 2]


def test_close_stops_a_reader_blocked_on_a_full_queue() -> None:
    produced: list[int] = []
    closed: list[bool] = []
    before = threading.active_count()
    ahead = ReadAhead(counting(1_000_000, produced, closed=closed), name="test-read-ahead")
    assert next(ahead) == 0
    wait_until(lambda: len(produced) >= 3)
    ahead.close()
    assert not any(t.name == "test-read-ahead" for t in threading.enumerate())
    assert threading.active_count() == before
    assert len(produced) < 10
    assert closed == [True]  # the source generator was closed (its connection given back)
    assert next(ahead, None) is None
