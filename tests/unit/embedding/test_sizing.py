"""Request sizing after timeouts, and timeouts raised at once for the caller to split."""

from __future__ import annotations

import pytest

from backfleet.embedding.retry import call_with_retries
from backfleet.embedding.sizing import RequestSizer
from backfleet.errors import ProviderRetryable, ProviderTimeout


def test_a_timeout_halves_the_cap_and_fast_requests_grow_it_back() -> None:
    sizer = RequestSizer(timeout_seconds=30)
    assert sizer.limit(256) == 256
    sizer.timed_out(256)
    assert sizer.limit(256) == 128
    sizer.timed_out(128)
    assert sizer.limit(256) == 64 and sizer.limit(10) == 10
    sizer.succeeded(64, 20.0)  # within the timeout but not well within: stays
    assert sizer.limit(256) == 64
    sizer.succeeded(64, 1.0)
    assert sizer.limit(256) == 128


def test_timeouts_are_retried_unless_the_caller_splits() -> None:
    calls: list[int] = []

    def fn() -> int:
        calls.append(1)
        raise ProviderTimeout("slow")

    with pytest.raises(ProviderTimeout):
        call_with_retries(fn, max_attempts=3, sleep=lambda _: None)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ProviderTimeout):
        call_with_retries(fn, max_attempts=3, sleep=lambda _: None, dont_retry=(ProviderTimeout,))
    assert len(calls) == 1
    assert issubclass(ProviderTimeout, ProviderRetryable)
